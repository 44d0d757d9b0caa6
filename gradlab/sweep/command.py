"""``gradlab sweep``: run a hyperparameter sweep from the command line, print and plot it.

With no arguments it sweeps SGD's learning rate (8 log-spaced values) x momentum {0, 0.9} with
2 seeds on scikit-learn's embedded digits with a Flax MLP, prints the table and writes
``sweep_out/{table.txt, sweep.npz, sweep.png}``. Without --space, the axes are the learning
rate (lr=loguniform:1e-3:3:8) if the optimizer takes one, and momentum=0,0.9 if it takes
a momentum argument (SGD, RMSprop). Every argument the optimizer requires must be on an axis.
Examples::

    gradlab sweep
    gradlab sweep --optimizer adam --space lr=loguniform:1e-4:1e-1:6 --space b1=0.8,0.9,0.99
    gradlab sweep --space lr=loguniform:1e-3:1 --samples 16 --seeds 3 --steps 500
    gradlab sweep --optimizer sgd --space lr=0.1 --space nesterov=true,false --space momentum=0.9
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "register",
    "run",
    "parse_space",
    "resolve_optimizer",
    "default_space",
    "check_arguments",
    "OPTIMIZERS",
    "ALIASES",
    "DEFAULT_SPACE",
]

#: Names accepted by ``--optimizer``: gradlab's named optimizers (optax's as a fallback).
OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "adamax", "rmsprop", "adagrad", "adadelta", "rprop")

#: Short names accepted in ``--space`` for the factories' argument names.
ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "mu": "momentum"}

#: The axes used without ``--space``, each only when the optimizer takes that argument (see
#: :func:`default_space`): SGD gets both, Adam only the learning rate.
DEFAULT_SPACE = ["lr=loguniform:1e-3:3:8", "momentum=0,0.9"]


def default_space(factory: Callable) -> list[str]:
    """The ``--space`` items used when none is given: those of :data:`DEFAULT_SPACE` whose
    argument ``factory`` takes (by name or through ``**kwargs``)."""
    params = _parameters(factory)
    if params is None:
        return list(DEFAULT_SPACE)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = []
    for item in DEFAULT_SPACE:
        name = item.split("=", 1)[0]
        if takes_any or ALIASES.get(name, name) in params:
            out.append(item)
    return out


def _parameters(factory: Callable) -> Mapping[str, inspect.Parameter] | None:
    """The factory's parameters (``None`` when it has no inspectable signature)."""
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None


def check_arguments(name: str, factory: Callable, space: Mapping[str, Any]) -> None:
    """``ValueError`` unless the space's axes are arguments of ``factory`` and cover every
    argument it requires (naming the unknown or missing ones)."""
    params = _parameters(factory)
    if params is None:
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [n for n in space if n not in named]
    if unknown and not takes_any:
        raise ValueError(
            f"{name} has no argument {', '.join(unknown)}; its arguments: {', '.join(named)}"
        )
    positional_only = [n for n, p in params.items() if p.kind is p.POSITIONAL_ONLY]
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [n for n in required if n not in space or n in positional_only]
    if missing:
        hint = " ".join(f"--space {n}=..." for n in missing)
        raise ValueError(
            f"{name} requires {', '.join(missing)}: give {'it' if len(missing) == 1 else 'them'}"
            f" a value or an axis ({hint})"
        )


def resolve_optimizer(name: str) -> Callable:
    """The factory for an optimizer name: gradlab's if it exists, else optax's."""
    import gradlab

    fn = getattr(gradlab, name, None)
    if fn is None:
        for module in ("sgd", "adaptive", "rprop"):
            try:
                mod = __import__(f"gradlab.optimizers.{module}", fromlist=[name])
            except ImportError:
                continue
            fn = getattr(mod, name, None)
            if fn is not None:
                break
    if fn is None:
        import optax

        fn = getattr(optax, name, None)
    if fn is None or not _is_optimizer_factory(fn):
        raise ValueError(
            f"unknown optimizer {name!r}; try one of {', '.join(OPTIMIZERS)} (or any gradlab or "
            "optax function that builds an optimizer from its hyperparameters)"
        )
    return fn


