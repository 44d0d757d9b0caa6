r"""Reduce-on-plateau: scale the updates down when a monitored loss stops improving.

The transformation keeps a multiplicative ``scale`` (1 at the start) and multiplies every update
by it. It is fed the monitored value each update (``value=``, the one spelling of "loss at
params" across gradlab), averages ``accumulation_size`` consecutive values, and after each full
accumulation compares the average with the best seen so far:

.. math::
    \text{improved} \iff \bar v < (1 - \text{rtol})\, v_{\text{best}} - \text{atol}

Without improvement for ``patience`` consecutive accumulations, the scale is multiplied by
``factor`` (never below ``min_scale``) and the plateau counter restarts; for ``cooldown``
accumulations after a reduction, bad accumulations are not counted. The semantics are those of
``optax.contrib.reduce_on_plateau`` (and ``torch.optim.lr_scheduler.ReduceLROnPlateau`` with
``mode='min'``), with every numeric argument traceable: ``factor``, ``patience``, ``cooldown``,
``rtol``, ``atol``, ``min_scale`` and ``accumulation_size`` may be vmapped over (optax raises
under ``vmap`` on ``factor``, ``rtol`` and ``atol``).

Usage in a training loop (the loss of the step being taken)::

    tx = optax.chain(gradlab.adam(1e-3), gradlab.reduce_on_plateau(patience=5,
                                                                     accumulation_size=100))
    state = tx.init(params)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss)

Each minibatch loss is noisy, so average it over an epoch with ``accumulation_size``.

With a validation loss, keep the transformation out of the chain and feed it once per epoch;
its ``scale`` multiplies the optimizer's updates::

    plateau = gradlab.reduce_on_plateau(patience=3)
    p_state = plateau.init(params)
    ...  # inside the step: updates = jax.tree.map(lambda u: p_state.scale * u, updates)
    _, p_state = plateau.update({}, p_state, value=validation_loss)  # end of each epoch

References:
  PyTorch ``ReduceLROnPlateau``; Keras ``callbacks.ReduceLROnPlateau``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]

_OWNER = "reduce_on_plateau"


class ReduceLROnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau` (field names as in optax's contrib version)."""

    scale: jax.Array  # float32 scalar: the factor applied to the updates.
    best_value: jax.Array  # float32 scalar: best accumulated value so far (inf at start).
    plateau_count: jax.Array  # int32: accumulations without improvement.
    cooldown_count: jax.Array  # int32: accumulations of cooldown left.
    count: jax.Array  # int32: values accumulated in the current window.
    avg_value: jax.Array  # float32 scalar: running mean of the current window.


