r"""AdaDelta: a unit-correct step from running averages of squared gradients and squared steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["ScaleByAdaDeltaState", "scale_by_adadelta"]


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.
    e_g: base.Updates  # E[g^2]_t, running average of squared gradients.
    e_x: base.Updates  # E[dx^2]_t, running average of squared (unscaled) steps.


def scale_by_adadelta(
    rho: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-6,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Zeiler's AdaDelta scaling.

    .. math::

        E[g^2]_t = \rho\,E[g^2]_{t-1} + (1-\rho)\,g_t^2, \qquad
        \Delta_t = \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,
        \qquad E[\Delta^2]_t = \rho\,E[\Delta^2]_{t-1} + (1-\rho)\,\Delta_t^2

    and the update is $\Delta_t$ (the learning-rate atom that follows multiplies it by
    $-\eta$; Zeiler's method is $\eta = 1$). Both averages start at 0. As in optax, the running
    average of steps tracks the *unscaled* step $\Delta_t$, so a learning rate other than 1 does
    not feed back into the numerator. Same arguments and semantics as
    ``optax.scale_by_adadelta``.

    Args:
      rho: $\rho \in [0, 1)$, the decay of both running averages.
      eps: $\epsilon \ge 0$, inside both square roots ($\epsilon > 0$ is needed to move at
        all: with $\epsilon = 0$ the first step is 0 and so is every later one).
      state_dtype: dtype of both averages (float32 by default, whatever the params).

    Returns:
      A ``GradientTransformation`` with state :class:`ScaleByAdaDeltaState`.

    References:
      Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012 (Alg. 1).
    """
    owner = "scale_by_adadelta"
    rho = base.hyperparameter(rho, "rho", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner)
    eps = base.hyperparameter(eps, "eps", base.NONNEGATIVE, owner=owner)
    sdt = base.state_dtype_of(state_dtype, owner)
    cdt = base.compute_dtype(sdt)

    def init_fn(params):
        # Two separate zero trees: one buffer in both fields cannot be donated (jax.jit with
        # donate_argnums on the state fails with "donate the same buffer twice").
        return ScaleByAdaDeltaState(
            count=base.zero_count(),
            e_g=base.zeros_like(params, sdt, real=True),
            e_x=base.zeros_like(params, sdt, real=True),
        )

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, ScaleByAdaDeltaState, updates, "e_g")
        r, one_m_r = base.resolve_decay(rho, state.count, cdt)
        e = base.resolve(eps, state.count, cdt)

        def leaf(g, eg, ex):
            gc = base.to_dtype(g, cdt)
            eg = one_m_r * base.abs_sq(gc) + r * base.to_dtype(eg, cdt)
            exc = base.to_dtype(ex, cdt)
            u = base.safe_divide(jnp.sqrt(exc + e), jnp.sqrt(eg + e)) * gc
            ex_new = one_m_r * base.abs_sq(u) + r * exc
            return u.astype(g.dtype), eg.astype(sdt), ex_new.astype(sdt)

        out, e_g, e_x = base.map_leaves(leaf, updates, state.e_g, state.e_x)
        return out, ScaleByAdaDeltaState(base.safe_increment(state.count), e_g, e_x)

    return base.GradientTransformation(init_fn, update_fn)
