r"""AdaGrad: rescale updates by the root of the sum of all squared gradients so far."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["ScaleByRssState", "scale_by_rss"]


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.
    sum_of_squares: base.Updates  # G_t, in state_dtype.


def scale_by_rss(
    initial_accumulator_value: base.ScalarOrSchedule = 0.1,
    eps: base.ScalarOrSchedule = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""AdaGrad's scaling: divide by the root of the running sum of squared gradients.

    .. math::

        G_t = G_{t-1} + g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{G_t + \epsilon}} \;\;(\texttt{eps\_in\_sqrt=True}) \quad
        \text{or} \quad u_t = \frac{g_t}{\epsilon + \sqrt{G_t}}

    with $G_0$ = ``initial_accumulator_value``. Where $G_t = 0$ (a coordinate that has only
    ever seen zero gradients, with $G_0 = 0$) the update is 0, as in optax.

    The defaults ($G_0 = 0.1$, $\epsilon = 10^{-7}$ inside the root) match
    ``optax.scale_by_rss`` and Keras. The textbook/Goodfellow et al. (Alg. 8.4) and torch put
    $\epsilon$ outside the root with $G_0 = 0$: ``scale_by_rss(0.0, 1e-10, eps_in_sqrt=False)``
    is torch's default.

    Args:
      initial_accumulator_value: $G_0 \ge 0$ (a schedule is evaluated at count 0).
      eps: $\epsilon \ge 0$.
      eps_in_sqrt: put $\epsilon$ inside the square root (default) or add it to the root.
      state_dtype: dtype of $G$ (float32 by default, whatever the params).

    Returns:
      A ``GradientTransformation`` with state :class:`ScaleByRssState`.

    References:
      Duchi, Hazan & Singer, *Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization*, JMLR 12, 2011.
    """
    owner = "scale_by_rss"
    initial_accumulator_value = base.hyperparameter(
        initial_accumulator_value, "initial_accumulator_value", base.NONNEGATIVE, owner=owner
    )
    eps = base.hyperparameter(eps, "eps", base.NONNEGATIVE, owner=owner)
    eps_in_sqrt = base.check_bool(eps_in_sqrt, "eps_in_sqrt", owner)
    sdt = base.state_dtype_of(state_dtype, owner)
    cdt = base.compute_dtype(sdt)
    tiny = float(jnp.finfo(cdt).tiny)

    def init_fn(params):
        count = base.zero_count()
        g0 = base.resolve(initial_accumulator_value, count, cdt)
        return ScaleByRssState(count, base.full_like(params, g0, sdt, real=True))

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, ScaleByRssState, updates, "sum_of_squares")
        e = base.resolve(eps, state.count, cdt)

        def leaf(g, s):
            gc = base.to_dtype(g, cdt)
            s_new = base.to_dtype(s, cdt) + base.abs_sq(gc)
            # The floor (the compute dtype's smallest normal: float64's for float64 state, so
            # tiny float64 gradients keep |u| = 1) turns 0 * inf into 0 when G = eps = 0.
            if eps_in_sqrt:
                u = gc * jax.lax.rsqrt(jnp.maximum(s_new + e, tiny))
            else:
                u = gc / jnp.maximum(jnp.sqrt(s_new) + e, tiny)
            return u.astype(g.dtype), s_new.astype(sdt)

        out, new_s = base.map_leaves(leaf, updates, state.sum_of_squares)
        return out, ScaleByRssState(base.safe_increment(state.count), new_s)

    return base.GradientTransformation(init_fn, update_fn)
