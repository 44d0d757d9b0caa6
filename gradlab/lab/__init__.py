"""The lab: Flax models, initialisers, data, a training loop, plots and experiments."""

from __future__ import annotations

import argparse

__all__ = ["example_parser"]


def example_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The command line the lab's examples share: ``--quick`` and ``--out DIR``.

    Args:
      doc: the example's docstring (its first line becomes the description).
      quick: what ``--quick`` (the smoke test the test suite runs) does, for its help text.

    Returns:
      A parser with ``--quick`` and ``--out`` (default ``out``: where figures and numbers go);
      examples add their own options.
    """
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{quick} (smoke test)")
    p.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    return p
