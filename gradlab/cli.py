"""The ``gradlab`` command: ``gradlab sweep`` (the main job) and ``gradlab race``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each subcommand lives beside the code it drives and exposes ``register(subparsers)``, which
# adds its parser and sets ``func`` (called with the parsed namespace, returning an exit code).
_SUBCOMMANDS = ("gradlab.sweep.command", "gradlab.lab.race")


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
