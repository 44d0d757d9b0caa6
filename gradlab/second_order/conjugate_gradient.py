r"""Nonlinear conjugate gradient: a *descent* (direction) plus a line search.

.. math::

    d_0 = -g_0, \qquad d_k = -g_k + \beta_k d_{k-1}, \qquad x_{k+1} = x_k + t_k d_k ,

with :math:`g_k = \nabla f(x_k)`, :math:`y_k = g_k - g_{k-1}` and one of the classical choices

.. math::

    \beta^{FR}_k = \frac{g_k^\top g_k}{g_{k-1}^\top g_{k-1}},\quad
    \beta^{PR}_k = \frac{g_k^\top y_k}{g_{k-1}^\top g_{k-1}},\quad
    \beta^{PR+}_k = \max(0, \beta^{PR}_k),\quad
    \beta^{HS}_k = \frac{g_k^\top y_k}{d_{k-1}^\top y_k},\quad
    \beta^{DY}_k = \frac{g_k^\top g_k}{d_{k-1}^\top y_k}.

The direction restarts at :math:`-g_k` every ``restart_every`` iterations (default: the number
of parameters :math:`m`, the textbook's advice) and whenever :math:`d_k` is not a descent
direction (:math:`g_k^\top d_k \ge 0`) or :math:`\beta_k` is not finite. On a convex quadratic
in dimension :math:`m`, with an exact line search, every rule reaches the minimiser in at most
:math:`m` iterations.

All inner products are taken after dividing every vector by :math:`\lVert g_{k-1}\rVert`, so
:math:`\beta_k` (a ratio) is exact even when gradients are :math:`10^{-30}` or :math:`10^{30}`
in float32.

References:
  Fletcher & Reeves, "Function minimization by conjugate gradients", Comput. J. 7(2), 1964.
  Polak & Ribière, "Note sur la convergence de méthodes de directions conjuguées", RIRO 3(16),
  1969. Polyak, USSR Comput. Math. Math. Phys. 9(4), 1969.
  Hestenes & Stiefel, "Methods of conjugate gradients for solving linear systems", J. Res.
  NBS 49(6), 1952.
  Dai & Yuan, "A nonlinear conjugate gradient method with a strong global convergence
  property", SIAM J. Optim. 10(1), 1999.
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), §5.2.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base
from gradlab.linesearch import common, get_linesearch

__all__ = ["BETA_RULES", "ScaleByNonlinearCGState", "scale_by_nonlinear_cg", "nonlinear_cg"]

_OWNER = "scale_by_nonlinear_cg"
BETA_RULES = (
    "fletcher_reeves",
    "polak_ribiere",
    "polak_ribiere_plus",
    "hestenes_stiefel",
    "dai_yuan",
)


class ScaleByNonlinearCGState(NamedTuple):
    """State of :func:`scale_by_nonlinear_cg`."""

    count: jax.Array  # shape=(), int32: directions computed so far.
    since_restart: jax.Array  # shape=(), int32: directions since the last restart to -g.
    num_restarts: jax.Array  # shape=(), int32: restarts so far (the first step included).
    prev_grad: base.Updates  # g_{k-1}, in the state dtype.
    prev_direction: base.Updates  # d_{k-1}, in the state dtype.


def _ratio(num, den):
    ok = (den != 0) & jnp.isfinite(den) & jnp.isfinite(num)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)


def scale_by_nonlinear_cg(
    beta: str = "hestenes_stiefel",
    restart_every: int | None = None,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""The nonlinear-CG direction :math:`d_k = -g_k + \beta_k d_{k-1}` (a descent).

    ``updates`` coming in are the gradient :math:`g_k`; the output is :math:`d_k` (with the
    minus sign: ``params + t * d`` is the next trial point), to be followed by a line search.

    Args:
      beta: ``"fletcher_reeves"``, ``"polak_ribiere"`` (plain, may be negative),
        ``"polak_ribiere_plus"`` (:math:`\max(0, \beta^{PR})`, scipy's rule),
        ``"hestenes_stiefel"`` (default) or ``"dai_yuan"`` (static). With the default Wolfe
        search Hestenes–Stiefel needed fewer evaluations than PR+ on five of the six problems
        of ``benchmarks/solvers.py`` (docs/benchmarks.md).
      restart_every: restart to :math:`-g` every this many iterations (static int >= 1;
        ``None``: the number of parameters).
      state_dtype: dtype of the stored gradient and direction (default float32, float64 for
        float64 parameters).

    Returns:
      A :class:`~gradlab.base.GradientTransformation`.
    """
    if beta not in BETA_RULES:
        raise ValueError(f"{_OWNER}: beta must be one of {BETA_RULES}, got {beta!r}")
    if restart_every is not None:
        restart_every = base.check_positive_int(restart_every, "restart_every", owner=_OWNER)
    if state_dtype is not None:
        state_dtype = base.state_dtype_of(state_dtype, _OWNER)

    def init_fn(params):
        dtype = common.compute_dtype(params) if state_dtype is None else jnp.dtype(state_dtype)
        return ScaleByNonlinearCGState(
            count=jnp.zeros([], jnp.int32),
            since_restart=jnp.zeros([], jnp.int32),
            num_restarts=jnp.zeros([], jnp.int32),
            prev_grad=base.zeros_like(params, dtype),
            prev_direction=base.zeros_like(params, dtype),
        )

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        base.check_state(state, ScaleByNonlinearCGState, _OWNER)
        base.check_tree_match(state.prev_grad, updates, "state.prev_grad", "updates", owner=_OWNER)
        dtype = common.compute_dtype(state.prev_grad)
        period = restart_every
        if period is None:
            period = max(1, int(sum(np.size(x) for x in jax.tree.leaves(updates))))

        g = jax.tree.map(lambda x: x.astype(dtype), updates)
        sigma = common.safe_norm(state.prev_grad, dtype)
        sigma = jnp.where((sigma > 0) & jnp.isfinite(sigma), sigma, 1.0)
        gh = jax.tree.map(lambda x: x / sigma, g)
        gph = jax.tree.map(lambda x: x / sigma, state.prev_grad)
        dph = jax.tree.map(lambda x: x / sigma, state.prev_direction)
        yh = jax.tree.map(lambda a, b: a - b, gh, gph)
        if beta == "fletcher_reeves":
            b = _ratio(common.tree_vdot(gh, gh, dtype), common.tree_vdot(gph, gph, dtype))
        elif beta in ("polak_ribiere", "polak_ribiere_plus"):
            b = _ratio(common.tree_vdot(gh, yh, dtype), common.tree_vdot(gph, gph, dtype))
            if beta == "polak_ribiere_plus":
                b = jnp.maximum(b, 0.0)  # NaN stays NaN (and triggers a restart)
        elif beta == "hestenes_stiefel":
            b = _ratio(common.tree_vdot(gh, yh, dtype), common.tree_vdot(dph, yh, dtype))
        else:
            b = _ratio(common.tree_vdot(gh, gh, dtype), common.tree_vdot(dph, yh, dtype))

        conj = jax.tree.map(lambda gi, di: -gi + b * di, g, state.prev_direction)
        # Tested as the search will see it, in the updates' dtype: a float16 direction that
        # underflows to zero (or overflows) restarts instead of stopping the search. The
        # barrier keeps the rounding: XLA:GPU removes a cast down and back up (it allows
        # excess precision), and the float32 direction passed the test there.
        if any(u.dtype != dtype for u in jax.tree.leaves(updates)):
            rounded = jax.tree.map(lambda c, u: c.astype(u.dtype), conj, updates)
            rounded = jax.lax.optimization_barrier(rounded)
            conj = jax.tree.map(lambda c: c.astype(dtype), rounded)
        slope = common.tree_vdot(gh, jax.tree.map(lambda x: x / sigma, conj), dtype)
        restart = (
            (state.count == 0)
            | (state.since_restart >= period)
            | ~jnp.isfinite(b)
            | ~(slope < 0)
            | ~base.tree_all_finite(conj)
        )
        direction = jax.tree.map(lambda c, gi: jnp.where(restart, -gi, c), conj, g)
        new_state = ScaleByNonlinearCGState(
            count=base.safe_increment(state.count),
            since_restart=jnp.where(restart, 1, state.since_restart + 1).astype(jnp.int32),
            num_restarts=state.num_restarts + restart.astype(jnp.int32),
            prev_grad=g,
            prev_direction=direction,
        )
        return base.cast_like(direction, updates), new_state

    return base.GradientTransformation(init_fn, update_fn)