def _is_optimizer_factory(fn: Any) -> bool:
    """Whether ``fn`` builds a transformation from hyperparameters: its return annotation names
    a ``GradientTransformation`` and it takes no ``*args`` (``chain`` does; ``sweep``,
    schedules and ``minimize`` return something else)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return False
    ret = sig.return_annotation
    return "GradientTransformation" in (
        ret if isinstance(ret, str) else getattr(ret, "__name__", "")
    )


def _token(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return int(low)
    except ValueError:
        pass
    try:
        return float(low)
    except ValueError:
        return text.strip()


def parse_space(items: list[str]) -> dict[str, Any]:
    """Parse ``NAME=SPEC`` strings.

    ``SPEC`` is ``loguniform:LOW:HIGH[:N]``, ``uniform:LOW:HIGH[:N]`` or comma-separated values
    (numbers, ``true``/``false``, ``none``, strings). A list mixing ints and floats is all
    floats (traced); a list of ints stays ints (static, e.g. a memory size). A name given twice
    (also through an alias: ``lr`` and ``learning_rate``) is a ``ValueError``.
    """
    from gradlab.sweep.space import choice, loguniform, uniform

    space: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--space expects NAME=SPEC, got {item!r}")
        name, spec = (s.strip() for s in item.split("=", 1))
        name = ALIASES.get(name, name)
        if name in space:
            raise ValueError(f"--space {name} is given twice; give each axis once")
        kind, colon, rest = spec.partition(":")
        if kind in ("loguniform", "uniform"):
            parts = rest.split(":") if rest else []
            if len(parts) not in (2, 3):
                raise ValueError(f"{name}: {kind} needs LOW:HIGH[:N], got {spec!r}")
            low, high = float(parts[0]), float(parts[1])
            n = int(parts[2]) if len(parts) == 3 else None
            space[name] = (loguniform if kind == "loguniform" else uniform)(low, high, n)
            continue
        if colon:
            raise ValueError(
                f"{name}: {spec!r} is neither a list of values nor loguniform:LOW:HIGH[:N] or "
                "uniform:LOW:HIGH[:N]"
            )
        values = [_token(t) for t in spec.split(",") if t.strip()]
        if not values:
            raise ValueError(f"{name}: no values in {spec!r}")
        nums = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in values]
        if all(nums) and any(isinstance(v, float) for v in values):
            values = [float(v) for v in values]
        space[name] = choice(values)
    return space


#: ``gradlab sweep``'s options: flag -> ``add_argument`` keywords.
_OPTIONS: dict[str, dict[str, Any]] = {
    "--optimizer": {"default": "sgd", "help": "optimizer name (default: sgd)"},
    "--space": {
        "action": "append",
        "metavar": "NAME=SPEC",
        "help": "an axis: lr=loguniform:1e-3:1:8, momentum=0,0.9 (repeatable; default: "
        + " ".join(DEFAULT_SPACE)
        + ", each if the optimizer takes it)",
    },
    "--samples": {"type": int, "default": None, "help": "random search: number of settings"},
    "--seeds": {"type": int, "default": 2, "help": "seeds per setting (default: 2)"},
    "--steps": {"type": int, "default": 300, "help": "optimizer steps (default: 300)"},
    "--eval-every": {"type": int, "default": None, "help": "steps between evaluations"},
    "--divergence-threshold": {
        "type": float,
        "default": 100.0,
        "help": "a run whose training loss exceeds this times its first loss is diverged "
        "(default: 100; 0 disables the ratio test, keeping the non-finite one)",
    },
    "--dataset": {"default": "digits", "help": "digits, moons, spirals or blobs"},
    "--widths": {"default": "64", "help": "hidden widths, comma-separated (default: 64)"},
    "--batch-size": {"default": "128", "help": "mini-batch size or 'all' (default: 128)"},
    "--strategy": {"default": "auto", "choices": ["auto", "vmap", "chunked", "loop"]},
    "--out": {
        "default": "sweep_out",
        "help": "output directory, created before training (default: sweep_out)",
    },
    "--no-plot": {"action": "store_true", "help": "do not write sweep.png"},
    "--no-progress": {"action": "store_true", "help": "hide the progress bar"},
}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to the ``gradlab`` parser."""
    p = subparsers.add_parser(
        "sweep",
        help="run a hyperparameter sweep (default: SGD lr x momentum on digits)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, options in _OPTIONS.items():
        p.add_argument(flag, **options)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``gradlab sweep`` with parsed arguments; returns the exit code."""
    from gradlab.cli import prepare_out
    from gradlab.sweep import tasks
    from gradlab.sweep.engine import sweep
    from gradlab.sweep.space import grid

    try:
        factory = resolve_optimizer(args.optimizer)
        space = parse_space(args.space or default_space(factory))
        check_arguments(args.optimizer, factory, space)
        widths = tuple(int(w) for w in str(args.widths).split(",") if w.strip())
        bs = None if str(args.batch_size).lower() in ("all", "none", "-1") else int(args.batch_size)
        task = tasks.mlp_classifier(dataset=args.dataset, widths=widths, batch_size=bs)
        for flag, value in (
            ("--samples", args.samples),
            ("--seeds", args.seeds),
            ("--steps", args.steps),
            ("--eval-every", args.eval_every),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        n_settings = args.samples if args.samples is not None else len(grid(space))
        prepare_out(args.out, ("table.txt", "sweep.npz", "sweep.png"), "--out")
    except (ValueError, TypeError) as err:
        print(f"gradlab sweep: error: {err}", file=sys.stderr)
        return 2

    @functools.wraps(factory)  # the engine's signature check sees the factory's arguments
    def optimizer(**hp):
        return factory(**hp)

    optimizer.__qualname__ = args.optimizer
    print(
        f"gradlab sweep: {args.optimizer} on {task.name}, {n_settings} settings x {args.seeds} "
        f"seeds x {args.steps} steps",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        result = sweep(
            optimizer,
            space,
            seeds=args.seeds,
            task=task,
            steps=args.steps,
            eval_every=args.eval_every,
            samples=args.samples,
            strategy=args.strategy,
            divergence_threshold=args.divergence_threshold or None,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        print(f"gradlab sweep: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    table = result.table()
    print(table)
    best = result.best
    strategies = sorted({g["strategy"] for g in result.info["groups"]})
    print(
        f"\n{result.num_runs} runs in {elapsed:.1f} s (strategy {', '.join(strategies) or '-'}, "
        f"{result.info['devices']} {result.info['backend']} device(s))"
    )
    diverged = [r for r, label in enumerate(result.labels()) if label == "diverged"]
    if diverged:
        tau = result.info["divergence_threshold"]
        rule = "non-finite" + (f" or above {tau:g} x its first value" if tau else "")
        print(
            f"{len(diverged)} run(s) diverged (training loss {rule}), the first: "
            f"{result.messages[diverged[0]]}"
        )
    invalid = [r for r, label in enumerate(result.labels()) if label == "invalid_hyperparameter"]
    if invalid:
        print(
            f"{len(invalid)} run(s) invalid ({args.optimizer} refused their hyperparameters), "
            f"the first: {result.messages[invalid[0]]}"
        )
    if best is not None:
        hp = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in ((n, best[n]) for n in result.names)
        )
        print(f"best ({result.primary}): {hp} -> {best['final_' + result.primary]:.4g}")
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(str(table) + "\n")
    saved = result.save(os.path.join(args.out, "sweep.npz"))
    written = [os.path.join(args.out, "table.txt"), saved]
    if not args.no_plot:
        png = os.path.join(args.out, "sweep.png")
        result.plot(png)
        written.append(png)
    print("wrote " + ", ".join(written))
    if len(invalid) == result.num_runs:
        print(
            f"gradlab sweep: error: every setting was refused by {args.optimizer}; the first "
            f"reason: {result.messages[invalid[0]]}",
            file=sys.stderr,
        )
        return 1
    return 0
