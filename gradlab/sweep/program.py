"""The pure per-run training program that every execution strategy vmaps, maps or loops.

One run is ``(hyperparameters, seed index) -> curves``. The optimizer is built *inside* the
traced function from (possibly traced) hyperparameters, so a vmap over the hyperparameters is
one compiled program.

**Divergence rule.** A run *diverges* at the first step whose training loss :math:`L_t` (the
mini-batch loss the optimizer differentiates) satisfies

.. math::

    L_t \\notin \\mathbb{R} \\quad\\text{(NaN or } \\pm\\infty\\text{)}
    \\qquad\\text{or}\\qquad
    L_0 > 0 \\;\\text{and}\\; L_t > \\tau L_0,

where :math:`L_0` is the loss of its first step and :math:`\\tau` the sweep's
``divergence_threshold`` (``None``: only the non-finite test), or when its parameters are
non-finite at the end of an evaluation interval. A step only records its loss; the rule is
applied to the interval's losses at once (vectorised) and to the parameters with one tree
reduction, at the end of every evaluation interval, where a
diverged run is **frozen**: ``jnp.where`` restores its parameters, optimizer state and model
state to the snapshot taken at the start of the interval (its last evaluated state), and its
metrics read NaN from then on. Every test and select is per lane, so a diverged run costs the
others nothing but its lane, and their results are bit-for-bit what they would be without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import base

__all__ = [
    "Cause",
    "Program",
    "RunState",
    "make_program",
    "seed_inputs",
    "memoise",
    "pack",
    "unpack",
]


class Cause(enum.IntEnum):
    """Why a run was frozen (``RunState.cause``)."""

    NONE = 0  #: healthy.
    NON_FINITE_LOSS = 1  #: the training loss was NaN or infinite.
    LOSS_ABOVE_THRESHOLD = 2  #: the training loss exceeded ``divergence_threshold`` x its first.
    NON_FINITE_PARAMS = 3  #: a parameter was NaN or infinite at the end of an interval.


_NONE, _NON_FINITE_LOSS, _ABOVE, _NON_FINITE_PARAMS = (int(c) for c in Cause)


class RunState(NamedTuple):
    """Carry of one run between steps (all leaves get a leading run axis under vmap)."""

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array  # the run's dropout stream
    seed_index: jax.Array  # int32: row of the batch plan (runs sharing a seed share batches)
    step: jax.Array  # int32: steps taken
    loss0: jax.Array  # float32: the first step's training loss (the threshold's reference)
    cause: jax.Array  # int32 Cause: non-zero once the run diverged (frozen)
    diverged_at: jax.Array  # int32: the step that failed (-1 if none)
    bad_loss: jax.Array  # float32: the training loss at that step


#: The per-run summary a strategy brings back to the host (besides the metrics).
OUTCOME = ("cause", "diverged_at", "bad_loss", "loss0")


class Program(NamedTuple):
    """The pure single-run functions of one group of settings.

    * ``init(hp, run, data) -> state``;
    * ``advance(state, hp, data) -> (state, metrics)``: ``evals_per_call`` evaluation intervals
      of ``eval_every`` steps inside ``lax.scan``, the metrics stacked along a leading axis;
    * ``start(hp, run, data) -> (state, metrics)``: ``init`` then ``advance``, one program;
    * ``finish(hp, run, data) -> flat``: ``start`` returning only what the host keeps, the
      metrics and ``{name: scalar}`` for :data:`OUTCOME` (not the state), packed into one
      float32 vector by :func:`pack` (one transfer; :func:`unpack` reads it on the host);
    * ``step(state, hp, data) -> state``: one training step, for cost estimates;
    * ``evaluate(state, data) -> metrics``: the evaluation that ends every interval (the task's
      metrics on its full data), for memory estimates.

    ``run`` is ``{"seed_index": int32}``; ``data`` is ``{"task": task.data, "seeds": per-seed
    initial parameters, model state and dropout key, "plan": (n_seeds, steps, batch) int32 or
    None}`` (see :func:`seed_inputs`). The evaluation before the first step depends on the seed
    only, so it is not part of the program (see :func:`seed_inputs`).
    """

    init: Callable
    advance: Callable
    start: Callable
    finish: Callable
    step: Callable
    evaluate: Callable


def outcome(state: RunState) -> dict[str, jax.Array]:
    """The :data:`OUTCOME` fields of a final state."""
    return {k: getattr(state, k) for k in OUTCOME}


#: The int32 fields of :data:`OUTCOME` (packed as two exact float32 halves each).
_INT_FIELDS = ("cause", "diverged_at")


def pack(metrics: Mapping[str, jax.Array], out: Mapping[str, jax.Array]) -> jax.Array:
    """One float32 vector holding a run's metrics (``{name: (E,)}``, in sorted name order) and
    its :data:`OUTCOME`: a single device-to-host transfer instead of one per array. An int32
    field travels as its high and low 16 bits, each exact in float32 (no bit casts, so no
    NaN payloads or denormals to lose on the way)."""
    parts = [jnp.ravel(jnp.asarray(metrics[k], jnp.float32)) for k in sorted(metrics)]
    for k in OUTCOME:
        v = out[k]
        if k in _INT_FIELDS:
            v = jnp.asarray(v, jnp.int32)
            parts.append(jnp.stack([v >> 16, v & 0xFFFF]).astype(jnp.float32))
        else:
            parts.append(jnp.reshape(jnp.asarray(v, jnp.float32), (1,)))
    return jnp.concatenate(parts)


def unpack(flat: np.ndarray, names: Sequence[str], n_evals: int) -> tuple[dict, dict]:
    """The host-side inverse of :func:`pack`: ``({name: (n_evals,) float32}, {OUTCOME name:
    scalar})`` from the vector of one run; ``names`` are the metric names."""
    flat = np.asarray(flat)
    metrics, i = {}, 0
    for k in sorted(names):
        metrics[k] = flat[i : i + n_evals]
        i += n_evals
    out = {}
    for k in OUTCOME:
        if k in _INT_FIELDS:
            hi, lo = flat[i : i + 2].astype(np.int64)
            out[k] = np.int32((hi << 16) | lo)
            i += 2
        else:
            out[k] = np.float32(flat[i])
            i += 1
    if i != flat.shape[-1]:
        raise ValueError(f"packed run of {flat.shape[-1]} values, expected {i}")
    return metrics, out


def make_program(
    task: Any,
    factory: Callable[..., optax.GradientTransformation],
    static_hp: Mapping[str, Any],
    *,
    eval_every: int,
    evals_per_call: int,
    divergence_threshold: float | None = None,
) -> Program:
    """Build the pure single-run functions for one group of settings (one static config)."""
    static_hp = dict(static_hp)
    tau = None if divergence_threshold is None else float(divergence_threshold)

    def make_opt(hp):
        return factory(**static_hp, **hp)

    def init(hp, run, data):
        i = jnp.asarray(run["seed_index"], jnp.int32)
        params, model_state, k_run = jax.tree.map(lambda a: a[i], data["seeds"])
        f32, i32 = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return RunState(
            params=params,
            model_state=model_state,
            opt_state=make_opt(hp).init(params),
            key=k_run,
            seed_index=i,
            step=i32,
            loss0=f32,
            cause=i32,
            diverged_at=i32 - 1,
            bad_loss=f32,
        )

    def train_step(carry, idx, hp, data, opt, key):
        """One optimizer step on the batch ``idx``; returns the new carry and the loss."""
        params, model_state, opt_state, step = carry
        batch = task.get_batch(data["task"], idx)
        k_loss = jax.random.fold_in(key, step)

        def loss_of(p):
            return task.loss(p, model_state, batch, k_loss)

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        if isinstance(opt, base.GradientTransformationExtraArgs):
            extra = {"value": loss, "grad": grads, "value_fn": lambda p: loss_of(p)[0]}
            updates, opt_state = opt.update(grads, opt_state, params, **extra)
        else:
            updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, model_state, opt_state, step + 1), jnp.asarray(loss, jnp.float32)

    def check(s0: RunState, losses: jax.Array, params) -> dict:
        """The divergence rule over one interval's losses (vectorised, once per interval)."""
        loss0 = jnp.where(s0.step == 0, losses[0], s0.loss0)
        causes = jnp.where(jnp.isfinite(losses), _NONE, _NON_FINITE_LOSS)
        if tau is not None:
            causes = jnp.where((loss0 > 0) & (losses > tau * loss0), _ABOVE, causes)
        first = jnp.argmax(causes != _NONE)
        newly = (s0.cause == _NONE) & (causes[first] != _NONE)
        cause = jnp.where(newly, causes[first], s0.cause)
        overflow = (cause == _NONE) & ~base.tree_all_finite(params)
        return {
            "loss0": loss0,
            "cause": jnp.where(overflow, _NON_FINITE_PARAMS, cause).astype(jnp.int32),
            "diverged_at": jnp.select(
                [newly, overflow], [s0.step + first, s0.step + eval_every - 1], s0.diverged_at
            ).astype(jnp.int32),
            "bad_loss": jnp.select([newly, overflow], [losses[first], jnp.nan], s0.bad_loss),
        }

    def advance(state, hp, data):
        opt = make_opt(hp)

        def interval(s0: RunState, _):
            plan = data["plan"]
            rows = None
            if plan is not None:  # this interval's batches, one row per step
                rows = jax.lax.dynamic_slice_in_dim(plan[s0.seed_index], s0.step, eval_every)

            def one_step(carry, idx):
                return train_step(carry, idx, hp, data, opt, s0.key)

            carry = (s0.params, s0.model_state, s0.opt_state, s0.step)
            (params, model_state, opt_state, step), losses = jax.lax.scan(
                one_step, carry, rows, length=eval_every
            )
            s = s0._replace(step=step, **check(s0, losses, params))
            frozen = s.cause != _NONE

            def keep(new, old):  # a diverged run goes back to the interval's start
                return jax.tree.map(lambda n, o: jnp.where(frozen, o, n), new, old)

            s = s._replace(
                params=keep(params, s0.params),
                model_state=keep(model_state, s0.model_state),
                opt_state=keep(opt_state, s0.opt_state),
            )
            metrics = task.evaluate(s.params, s.model_state, data["task"])
            return s, {
                k: jnp.where(frozen, jnp.nan, jnp.asarray(v, jnp.float32))
                for k, v in metrics.items()
            }

        return jax.lax.scan(interval, state, None, length=evals_per_call)

    def start(hp, run, data):
        return advance(init(hp, run, data), hp, data)

    def finish(hp, run, data):
        state, metrics = start(hp, run, data)
        return pack(metrics, outcome(state))

    def step(state, hp, data):
        idx = None if data["plan"] is None else data["plan"][state.seed_index, state.step]
        carry = (state.params, state.model_state, state.opt_state, state.step)
        carry, _ = train_step(carry, idx, hp, data, make_opt(hp), state.key)
        return state._replace(params=carry[0], model_state=carry[1], opt_state=carry[2])

    def evaluate(state, data):
        return task.evaluate(state.params, state.model_state, data["task"])

    return Program(
        init=init, advance=advance, start=start, finish=finish, step=step, evaluate=evaluate
    )