def nonlinear_cg(
    beta: str = "hestenes_stiefel",
    restart_every: int | None = None,
    linesearch: base.GradientTransformation | str | None = "more_thuente",
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Nonlinear conjugate gradient: :func:`scale_by_nonlinear_cg` then a line search.

    Args:
      beta: the :math:`\beta_k` rule (see :func:`scale_by_nonlinear_cg`).
      restart_every: restart period (``None``: the number of parameters).
      linesearch: a transformation, ``"more_thuente"`` (default:
        :func:`~gradlab.linesearch.scale_by_more_thuente_linesearch`, scipy's search) or
        ``"strong_wolfe"`` (:func:`~gradlab.linesearch.scale_by_zoom_linesearch`), both with
        :math:`c_2 = 0.1` and the "quadratic" first trial as Nocedal & Wright recommend for
        CG; ``"backtracking"``, ``"exact"``, or ``None`` (a unit step: only for chaining your
        own step size). Measured (docs/benchmarks.md): Moré–Thuente needs 10% fewer
        evaluations than zoom over the six benchmark problems.
      state_dtype: see :func:`scale_by_nonlinear_cg`.

    Returns:
      ``chain(scale_by_nonlinear_cg(...), linesearch)``.
    """
    search = get_linesearch(linesearch, curv_rtol=0.1, initial_guess_strategy="quadratic")
    descent = scale_by_nonlinear_cg(beta, restart_every, state_dtype)
    return base.chain(descent, search) if search is not None else base.chain(descent)
