"""``sweep``: many hyperparameter settings x seeds as one compiled, vmapped, sharded program.

The flow of one call:

1. The space becomes a list of settings (grid or random sample); each axis is *traced* (floats,
   ranges: vmapped) or *static* (strings, booleans, ints, callables: compiled separately).
2. The optimizer factory is called once per setting on the host with concrete values. A
   ``ValueError``/``TypeError`` marks that setting ``invalid_hyperparameter``; its lanes get a
   valid placeholder (the group's first valid values) and their results are discarded.
3. Settings are grouped by their static values; each group is one compiled program in which the
   factory is called *inside* the trace with the traced hyperparameters.
4. A strategy (``vmap``, ``chunked`` or ``loop``; ``auto`` picks) runs every (setting, seed) of
   the group; a run whose training loss becomes non-finite or exceeds ``divergence_threshold``
   times its first value, or whose parameters become non-finite, is frozen and marked diverged
   (the rule: :mod:`gradlab.sweep.program`).
5. The curves and statuses come back as a :class:`~gradlab.sweep.result.SweepResult`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from gradlab.status import Status
from gradlab.sweep import space as space_mod
from gradlab.sweep import strategies as strat
from gradlab.sweep import tasks as tasks_mod
from gradlab.sweep.program import Cause, Program, make_program, memoise, new_cache, seed_inputs
from gradlab.sweep.result import SweepResult
from gradlab.sweep.space import settings_from

__all__ = ["sweep", "choose_strategy", "step_flops", "AUTO_VMAP_MAX_FLOPS"]

#: On a single CPU device, ``strategy="auto"`` vmaps when one training step of one run costs
#: fewer FLOPs than this (per-step overhead dominates and vmap pays it once for all runs: 4x
#: faster for a 2 kFLOP step), and otherwise loops over one compiled run, one run in flight per
#: core (0.9-1.6x the vmap speed at 9e5 FLOPs depending on the machine's load, 1.5-2x from
#: 3.6e6 to 2.3e8). Measured with ``benchmarks/sweep.py``; see ``docs/sweeps.md``.
AUTO_VMAP_MAX_FLOPS = 3e5

_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def _default_budget(devices: Sequence[Any]) -> int:
    """Bytes a vmapped chunk may use on one device: half the device memory when JAX reports
    it (accelerators), 2 GiB otherwise (CPU). Read from the first of ``devices`` this process
    can address: with several processes ``devices[0]`` may belong to another host, whose
    ``memory_stats()`` fails there, and every process must pick the same chunk size."""
    here = jax.process_index()
    device = next((x for x in devices if x.process_index == here), devices[0])
    try:
        stats = device.memory_stats() or {}
        limit = int(stats.get("bytes_limit", 0))
    except Exception:  # pragma: no cover - backend-dependent
        limit = 0
    return limit // 2 if limit else 2 << 30


def choose_strategy(
    backend: str, n_runs: int, flops_per_step: float | None, n_devices: int = 1
) -> str:
    """The ``auto`` rule.

    * one run on one device: ``loop``;
    * an accelerator, or several devices: ``vmap`` (chunked under the memory budget, sharded);
    * one CPU device: ``vmap`` when a step of one run costs fewer than
      :data:`AUTO_VMAP_MAX_FLOPS` FLOPs (or the cost is unknown), else ``loop``.
    """
    if n_runs <= 1 and n_devices <= 1:
        return "loop"
    if backend != "cpu" or n_devices > 1:
        return "vmap"
    if flops_per_step is not None and flops_per_step >= AUTO_VMAP_MAX_FLOPS:
        return "loop"
    return "vmap"


def step_flops(prog, hp: dict, runs: dict, data: Any) -> float | None:
    """FLOPs of one training step of one run, from XLA's cost analysis of the lowered step
    (no compilation); ``None`` when the backend does not report it."""
    try:
        hp0 = {k: jax.numpy.asarray(v[0]) for k, v in hp.items()}
        run0 = {k: jax.numpy.asarray(v[0]) for k, v in runs.items()}
        state = jax.eval_shape(prog.init, hp0, run0, data)
        cost = jax.jit(prog.step).lower(state, hp0, data).cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        flops = None if not cost else cost.get("flops")
        return float(flops) if flops is not None and flops > 0 else None
    except Exception:  # pragma: no cover - backend-dependent
        return None


def _check_factory(factory: Callable, names: Sequence[str]) -> None:
    """``TypeError`` unless ``factory`` can take ``names`` as keyword arguments (memoised per
    factory object and names: a repeated sweep skips ``inspect.signature``)."""
    memoise(_CHECKED, (factory,), tuple(names), lambda: _check_signature(factory, names), 32)


def _check_signature(factory: Callable, names: Sequence[str]) -> bool:
    if not callable(factory):
        raise TypeError(f"optimizer must be a callable returning a transformation, got {factory!r}")
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return True
    try:
        sig.bind(**{n: None for n in names})
    except TypeError as err:
        raise TypeError(
            f"the optimizer factory cannot take the space's hyperparameters {list(names)} as "
            f"keyword arguments: {err}"
        ) from None
    return True


def _validate(factory: Callable, setting: Mapping[str, Any]) -> str | None:
    """Call the factory with concrete values: ``None`` if fine, else the error message."""
    try:
        tx = factory(**setting)
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(
            f"the optimizer factory must return a GradientTransformation, got {type(tx).__name__}"
        )
    return None


class _Unkeyable(Exception):
    """A space holding something other than plain values (it is then not memoised)."""


_PLAIN = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)


def _freeze(x: Any) -> Any:
    """A hashable, type-exact image of a space made of plain values (``_Unkeyable`` for
    anything else: callables, arbitrary objects)."""
    if type(x) is list and all(type(v) is float for v in x):  # the common case, fast
        return ("floats", tuple(x))
    if type(x) is dict:
        return ("map", tuple((_freeze(k), _freeze(v)) for k, v in x.items()))
    if isinstance(x, _PLAIN):
        return (type(x).__name__, x)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_freeze(v) for v in x))
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, Mapping):
        return ("map", tuple((_freeze(k), _freeze(v)) for k, v in x.items()))
    if isinstance(x, space_mod.Axis):
        return (type(x).__name__, _freeze(vars(x)))
    raise _Unkeyable


def _space_key(space: Any, samples: Any, sample_seed: Any) -> tuple | None:
    """The memo key of a space (``None`` when it holds anything but plain values)."""
    try:
        return (_freeze(space), _freeze(samples), _freeze(sample_seed))
    except _Unkeyable:
        return None


def _settings(space: Any, samples: Any, sample_seed: Any, key: tuple | None):
    """:func:`~gradlab.sweep.space.settings_from`, memoised on the space's plain values (a
    repeated sweep does not expand the grid again; the result is never mutated)."""

    def build():
        return settings_from(space, samples=samples, sample_seed=sample_seed)

    if key is None:
        return build()
    return memoise(_SPACES, (), key, build, 32)


def _validate_all(factory: Callable, settings: list, key: tuple | None) -> list[str | None]:
    """:func:`_validate` for every setting, memoised per factory object and space: like the
    compiled programs (memoised on the same identity), this takes the factory to be a pure
    function of its arguments."""

    def build():
        return [_validate(factory, s) for s in settings]

    if key is None:
        return build()
    return memoise(_VALIDATED, (factory,), key, build, 32)


def _group_key(setting: Mapping[str, Any], static: Sequence[str]) -> tuple:
    key = []
    for n in static:
        v = setting[n]
        try:
            hash(v)
            key.append((n, type(v).__name__, v))
        except TypeError:
            # By exact content (an array's repr rounds to 8 digits and elides large arrays, so
            # two different arrays could share one program); by identity when there is none.
            try:
                key.append((n, type(v).__name__, _freeze(v)))
            except _Unkeyable:
                key.append((n, type(v).__name__, _BY_IDENTITY, id(v)))
    return tuple(key)


#: Marks a group key entry made from an object's identity: fine within one sweep, where the
#: object lives, but never a key for programs kept across sweeps (its id could be reused).
_BY_IDENTITY = "<by identity>"


def _keyed_by_identity(group_key: tuple) -> bool:
    return any(entry[2:3] == (_BY_IDENTITY,) for entry in group_key)


def _make_task(task, init_fn, loss_fn, data, batch_size) -> tasks_mod.Task:
    if task is not None:
        if init_fn is not None or loss_fn is not None or data is not None:
            raise ValueError("pass either task= or init_fn/loss_fn/data, not both")
        if not isinstance(task, tasks_mod.Task):
            raise TypeError(f"task must be a gradlab.sweep.tasks.Task, got {type(task).__name__}")
        return task
    if init_fn is None or loss_fn is None or data is None:
        raise ValueError("sweep needs task= or all of init_fn=, loss_fn= and data=")
    return tasks_mod.custom(init_fn, loss_fn, data, batch_size=batch_size)


def _default_eval_every(steps: int) -> int:
    want = max(1, steps // 20)
    return next(k for k in range(want, 0, -1) if steps % k == 0)


def _check_schedule(steps: Any, eval_every: Any) -> tuple[int, int]:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    eval_every = _default_eval_every(steps) if eval_every is None else eval_every
    if isinstance(eval_every, bool) or not isinstance(eval_every, (int, np.integer)):
        raise TypeError(f"eval_every must be an int, got {eval_every!r}")
    if eval_every < 1 or steps % eval_every:
        raise ValueError(f"eval_every must be >= 1 and divide steps={steps}, got {eval_every}")
    return steps, int(eval_every)


def _check_threshold(tau: Any) -> float | None:
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)):
        raise TypeError(f"divergence_threshold must be a number > 1 or None, got {tau!r}")
    if not (math.isfinite(tau) and tau > 1):
        raise ValueError(f"divergence_threshold must be a finite number > 1, got {tau!r}")
    return float(tau)


def _target(target: Any, task: tasks_mod.Task, metric_names: Sequence[str]):
    if target is None:
        target = task.target
    elif target is False:
        target = None
    elif isinstance(target, (int, float)) and not isinstance(target, bool):
        target = (task.primary, float(target))
    elif isinstance(target, (tuple, list)) and len(target) == 2:
        target = (str(target[0]), float(target[1]))
    else:
        raise TypeError(f"target must be (metric, threshold), a number or False, got {target!r}")
    if target is not None and target[0] not in metric_names:
        raise ValueError(f"target metric {target[0]!r} is not one of {sorted(metric_names)}")
    return target


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    """The seed list: ``range(seeds)`` for a count, else distinct ints >= 0."""
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int (a count) or a sequence of ints")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(int(seeds)))
    out = []
    for s in seeds:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seeds must be ints >= 0, got {s!r} in {seeds!r}")
        if s < 0:
            raise ValueError(f"seeds must be ints >= 0, got {int(s)}")
        out.append(int(s))
    if not out:
        raise ValueError("seeds is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


def _check_positive_int(name: str, value: Any, unit: str = "") -> int | None:
    """``None`` or an int >= 1; else ``TypeError``/``ValueError`` naming ``name``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1{unit} or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1{unit} or None, got {value!r}")
    return int(value)


