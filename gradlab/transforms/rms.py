r"""RMSProp: rescale updates by the root of an exponential moving average of squared gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = [
    "ScaleByRmsState",
    "ScaleByStddevState",
    "scale_by_rms",
    "scale_by_stddev",
]


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms` (non-centered)."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.
    nu: base.Updates  # EMA of squared gradients, in state_dtype.


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_rms` with ``centered=True`` (and of :func:`scale_by_stddev`)."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    mu: base.Updates  # EMA of gradients.
    nu: base.Updates  # EMA of squared gradients.


def scale_by_rms(
    decay: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-8,
    initial_scale: base.ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    init_with_first_gradient: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Divide gradients by the root of an EMA of their squares (Tieleman & Hinton's RMSProp).

    .. math::

        \nu_t = \rho\,\nu_{t-1} + (1-\rho)\,g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{\hat\nu_t + \epsilon}} \;\;(\texttt{eps\_in\_sqrt}) \quad\text{or}
        \quad u_t = \frac{g_t}{\sqrt{\hat\nu_t} + \epsilon}

    with $\nu_0$ = ``initial_scale``, $\hat\nu_t = \nu_t / (1-\rho^t)$ when ``bias_correction``
    (else $\hat\nu_t = \nu_t$). With ``centered=True`` the variance is used instead of the raw
    second moment (Graves 2013): $\mu_t = \rho\mu_{t-1} + (1-\rho) g_t$ and $\nu_t$ is replaced by
    $\max(\nu_t - \mu_t^2, 0)$ (the clamp guards against rounding making it negative).

    ``init_with_first_gradient=True`` starts the average at the first squared gradient,
    $\nu_1 = g_1^2$ (the "$G(0) = (\nabla E(w_0))^2$" variant of the textbook), instead of
    $\nu_1 = \rho\,\nu_0 + (1-\rho) g_1^2$; ``initial_scale`` is then unused. It is not
    defined for ``centered=True`` (the first variance would be exactly 0) nor combined with
    ``bias_correction`` ($\nu_1 = g_1^2$ is already unbiased).

    Defaults match ``optax.scale_by_rms`` (``eps`` inside the square root, zero initial
    scale, no bias correction). Arithmetic is done in float32 (or ``state_dtype`` if wider), so a
    zero gradient in float16 gives a zero update, never NaN.

    Args:
      decay: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      initial_scale: $\nu_0 \ge 0$ (evaluated at count 0 if a schedule).
      eps_in_sqrt: put $\epsilon$ inside (optax, keras) or outside (torch) the square root.
      bias_correction: divide $\nu_t$ (and $\mu_t$) by $1-\rho^t$.
      centered: use the centered second moment (variance).
      init_with_first_gradient: start the average at $g_1^2$.
      state_dtype: dtype of the accumulators (float32 by default, whatever the params).

    Returns:
      A ``GradientTransformation`` whose state is :class:`ScaleByRmsState` (or
      :class:`ScaleByStddevState` when ``centered``).

    References:
      Tieleman & Hinton, *Lecture 6.5 — RMSProp*, COURSERA: Neural Networks for Machine
      Learning, 2012. Graves, *Generating Sequences With Recurrent Neural Networks*, 2013.
    """
    owner = "scale_by_rms"
    decay = base.hyperparameter(decay, "decay", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner)
    eps = base.hyperparameter(eps, "eps", base.NONNEGATIVE, owner=owner)
    initial_scale = base.hyperparameter(
        initial_scale, "initial_scale", base.NONNEGATIVE, owner=owner
    )
    eps_in_sqrt = base.check_bool(eps_in_sqrt, "eps_in_sqrt", owner)
    use_bc = base.check_bool(bias_correction, "bias_correction", owner)
    centered = base.check_bool(centered, "centered", owner)
    first_init = base.check_bool(init_with_first_gradient, "init_with_first_gradient", owner)
    if centered and first_init:
        raise ValueError(f"{owner}: init_with_first_gradient is not defined for centered=True")
    if use_bc and first_init:
        raise ValueError(
            f"{owner}: init_with_first_gradient starts from g_1^2, already unbiased; dividing by "
            "1 - decay^t as well (bias_correction=True) would shrink the early steps"
        )
    sdt = base.state_dtype_of(state_dtype, owner)
    cdt = base.compute_dtype(sdt)
    tiny = float(jnp.finfo(cdt).tiny)  # floor of v + eps: 0 * inf is 0 when v = eps = 0
    State = ScaleByStddevState if centered else ScaleByRmsState

    def init_fn(params):
        count = base.zero_count()
        nu = base.full_like(params, base.resolve(initial_scale, count, cdt), sdt, real=True)
        if centered:
            return ScaleByStddevState(count=count, mu=base.zeros_like(params, sdt), nu=nu)
        return ScaleByRmsState(count=count, nu=nu)

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, State, updates, "nu")
        rho, one_m_rho = base.resolve_decay(decay, state.count, cdt)
        e = base.resolve(eps, state.count, cdt)
        count_inc = base.safe_increment(state.count)
        bc = base.debias_factor(one_m_rho, count_inc) if use_bc else None
        first = state.count == 0

        def leaf(g, nu, mu=None):
            gc = base.to_dtype(g, cdt)
            g2 = base.abs_sq(gc)
            nu = one_m_rho * g2 + rho * base.to_dtype(nu, cdt)
            if first_init:
                nu = jnp.where(first, g2, nu)
            v = nu if bc is None else nu / bc
            if centered:
                mu = one_m_rho * gc + rho * base.to_dtype(mu, cdt)
                m = mu if bc is None else mu / bc
                v = jnp.maximum(v - base.abs_sq(m), 0)
            if eps_in_sqrt:
                u = gc * jax.lax.rsqrt(jnp.maximum(v + e, tiny))
            else:
                u = base.safe_divide(gc, jnp.sqrt(v) + e)
            new = (u.astype(g.dtype), nu.astype(sdt))
            return new + (base.to_dtype(mu, sdt),) if centered else new

        if centered:
            out, nu, mu = base.map_leaves(leaf, updates, state.nu, state.mu)
            return out, ScaleByStddevState(count=count_inc, mu=mu, nu=nu)
        out, nu = base.map_leaves(leaf, updates, state.nu)
        return out, ScaleByRmsState(count=count_inc, nu=nu)

    return base.GradientTransformation(init_fn, update_fn)


def scale_by_stddev(
    decay: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-8,
    initial_scale: base.ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Centered RMSProp atom: :func:`scale_by_rms` with ``centered=True`` (optax's name).

    .. math:: u_t = \frac{g_t}{\sqrt{\max(\nu_t - \mu_t^2, 0) + \epsilon}}

    Args:
      decay: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      initial_scale: $\nu_0 \ge 0$.
      eps_in_sqrt: $\epsilon$ inside (default) or outside the square root.
      bias_correction: divide both moments by $1-\rho^t$.
      state_dtype: accumulator dtype (float32 by default).

    References:
      Graves, *Generating Sequences With Recurrent Neural Networks*, 2013 (eq. 38–45).
    """
    return scale_by_rms(
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction,
        centered=True,
        state_dtype=state_dtype,
    )