def reduce_on_plateau(
    factor: float | jax.Array = 0.1,
    patience: int | jax.Array = 10,
    rtol: float | jax.Array = 1e-4,
    atol: float | jax.Array = 0.0,
    cooldown: int | jax.Array = 0,
    accumulation_size: int | jax.Array = 1,
    min_scale: float | jax.Array = 0.0,
) -> base.GradientTransformationExtraArgs:
    r"""Multiply updates by a scale that shrinks by ``factor`` when ``value`` plateaus.

    After each window of ``accumulation_size`` updates, with :math:`\bar v` the window's mean
    ``value``:

    .. math::
        \begin{aligned}
        &\text{if } \bar v < (1-\text{rtol})\,v_{\text{best}} - \text{atol}:
            \quad v_{\text{best}} \leftarrow \bar v,\ n \leftarrow 0
            \quad\text{else } n \leftarrow n + 1 \\
        &\text{if in cooldown: } n \leftarrow 0,\ c \leftarrow c - 1 \\
        &\text{else if } n \ge \text{patience}:\quad
            s \leftarrow \max(\text{factor}\cdot s,\ \text{min\_scale}),\
            n \leftarrow 0,\ c \leftarrow \text{cooldown}
        \end{aligned}

    and every update is :math:`u_t = s\, g_t` (in the gradient's dtype; the state is float32).
    Place it after the optimizer in a chain (it scales the learning rate) and pass
    ``value=loss`` to ``update`` on every call.

    Args:
      factor: multiplier applied at each reduction, in :math:`(0, 1]` (1 never reduces).
      patience: accumulations without improvement before a reduction, :math:`\ge 1`.
      rtol: relative improvement threshold, in :math:`[0, 1]`.
      atol: absolute improvement threshold, :math:`\ge 0`.
      cooldown: accumulations after a reduction during which plateaus are not counted,
        :math:`\ge 0`.
      accumulation_size: how many values are averaged before each check, :math:`\ge 1`.
      min_scale: the scale never goes below this, :math:`\ge 0`.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` whose ``update`` requires ``value``.
    """
    factor = base.hyperparameter(
        factor,
        "factor",
        base.Interval(0.0, 1.0, lower_closed=False),
        owner=_OWNER,
        allow_schedule=False,
    )
    patience = _int_like(patience, "patience", 1.0)
    rtol = base.hyperparameter(rtol, "rtol", base.UNIT_INTERVAL, owner=_OWNER, allow_schedule=False)
    atol = base.hyperparameter(atol, "atol", base.NONNEGATIVE, owner=_OWNER, allow_schedule=False)
    cooldown = _int_like(cooldown, "cooldown", 0.0)
    accumulation_size = _int_like(accumulation_size, "accumulation_size", 1.0)
    min_scale = base.hyperparameter(
        min_scale, "min_scale", base.NONNEGATIVE, owner=_OWNER, allow_schedule=False
    )

    def init_fn(params):
        del params
        return ReduceLROnPlateauState(
            scale=jnp.ones([], jnp.float32),
            best_value=jnp.full([], jnp.inf, jnp.float32),
            plateau_count=base.zero_count(),
            cooldown_count=base.zero_count(),
            count=base.zero_count(),
            avg_value=jnp.zeros([], jnp.float32),
        )

    def _check_window(state: ReduceLROnPlateauState) -> ReduceLROnPlateauState:
        f32 = jnp.float32
        avg = state.avg_value
        threshold = (1.0 - jnp.asarray(rtol, f32)) * state.best_value - jnp.asarray(atol, f32)
        improved = avg < threshold
        best = jnp.where(improved, avg, state.best_value)
        plateau = jnp.where(improved, 0, base.safe_increment(state.plateau_count))
        in_cooldown = state.cooldown_count > 0
        reduce = jnp.logical_and(~in_cooldown, plateau.astype(f32) >= jnp.asarray(patience, f32))
        scale = jnp.where(reduce, state.scale * jnp.asarray(factor, f32), state.scale)
        scale = jnp.where(in_cooldown, state.scale, jnp.maximum(scale, jnp.asarray(min_scale, f32)))
        cooldown_steps = jnp.minimum(jnp.asarray(cooldown, f32), 2.0**30).astype(jnp.int32)
        new_cooldown = jnp.where(
            in_cooldown,
            state.cooldown_count - 1,
            jnp.where(reduce, cooldown_steps, 0),
        ).astype(jnp.int32)
        plateau = jnp.where(in_cooldown | reduce, 0, plateau).astype(jnp.int32)
        return ReduceLROnPlateauState(
            scale=scale.astype(f32),
            best_value=best.astype(f32),
            plateau_count=plateau,
            cooldown_count=new_cooldown,
            count=base.zero_count(),
            avg_value=jnp.zeros([], f32),
        )

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        base.check_update(_OWNER, state, ReduceLROnPlateauState, updates)
        value = jnp.asarray(value, jnp.float32)
        if value.shape != ():
            raise ValueError(f"{_OWNER}: value must be a scalar loss, got shape {value.shape}")
        count = base.safe_increment(state.count)
        avg = (state.count.astype(jnp.float32) * state.avg_value + value) / count.astype(
            jnp.float32
        )
        state = state._replace(count=count, avg_value=avg)
        full = count.astype(jnp.float32) >= jnp.asarray(accumulation_size, jnp.float32)
        checked = _check_window(state)
        state = jax.tree.map(lambda a, b: jnp.where(full, a, b), checked, state)
        scale = jnp.where(_hyperparameters_valid(), state.scale, jnp.nan)
        updates = jax.tree.map(lambda g: (scale * g).astype(jnp.asarray(g).dtype), updates)
        return updates, state

    def _hyperparameters_valid() -> jax.Array:
        ok = jnp.asarray(True)
        for v in (factor, patience, rtol, atol, cooldown, accumulation_size, min_scale):
            ok = ok & ~jnp.isnan(jnp.asarray(v, jnp.float32))
        return ok

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def _int_like(value, name: str, minimum: float):
    """A count compared with counters: a number (integral) or a traced array, ``>= minimum``."""
    valid = base.Interval(minimum, None, allow_inf=True)  # inf: never
    value = base.hyperparameter(value, name, valid, owner=_OWNER, allow_schedule=False)
    if isinstance(value, float) and not value.is_integer() and value != float("inf"):
        raise ValueError(f"{_OWNER}: {name} must be a whole number, got {value!r}")
    return value
