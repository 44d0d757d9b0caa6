r"""The Adam family: Adam (with its bias-correction and epsilon variants), Nadam and AdaMax."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = [
    "BIAS_CORRECTIONS",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "scale_by_adam",
    "scale_by_adamax",
]

#: Values of ``bias_correction`` accepted by :func:`scale_by_adam`.
BIAS_CORRECTIONS = ("both", "first", "second", "none")


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.
    mu: base.Updates  # first moment m_t, in mu_dtype (default: state_dtype).
    nu: base.Updates  # second moment v_t, in state_dtype.


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    mu: base.Updates  # first moment m_t.
    nu: base.Updates  # exponentially weighted infinity norm u_t.


def _betas(b1: Any, b2: Any, eps: Any, owner: str) -> tuple:
    """Validate the hyperparameters every Adam-family atom shares."""
    return (
        base.hyperparameter(b1, "b1", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner),
        base.hyperparameter(b2, "b2", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner),
        base.hyperparameter(eps, "eps", base.NONNEGATIVE, owner=owner),
    )


def _resolve(b1: Any, b2: Any, eps: Any, count: jax.Array, cdt: Any) -> tuple:
    """``(b1, 1 - b1, b2, 1 - b2, eps, count + 1)`` at ``count``, in the compute dtype."""
    return (
        *base.resolve_decay(b1, count, cdt),
        *base.resolve_decay(b2, count, cdt),
        base.resolve(eps, count, cdt),
        base.safe_increment(count),
    )


def _moments_init(state_cls: type, mu_dtype: Any, nu_dtype: Any):
    """``init`` of a two-moment state: zero ``mu`` (complex for complex params), real ``nu``."""

    def init_fn(params):
        return state_cls(
            count=base.zero_count(),
            mu=base.zeros_like(params, mu_dtype),
            nu=base.zeros_like(params, nu_dtype, real=True),
        )

    return init_fn


def scale_by_adam(
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    eps_root: base.ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    bias_correction: str = "both",
    eps_in_sqrt: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Adam's scaling: a bias-corrected first moment over the root of the second moment.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    with $m_0 = v_0 = 0$. Variants (static switches):

    * ``bias_correction``: ``"both"`` (Kingma & Ba, the default), ``"first"`` (only $\hat m$),
      ``"second"`` (only $\hat v$) or ``"none"`` ($\hat m = m$, $\hat v = v$: the textbook's
      "simple Adam").
    * ``eps_in_sqrt=True``: $u_t = \hat m_t / \sqrt{\hat v_t + \epsilon_{root} + \epsilon}$
      (Goodfellow et al. Alg. 8.7 and the "simple Adam" slide put $\epsilon$ inside).
    * ``nesterov=True`` (Nadam, optax semantics): $\hat m_t$ is replaced by
      $\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$ (without Dozat's
      momentum schedule or extra $\beta_2$ factor, like ``optax.nadam``).

    The bias corrections $1-\beta^t$ and the denominator are computed in float32 (or the
    state dtype if wider), so bfloat16 state cannot round $1-\beta^t$ to 0 (optax #328) and a
    float16 zero gradient gives a zero update, not $0/0$ (optax #1754). When the denominator is
    exactly 0 (possible only with $\epsilon = \epsilon_{root} = 0$) the update is 0.
    ``eps_root > 0`` keeps the derivative of the update with respect to the gradient finite at
    $g = 0$ (meta-learning, optax #882).

    Args:
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$, outside the square root (unless ``eps_in_sqrt``).
      eps_root: $\epsilon_{root} \ge 0$, inside the square root.
      mu_dtype: dtype of $m$ only (optax's argument); defaults to ``state_dtype``.
      nesterov: Nadam's look-ahead first moment.
      bias_correction: one of :data:`BIAS_CORRECTIONS`.
      eps_in_sqrt: put ``eps`` inside the square root as well.
      state_dtype: dtype of every moment (float32 by default, whatever the params).

    Returns:
      A ``GradientTransformation`` with state :class:`ScaleByAdamState`.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    """
    owner = "scale_by_adam"
    b1, b2, eps = _betas(b1, b2, eps, owner)
    eps_root = base.hyperparameter(eps_root, "eps_root", base.NONNEGATIVE, owner=owner)
    nesterov = base.check_bool(nesterov, "nesterov", owner)
    eps_in_sqrt = base.check_bool(eps_in_sqrt, "eps_in_sqrt", owner)
    bias_correction = base.check_choice(bias_correction, "bias_correction", BIAS_CORRECTIONS, owner)
    correct_m = bias_correction in ("both", "first")
    correct_v = bias_correction in ("both", "second")
    sdt = base.state_dtype_of(state_dtype, owner)
    mdt = sdt if mu_dtype is None else base.state_dtype_of(mu_dtype, owner, "mu_dtype")
    cdt = base.compute_dtype(sdt, mdt)
    init_fn = _moments_init(ScaleByAdamState, mdt, sdt)

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, ScaleByAdamState, updates, "nu")
        beta1, one_m_b1, beta2, one_m_b2, e, count_inc = _resolve(b1, b2, eps, state.count, cdt)
        e_root = base.resolve(eps_root, state.count, cdt)
        bc1 = base.debias_factor(one_m_b1, count_inc)
        bc2 = base.debias_factor(one_m_b2, count_inc)
        bc1_next = base.debias_factor(one_m_b1, base.safe_increment(count_inc))

        def leaf(g, mu, nu):
            gc = base.to_dtype(g, cdt)
            m = one_m_b1 * gc + beta1 * base.to_dtype(mu, cdt)
            v = one_m_b2 * base.abs_sq(gc) + beta2 * base.to_dtype(nu, cdt)
            if nesterov and correct_m:
                m_hat = beta1 * (m / bc1_next) + one_m_b1 * (gc / bc1)
            elif nesterov:
                m_hat = beta1 * m + one_m_b1 * gc
            else:
                m_hat = m / bc1 if correct_m else m
            v_hat = v / bc2 if correct_v else v
            if eps_in_sqrt:
                den = jnp.sqrt(v_hat + e_root + e)
            else:
                den = jnp.sqrt(v_hat + e_root) + e
            u = base.safe_divide(m_hat, den)
            return u.astype(g.dtype), base.to_dtype(m, mdt), v.astype(sdt)

        out, mu, nu = base.map_leaves(leaf, updates, state.mu, state.nu)
        return out, ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

    return base.GradientTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    *,
    bias_correction: bool = True,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""AdaMax's scaling: Adam with the infinity norm in place of the second moment.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon), \qquad
        \Delta_t = \frac{m_t}{(1-\beta_1^t)\,u_t}

    with $m_0 = u_0 = 0$ (optax's semantics, $\epsilon$ added inside the max; the infinity
    norm needs no bias correction). ``bias_correction=False`` drops the $1-\beta_1^t$ factor.
    A zero denominator (only with $\epsilon = 0$ and zero gradients) gives a zero update.

    Args:
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      bias_correction: correct the first moment.
      state_dtype: dtype of both moments (float32 by default).

    Returns:
      A ``GradientTransformation`` with state :class:`ScaleByAdamaxState`.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015, §7.1.
    """
    owner = "scale_by_adamax"
    b1, b2, eps = _betas(b1, b2, eps, owner)
    correct_m = base.check_bool(bias_correction, "bias_correction", owner)
    sdt = base.state_dtype_of(state_dtype, owner)
    cdt = base.compute_dtype(sdt)
    init_fn = _moments_init(ScaleByAdamaxState, sdt, sdt)

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, ScaleByAdamaxState, updates, "nu")
        beta1, one_m_b1, beta2, _, e, count_inc = _resolve(b1, b2, eps, state.count, cdt)
        bc1 = base.debias_factor(one_m_b1, count_inc)

        def leaf(g, mu, nu):
            gc = base.to_dtype(g, cdt)
            m = one_m_b1 * gc + beta1 * base.to_dtype(mu, cdt)
            v = jnp.maximum(jnp.abs(gc) + e, beta2 * base.to_dtype(nu, cdt))
            u = base.safe_divide(m / bc1 if correct_m else m, v)
            return u.astype(g.dtype), base.to_dtype(m, sdt), v.astype(sdt)

        out, mu, nu = base.map_leaves(leaf, updates, state.mu, state.nu)
        return out, ScaleByAdamaxState(count=count_inc, mu=mu, nu=nu)

    return base.GradientTransformation(init_fn, update_fn)
