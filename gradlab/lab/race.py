"""The optimizer race: several optimizers from the same start on a 2-D test function.

This reproduces the well-known animations (Alec Radford's, shown in the CMU deck) of SGD,
momentum, Nesterov, AdaGrad, RMSProp and Adam on Beale's function, a long narrow valley and a
saddle point. From Python::

    from gradlab.lab.race import race, render
    paths = race("beale", ["sgd", "momentum", "adam"], steps=300)
    render("beale", paths, "out/")          # out/race_beale.gif and out/race_beale.png

From the shell::

    gradlab race beale --optimizers sgd,momentum,nesterov,adagrad,rmsprop,adam --steps 300 \\
        --out out/

which writes the GIF and PNG and prints each optimizer's final value and distance to the nearest
minimiser. Optimizer names map to gradlab's named optimizers (:data:`OPTIMIZERS`) with learning
rates chosen per problem (``Problem.learning_rates``); override them with ``--lr adam=0.1``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax

from gradlab import problems as _problems
from gradlab.lab import trajectories as _traj

__all__ = [
    "OPTIMIZERS",
    "DEFAULT_OPTIMIZERS",
    "make_optimizer",
    "default_learning_rate",
    "race",
    "render",
    "format_table",
    "register",
    "main",
]

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")

# name -> (gradlab module, function, keyword arguments besides the learning rate)
_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sgd": ("gradlab.optimizers.sgd", "sgd", {}),
    "momentum": ("gradlab.optimizers.sgd", "sgd", {"momentum": 0.9}),
    "nesterov": ("gradlab.optimizers.sgd", "sgd", {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("gradlab.optimizers.adaptive", "adagrad", {}),
    "rmsprop": ("gradlab.optimizers.adaptive", "rmsprop", {}),
    "adadelta": ("gradlab.optimizers.adaptive", "adadelta", {}),
    "adam": ("gradlab.optimizers.adaptive", "adam", {}),
    "rprop": ("gradlab.optimizers.rprop", "rprop", {}),
}

#: The optimizer names the race understands.
OPTIMIZERS: tuple[str, ...] = tuple(_SPECS)


def _factory(name: str) -> Callable[..., optax.GradientTransformation]:
    """gradlab's named optimizer (imported on first use)."""
    module_name, attr, _ = _SPECS[name]
    return getattr(importlib.import_module(module_name), attr)


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The race optimizer called ``name`` (one of :data:`OPTIMIZERS`) at ``learning_rate``.

    ``momentum`` and ``nesterov`` are :func:`gradlab.optimizers.sgd.sgd` with momentum 0.9
    (Nesterov's form for the latter); the others are gradlab's optimizers of the same name with
    their default hyperparameters (for ``rprop`` the learning rate is the initial step size).

    Raises:
      ValueError: unknown name (the message lists the known ones) or invalid learning rate.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    _, _, kwargs = _SPECS[name]
    return _factory(name)(learning_rate, **kwargs)


def default_learning_rate(problem: Any, name: str) -> float:
    """The learning rate the race uses for optimizer ``name`` on ``problem``."""
    problem = _problems.get(problem)
    if name not in _SPECS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if name not in problem.learning_rates:
        raise ValueError(f"{problem.name} suggests no learning rate for {name!r}: give one")
    return float(problem.learning_rates[name])


def _resolve_optimizers(
    problem, optimizers, learning_rates: Mapping[str, float] | None
) -> dict[str, optax.GradientTransformation]:
    if isinstance(optimizers, str):
        optimizers = [s.strip() for s in optimizers.split(",") if s.strip()]
    if isinstance(optimizers, Mapping):
        return dict(optimizers)
    learning_rates = dict(learning_rates or {})
    unknown = set(learning_rates) - set(optimizers)
    if unknown:
        raise ValueError(f"learning rates given for optimizers not in the race: {sorted(unknown)}")
    out = {}
    for name in optimizers:
        lr = learning_rates.get(name, None)
        out[name] = make_optimizer(name, default_learning_rate(problem, name) if lr is None else lr)
    return out


def race(
    problem: Any,
    optimizers: Mapping[str, optax.GradientTransformation] | Sequence[str] | str = (
        DEFAULT_OPTIMIZERS
    ),
    steps: int = 300,
    start: Any = None,
    *,
    learning_rates: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Run several optimizers from the same start and return their paths.

    Args:
      problem: a :class:`gradlab.problems.Problem` or a registry name (``"beale"``).
      optimizers: ``name -> transformation``, or names from :data:`OPTIMIZERS` (a sequence or a
        comma-separated string) built with the problem's suggested learning rates.
      steps: number of updates per optimizer.
      start: the common start (default: the problem's classic start).
      learning_rates: per-name overrides when ``optimizers`` are names.

    Returns:
      ``name -> (steps + 1, dim)`` float32 paths (row 0 is the start).
    """
    problem = _problems.get(problem)
    opts = _resolve_optimizers(problem, optimizers, learning_rates)
    if not opts:
        raise ValueError("race: no optimizers given")
    return _traj.trajectories(problem, opts, steps, start)


def render(
    problem: Any,
    paths: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    gif: bool = True,
    png: bool = True,
    frames: int = 60,
    fps: int = 15,
    stem: str | None = None,
    dpi: int = 80,
) -> dict[str, str]:
    """Write the race as ``race_<problem>.gif`` (animation) and ``race_<problem>.png`` (final
    paths) under ``out_dir``; returns ``{"gif": path, "png": path}`` for what was written."""
    from gradlab.lab import plots

    problem = _problems.get(problem)
    stem = stem or f"race_{problem.name}"
    written = {}
    if png:
        fig = plots.plot_contour_paths(problem, paths, title=f"{problem.name}")
        written["png"] = plots.save_figure(fig, os.path.join(os.fspath(out_dir), stem + ".png"))
    if gif:
        written["gif"] = plots.animate_paths(
            problem,
            paths,
            os.path.join(os.fspath(out_dir), stem + ".gif"),
            frames=frames,
            fps=fps,
            title=problem.name,
            dpi=dpi,
        )
    return written


def format_table(problem: Any, paths: Mapping[str, np.ndarray]) -> str:
    """A plain-text table: optimizer, final point, final value, distance to nearest minimiser.

    A multi-start path ``(B, steps + 1, dim)`` gives one line per start, named ``name[i]``.
    """
    rows = _traj.summarize(problem, paths)
    head = f"{'optimizer':<10} {'final x':>22} {'f(x)':>12} {'distance':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        x = ", ".join(f"{v:.4g}" for v in r["final"])
        dist = r["distance"]
        d = "-" if math.isinf(dist) else f"{dist:.3g}"
        v = "diverged" if r["diverged"] else f"{r['value']:.4g}"
        name = r["name"] if r.get("start") is None else f"{r['name']}[{r['start']}]"
        lines.append(f"{name:<10} {'(' + x + ')':>22} {v:>12} {d:>10}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_lrs(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--lr expects name=value pairs, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"--lr: the learning rate in {item!r} is not a number (e.g. adam=0.1)"
            ) from None
    return out


def _parse_start(text: str | None) -> np.ndarray | None:
    if not text:
        return None
    try:
        return np.asarray([float(v) for v in text.split(",")], dtype=np.float32)
    except ValueError:
        raise ValueError(
            f"--start expects comma-separated numbers (e.g. 1.0,1.5), got {text!r}"
        ) from None


_OPTIMIZERS_HELP = f"comma-separated names from: {', '.join(OPTIMIZERS)} (default: %(default)s)"
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--optimizers", dict(default=",".join(DEFAULT_OPTIMIZERS), help=_OPTIMIZERS_HELP)),
    ("--steps", dict(type=int, default=300, help="updates per optimizer (%(default)s)")),
    ("--lr", dict(help="learning-rate overrides, e.g. adam=0.1,sgd=0.01")),
    ("--start", dict(help="start point, e.g. 1.0,1.5 (default: the problem's classic start)")),
    ("--out", dict(default="out", help="output directory (%(default)s)")),
    ("--frames", dict(type=int, default=60, help="GIF frames (%(default)s)")),
    ("--fps", dict(type=int, default=15, help="GIF frames per second (%(default)s)")),
    ("--no-gif", dict(action="store_true", help="skip the animation")),
    ("--no-png", dict(action="store_true", help="skip the static figure")),
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``race`` subcommand to the ``gradlab`` command."""
    p = subparsers.add_parser(
        "race",
        help="animate optimizers racing on a 2-D test function",
        description="Run optimizers from the same start on a 2-D test function; write an "
        "animated GIF and a PNG of their paths and print where each ended.",
    )
    p.add_argument("problem", choices=_problems.names(), help="the test function")
    for flag, options in _OPTIONS:
        p.add_argument(flag, **options)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the ``race`` subcommand; returns the exit code (2 on a usage error)."""
    from gradlab.cli import prepare_out

    problem = _problems.get(args.problem)
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    try:
        if min(args.steps, args.frames, args.fps) < 1:
            raise ValueError("--steps, --frames and --fps must be >= 1")
        lrs = _parse_lrs(args.lr)
        start = _parse_start(args.start)
        prepare_out(args.out)  # before the race: a file in the way is a usage error
        paths = race(problem, names, args.steps, start, learning_rates=lrs)
    except ValueError as err:  # unknown optimizer, bad --lr, --start or --out
        print(f"gradlab race: error: {err}", file=sys.stderr)
        return 2
    lrs = {n: lrs.get(n, default_learning_rate(problem, n)) for n in names}
    x0 = ", ".join(f"{v:g}" for v in np.asarray(paths[names[0]][0], dtype=float))
    print(f"{problem.name}: f = {problem.formula}; start ({x0}); {args.steps} steps")
    print("learning rates: " + ", ".join(f"{n}={lr:g}" for n, lr in lrs.items()))
    print(format_table(problem, paths))
    written = render(
        problem,
        paths,
        args.out,
        gif=not args.no_gif,
        png=not args.no_png,
        frames=args.frames,
        fps=args.fps,
    )
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0
