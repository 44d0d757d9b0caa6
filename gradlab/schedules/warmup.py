r"""Warm-up schedules: a linear ramp to a peak, then constant, cosine or exponential decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.schedules import decays
from gradlab.schedules.common import (
    NONNEG,
    POS,
    arg,
    as_count,
    guarded,
    half_cosine,
    nan_unless,
    real,
    safe_positive,
    strictly_greater,
)

__all__ = [
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]


# --------------------------------------------------------------------------------------------
# Warm-up
# --------------------------------------------------------------------------------------------


def _warmup(init_value, peak_value, warmup_steps, t):
    """Linear ramp from init to peak over ``warmup_steps`` (peak from the start when 0)."""
    steps = real(warmup_steps)
    safe = safe_positive(steps)
    c = jnp.clip(t, 0.0, safe)
    init, peak = real(init_value), real(peak_value)
    ramp = (init - peak) * (1.0 - c / safe) + peak
    return jnp.where(steps > 0, ramp, peak)


def _warmup_args(owner, init_value, peak_value, warmup_steps) -> tuple:
    return (
        arg(init_value, "init_value", NONNEG, owner),
        arg(peak_value, "peak_value", NONNEG, owner),
        arg(warmup_steps, "warmup_steps", NONNEG, owner),
    )


def warmup_constant_schedule(
    init_value: float | jax.Array,
    peak_value: float | jax.Array,
    warmup_steps: float | jax.Array,
) -> base.Schedule:
    r"""Linear warm-up from ``init_value`` to ``peak_value``, then constant.

    .. math::
        \eta_t = \eta_{\text{init}} + (\eta_{\text{peak}} - \eta_{\text{init}})
        \frac{\min(t, W)}{W}

    with :math:`W` = ``warmup_steps`` (``W = 0``: :math:`\eta_{\text{peak}}` from the start).

    Args:
      init_value: :math:`\eta_{\text{init}} \ge 0`.
      peak_value: :math:`\eta_{\text{peak}} \ge 0`.
      warmup_steps: :math:`W \ge 0`.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    owner = "warmup_constant_schedule"
    init_value, peak_value, warmup_steps = _warmup_args(owner, init_value, peak_value, warmup_steps)

    def schedule(count):
        return _warmup(init_value, peak_value, warmup_steps, as_count(count))

    return guarded(schedule, init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(
    init_value: float | jax.Array,
    peak_value: float | jax.Array,
    warmup_steps: float | jax.Array,
    decay_steps: float | jax.Array,
    end_value: float | jax.Array = 0.0,
    exponent: float | jax.Array = 1.0,
) -> base.Schedule:
    r"""Linear warm-up to ``peak_value``, then cosine decay to ``end_value``.

    .. math::
        \eta_t = \begin{cases}
          \eta_{\text{init}} + (\eta_{\text{peak}} - \eta_{\text{init}})\, t / W
            & t < W \\
          \eta_{\text{end}} + (\eta_{\text{peak}} - \eta_{\text{end}})
            \left[\tfrac12\left(1 + \cos\frac{\pi \min(t - W,\, D - W)}{D - W}\right)\right]^{p}
            & t \ge W
        \end{cases}

    with :math:`W` = ``warmup_steps``, :math:`D` = ``decay_steps`` (the *total* length,
    warm-up included, as in optax) and :math:`p` = ``exponent``. ``peak_value`` may be traced
    (optax's version cannot be vmapped over it) and 0.

    Args:
      init_value: :math:`\eta_{\text{init}} \ge 0`.
      peak_value: :math:`\eta_{\text{peak}} \ge 0`.
      warmup_steps: :math:`W \ge 0`.
      decay_steps: :math:`D > W`.
      end_value: :math:`\eta_{\text{end}} \ge 0`.
      exponent: :math:`p > 0`.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017; Goyal et al., 2017 (warm-up).
    """
    owner = "warmup_cosine_decay_schedule"
    init_value, peak_value, warmup_steps = _warmup_args(owner, init_value, peak_value, warmup_steps)
    decay_steps = arg(decay_steps, "decay_steps", POS, owner)
    end_value = arg(end_value, "end_value", NONNEG, owner)
    exponent = arg(exponent, "exponent", POS, owner)
    strictly_greater(decay_steps, warmup_steps, "decay_steps", "warmup_steps", owner)

    def schedule(count):
        t = as_count(count)
        w, d = real(warmup_steps), real(decay_steps)
        span = d - w
        safe = safe_positive(span)
        c = jnp.clip(t - w, 0.0, safe)
        cos = half_cosine(c, safe)
        peak, end = real(peak_value), real(end_value)
        decay = (peak - end) * jnp.power(cos, real(exponent)) + end
        value = jnp.where(t < w, _warmup(init_value, peak_value, warmup_steps, t), decay)
        return nan_unless(span > 0, value)

    return guarded(schedule, init_value, peak_value, warmup_steps, decay_steps, end_value, exponent)


def warmup_exponential_decay_schedule(
    init_value: float | jax.Array,
    peak_value: float | jax.Array,
    warmup_steps: float | jax.Array,
    transition_steps: float | jax.Array,
    decay_rate: float | jax.Array,
    transition_begin: float | jax.Array = 0,
    staircase: bool = False,
    end_value: float | jax.Array | None = None,
) -> base.Schedule:
    r"""Linear warm-up to ``peak_value``, then :func:`exponential_decay` from ``peak_value``.

    .. math::
        \eta_t = \begin{cases}
          \eta_{\text{init}} + (\eta_{\text{peak}} - \eta_{\text{init}})\, t / W & t < W \\
          \eta_{\text{peak}}\, \lambda^{\max(t - W - t_0, 0) / k} & t \ge W
        \end{cases}

    (floored exponent with ``staircase``; clipped at ``end_value`` when given).

    Args:
      init_value: :math:`\eta_{\text{init}} \ge 0`.
      peak_value: :math:`\eta_{\text{peak}} \ge 0`.
      warmup_steps: :math:`W \ge 0`.
      transition_steps: :math:`k > 0`.
      decay_rate: :math:`\lambda > 0`.
      transition_begin: :math:`t_0 \ge 0`, counted from the end of warm-up.
      staircase: decay at discrete intervals (static bool).
      end_value: optional bound :math:`\ge 0`.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    owner = "warmup_exponential_decay_schedule"
    init_value, peak_value, warmup_steps = _warmup_args(owner, init_value, peak_value, warmup_steps)
    decay = decays.exponential_decay(
        peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )

    def schedule(count):
        t = as_count(count)
        w = real(warmup_steps)
        warm = _warmup(init_value, peak_value, warmup_steps, t)
        return jnp.where(t < w, warm, decay(t - w))

    return guarded(schedule, init_value, peak_value, warmup_steps)