def _devices(devices: Sequence[Any] | None) -> list[Any]:
    """``jax.devices()`` for ``None``, else a non-empty list of distinct devices."""
    if devices is None:
        return list(jax.devices())
    out = list(devices)
    if not out:
        raise ValueError("devices must hold at least one device (or be None: jax.devices())")
    if not all(isinstance(d, jax.Device) for d in out):
        raise TypeError(f"devices must be jax devices, got {out!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"devices must be distinct, got {out}")
    return out


def _progress_bar(progress: bool | None, total: Callable[[], int]):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total(), unit="step", desc="sweep", unit_scale=True, leave=True)


def _why(cause: int, step: int, loss: float, loss0: float, tau: float | None) -> str:
    """The message of a diverged run."""
    if cause == Cause.LOSS_ABOVE_THRESHOLD:
        return f"training loss {loss:.4g} > {tau:g} x its first value {loss0:.4g} at step {step}"
    if cause == Cause.NON_FINITE_LOSS:
        return f"non-finite training loss ({loss}) at step {step}"
    return f"non-finite parameters after step {step}"


def sweep(
    optimizer: Callable[..., optax.GradientTransformation],
    space: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    seeds: int | Sequence[int] = 1,
    task: tasks_mod.Task | None = None,
    init_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    data: Any = None,
    batch_size: int | None = None,
    steps: int = 1000,
    eval_every: int | None = None,
    samples: int | None = None,
    sample_seed: int = 0,
    target: tuple[str, float] | float | bool | None = None,
    divergence_threshold: float | None = 100.0,
    strategy: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[Any] | None = None,
    progress: bool | None = None,
) -> SweepResult:
    r"""Train one model per (setting, seed) as a few compiled programs and tabulate the results.

    Args:
      optimizer: factory ``(**hyperparameters) -> GradientTransformation`` (any optax-compatible
        transformation), called with one keyword per key of ``space``. Traced hyperparameters
        arrive as JAX scalars, so schedule arguments are sweepable like optimizer arguments:
        ``lambda lr, decay: gradlab.sgd(gradlab.exponential_decay(lr, 100, decay))``.
      space: ``{name: axis}`` (lists, :func:`~gradlab.sweep.space.loguniform`,
        :func:`~gradlab.sweep.space.uniform`, :func:`~gradlab.sweep.space.choice`, scalars), or
        an explicit list of settings.
      seeds: number of seeds (>= 1: seeds 0, 1, ...) or the seeds themselves (distinct
        ints >= 0); a seed fixes the initialisation, the mini-batch order and dropout masks,
        and is shared across settings.
      task: what to train (:func:`~gradlab.sweep.tasks.mlp_classifier`,
        :func:`~gradlab.sweep.tasks.custom`). Or give ``init_fn``, ``loss_fn``, ``data`` (and
        ``batch_size``) directly, as for :func:`~gradlab.sweep.tasks.custom`.
      steps: optimizer steps per run.
      eval_every: steps between evaluations (must divide ``steps``; default about
        ``steps / 20``). Runs are also evaluated before the first step.
      samples: draw this many random settings from the space instead of the full grid.
      sample_seed: seed of the random search.
      target: ``(metric, threshold)`` for the ``steps_to_target`` column; a number applies to
        the task's primary metric; ``False`` disables it; ``None`` uses the task's default.
      divergence_threshold: a run is ``diverged`` (and frozen) at the first step whose training
        loss is non-finite or, when its first loss :math:`L_0` is positive, exceeds
        ``divergence_threshold`` :math:`\times L_0` (a number > 1; ``None`` keeps only the
        non-finite test, for losses that may be negative or start at zero).
      strategy: ``"auto"``, ``"vmap"``, ``"chunked"`` or ``"loop"`` (see ``docs/sweeps.md``).
      chunk_size: runs per vmapped chunk with ``"chunked"`` or ``"auto"`` (an int >= 1; the
        chunks are then balanced, so the size used, in ``info["groups"]``, may be smaller);
        default from ``memory_budget``.
      memory_budget: bytes (an int >= 1) per device a chunk may use with ``"chunked"`` and
        ``"auto"``
        (default: half the device memory on accelerators, 2 GiB on CPU); an explicit
        ``"vmap"`` runs a group's runs in one program whatever the budget.
      devices: devices to shard the runs over (at least one; default ``jax.devices()``: every
        device of every host after ``jax.distributed.initialize()``).
      progress: show a progress bar (default: when stderr is a terminal).

    Returns:
      A :class:`~gradlab.sweep.result.SweepResult`. A diverged run has status
      ``Status.DIVERGED`` (label ``diverged``), its step in ``diverged_at`` and the reason in
      ``messages``.
    """
    t_start = time.perf_counter()
    if strategy not in strat.STRATEGIES:
        raise ValueError(f"strategy must be one of {strat.STRATEGIES}, got {strategy!r}")
    steps, eval_every = _check_schedule(steps, eval_every)
    tau = _check_threshold(divergence_threshold)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    if chunk_size is not None and strategy in ("vmap", "loop"):
        raise ValueError(
            f"chunk_size applies to strategy 'chunked' or 'auto', not {strategy!r} (an explicit "
            "'vmap' runs each group in one program, 'loop' one run at a time)"
        )
    memory_budget = _check_positive_int("memory_budget", memory_budget, " (bytes)")
    n_evals = steps // eval_every
    the_task = _make_task(task, init_fn, loss_fn, data, batch_size)
    space_key = _space_key(space, samples, sample_seed)
    settings, traced = _settings(space, samples, sample_seed, space_key)
    names = list(settings[0])
    static = [n for n in names if n not in traced]
    seed_list = _seeds(seeds)
    _check_factory(optimizer, names)
    devices = _devices(devices)
    seed_data, metrics0 = _seed_inputs(the_task, seed_list, steps)
    target = _target(target, the_task, list(metrics0))

    n_settings, n_seeds = len(settings), len(seed_list)
    n_runs = n_settings * n_seeds
    errors = _validate_all(optimizer, settings, space_key)
    invalid = np.asarray([e is not None for e in errors])
    messages = [e or "" for e in errors for _ in seed_list]
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(_group_key(s, static), []).append(i)
    bad = [e is not None for e in errors]
    work = [(idx, list(traced)) for idx in groups.values() if not all(bad[i] for i in idx)]

    bar = _progress_bar(progress, lambda: int((~invalid).sum()) * n_seeds * steps)
    ctx = _Context(
        optimizer=optimizer,
        task=the_task,
        data={"task": the_task.data, **seed_data},
        settings=settings,
        invalid=invalid,
        n_seeds=n_seeds,
        eval_every=eval_every,
        n_evals=n_evals,
        tau=tau,
        strategy=strategy,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        devices=devices,
        progress=bar,
        metric_names=tuple(metrics0),
    )
    launched: list[tuple[list[int], strat.Output, dict]] = []
    used: list[dict[str, Any]] = []
    try:
        while work:
            idx, traced_here = work.pop(0)
            try:
                out, info = _run_group(ctx, idx, traced_here)
            except _TRACE_ERRORS as err:
                if not traced_here:
                    raise
                warnings.warn(
                    f"the optimizer factory could not be traced with hyperparameters "
                    f"{traced_here} as arrays ({type(err).__name__}); compiling each setting "
                    "separately instead (mark such axes choice(..., traced=False), or use "
                    "gradlab's traceable optimizers and schedules)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                work = [([i], []) for i in idx if not invalid[i]] + work
                continue
            launched.append((idx, out, info))
            used.append(info)

        # What does not depend on the results is prepared while the last program runs.
        seed_of_run = np.tile(np.arange(n_seeds), n_settings)
        curves = {}
        for k, v0 in metrics0.items():
            curves[k] = np.full((n_runs, n_evals + 1), np.nan, np.float32)
            curves[k][:, 0] = v0[seed_of_run]
        cause = np.zeros(n_runs, np.int32)
        diverged_at = np.full(n_runs, -1, np.int32)
        outcome = {"cause": cause, "diverged_at": diverged_at}
        outcome.update(loss0=np.zeros(n_runs, np.float32), bad_loss=np.zeros(n_runs, np.float32))
        invalid_runs = np.repeat(invalid, n_seeds)
        rows = {i: i * n_seeds + np.arange(n_seeds) for idx, _, _ in launched for i in idx}
        status = np.full(n_runs, int(Status.OK), np.int32)
        info = {
            "task": the_task.name,
            "task_config": dict(the_task.config),
            "optimizer": getattr(optimizer, "__qualname__", repr(optimizer)),
            "steps": steps,
            "eval_every": eval_every,
            "divergence_threshold": tau,
            "traced": list(traced),
            "static": static,
            "backend": devices[0].platform,
            "devices": len(devices),
            "groups": used,
            "wall_time_s": 0.0,
            "jax_version": jax.__version__,
        }
        # the result is built while the programs run, and its arrays filled in below
        result = SweepResult(
            names=names,
            settings=settings,
            seeds=seed_list,
            steps=np.arange(n_evals + 1) * eval_every,
            curves=curves,
            status=status,
            diverged_at=diverged_at,
            messages=messages,
            primary=the_task.primary,
            target=target,
            info=info,
        )
        curves, status, diverged_at = result.curves, result.status, result.diverged_at
        outcome["diverged_at"] = diverged_at

        after0 = {k: v[:, 1:] for k, v in curves.items()}  # views: the evaluations after 0
        for idx, out, group in launched:
            runs = np.concatenate([rows[i] for i in idx]) if len(idx) > 1 else rows[idx[0]]
            out.redirect(runs, after0, outcome)
            out.wait()
            group["seconds"] = time.perf_counter() - group["seconds"]
    finally:
        if bar is not None:
            bar.close()

    if invalid.any():
        for v in curves.values():
            v[invalid_runs] = np.nan
        diverged_at[invalid_runs] = -1
        cause[invalid_runs] = 0
        status[invalid_runs] = int(Status.INVALID_HYPERPARAMETER)
    for r in np.flatnonzero(cause):
        status[r] = int(Status.DIVERGED)
        loss, loss0 = outcome["bad_loss"][r], outcome["loss0"][r]
        result.messages[r] = _why(cause[r], diverged_at[r], loss, loss0, tau)
    result.info["wall_time_s"] = time.perf_counter() - t_start
    return result


_PROGRAMS: dict[tuple, Any] = new_cache()
_SEED_INPUTS: dict[tuple, Any] = new_cache()
_CHECKED: dict[tuple, Any] = new_cache()
_SPACES: dict[tuple, Any] = new_cache()
_VALIDATED: dict[tuple, Any] = new_cache()


def _seed_inputs(task: tasks_mod.Task, seeds: Sequence[int], steps: int):
    """:func:`~gradlab.sweep.program.seed_inputs`, memoised on the task's identity (a repeated
    sweep skips the initialisation and the evaluation at step 0)."""

    def build():
        inputs, metrics0 = seed_inputs(task, seeds, steps)
        if jax.process_count() == 1:  # keep a device copy: repeated sweeps skip the transfer
            inputs = jax.device_put(inputs)
        return inputs, metrics0

    return memoise(_SEED_INPUTS, (task,), (tuple(seeds), steps), build, 8)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every group of one sweep call shares."""

    optimizer: Callable
    task: tasks_mod.Task
    data: Any  # the programs' replicated data argument
    settings: list[dict[str, Any]]
    invalid: np.ndarray  # (n_settings,) bool
    n_seeds: int
    eval_every: int
    n_evals: int
    tau: float | None
    strategy: str
    chunk_size: int | None
    memory_budget: int | None
    devices: list[Any]
    progress: Any
    metric_names: tuple[str, ...]


def _program(ctx: _Context, static_hp: dict, evals_per_call: int) -> Program:
    """The group's program, memoised on the identity of the task and optimizer objects (and
    the static values), so that a repeated sweep reuses its compiled executables."""
    key = (_group_key(static_hp, sorted(static_hp)), ctx.eval_every, ctx.tau, evals_per_call)
    kw = dict(eval_every=ctx.eval_every, evals_per_call=evals_per_call)

    def build():
        return make_program(ctx.task, ctx.optimizer, static_hp, divergence_threshold=ctx.tau, **kw)

    if _keyed_by_identity(key[0]):
        return build()
    return memoise(_PROGRAMS, (ctx.task, ctx.optimizer), key, build, 32)


def _chunk_size(ctx: _Context, job: strat.Job, chosen: str) -> int:
    """Runs per vmapped chunk: ``chunk_size``, or as many as ``memory_budget`` allows
    (:func:`~gradlab.sweep.strategies.per_run_bytes`)."""
    n_runs, d = job.n_runs, len(job.devices)
    if ctx.chunk_size is not None:
        return max(1, min(int(ctx.chunk_size), n_runs))
    if chosen != "chunked" and ctx.strategy != "auto":
        return n_runs
    budget = ctx.memory_budget or _default_budget(job.devices)
    per_run = strat.per_run_bytes(job.program(1), job.hp, job.runs, job.data)
    return min(n_runs, max(1, budget // max(per_run, 1)) * d)


def _run_group(ctx: _Context, idx: list[int], traced: list[str]) -> tuple[strat.Output, dict]:
    """Run every (setting, seed) of one static group; returns the outputs and a summary."""
    placeholder = next(ctx.settings[i] for i in idx if not ctx.invalid[i])
    static_hp = {k: v for k, v in ctx.settings[idx[0]].items() if k not in traced}
    hp = {}
    for name in traced:
        col = [(placeholder if ctx.invalid[i] else ctx.settings[i])[name] for i in idx]
        dtype = np.float32 if any(isinstance(v, float) for v in col) else np.int32
        hp[name] = np.repeat(np.asarray(col, dtype), ctx.n_seeds)
    runs = {"seed_index": np.tile(np.arange(ctx.n_seeds, dtype=np.int32), len(idx))}
    job = strat.Job(
        functools.partial(_program, ctx, static_hp), hp, runs, ctx.data, ctx.n_evals,
        ctx.eval_every, ctx.devices, ctx.progress, ctx.metric_names,
    )  # fmt: skip
    backend, d = ctx.devices[0].platform, len(ctx.devices)
    chosen, flops = ctx.strategy, ctx.task.flops_per_step
    if chosen == "auto":
        if flops is None and backend == "cpu" and d == 1 and job.n_runs > 1:
            flops = step_flops(job.program(1), hp, runs, ctx.data)
        chosen = choose_strategy(backend, job.n_runs, flops, d)
    t0 = time.perf_counter()
    if chosen == "loop":
        size = 1
        here = jax.process_index()
        local = [x for x in ctx.devices if x.process_index == here]
        if local and len(local) < len(ctx.devices):
            job = dataclasses.replace(job, devices=local)
        out = strat.run_loop(job)
    else:
        size = _chunk_size(ctx, job, chosen)
        out = strat.run_batched(job, size)
    info = {
        "static": {k: repr(v) for k, v in static_hp.items()},
        "runs": job.n_runs,
        "strategy": chosen,
        "chunk_size": size if chosen == "loop" else strat.balanced_chunk_size(size, job),
        "flops_per_step": flops,
        "seconds": t0,  # the start; the engine stores the duration once the results are in
    }
    return out, info
