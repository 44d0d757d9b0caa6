"""The pure per-run training program that every execution strategy vmaps, maps or loops.

One run is ``(hyperparameters, seed key) -> curves``. The optimizer is built *inside* the
traced function from (possibly traced) hyperparameters, so a vmap over the hyperparameters is
one compiled program.

Divergence is caught in two places, cheaply:

* every step checks the (scalar) loss: the first non-finite loss marks the run ``diverged`` and
  records the step;
* at the end of every evaluation interval, the parameters are checked too (a run whose
  parameters overflow while its loss still reads finite), and every diverged run is **frozen**:
  ``jnp.where`` restores its parameters, optimizer state and model state to the snapshot taken
  at the start of the interval (the last evaluated, finite state), and they stay there.

So a healthy run pays one scalar check per step plus one tree check and one select per
interval, and a diverged run costs the others nothing but its lane. Its metrics read NaN from
the first evaluation after the divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import base


class RunState(NamedTuple):
    """Carry of one run between steps (all leaves get a leading run axis under vmap)."""

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array  # the run's dropout stream
    seed_index: jax.Array  # int32: row of the batch plan (runs sharing a seed share batches)
    step: jax.Array  # int32: steps taken
    diverged: jax.Array  # bool: frozen after a non-finite loss or parameter
    diverged_at: jax.Array  # int32: the step that failed (-1 if none)


def _mask_diverged(metrics: Mapping[str, jax.Array], diverged: jax.Array) -> dict:
    return {
        k: jnp.where(diverged, jnp.nan, jnp.asarray(v, jnp.float32)) for k, v in metrics.items()
    }


class Program(NamedTuple):
    """``init(hp, run, data) -> (state, metrics0)``; ``advance(state, hp, data) -> (state, m)``;
    ``start(hp, run, data) -> (state, metrics0, m)`` is ``init`` then ``advance`` as one program
    (one compilation when a single call covers the whole run).

    ``run`` is ``{"seed_index": int32}``; ``data`` is ``{"task": task.data, "seeds": per-seed
    initial parameters, model state and dropout key (see :func:`seed_inputs`), "plan":
    (n_seeds, steps, batch) int32 or None}``. ``advance`` runs ``evals_per_call`` evaluation
    intervals of ``eval_every`` steps inside ``lax.scan`` and returns the metrics stacked along
    a leading axis.
    """

    init: Callable
    advance: Callable
    start: Callable
    step: Callable  # one training step (state, hp, data) -> state, for cost estimates


def make_program(
    task: Any,
    factory: Callable[..., optax.GradientTransformation],
    static_hp: Mapping[str, Any],
    *,
    eval_every: int,
    evals_per_call: int,
) -> Program:
    """Build the pure single-run functions for one group of settings (one static config)."""
    static_hp = dict(static_hp)

    def make_opt(hp):
        return factory(**static_hp, **hp)

    def init(hp, run, data):
        i = jnp.asarray(run["seed_index"], jnp.int32)
        params, model_state, k_run = jax.tree.map(lambda a: a[i], data["seeds"])
        opt_state = make_opt(hp).init(params)
        state = RunState(
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            key=k_run,
            seed_index=i,
            step=jnp.zeros((), jnp.int32),
            diverged=jnp.zeros((), bool),
            diverged_at=jnp.full((), -1, jnp.int32),
        )
        metrics = task.evaluate(params, model_state, data["task"])
        return state, _mask_diverged(metrics, state.diverged)

    def train_step(state: RunState, hp, data, opt) -> RunState:
        k_loss = jax.random.fold_in(state.key, state.step)
        plan = data["plan"]
        idx = None if plan is None else plan[state.seed_index, state.step]
        batch = task.get_batch(data["task"], idx)

        def loss_of(p):
            return task.loss(p, state.model_state, batch, k_loss)

        (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        if isinstance(opt, base.GradientTransformationExtraArgs):
            updates, opt_state = opt.update(
                grads,
                state.opt_state,
                state.params,
                value=loss,
                grad=grads,
                value_fn=lambda p: loss_of(p)[0],
            )
        else:
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        newly = ~jnp.isfinite(loss) & ~state.diverged
        return RunState(
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            key=state.key,
            seed_index=state.seed_index,
            step=state.step + 1,
            diverged=state.diverged | newly,
            diverged_at=jnp.where(newly, state.step, state.diverged_at),
        )

    def advance(state, hp, data):
        opt = make_opt(hp)

        def one_step(s, _):
            return train_step(s, hp, data, opt), None

        def interval(s0, _):
            s, _ = jax.lax.scan(one_step, s0, None, length=eval_every)
            overflow = ~s.diverged & ~base.tree_all_finite(s.params)
            bad = s.diverged | overflow

            def frozen(new, old):
                return jax.tree.map(lambda n, o: jnp.where(bad, o, n), new, old)

            s = s._replace(
                params=frozen(s.params, s0.params),
                model_state=frozen(s.model_state, s0.model_state),
                opt_state=frozen(s.opt_state, s0.opt_state),
                diverged=bad,
                diverged_at=jnp.where(overflow, s.step - 1, s.diverged_at),
            )
            metrics = task.evaluate(s.params, s.model_state, data["task"])
            return s, _mask_diverged(metrics, s.diverged)

        return jax.lax.scan(interval, state, None, length=evals_per_call)

    def start(hp, run, data):
        state, metrics0 = init(hp, run, data)
        state, metrics = advance(state, hp, data)
        return state, metrics0, metrics

    def step(state, hp, data):
        return train_step(state, hp, data, make_opt(hp))

    return Program(init=init, advance=advance, start=start, step=step)


def seed_inputs(task: Any, seeds: Sequence[int], steps: int) -> dict:
    """Everything a run takes from its seed, computed once per seed outside the compiled
    program (so random initialisation is not recompiled per sweep or vmapped per setting).

    ``PRNGKey(seed)`` is split in three: the first key initialises the model
    (``task.init``), the third drives dropout (folded with the step number); the mini-batch
    order is ``task.batch_plan(seed, steps)`` (numpy, on the host).

    Returns:
      ``{"seeds": (params, model_state, dropout key) stacked over seeds, "plan": (n_seeds,
      steps, batch) int32 or None}``.
    """
    inits = []
    for seed in seeds:
        k_init, _, k_run = jax.random.split(jax.random.PRNGKey(int(seed)), 3)
        params, model_state = task.init(k_init)
        inits.append(jax.tree.map(np.asarray, (params, model_state, k_run)))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *inits)
    plan = None
    if task.batch_plan is not None:
        plan = np.stack([np.asarray(task.batch_plan(int(s), steps), np.int32) for s in seeds])
    return {"seeds": stacked, "plan": plan}