def seed_inputs(task: Any, seeds: Sequence[int], steps: int) -> tuple[dict, dict]:
    """Everything a run takes from its seed, computed once per seed outside the compiled
    program (so random initialisation is not recompiled per sweep or vmapped per setting).

    ``PRNGKey(seed)`` is split in three: the first key initialises the model
    (``task.init``), the third drives dropout (folded with the step number); the mini-batch
    order is ``task.batch_plan(seed, steps)`` (numpy, on the host). The evaluation before the
    first step depends on the seed only, so it is done here, once per seed, and shared by
    every setting.

    Returns:
      ``({"seeds": (params, model_state, dropout key) stacked over seeds, "plan": (n_seeds,
      steps, batch) int32 or None}, {metric: (n_seeds,) float32 evaluation at step 0})``.
    """
    inits, first = [], []
    evaluate = jax.jit(task.evaluate)
    for seed in seeds:
        k_init, _, k_run = jax.random.split(jax.random.PRNGKey(int(seed)), 3)
        params, model_state = task.init(k_init)
        inits.append(jax.tree.map(np.asarray, (params, model_state, k_run)))
        first.append(evaluate(params, model_state, task.data))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *inits)
    metrics0 = {k: np.asarray([m[k] for m in first], np.float32) for k in first[0]}
    plan = None
    if task.batch_plan is not None:
        plan = np.stack([np.asarray(task.batch_plan(int(s), steps), np.int32) for s in seeds])
    return {"seeds": stacked, "plan": plan}, metrics0


_CACHES: list[dict] = []


def new_cache() -> dict:
    """An empty :func:`memoise` cache that :func:`clear_caches` empties."""
    cache: dict = {}
    _CACHES.append(cache)
    return cache


def clear_caches() -> None:
    """Forget every cached program, compiled executable, device-placed data set and seed input
    of earlier sweeps (``gradlab.sweep.clear_caches``). They make a repeated sweep start at
    once, and they hold device memory between sweeps: up to 8 placed copies of a task's data
    per device and the seed inputs of 8 (seeds, steps) pairs. The next sweep compiles again."""
    for cache in _CACHES:
        cache.clear()


def memoise(cache: dict, owners: tuple, key: tuple, build: Callable[[], Any], size: int) -> Any:
    """``build()``, cached under the *identity* of ``owners`` (kept alive by the cache, so an
    id cannot be reused while its entry exists) and ``key``; the oldest entries are dropped
    beyond ``size``. Repeated sweeps with the same task and optimizer objects reuse their
    programs, compiled executables and seed inputs this way."""
    full = tuple(id(o) for o in owners) + key
    hit = cache.get(full)
    if hit is None:
        hit = cache[full] = (owners, build())
        while len(cache) > size:
            cache.pop(next(iter(cache)))
    return hit[1]
