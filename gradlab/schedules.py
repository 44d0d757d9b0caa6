r"""Learning-rate (and hyperparameter) schedules: pure ``count -> value`` functions.

A schedule maps the number of updates already taken, :math:`t` (0 on the first update), to a
value. Every schedule here is a closure over its arguments composed with ``jnp.where`` joins, so
**every numeric argument is traceable**: step counts, boundaries, decay rates, peak values and
scales may be JAX arrays traced under ``jit`` or ``vmap`` (a sweep over ``warmup_steps`` or
``peak_value`` is one compiled program). Arguments follow the hyperparameter policy of
:mod:`gradlab.base`:

* a concrete invalid value (a non-positive period, a negative value, ``decay_rate <= 0``, NaN)
  raises :class:`ValueError` at construction, naming the argument as the user spelled it and
  its valid range;
* a traced invalid value is never inspected with Python control flow: the schedule returns NaN
  in that lane only (the run is poisoned and reported by sweeps, the other lanes are untouched).

Counts are converted to float32 before any arithmetic, so an int32 counter at
``2**31 - 1`` (where :func:`optax.safe_increment` saturates) never overflows; every schedule
returns a float32 array and accepts a scalar or an array of counts.

Names and argument names follow optax wherever optax has the same schedule, so switching is a
change of import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base

__all__ = [
    "constant_schedule",
    "step_decay_schedule",
    "exponential_decay",
    "natural_exp_decay",
    "inverse_time_decay",
    "robbins_monro_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "cosine_decay_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "join_schedules",
    "piecewise_constant_schedule",
]

_NONNEG = base.NONNEGATIVE
_POS = base.POSITIVE
_UNIT = base.UNIT_INTERVAL


def _arg(value: Any, name: str, valid: base.Interval, owner: str) -> Any:
    """Validate a numeric schedule argument (numbers and arrays only, never a schedule)."""
    return base.hyperparameter(value, name, valid, owner=owner, allow_schedule=False)


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _count(count: Any) -> jax.Array:
    """The step count as float32 (no int32 overflow in ``count - begin`` near ``2**31``)."""
    return jnp.asarray(count).astype(jnp.float32)


def _check_bool(value: Any, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a Python bool (it is static), got {value!r}")
    return bool(value)


def _strictly_greater(large: Any, small: Any, large_name: str, small_name: str, owner: str):
    """``ValueError`` when concrete ``large <= small``; a traced pair is checked per lane later."""
    if base.is_concrete(large) and base.is_concrete(small):
        if np.any(np.asarray(large, np.float64) <= np.asarray(small, np.float64)):
            raise ValueError(
                f"{owner}: {large_name} must be > {small_name}, got {large_name}={large!r} "
                f"and {small_name}={small!r}"
            )


def _nan_unless(ok: jax.Array, value: jax.Array) -> jax.Array:
    return jnp.where(ok, value, jnp.nan)


def _poison_if_nan(value: jax.Array, *args: Any) -> jax.Array:
    """NaN wherever any argument is NaN (a poisoned traced lane), even where the formula would
    not depend on it (``nan ** 0 == 1``, a ``where`` branch not taken)."""
    bad = jnp.zeros((), bool)
    for a in args:
        if a is not None and not base.is_concrete(a):
            bad = bad | jnp.any(jnp.isnan(_f32(a)))
    return jnp.where(bad, jnp.nan, value)


def _guarded(fn: base.Schedule, *args: Any) -> base.Schedule:
    """``fn`` with :func:`_poison_if_nan` applied over ``args`` (no-op for concrete args)."""
    traced = [a for a in args if a is not None and not base.is_concrete(a)]
    if not traced:
        return fn

    def schedule(count):
        return _poison_if_nan(fn(count), *traced)

    return schedule


def _safe_positive(x: jax.Array) -> jax.Array:
    """``x`` where positive, else 1 (denominators of branches that ``where`` discards)."""
    return jnp.where(x > 0, x, 1.0)


# --------------------------------------------------------------------------------------------
# Constant and decays
# --------------------------------------------------------------------------------------------


def constant_schedule(value: float | jax.Array) -> base.Schedule:
    r"""A schedule that always returns ``value``: :math:`\eta_t = \eta`.

    Args:
      value: :math:`\eta \ge 0`.

    Returns:
      A function ``count -> value`` (float32).
    """
    value = _arg(value, "value", _NONNEG, "constant_schedule")

    def schedule(count):
        return jnp.broadcast_to(_f32(value), jnp.shape(count))

    return _guarded(schedule, value)


def step_decay_schedule(
    init_value: float | jax.Array,
    step_size: float | jax.Array,
    divisor: float | jax.Array = 2.0,
) -> base.Schedule:
    r"""Step decay: divide the value by ``divisor`` every ``step_size`` steps.

    .. math:: \eta_t = \frac{\eta_0}{k^{\lfloor t / p \rfloor}}

    with :math:`k` = ``divisor`` and :math:`p` = ``step_size`` (the "reduce by a factor every few
    epochs" schedule; ``torch.optim.lr_scheduler.StepLR(step_size=p, gamma=1/k)``). The first
    ``step_size`` updates use :math:`\eta_0`.

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      step_size: the period :math:`p > 0`, in updates.
      divisor: :math:`k > 0` (:math:`k > 1` decays; :math:`k = 2` halves).

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "step_decay_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    step_size = _arg(step_size, "step_size", _POS, owner)
    divisor = _arg(divisor, "divisor", _POS, owner)

    def schedule(count):
        t = _count(count)
        n = jnp.floor(t / _f32(step_size))
        return _f32(init_value) * jnp.power(_f32(divisor), -n)

    return _guarded(schedule, init_value, step_size, divisor)


def exponential_decay(
    init_value: float | jax.Array,
    transition_steps: float | jax.Array,
    decay_rate: float | jax.Array,
    transition_begin: float | jax.Array = 0,
    staircase: bool = False,
    end_value: float | jax.Array | None = None,
) -> base.Schedule:
    r"""Exponential decay :math:`\eta_t = \eta_0\,\lambda^{s/k}`, smooth or staircase.

    .. math::
        s = \max(t - t_0, 0), \qquad
        \eta_t = \eta_0\, \lambda^{\,s / k}
        \quad\text{or, with ``staircase``,}\quad \eta_0\, \lambda^{\lfloor s / k \rfloor}

    with :math:`\lambda` = ``decay_rate``, :math:`k` = ``transition_steps`` and :math:`t_0` =
    ``transition_begin``. With ``end_value`` the value is clipped there: from below when
    :math:`\lambda < 1`, from above when :math:`\lambda \ge 1`. The natural exponential
    :math:`\eta_0 e^{-ct}` is ``exponential_decay(eta0, 1, exp(-c))`` (or
    :func:`natural_exp_decay`).

    Unlike optax (which logs and returns a constant schedule), ``transition_steps <= 0`` and
    ``decay_rate <= 0`` are errors, and every argument may be traced.

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      transition_steps: :math:`k > 0`.
      decay_rate: :math:`\lambda > 0`.
      transition_begin: :math:`t_0 \ge 0`; the value is held at :math:`\eta_0` before it.
      staircase: decay at discrete intervals (static bool).
      end_value: optional bound :math:`\ge 0`.

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "exponential_decay"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    transition_steps = _arg(transition_steps, "transition_steps", _POS, owner)
    decay_rate = _arg(decay_rate, "decay_rate", _POS, owner)
    transition_begin = _arg(transition_begin, "transition_begin", _NONNEG, owner)
    staircase = _check_bool(staircase, "staircase", owner)
    if end_value is not None:
        end_value = _arg(end_value, "end_value", _NONNEG, owner)

    def schedule(count):
        s = jnp.maximum(_count(count) - _f32(transition_begin), 0.0)
        p = s / _f32(transition_steps)
        if staircase:
            p = jnp.floor(p)
        rate = _f32(decay_rate)
        value = _f32(init_value) * jnp.power(rate, p)
        if end_value is not None:
            end = _f32(end_value)
            value = jnp.where(rate < 1.0, jnp.maximum(value, end), jnp.minimum(value, end))
        return value

    return _guarded(schedule, init_value, transition_steps, decay_rate, transition_begin, end_value)


def natural_exp_decay(
    init_value: float | jax.Array,
    decay_rate: float | jax.Array,
    decay_steps: float | jax.Array = 1,
    staircase: bool = False,
) -> base.Schedule:
    r"""Natural exponential decay :math:`\alpha_t = \alpha_0\, e^{-c\,t/T}`.

    .. math::
        \alpha_t = \alpha_0 \exp\!\left(-c\, \frac{t}{T}\right)
        \quad\text{or, with ``staircase``,}\quad
        \alpha_0 \exp\!\left(-c \left\lfloor \frac{t}{T} \right\rfloor\right)

    with :math:`c` = ``decay_rate`` and :math:`T` = ``decay_steps`` (``T = 1`` gives the
    textbook :math:`\alpha_0 e^{-k\tau}`).

    Args:
      init_value: :math:`\alpha_0 \ge 0`.
      decay_rate: :math:`c \ge 0` (0 is a constant schedule).
      decay_steps: :math:`T > 0`.
      staircase: decay at discrete intervals (static bool).

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "natural_exp_decay"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    decay_rate = _arg(decay_rate, "decay_rate", _NONNEG, owner)
    decay_steps = _arg(decay_steps, "decay_steps", _POS, owner)
    staircase = _check_bool(staircase, "staircase", owner)

    def schedule(count):
        p = _count(count) / _f32(decay_steps)
        if staircase:
            p = jnp.floor(p)
        return _f32(init_value) * jnp.exp(-_f32(decay_rate) * p)

    return _guarded(schedule, init_value, decay_rate, decay_steps)


def inverse_time_decay(
    init_value: float | jax.Array,
    decay_steps: float | jax.Array,
    decay_rate: float | jax.Array,
    staircase: bool = False,
) -> base.Schedule:
    r"""Inverse-time (:math:`1/t`) decay, as Keras ``InverseTimeDecay``.

    .. math::
        \alpha_t = \frac{\alpha_0}{1 + c\, t / T}
        \quad\text{or, with ``staircase``,}\quad
        \frac{\alpha_0}{1 + c \lfloor t / T \rfloor}

    with :math:`c` = ``decay_rate`` and :math:`T` = ``decay_steps`` (``T = 1`` gives the
    textbook :math:`\alpha_0 / (1 + k\tau)`).

    Args:
      init_value: :math:`\alpha_0 \ge 0`.
      decay_steps: :math:`T > 0`.
      decay_rate: :math:`c \ge 0`.
      staircase: decay at discrete intervals (static bool).

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "inverse_time_decay"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    decay_steps = _arg(decay_steps, "decay_steps", _POS, owner)
    decay_rate = _arg(decay_rate, "decay_rate", _NONNEG, owner)
    staircase = _check_bool(staircase, "staircase", owner)

    def schedule(count):
        p = _count(count) / _f32(decay_steps)
        if staircase:
            p = jnp.floor(p)
        return _f32(init_value) / (1.0 + _f32(decay_rate) * p)

    return _guarded(schedule, init_value, decay_steps, decay_rate)


def robbins_monro_schedule(
    a: float | jax.Array,
    b: float | jax.Array = 1.0,
    kappa: float | jax.Array = 1.0,
) -> base.Schedule:
    r"""Robbins–Monro step sizes :math:`\eta_t = a / (b + t)^{\kappa}`.

    For :math:`\kappa \in (1/2, 1]` the sequence satisfies the Robbins–Monro conditions
    :math:`\sum_t \eta_t = \infty`, :math:`\sum_t \eta_t^2 < \infty` under which SGD converges
    almost surely; :math:`\kappa = 1` is the fastest such rate (optimal for strongly convex
    objectives). Other :math:`\kappa > 0` are accepted (``kappa = 0.5`` is the common
    :math:`1/\sqrt{t}` rate) but do not satisfy both conditions.

    Args:
      a: the scale :math:`a \ge 0`.
      b: the offset :math:`b > 0` (:math:`\eta_0 = a / b^\kappa`).
      kappa: the power :math:`\kappa > 0`.

    Returns:
      A function ``count -> value`` (float32).

    References:
      Robbins & Monro, `A Stochastic Approximation Method
      <https://doi.org/10.1214/aoms/1177729586>`_, 1951.
    """
    owner = "robbins_monro_schedule"
    a = _arg(a, "a", _NONNEG, owner)
    b = _arg(b, "b", _POS, owner)
    kappa = _arg(kappa, "kappa", _POS, owner)

    def schedule(count):
        return _f32(a) / jnp.power(_f32(b) + _count(count), _f32(kappa))

    return _guarded(schedule, a, b, kappa)


# --------------------------------------------------------------------------------------------
# Polynomial, linear and cosine annealing
# --------------------------------------------------------------------------------------------


def polynomial_schedule(
    init_value: float | jax.Array,
    end_value: float | jax.Array,
    power: float | jax.Array,
    transition_steps: float | jax.Array,
    transition_begin: float | jax.Array = 0,
) -> base.Schedule:
    r"""Polynomial annealing from ``init_value`` to ``end_value``, then constant.

    .. math::
        c = \min(\max(t - t_0, 0), T), \qquad
        \eta_t = (\eta_0 - \eta_T)\left(1 - \frac{c}{T}\right)^{p} + \eta_T

    with :math:`T` = ``transition_steps``, :math:`t_0` = ``transition_begin`` and :math:`p` =
    ``power``: :math:`\eta_0` before :math:`t_0`, :math:`\eta_T` from :math:`t_0 + T` on.

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      end_value: :math:`\eta_T \ge 0`.
      power: :math:`p > 0`.
      transition_steps: :math:`T > 0` (optax silently returns a constant for ``T <= 0``;
        gradlab raises).
      transition_begin: :math:`t_0 \ge 0`.

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "polynomial_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    end_value = _arg(end_value, "end_value", _NONNEG, owner)
    power = _arg(power, "power", _POS, owner)
    transition_steps = _arg(transition_steps, "transition_steps", _POS, owner)
    transition_begin = _arg(transition_begin, "transition_begin", _NONNEG, owner)
    return _polynomial(init_value, end_value, power, transition_steps, transition_begin)


def _polynomial(init_value, end_value, power, transition_steps, transition_begin):
    def schedule(count):
        steps = _f32(transition_steps)
        c = jnp.clip(_count(count) - _f32(transition_begin), 0.0, steps)
        frac = jnp.clip(1.0 - c / steps, 0.0, 1.0)  # >= 0 even when XLA uses c * (1/steps)
        init, end = _f32(init_value), _f32(end_value)
        return (init - end) * jnp.power(frac, _f32(power)) + end

    return _guarded(schedule, init_value, end_value, power, transition_steps, transition_begin)


def linear_schedule(
    init_value: float | jax.Array,
    end_value: float | jax.Array,
    transition_steps: float | jax.Array,
    transition_begin: float | jax.Array = 0,
) -> base.Schedule:
    r"""Linear decay to :math:`\epsilon_\tau` at step :math:`\tau`, then constant.

    .. math::
        \alpha = \frac{\min(\max(t - t_0, 0), \tau)}{\tau}, \qquad
        \epsilon_t = (1 - \alpha)\,\epsilon_0 + \alpha\,\epsilon_\tau

    with :math:`\tau` = ``transition_steps`` and :math:`t_0` = ``transition_begin`` (Goodfellow
    et al., *Deep Learning*, §8.3.1, who suggest :math:`\epsilon_\tau \approx \epsilon_0/100`).
    Also a linear warm-up when ``end_value > init_value``. Equal to
    :func:`polynomial_schedule` with ``power=1``.

    Args:
      init_value: :math:`\epsilon_0 \ge 0`.
      end_value: :math:`\epsilon_\tau \ge 0`.
      transition_steps: :math:`\tau > 0`.
      transition_begin: :math:`t_0 \ge 0`.

    Returns:
      A function ``count -> value`` (float32).

    References:
      Goodfellow, Bengio & Courville, *Deep Learning*, MIT Press, 2016, §8.3.1.
    """
    owner = "linear_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    end_value = _arg(end_value, "end_value", _NONNEG, owner)
    transition_steps = _arg(transition_steps, "transition_steps", _POS, owner)
    transition_begin = _arg(transition_begin, "transition_begin", _NONNEG, owner)
    return _polynomial(init_value, end_value, 1.0, transition_steps, transition_begin)


def cosine_decay_schedule(
    init_value: float | jax.Array,
    decay_steps: float | jax.Array,
    alpha: float | jax.Array = 0.0,
    exponent: float | jax.Array = 1.0,
) -> base.Schedule:
    r"""Cosine annealing from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math::
        c = \min(t, T), \qquad
        \eta_t = \eta_0 \left[(1 - \alpha)\left(\tfrac12\left(1 + \cos\frac{\pi c}{T}\right)
        \right)^{p} + \alpha\right]

    with :math:`T` = ``decay_steps`` and :math:`p` = ``exponent``; constant
    :math:`\alpha\eta_0` after :math:`T`.

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      decay_steps: :math:`T > 0`.
      alpha: the final multiplier :math:`\alpha \in [0, 1]`.
      exponent: :math:`p > 0`.

    Returns:
      A function ``count -> value`` (float32).

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    owner = "cosine_decay_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    decay_steps = _arg(decay_steps, "decay_steps", _POS, owner)
    alpha = _arg(alpha, "alpha", _UNIT, owner)
    exponent = _arg(exponent, "exponent", _POS, owner)

    def schedule(count):
        steps = _f32(decay_steps)
        c = jnp.minimum(_count(count), steps)
        cos = jnp.maximum(0.5 * (1.0 + jnp.cos(jnp.pi * c / steps)), 0.0)
        a = _f32(alpha)
        return _f32(init_value) * ((1.0 - a) * jnp.power(cos, _f32(exponent)) + a)

    return _guarded(schedule, init_value, decay_steps, alpha, exponent)


# --------------------------------------------------------------------------------------------
# Warm-up
# --------------------------------------------------------------------------------------------


def _warmup(init_value, peak_value, warmup_steps, t):
    """Linear ramp from init to peak over ``warmup_steps`` (peak from the start when 0)."""
    steps = _f32(warmup_steps)
    safe = _safe_positive(steps)
    c = jnp.clip(t, 0.0, safe)
    init, peak = _f32(init_value), _f32(peak_value)
    ramp = (init - peak) * (1.0 - c / safe) + peak
    return jnp.where(steps > 0, ramp, peak)


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
      A function ``count -> value`` (float32).

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    owner = "warmup_constant_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    peak_value = _arg(peak_value, "peak_value", _NONNEG, owner)
    warmup_steps = _arg(warmup_steps, "warmup_steps", _NONNEG, owner)

    def schedule(count):
        return _warmup(init_value, peak_value, warmup_steps, _count(count))

    return _guarded(schedule, init_value, peak_value, warmup_steps)


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
      A function ``count -> value`` (float32).

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017; Goyal et al., 2017 (warm-up).
    """
    owner = "warmup_cosine_decay_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    peak_value = _arg(peak_value, "peak_value", _NONNEG, owner)
    warmup_steps = _arg(warmup_steps, "warmup_steps", _NONNEG, owner)
    decay_steps = _arg(decay_steps, "decay_steps", _POS, owner)
    end_value = _arg(end_value, "end_value", _NONNEG, owner)
    exponent = _arg(exponent, "exponent", _POS, owner)
    _strictly_greater(decay_steps, warmup_steps, "decay_steps", "warmup_steps", owner)

    def schedule(count):
        t = _count(count)
        w, d = _f32(warmup_steps), _f32(decay_steps)
        span = d - w
        safe = _safe_positive(span)
        c = jnp.clip(t - w, 0.0, safe)
        cos = jnp.maximum(0.5 * (1.0 + jnp.cos(jnp.pi * c / safe)), 0.0)
        peak, end = _f32(peak_value), _f32(end_value)
        decay = (peak - end) * jnp.power(cos, _f32(exponent)) + end
        value = jnp.where(t < w, _warmup(init_value, peak_value, warmup_steps, t), decay)
        return _nan_unless(span > 0, value)

    return _guarded(
        schedule, init_value, peak_value, warmup_steps, decay_steps, end_value, exponent
    )


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
      A function ``count -> value`` (float32).
    """
    owner = "warmup_exponential_decay_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    warmup_steps = _arg(warmup_steps, "warmup_steps", _NONNEG, owner)
    peak_value = _arg(peak_value, "peak_value", _NONNEG, owner)
    decay = exponential_decay(
        peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )

    def schedule(count):
        t = _count(count)
        w = _f32(warmup_steps)
        warm = _warmup(init_value, peak_value, warmup_steps, t)
        return jnp.where(t < w, warm, decay(t - w))

    return _guarded(schedule, init_value, peak_value, warmup_steps)


# --------------------------------------------------------------------------------------------
# Joins
# --------------------------------------------------------------------------------------------


def _as_vector(values: Any, name: str, owner: str) -> Any:
    """A sequence/array of numbers as one 1-D array (numpy when concrete, JAX when traced)."""
    if isinstance(values, (jax.Array, np.ndarray)):
        arr = values
    elif isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            if isinstance(v, (bool, str, bytes)) or v is None:
                raise TypeError(f"{owner}: {name}[{i}] must be a number, got {v!r}")
        if all(base.is_concrete(v) for v in values):
            arr = np.asarray([np.asarray(v, np.float64) for v in values], np.float64)
            arr = arr.reshape(len(values))
        else:
            arr = jnp.stack([_f32(v) for v in values])
    else:
        raise TypeError(f"{owner}: {name} must be a sequence or a 1-D array, got {values!r}")
    if jnp.ndim(arr) != 1:
        raise ValueError(f"{owner}: {name} must be 1-D, got shape {jnp.shape(arr)}")
    return arr


def _check_sorted(boundaries: Any, owner: str) -> None:
    if base.is_concrete(boundaries):
        b = np.asarray(boundaries, np.float64)
        if np.any(np.diff(b) < 0):
            raise ValueError(f"{owner}: boundaries must be non-decreasing, got {b.tolist()}")


def _sorted_ok(boundaries: jax.Array) -> jax.Array:
    b = _f32(boundaries)
    if b.shape[0] < 2:
        return jnp.asarray(True)
    return jnp.all(b[1:] >= b[:-1])


def join_schedules(
    schedules: Sequence[base.Schedule],
    boundaries: Sequence[float | jax.Array] | jax.Array,
) -> base.Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i-1]`` on, each on its own restarted count.

    .. math::
        \eta_t = s_i(t - b_{i-1}) \quad\text{for } b_{i-1} \le t < b_i
        \qquad (b_{-1} = 0,\ b_n = \infty)

    ``boundaries`` is a sequence or a 1-D array of ``len(schedules) - 1`` non-decreasing,
    non-negative step counts; it may be traced (a sweep over when to switch). Sub-schedules
    receive float32 counts.

    Args:
      schedules: the schedules to run in order (callables ``count -> value``).
      boundaries: where to switch, :math:`b_0 \le b_1 \le \dots`, each :math:`\ge 0`.

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "join_schedules"
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{owner}: schedules must not be empty")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{owner}: schedules[{i}] must be a callable count -> value")
    boundaries = _as_vector(boundaries, "boundaries", owner)
    if jnp.shape(boundaries)[0] != len(schedules) - 1:
        raise ValueError(
            f"{owner}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
            f"got {jnp.shape(boundaries)[0]}"
        )
    boundaries = _arg(boundaries, "boundaries", _NONNEG, owner)
    _check_sorted(boundaries, owner)

    def schedule(count):
        t = _count(count)
        b = _f32(boundaries)
        value = _f32(schedules[0](t))
        for i, s in enumerate(schedules[1:]):
            value = jnp.where(t < b[i], value, _f32(s(t - b[i])))
        return _nan_unless(_sorted_ok(b), value)

    return _guarded(schedule, boundaries)


def piecewise_constant_schedule(
    init_value: float | jax.Array,
    boundaries_and_scales: Mapping[int, float | jax.Array] | None = None,
    *,
    boundaries: Sequence[float | jax.Array] | jax.Array | None = None,
    scales: Sequence[float | jax.Array] | jax.Array | None = None,
) -> base.Schedule:
    r"""Piecewise constant: multiply by ``scales[i]`` from step ``boundaries[i]`` on.

    .. math:: \eta_t = \eta_0 \prod_{i:\ t \ge b_i} s_i

    Give either the optax-style dict ``{boundary: scale}`` (scales may be traced) or the
    arrays ``boundaries=`` and ``scales=`` (both may be traced, in any order: the product does
    not depend on it).

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      boundaries_and_scales: ``{step: scale}`` (concrete step keys).
      boundaries: 1-D steps :math:`b_i \ge 0` (keyword-only, instead of the dict).
      scales: 1-D factors :math:`s_i \ge 0`, same length as ``boundaries``.

    Returns:
      A function ``count -> value`` (float32).
    """
    owner = "piecewise_constant_schedule"
    init_value = _arg(init_value, "init_value", _NONNEG, owner)
    if boundaries_and_scales is not None:
        if boundaries is not None or scales is not None:
            raise TypeError(f"{owner}: give boundaries_and_scales or boundaries=/scales=, not both")
        if not isinstance(boundaries_and_scales, Mapping):
            raise TypeError(
                f"{owner}: boundaries_and_scales must be a dict {{step: scale}}, got "
                f"{type(boundaries_and_scales).__name__}"
            )
        keys = sorted(boundaries_and_scales)
        scales = [
            _arg(boundaries_and_scales[k], f"boundaries_and_scales[{k!r}]", _NONNEG, owner)
            for k in keys
        ]
        boundaries = [_arg(k, "boundaries_and_scales (a step key)", _NONNEG, owner) for k in keys]
    if (boundaries is None) != (scales is None):
        raise TypeError(f"{owner}: boundaries= and scales= must be given together")
    if boundaries is None:
        boundaries, scales = np.zeros((0,)), np.zeros((0,))
    boundaries = _arg(_as_vector(boundaries, "boundaries", owner), "boundaries", _NONNEG, owner)
    scales = _arg(_as_vector(scales, "scales", owner), "scales", _NONNEG, owner)
    if jnp.shape(boundaries) != jnp.shape(scales):
        raise ValueError(
            f"{owner}: boundaries and scales must have the same length, got "
            f"{jnp.shape(boundaries)[0]} and {jnp.shape(scales)[0]}"
        )

    def schedule(count):
        t = _count(count)[..., None]
        factors = jnp.where(t >= _f32(boundaries), _f32(scales), 1.0)
        return _f32(init_value) * jnp.prod(factors, axis=-1)

    return _guarded(schedule, init_value, boundaries, scales)
