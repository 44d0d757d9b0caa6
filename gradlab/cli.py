"""The ``gradlab`` command: ``gradlab sweep`` (the main job) and ``gradlab race``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each subcommand lives beside the code it drives and exposes ``register(subparsers)``, which
# adds its parser and sets ``func`` (called with the parsed namespace, returning an exit code).
_SUBCOMMANDS = ("gradlab.sweep.command", "gradlab.lab.race")


def prepare_out(out: str, files: tuple[str, ...] = (), flag: str = "--out") -> None:
    """Create the output directory ``out`` before any work, or raise ``ValueError`` saying why
    it cannot hold the results (a file in the way, no permission, one of ``files`` a
    directory), so that a command never runs only to fail when it writes its results."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out!r} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {out!r} cannot be created: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out!r} is not writable")
    for name in files:
        if os.path.isdir(os.path.join(out, name)):
            raise ValueError(
                f"{flag} {out!r}: {name} is a directory; the results cannot be written"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlab", description="Compose, sweep and see JAX optimizers."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a subcommand not built yet
            if err.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
