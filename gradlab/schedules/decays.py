r"""Decaying schedules: constant, step, exponential, natural-exponential, inverse-time,
Robbins–Monro, polynomial, linear and cosine (see :mod:`gradlab.schedules` for the policy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.schedules.common import NONNEG, POS, UNIT, arg, as_count, guarded, half_cosine, real

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
]


# --------------------------------------------------------------------------------------------
# Constant and decays
# --------------------------------------------------------------------------------------------


def constant_schedule(value: float | jax.Array) -> base.Schedule:
    r"""A schedule that always returns ``value``: :math:`\eta_t = \eta`.

    Args:
      value: :math:`\eta \ge 0`.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    value = arg(value, "value", NONNEG, "constant_schedule")

    def schedule(count):
        return jnp.broadcast_to(real(value), jnp.shape(count))

    return guarded(schedule, value)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    owner = "step_decay_schedule"
    init_value = arg(init_value, "init_value", NONNEG, owner)
    step_size = arg(step_size, "step_size", POS, owner)
    divisor = arg(divisor, "divisor", POS, owner)

    def schedule(count):
        t = as_count(count)
        n = jnp.floor(t / real(step_size))
        return real(init_value) * jnp.power(real(divisor), -n)

    return guarded(schedule, init_value, step_size, divisor)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    owner = "exponential_decay"
    init_value = arg(init_value, "init_value", NONNEG, owner)
    transition_steps = arg(transition_steps, "transition_steps", POS, owner)
    decay_rate = arg(decay_rate, "decay_rate", POS, owner)
    transition_begin = arg(transition_begin, "transition_begin", NONNEG, owner)
    staircase = base.check_bool(staircase, "staircase", owner)
    if end_value is not None:
        end_value = arg(end_value, "end_value", NONNEG, owner)

    def schedule(count):
        s = jnp.maximum(as_count(count) - real(transition_begin), 0.0)
        p = s / real(transition_steps)
        if staircase:
            p = jnp.floor(p)
        rate = real(decay_rate)
        value = real(init_value) * jnp.power(rate, p)
        if end_value is not None:
            end = real(end_value)
            value = jnp.where(rate < 1.0, jnp.maximum(value, end), jnp.minimum(value, end))
        return value

    return guarded(schedule, init_value, transition_steps, decay_rate, transition_begin, end_value)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    return _time_decay(
        "natural_exp_decay", init_value, decay_steps, decay_rate, staircase, _natural
    )


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    return _time_decay(
        "inverse_time_decay", init_value, decay_steps, decay_rate, staircase, _inverse
    )


def _natural(init: jax.Array, x: jax.Array) -> jax.Array:
    return init * jnp.exp(-x)


def _inverse(init: jax.Array, x: jax.Array) -> jax.Array:
    return init / (1.0 + x)


def _time_decay(owner, init_value, decay_steps, decay_rate, staircase, formula) -> base.Schedule:
    """``formula(init_value, decay_rate * p)`` with ``p = t / decay_steps`` (floored with
    ``staircase``): the shared body of :func:`natural_exp_decay` and
    :func:`inverse_time_decay`."""
    init_value = arg(init_value, "init_value", NONNEG, owner)
    decay_steps = arg(decay_steps, "decay_steps", POS, owner)
    decay_rate = arg(decay_rate, "decay_rate", NONNEG, owner)
    staircase = base.check_bool(staircase, "staircase", owner)

    def schedule(count):
        p = as_count(count) / real(decay_steps)
        if staircase:
            p = jnp.floor(p)
        return formula(real(init_value), real(decay_rate) * p)

    return guarded(schedule, init_value, decay_steps, decay_rate)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).

    References:
      Robbins & Monro, `A Stochastic Approximation Method
      <https://doi.org/10.1214/aoms/1177729586>`_, 1951.
    """
    owner = "robbins_monro_schedule"
    a = arg(a, "a", NONNEG, owner)
    b = arg(b, "b", POS, owner)
    kappa = arg(kappa, "kappa", POS, owner)

    def schedule(count):
        return real(a) / jnp.power(real(b) + as_count(count), real(kappa))

    return guarded(schedule, a, b, kappa)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    return _polynomial(
        "polynomial_schedule", init_value, end_value, power, transition_steps, transition_begin
    )


def _polynomial(owner, init_value, end_value, power, transition_steps, transition_begin):
    init_value = arg(init_value, "init_value", NONNEG, owner)
    end_value = arg(end_value, "end_value", NONNEG, owner)
    power = arg(power, "power", POS, owner)
    transition_steps = arg(transition_steps, "transition_steps", POS, owner)
    transition_begin = arg(transition_begin, "transition_begin", NONNEG, owner)

    def schedule(count):
        steps = real(transition_steps)
        c = jnp.clip(as_count(count) - real(transition_begin), 0.0, steps)
        frac = jnp.clip(1.0 - c / steps, 0.0, 1.0)  # >= 0 even when XLA uses c * (1/steps)
        init, end = real(init_value), real(end_value)
        return (init - end) * jnp.power(frac, real(power)) + end

    return guarded(schedule, init_value, end_value, power, transition_steps, transition_begin)


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).

    References:
      Goodfellow, Bengio & Courville, *Deep Learning*, MIT Press, 2016, §8.3.1.
    """
    return _polynomial(
        "linear_schedule", init_value, end_value, 1.0, transition_steps, transition_begin
    )


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
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    owner = "cosine_decay_schedule"
    init_value = arg(init_value, "init_value", NONNEG, owner)
    decay_steps = arg(decay_steps, "decay_steps", POS, owner)
    alpha = arg(alpha, "alpha", UNIT, owner)
    exponent = arg(exponent, "exponent", POS, owner)

    def schedule(count):
        steps = real(decay_steps)
        c = jnp.minimum(as_count(count), steps)
        cos = half_cosine(c, steps)
        a = real(alpha)
        return real(init_value) * ((1.0 - a) * jnp.power(cos, real(exponent)) + a)

    return guarded(schedule, init_value, decay_steps, alpha, exponent)
