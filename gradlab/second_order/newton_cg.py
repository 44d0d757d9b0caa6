r"""Hessian-free Newton-CG: truncated conjugate gradient on Hessian-vector products.

The Newton system :math:`H_t d = -g_t` is solved approximately by conjugate gradient (CG), each
CG iteration costing one Hessian-vector product

.. math:: H v = \frac{d}{d\epsilon}\, \nabla f(x + \epsilon v)\Big|_{\epsilon=0}
   \quad(\texttt{jax.jvp(jax.grad(f), (x,), (v,))}),

so the Hessian is never formed and memory stays :math:`O(d)`: a handful of parameter-shaped
vectors. CG is *truncated* (Steihaug, Dembo–Eisenstat–Steihaug):

* it stops once :math:`\lVert H z + g\rVert \le \eta_t \lVert g\rVert` with the forcing term
  :math:`\eta_t = \min(0.5, \sqrt{\lVert g\rVert})` (superlinear convergence; Nocedal & Wright
  Algorithm 7.1) or a constant :math:`\eta`;
* it stops when it meets non-positive curvature :math:`p^\top H p \le 0`, returning the iterate
  built so far (a descent direction). If that happens on the very first iteration, it returns
  the steepest-descent direction scaled by :math:`\lVert g\rVert^2 / |g^\top H g|` (as scipy
  does), so an indefinite Hessian never sends Newton-CG towards a saddle or a maximum.

:func:`conjugate_gradient` is the reusable solver (also used matrix-free by Gauss-Newton and
Levenberg–Marquardt); it works on pytrees and reports an int32 :mod:`gradlab.status` code.

References:
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), §5.1 and Algorithm 7.1.
  Steihaug, "The conjugate gradient method and trust regions in large scale optimization",
  SIAM J. Numer. Anal. 20(3), 1983.
  Dembo, Eisenstat & Steihaug, "Inexact Newton methods", SIAM J. Numer. Anal. 19(2), 1982.
  Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base
from gradlab.linesearch import common
from gradlab.second_order.common import check_update_inputs, with_search
from gradlab.status import Status

__all__ = [
    "CGResult",
    "ScaleByNewtonCGState",
    "conjugate_gradient",
    "hvp",
    "newton_cg",
    "scale_by_newton_cg",
]

_OWNER = "scale_by_newton_cg"


def _compute_dtype(x: Any, state_dtype: Any) -> Any:
    return jnp.promote_types(jnp.asarray(x).dtype, base.state_dtype_of(state_dtype))


# --------------------------------------------------------------------------------------------
# Hessian-vector product and conjugate gradient
# --------------------------------------------------------------------------------------------


def hvp(value_fn: Callable[[Any], jax.Array], params: Any, v: Any) -> Any:
    r"""Hessian-vector product :math:`\nabla^2 f(x)\, v` by forward-over-reverse differentiation.

    Costs about two gradient evaluations and :math:`O(d)` memory; ``v`` is a pytree shaped like
    ``params`` (cast to each leaf's dtype).

    Args:
      value_fn: :math:`f`, mapping ``params`` to a scalar.
      params: the point :math:`x`.
      v: the direction.

    Returns:
      :math:`\nabla^2 f(x)\, v`, shaped like ``params``.
    """
    v = base.cast_like(v, params)
    return jax.jvp(jax.grad(value_fn), (params,), (v,))[1]


class CGResult(NamedTuple):
    """Outcome of :func:`conjugate_gradient`."""

    x: Any  # the approximate solution (the last iterate with positive curvature).
    num_matvecs: jax.Array  # int32: products with A computed.
    status: jax.Array  # int32: CONVERGED, MAX_STEPS, NEGATIVE_CURVATURE or NON_FINITE.
    curvature: jax.Array  # p^T A p / p^T p of the last product (first-step fallback).


def conjugate_gradient(
    matvec: Callable[[Any], Any],
    b: Any,
    *,
    tol: jax.typing.ArrayLike,
    max_steps: int,
) -> CGResult:
    r"""Truncated conjugate gradient for :math:`A x = b`, :math:`A` symmetric, from :math:`x_0=0`.

    Plain CG (Hestenes–Stiefel) with the Steihaug safeguards: it stops

    * with ``CONVERGED`` when :math:`\lVert b - A x_k\rVert \le` ``tol``;
    * with ``NEGATIVE_CURVATURE`` when a search direction has :math:`p^\top A p \le
      \varepsilon\, q_{\max}\, p^\top p` (non-positive curvature up to rounding, where
      :math:`q_{\max}` is the largest Rayleigh quotient met so far), returning the iterate
      before that direction; on a singular positive-semidefinite system this is also how CG
      stops instead of dividing by zero;
    * with ``NON_FINITE`` when a product or ``b`` is NaN/Inf (``x`` is the last finite iterate);
    * with ``MAX_STEPS`` after ``max_steps`` products.

    On a consistent singular positive-semidefinite system CG from zero stays in the range of
    :math:`A` and converges to the minimum-norm solution. Works on pytrees; never raises inside
    ``jit``/``vmap``.

    Args:
      matvec: :math:`v \mapsto A v` on pytrees shaped like ``b``.
      b: the right-hand side.
      tol: absolute tolerance on the residual norm (may be traced).
      max_steps: the most products with :math:`A` (static).

    Returns:
      A :class:`CGResult`.
    """
    max_steps = base.check_positive_int(max_steps, "max_steps", owner="conjugate_gradient")
    x0 = jax.tree.map(jnp.zeros_like, b)
    dtype = common.compute_dtype(b)
    # Solve A x = b / |b| (A is linear: x scales back): b b of a 1e-30 or 1e30 scaled problem
    # would under- or overflow in float32.
    b_norm = common.safe_norm(b, dtype)
    b_scale = jnp.where((b_norm > 0) & jnp.isfinite(b_norm), b_norm, 1.0)
    b = common.tree_scale(1.0 / b_scale, b)
    rs0 = common.tree_vdot(b, b, dtype)
    tol = jnp.asarray(tol, rs0.dtype) / b_scale
    eps = jnp.finfo(rs0.dtype).eps
    status0 = jnp.where(
        ~jnp.isfinite(rs0),
        int(Status.NON_FINITE),
        jnp.where(jnp.sqrt(rs0) <= tol, int(Status.CONVERGED), int(Status.RUNNING)),
    ).astype(jnp.int32)
    zero = jnp.zeros((), rs0.dtype)
    init = (jnp.zeros((), jnp.int32), x0, b, b, rs0, zero, zero, status0)

    def cond(carry):
        return carry[-1] == int(Status.RUNNING)

    def body(carry):
        k, x, r, p, rs, qmax, _, _ = carry
        ap = matvec(p)
        pap = common.tree_vdot(p, ap, dtype)
        pp = common.tree_vdot(p, p, dtype)
        nonfinite = ~jnp.isfinite(pap)
        negative = ~nonfinite & (pap <= eps * qmax * pp)
        bad = nonfinite | negative
        alpha = rs / jnp.where(bad, 1.0, pap)
        x_new = common.tree_axpy(alpha, p, x)
        r_new = common.tree_axpy(-alpha, ap, r)
        rs_new = common.tree_vdot(r_new, r_new, dtype)
        nonfinite = nonfinite | (~bad & ~jnp.isfinite(rs_new))
        bad = bad | nonfinite
        p_new = common.tree_axpy(rs_new / jnp.where(rs > 0, rs, 1.0), p, r_new)
        k = k + 1
        status = common.first_status(
            [
                (nonfinite, Status.NON_FINITE),
                (negative, Status.NEGATIVE_CURVATURE),
                (jnp.sqrt(rs_new) <= tol, Status.CONVERGED),
                (k >= max_steps, Status.MAX_STEPS),
            ],
            Status.RUNNING,
        )
        qmax = jnp.where(bad, qmax, jnp.maximum(qmax, pap / jnp.where(pp > 0, pp, 1.0)))
        keep = lambda new, old: common.tree_select(bad, old, new)
        return (
            k,
            keep(x_new, x),
            keep(r_new, r),
            keep(p_new, p),
            jnp.where(bad, rs, rs_new),
            qmax,
            pap / jnp.where(pp > 0, pp, 1.0),
            status,
        )

    k, x, _, _, _, _, curvature, status = jax.lax.while_loop(cond, body, init)
    x = common.tree_scale(b_scale, x)
    return CGResult(x=x, num_matvecs=k, status=status, curvature=curvature)


# --------------------------------------------------------------------------------------------
# The descent
# --------------------------------------------------------------------------------------------


class ScaleByNewtonCGState(NamedTuple):
    """State of :func:`scale_by_newton_cg`."""

    count: jax.Array  # shape=(), int32: updates taken so far.
    num_fun_evals: jax.Array  # shape=(), int32: evaluations of value_fn (none: g comes in).
    num_grad_evals: jax.Array  # shape=(), int32: gradient linearisations (one per update).
    num_hess_evals: jax.Array  # shape=(), int32: cumulative Hessian-vector products.
    cg_steps: jax.Array  # shape=(), int32: CG products in the last update.
    status: jax.Array  # shape=(), int32: last step's gradlab.status code.


def scale_by_newton_cg(
    *,
    forcing: base.ScalarOrSchedule | None = None,
    max_cg_steps: int | None = None,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Hessian-free Newton direction :math:`d_t \approx -H_t^{-1} u_t` by truncated CG.

    A *descent*: it turns the incoming updates :math:`u_t` (the gradient, as a chain receives
    it) into a direction with the minus sign included, :math:`x_{t+1} = x_t + \alpha_t d_t`;
    chain it with a line search, or use :func:`newton_cg` for :math:`\alpha_t = 1`. Curvature
    enters only through Hessian-vector products of ``value_fn`` (one linearisation of
    :math:`\nabla f` per update, one product per CG iteration), so memory is :math:`O(d)` and
    the parameters may be any pytree.

    CG solves :math:`H_t d = -u_t` from :math:`d = 0` until
    :math:`\lVert H_t d + u_t\rVert \le \eta_t \lVert u_t\rVert`, with
    :math:`\eta_t = \min(0.5, \sqrt{\lVert u_t\rVert})` unless ``forcing`` fixes it. On
    non-positive curvature it returns the last iterate; on the first iteration, the scaled
    steepest-descent direction :math:`-\frac{\lVert u\rVert^2}{|u^\top H u|} u`. The step's
    ``status`` is ``OK``, ``NEGATIVE_CURVATURE`` (curvature was met and handled, the direction
    is still a descent direction), ``NON_FINITE`` (a NaN/Inf gradient or product: the update
    is zero, the parameters stay put) or ``INVALID_HYPERPARAMETER`` (a traced ``forcing`` out
    of range: the update is zero).

    Args:
      forcing: constant relative CG tolerance :math:`\eta \in (0, 1)`, a traced array or a
        schedule; ``None`` (default) uses :math:`\min(0.5, \sqrt{\lVert u\rVert})`.
      max_cg_steps: the most Hessian-vector products per update (static); ``None`` means
        :math:`20 d` as in scipy (CG ends much earlier through the forcing term).
      state_dtype: dtype of the CG vectors and counters' companions (default float32, or the
        parameters' dtype when wider).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update`` needs ``params`` and the keyword
      extra ``value_fn``.

    References:
      Nocedal & Wright, *Numerical Optimization* (2006), Algorithm 7.1 (line-search Newton-CG).
      Martens, "Deep learning via Hessian-free optimization", ICML 2010.
    """
    if forcing is not None:
        forcing = base.hyperparameter(
            forcing, "forcing", base.Interval(0.0, 1.0, False, False), owner=_OWNER
        )
    if max_cg_steps is not None:
        max_cg_steps = base.check_positive_int(max_cg_steps, "max_cg_steps", owner=_OWNER)
    if state_dtype is not None:
        state_dtype = base.state_dtype_of(state_dtype, _OWNER)

    def init_fn(params):
        z = base.zero_count  # one buffer per field (donation)
        return ScaleByNewtonCGState(z(), z(), z(), z(), z(), jnp.asarray(int(Status.OK), jnp.int32))

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del extra_args
        check_update_inputs(_OWNER, state, ScaleByNewtonCGState, params, updates, value_fn=value_fn)
        leaves = jax.tree.leaves(params)
        size = int(sum(np.size(x) for x in leaves))
        steps = max_cg_steps if max_cg_steps is not None else max(1, 20 * size)
        g = jax.tree.map(lambda u: u.astype(_compute_dtype(u, state_dtype)), updates)
        gnorm = common.safe_norm(g, common.compute_dtype(g))  # |g|^2 may overflow: no g.g
        valid = jnp.asarray(True)
        if forcing is None:
            eta = jnp.minimum(0.5, jnp.sqrt(gnorm))
        else:
            eta = base.resolve(forcing, state.count, gnorm.dtype)
            valid = ~common.poisoned(eta)  # an invalid traced forcing: stop, say why
        _, hvp_lin = jax.linearize(jax.grad(value_fn), params)

        def matvec(v):
            hv = hvp_lin(base.cast_like(v, params))
            return jax.tree.map(lambda h, w: h.astype(w.dtype), hv, v)

        res = conjugate_gradient(
            matvec, common.tree_scale(-1.0, g), tol=eta * gnorm, max_steps=steps
        )
        negative = res.status == int(Status.NEGATIVE_CURVATURE)
        first = negative & (res.num_matvecs == 1)
        # |g|^2 / |g^T H g| = 1 / |Rayleigh quotient of g|, the first direction's.
        curv = jnp.abs(res.curvature)
        sd_scale = jnp.where(curv > 0, 1.0 / jnp.where(curv > 0, curv, 1.0), 1.0)
        direction = common.tree_select(first, common.tree_scale(-sd_scale, g), res.x)
        ok = (res.status != int(Status.NON_FINITE)) & base.tree_all_finite(direction)
        ok = ok & jnp.isfinite(gnorm)
        direction = common.tree_select(
            ok & valid, direction, jax.tree.map(jnp.zeros_like, direction)
        )
        status = common.first_status(
            [
                (~valid, Status.INVALID_HYPERPARAMETER),
                (~ok, Status.NON_FINITE),
                (negative, Status.NEGATIVE_CURVATURE),
            ],
            Status.OK,
        )
        new_state = ScaleByNewtonCGState(
            count=base.safe_increment(state.count),
            num_fun_evals=state.num_fun_evals,
            num_grad_evals=state.num_grad_evals + 1,
            num_hess_evals=state.num_hess_evals + res.num_matvecs,
            cg_steps=res.num_matvecs,
            status=status,
        )
        return base.cast_like(direction, updates), new_state

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def newton_cg(
    learning_rate: base.ScalarOrSchedule | None = None,
    *,
    linesearch: base.GradientTransformation | str | None = "strong_wolfe",
    forcing: base.ScalarOrSchedule | None = None,
    max_cg_steps: int | None = None,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Newton-CG: :func:`scale_by_newton_cg`, an optional fixed factor, then a line search.

    .. math:: x_{t+1} = x_t + \alpha_t d_t,\qquad H_t d_t \approx -\nabla f(x_t)

    ``chain(scale_by_newton_cg, [scale_by_learning_rate(learning_rate)], linesearch)``, the
    same layout as :func:`gradlab.second_order.quasi_newton.bfgs`. The default strong-Wolfe
    search tries :math:`\alpha = 1` first; ``linesearch=None`` with ``learning_rate=None``
    takes the pure unit Newton step.

    Args:
      learning_rate: optional fixed factor applied before the search (``None``: none).
      linesearch: a transformation, ``"strong_wolfe"`` (default), ``"backtracking"``,
        ``"exact"`` or ``None``.
      forcing: see :func:`scale_by_newton_cg`.
      max_cg_steps: see :func:`scale_by_newton_cg`.
      state_dtype: see :func:`scale_by_newton_cg`.

    Returns:
      A chain whose ``update`` needs ``params`` and the extras ``value_fn`` (and ``value``,
      ``grad`` for a line search).
    """
    descent = scale_by_newton_cg(
        forcing=forcing, max_cg_steps=max_cg_steps, state_dtype=state_dtype
    )
    return with_search(descent, learning_rate, linesearch)
