"""The lab: Flax models, initialisers, data, a training loop, plots and experiments."""

from __future__ import annotations

import argparse
import math

__all__ = ["example_parser", "positive_int", "positive_floats"]


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


def positive_int(text: str) -> int:
    """An ``argparse`` type: an int ``>= 1`` (``--epochs 0`` is a usage error naming the
    option, not a silent switch to the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def positive_floats(text: str) -> list[float]:
    """An ``argparse`` type: a comma-separated, non-empty list of finite numbers ``> 0``
    (learning rates, say)."""
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers > 0 (e.g. 0.01,0.1), got {text!r}"
        )
    out = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {item!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {item!r}")
        out.append(value)
    return out
