r"""Gauss-Newton and Levenberg–Marquardt for nonlinear least squares.

The objective is :math:`F(x) = \tfrac12 \lVert r(x)\rVert^2` for a residual function
:math:`r:\mathbb{R}^d \to \mathbb{R}^m` passed as the ``residual_fn`` extra argument. With the
Jacobian :math:`J = \partial r / \partial x` the gradient is :math:`g = J^\top r` and the
Hessian :math:`J^\top J + \sum_i r_i \nabla^2 r_i`; both methods drop the second term.

* **Gauss-Newton** (:func:`scale_by_gauss_newton`, a *descent*):
  :math:`d = -J^{+} r`, the minimum-norm solution of :math:`\min_d \lVert J d + r\rVert`
  (a rank-deficient :math:`J` gives a finite step in the row space of :math:`J`).
* **Levenberg–Marquardt** (:func:`levenberg_marquardt`, *fused*: the damping enters the step
  nonlinearly, so one transformation owns it):
  :math:`(J^\top J + \mu D)\, h = -J^\top r` with :math:`D = I` (Levenberg) or
  :math:`D = \operatorname{diag}(J^\top J)` (Marquardt, kept as a running maximum as in
  MINPACK). :math:`\mu \to 0` gives Gauss-Newton; with :math:`D = I` and large :math:`\mu`,
  :math:`h \approx -g/\mu`, gradient descent with rate :math:`1/\mu`.

The damping follows Nielsen's rule: with the gain ratio

.. math:: \rho = \frac{F(x) - F(x + h)}{L(0) - L(h)},\qquad
   L(0) - L(h) = -g^\top h - \tfrac12 \lVert J h\rVert^2,

a step is accepted iff :math:`\rho > 0` (the cost decreased: a step that increases it is never
accepted); then :math:`\mu \leftarrow \mu \max(\tfrac13, 1 - (2\rho - 1)^3)`,
:math:`\nu \leftarrow 2`. A rejected step sets :math:`\mu \leftarrow \nu\mu`,
:math:`\nu \leftarrow 2\nu` and is re-solved inside the same ``update`` (at most
``max_inner_steps`` times).

**Jacobians.** ``jacobian="jacfwd"``/``"jacrev"`` form :math:`J` densely (one SVD per update
serves every trial damping); ``"matrix_free"`` never forms it and solves by conjugate gradient
with :math:`v \mapsto J^\top (J v)` products (``jax.linearize`` + ``jax.linear_transpose``),
:math:`O(m + d)` memory; ``"auto"`` picks the cheaper dense mode (``jacfwd`` when
:math:`d \le m`) unless :math:`J` would exceed ``jacobian_memory_budget``, then matrix-free.

References:
  Levenberg, "A method for the solution of certain non-linear problems in least squares",
  Quart. Appl. Math. 2, 1944. Marquardt, "An algorithm for least-squares estimation of
  nonlinear parameters", SIAM J. Appl. Math. 11(2), 1963.
  Madsen, Nielsen & Tingleff, *Methods for Non-Linear Least Squares Problems* (2004), §3.2
  (Nielsen's damping update, Algorithm 3.16).
  Moré, "The Levenberg–Marquardt algorithm: implementation and theory", 1978 (MINPACK scaling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradlab import base
from gradlab.linesearch import common
from gradlab.second_order.common import check_update_inputs, with_search
from gradlab.second_order.newton_cg import conjugate_gradient
from gradlab.status import Status

if TYPE_CHECKING:  # pragma: no cover
    from gradlab.minimize import MinimizeResult

__all__ = [
    "GaussNewtonState",
    "LevenbergMarquardtState",
    "gauss_newton",
    "least_squares",
    "levenberg_marquardt",
    "scale_by_gauss_newton",
]

_JACOBIANS = ("auto", "jacfwd", "jacrev", "matrix_free")
_SCALINGS = ("levenberg", "marquardt")


def _damping_bounds(*dtypes) -> tuple[float, float]:
    """The damping's range: any positive normal number of every one of ``dtypes`` (a fixed
    range such as [1e-30, 1e30] would be a scale: 1e-30-scaled problems need smaller
    dampings)."""
    infos = [jnp.finfo(d) for d in dtypes]
    return max(float(i.tiny) for i in infos), min(float(i.max) for i in infos) / 16


# --------------------------------------------------------------------------------------------
# The linearised residual
# --------------------------------------------------------------------------------------------


class _Linearized(NamedTuple):
    flat: jax.Array  # the raveled parameters.
    residual: jax.Array  # r(x), raveled, in the compute dtype.
    jac: jax.Array | None  # dense J (m, d), or None when matrix-free.
    jvp: Callable[[jax.Array], jax.Array]  # v -> J v
    vjp: Callable[[jax.Array], jax.Array]  # w -> J^T w
    residual_at: Callable[[jax.Array], jax.Array]  # flat params -> r


def _check_static_args(owner, jacobian, jacobian_memory_budget, max_cg_steps):
    if jacobian not in _JACOBIANS:
        raise ValueError(f"{owner}: jacobian must be one of {_JACOBIANS}, got {jacobian!r}")
    base.check_positive_int(jacobian_memory_budget, "jacobian_memory_budget", owner=owner)
    if max_cg_steps is not None:
        base.check_positive_int(max_cg_steps, "max_cg_steps", owner=owner)


def _bind(residual_fn, residual_args):
    """``params -> residual_fn(params, *residual_args)``."""
    if not residual_args:
        return residual_fn
    return lambda params: residual_fn(params, *residual_args)


def _linearize(owner, residual_fn, params, jacobian, budget, state_dtype) -> _Linearized:
    flat, unravel = ravel_pytree(params)
    out = jax.eval_shape(lambda z: ravel_pytree(residual_fn(unravel(z)))[0], flat)
    dtype = jnp.promote_types(
        jnp.promote_types(flat.dtype, out.dtype), base.state_dtype_of(state_dtype)
    )
    m, d = int(out.size), int(flat.size)

    def residual_at(z):
        return ravel_pytree(residual_fn(unravel(z.astype(flat.dtype))))[0].astype(dtype)

    mode = jacobian
    if mode == "auto":
        if m * d * jnp.dtype(dtype).itemsize > budget:
            mode = "matrix_free"
        else:
            mode = "jacfwd" if d <= m else "jacrev"
    if mode == "matrix_free":
        r, lin = jax.linearize(residual_at, flat)
        transpose = jax.linear_transpose(lin, flat)

        def jvp(v):
            return lin(v.astype(flat.dtype)).astype(dtype)

        def vjp(w):
            return transpose(w.astype(r.dtype))[0].astype(dtype)

        return _Linearized(flat, r, None, jvp, vjp, residual_at)
    jac_fn = jax.jacfwd if mode == "jacfwd" else jax.jacrev
    jac, r = jac_fn(lambda z: (residual_at(z), residual_at(z)), has_aux=True)(flat)
    jac = jac.astype(dtype).reshape(m, d)
    jvp = lambda v: common.matmul(jac, v)  # noqa: E731
    vjp = lambda w: common.matmul(jac.T, w)  # noqa: E731
    return _Linearized(flat, r, jac, jvp, vjp, residual_at)


def _svd(jac: jax.Array):
    u, s, vt = jnp.linalg.svd(jac, full_matrices=False)
    return u, s, vt


def _pinv_values(s: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """``1/s`` with singular values below ``10 eps max(m, d) s_max`` dropped (rank deficiency)."""
    cut = 10 * jnp.finfo(s.dtype).eps * max(shape) * jnp.max(s, initial=0.0)
    return jnp.where(s > cut, 1.0 / jnp.where(s > cut, s, 1.0), 0.0)


def _forcing(forcing, count, gnorm):
    r"""CG's relative tolerance: ``forcing``, or :math:`\min(0.1, \sqrt{\lVert g\rVert})`."""
    if forcing is None:
        return jnp.minimum(0.1, jnp.sqrt(gnorm))
    return base.resolve(forcing, count, gnorm.dtype)


def _cg_steps(max_cg_steps, d):
    return max_cg_steps if max_cg_steps is not None else max(1, 2 * d)


# --------------------------------------------------------------------------------------------
# Gauss-Newton: a descent
# --------------------------------------------------------------------------------------------


class GaussNewtonState(NamedTuple):
    """State of :func:`scale_by_gauss_newton`."""

    count: jax.Array  # shape=(), int32: updates taken so far.
    num_fun_evals: jax.Array  # shape=(), int32: residual evaluations outside a Jacobian pass.
    num_grad_evals: jax.Array  # shape=(), int32: Jacobian evaluations (each also gives r).
    num_hess_evals: jax.Array  # shape=(), int32: products v -> J^T J v (matrix-free only).
    status: jax.Array  # shape=(), int32: last step's gradlab.status code.


def scale_by_gauss_newton(
    *,
    jacobian: str = "auto",
    forcing: base.ScalarOrSchedule | None = None,
    max_cg_steps: int | None = None,
    jacobian_memory_budget: int = 256 * 2**20,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Gauss-Newton direction :math:`d = -J^{+} r` for :math:`F = \tfrac12\lVert r\rVert^2`.

    A *descent* (minus sign included; chain a line search or use :func:`gauss_newton`). The
    direction is computed from ``residual_fn`` at ``params``; the incoming updates only fix the
    output's structure and dtype. Dense modes use the SVD pseudo-inverse (singular values below
    :math:`10\varepsilon \max(m,d)\, s_{\max}` are dropped), so a rank-deficient Jacobian gives
    the minimum-norm step; matrix-free mode runs CG on :math:`J^\top J d = -J^\top r` from zero
    (which converges to the same minimum-norm step) to the tolerance
    :math:`\eta \lVert J^\top r\rVert`, :math:`\eta = \min(0.1, \sqrt{\lVert J^\top r\rVert})`
    unless ``forcing`` fixes it.

    Args:
      jacobian: ``"auto"``, ``"jacfwd"``, ``"jacrev"`` or ``"matrix_free"`` (module docstring).
      forcing: relative CG tolerance in :math:`(0, 1)` (matrix-free only).
      max_cg_steps: the most CG products per update (static; default :math:`2d`).
      jacobian_memory_budget: bytes above which ``"auto"`` goes matrix-free (static).
      state_dtype: compute dtype (default float32, or wider parameters' dtype).

    Returns:
      A ``GradientTransformationExtraArgs`` needing ``params`` and the extra ``residual_fn``
      (``residual_fn(params, *residual_args)`` when the extra ``residual_args``, a tuple of
      arrays, is given too).

    References:
      Nocedal & Wright, *Numerical Optimization* (2006), §10.3.
    """
    owner = "scale_by_gauss_newton"
    _check_static_args(owner, jacobian, jacobian_memory_budget, max_cg_steps)
    if forcing is not None:
        forcing = base.hyperparameter(
            forcing, "forcing", base.Interval(0.0, 1.0, False, False), owner=owner
        )

    def init_fn(params):
        del params
        z = base.zero_count  # one buffer per field (donation)
        return GaussNewtonState(z(), z(), z(), z(), jnp.asarray(int(Status.OK), jnp.int32))

    def update_fn(updates, state, params=None, *, residual_fn=None, residual_args=(), **extra_args):
        del extra_args
        check_update_inputs(
            owner, state, GaussNewtonState, params, updates, residual_fn=residual_fn
        )
        residual = _bind(residual_fn, residual_args)
        lin = _linearize(owner, residual, params, jacobian, jacobian_memory_budget, state_dtype)
        r = lin.residual
        num_products = jnp.zeros((), jnp.int32)
        if lin.jac is not None:
            finite = jnp.all(jnp.isfinite(lin.jac)) & jnp.all(jnp.isfinite(r))
            jac = jnp.where(finite, lin.jac, 0.0)
            u, s, vt = _svd(jac)
            ur = common.matmul(u.T, jnp.where(finite, r, 0.0))
            step = -common.matmul(vt.T, _pinv_values(s, jac.shape) * ur)
        else:
            g = lin.vjp(r)
            gnorm = common.safe_norm(g, g.dtype)
            res = conjugate_gradient(
                lambda v: lin.vjp(lin.jvp(v)),
                -g,
                tol=_forcing(forcing, state.count, gnorm) * gnorm,
                max_steps=_cg_steps(max_cg_steps, lin.flat.size),
            )
            step, num_products = res.x, res.num_matvecs
            finite = jnp.all(jnp.isfinite(r)) & jnp.isfinite(gnorm)
            finite = finite & (res.status != int(Status.NON_FINITE))
        ok = finite & jnp.all(jnp.isfinite(step))
        step = jnp.where(ok, step, 0.0)
        status = jnp.where(ok, int(Status.OK), int(Status.NON_FINITE)).astype(jnp.int32)
        unravel = ravel_pytree(params)[1]
        new_state = GaussNewtonState(
            count=base.safe_increment(state.count),
            num_fun_evals=state.num_fun_evals,
            num_grad_evals=state.num_grad_evals + 1,
            num_hess_evals=state.num_hess_evals + num_products,
            status=status,
        )
        return base.cast_like(unravel(step), updates), new_state

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def gauss_newton(
    learning_rate: base.ScalarOrSchedule | None = None,
    *,
    linesearch: base.GradientTransformation | str | None = "strong_wolfe",
    **gauss_newton_options: Any,
) -> base.GradientTransformationExtraArgs:
    r"""Gauss-Newton: :func:`scale_by_gauss_newton`, an optional fixed factor, a line search.

    .. math:: x_{t+1} = x_t - \alpha_t J_t^{+} r(x_t)

    ``chain(scale_by_gauss_newton(**gauss_newton_options),
    [scale_by_learning_rate(learning_rate)], linesearch)``; the default strong-Wolfe search (on
    :math:`\tfrac12\lVert r\rVert^2`, through the ``value``, ``grad`` and ``value_fn`` extras)
    tries :math:`\alpha = 1` first. ``linesearch=None`` with ``learning_rate=None`` is
    classical (undamped) Gauss-Newton.

    Args:
      learning_rate: optional fixed factor applied before the search (``None``: none).
      linesearch: a transformation, ``"strong_wolfe"`` (default), ``"backtracking"``,
        ``"exact"`` or ``None``.
      **gauss_newton_options: :func:`scale_by_gauss_newton`'s keyword arguments
        (``jacobian``, ``forcing``, ``max_cg_steps``, ``jacobian_memory_budget``,
        ``state_dtype``).
    """
    return with_search(scale_by_gauss_newton(**gauss_newton_options), learning_rate, linesearch)


# --------------------------------------------------------------------------------------------
# Levenberg–Marquardt: fused damping and acceptance
# --------------------------------------------------------------------------------------------


class LevenbergMarquardtState(NamedTuple):
    """State of :func:`levenberg_marquardt`."""

    count: jax.Array  # shape=(), int32: updates taken so far.
    damping: jax.Array  # shape=(), state dtype: mu (negative until the first update sets it).
    nu: jax.Array  # shape=(), state dtype: Nielsen's growth factor for the next rejection.
    diag: jax.Array  # shape=(d,) running max of diag(J^T J) (Marquardt), shape=() otherwise.
    num_fun_evals: jax.Array  # shape=(), int32: trial residual evaluations.
    num_grad_evals: jax.Array  # shape=(), int32: Jacobian evaluations (each also gives r).
    num_hess_evals: jax.Array  # shape=(), int32: products v -> J^T J v (matrix-free only).
    num_rejected: jax.Array  # shape=(), int32: trials rejected in the last update.
    gain_ratio: jax.Array  # shape=(), state dtype: rho of the last trial.
    status: jax.Array  # shape=(), int32: last step's gradlab.status code.
    # shape=(), bool: NaN/Inf trials raised the damping since the last accepted step.
    non_finite_trials: jax.Array


def levenberg_marquardt(
    *,
    damping_init: base.ScalarOrSchedule = 1e-3,
    relative_damping: bool = True,
    scaling: str = "levenberg",
    max_inner_steps: int = 20,
    jacobian: str = "auto",
    forcing: base.ScalarOrSchedule | None = None,
    max_cg_steps: int | None = None,
    jacobian_memory_budget: int = 256 * 2**20,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Levenberg–Marquardt with Nielsen's adaptive damping, as one fused transformation.

    Each ``update`` linearises ``residual_fn`` at ``params`` (one Jacobian evaluation), then
    solves :math:`(J^\top J + \mu D) h = -J^\top r` and evaluates the trial
    :math:`F(x + h)`; an accepted trial (:math:`\rho > 0`) is returned as the update (apply it
    with ``apply_updates``, no learning rate) and decreases :math:`\mu`; a rejected one raises
    :math:`\mu` and is re-solved, up to ``max_inner_steps`` times (module docstring). The state
    keeps :math:`\mu`, :math:`\nu` and Marquardt's scaling between updates.

    The ``status`` of a step is ``OK`` (accepted), ``CONVERGED`` (no decrease is possible at
    this precision: a rejected trial whose predicted decrease :math:`L(0) - L(h)` is at most
    :math:`\varepsilon F(x)`, MINPACK's ``ftol`` test at machine precision; also
    :math:`J^\top r = 0`),
    ``OK`` with a zero update also when every trial was rejected (:math:`\mu` stays raised for
    the next update), ``LINE_SEARCH_FAILED`` (every trial rejected with :math:`\mu` at its
    maximum, or the ``CONVERGED`` test passed only after NaN/Inf trials raised :math:`\mu`:
    the boundary of a region where the residual is not finite is not a stationary point),
    ``NON_FINITE`` (NaN/Inf residual or Jacobian at ``params``:
    the update is zero) or ``INVALID_HYPERPARAMETER`` (a traced ``damping_init`` was invalid).

    Args:
      damping_init: :math:`\tau > 0`. With ``relative_damping`` the first damping is
        :math:`\mu_0 = \tau \max_i (J^\top J)_{ii}` (Levenberg, dense),
        :math:`\tau` (Marquardt: the scaled system has unit diagonal) or
        :math:`\tau\, \lVert J^\top r\rVert^2 / \lVert r\rVert^2` (matrix-free, a Rayleigh
        quotient of :math:`JJ^\top` that needs no Jacobian); otherwise :math:`\mu_0 = \tau`.
      relative_damping: see ``damping_init`` (static).
      scaling: ``"levenberg"`` (:math:`D = I`) or ``"marquardt"`` (:math:`D =` running max of
        :math:`\operatorname{diag}(J^\top J)`, floored at :math:`\varepsilon \max D`; dense
        Jacobians only). Marquardt's scaling is invariant to rescaling the parameters.
      max_inner_steps: trials per update (static, ``>= 1``; 1 = one trial, the optimistix style
        where a rejected step returns a zero update, status ``OK``).
      jacobian, forcing, max_cg_steps, jacobian_memory_budget, state_dtype: as in
        :func:`scale_by_gauss_newton` (``max_cg_steps`` bounds each trial's CG solve).

    Returns:
      A ``GradientTransformationExtraArgs`` needing ``params`` and the extra ``residual_fn``
      (``residual_fn(params, *residual_args)`` when the extra ``residual_args``, a tuple of
      arrays, is given too).

    References:
      Madsen, Nielsen & Tingleff (2004), Algorithm 3.16; Marquardt (1963); Moré (1978).
    """
    owner = "levenberg_marquardt"
    _check_static_args(owner, jacobian, jacobian_memory_budget, max_cg_steps)
    if scaling not in _SCALINGS:
        raise ValueError(f"{owner}: scaling must be one of {_SCALINGS}, got {scaling!r}")
    if scaling == "marquardt" and jacobian == "matrix_free":
        raise ValueError(
            f"{owner}: scaling='marquardt' needs diag(J^T J), i.e. the Jacobian's column norms; "
            f"use a dense jacobian ('jacfwd'/'jacrev') or scaling='levenberg' when matrix-free"
        )
    if not isinstance(relative_damping, bool):
        raise TypeError(f"{owner}: relative_damping must be a bool, got {relative_damping!r}")
    max_inner_steps = base.check_positive_int(max_inner_steps, "max_inner_steps", owner=owner)
    damping_init = base.hyperparameter(damping_init, "damping_init", base.POSITIVE, owner=owner)
    if forcing is not None:
        forcing = base.hyperparameter(
            forcing, "forcing", base.Interval(0.0, 1.0, False, False), owner=owner
        )
    marquardt = scaling == "marquardt"

    def init_fn(params):
        dtype = base.state_dtype_of(state_dtype)
        size = int(sum(np.size(x) for x in jax.tree.leaves(params)))
        z = base.zero_count  # one buffer per field (donation)
        return LevenbergMarquardtState(
            count=z(),
            damping=jnp.asarray(-1.0, dtype),
            nu=jnp.asarray(2.0, dtype),
            diag=jnp.zeros((size,) if marquardt else (), dtype),
            num_fun_evals=z(),
            num_grad_evals=z(),
            num_hess_evals=z(),
            num_rejected=z(),
            gain_ratio=jnp.zeros([], dtype),
            status=jnp.asarray(int(Status.OK), jnp.int32),
            non_finite_trials=jnp.asarray(False),
        )

    def update_fn(updates, state, params=None, *, residual_fn=None, residual_args=(), **extra_args):
        del extra_args
        check_update_inputs(
            owner, state, LevenbergMarquardtState, params, updates, residual_fn=residual_fn
        )
        residual = _bind(residual_fn, residual_args)
        lin = _linearize(owner, residual, params, jacobian, jacobian_memory_budget, state_dtype)
        if lin.jac is None and marquardt:
            raise ValueError(
                f"{owner}: scaling='marquardt' needs a dense Jacobian but jacobian='auto' chose "
                f"matrix-free (J over jacobian_memory_budget); raise the budget or use "
                f"scaling='levenberg'"
            )
        dtype = lin.residual.dtype
        r = lin.residual
        finite = jnp.all(jnp.isfinite(r))
        if lin.jac is not None:
            finite = finite & jnp.all(jnp.isfinite(lin.jac))
        r = jnp.where(finite, r, 0.0)
        # Costs, predicted decreases and damping are compared in units of |r(x)|^2, so that
        # nothing under- or overflows on 1e-30 or 1e30 scaled problems (|r|^2 of 1e-60 is 0 in
        # float32: every step would look like "no decrease possible").
        r_scale = common.safe_norm(r, dtype)
        r_scale = jnp.where(r_scale > 0, r_scale, 1.0)
        cost = 0.5 * common.vdot(r / r_scale, r / r_scale)  # 0.5, or 0 at an exact fit
        tau = base.resolve(damping_init, state.count, dtype)
        if lin.jac is not None:
            jac = jnp.where(finite, lin.jac, 0.0)
            g = common.matmul(jac.T, r)
            colsq = jnp.sum(jac * jac, axis=0)
            if marquardt:
                diag = jnp.maximum(state.diag.astype(dtype), colsq)
                floor = jnp.maximum(jnp.finfo(dtype).eps * jnp.max(diag), jnp.finfo(dtype).tiny)
                sqrt_d = jnp.sqrt(jnp.maximum(diag, floor))
                mu0 = tau
            else:
                diag, sqrt_d = state.diag, jnp.ones((), dtype)
                mu0 = tau * jnp.max(colsq) if relative_damping else tau
            u, s, vt = _svd(jac / sqrt_d)
            # J/|r| and r/|r|: the same step, and nothing under- or overflows.
            s, ur = s / r_scale, common.matmul(u.T, r) / r_scale

            def solve(mu):
                # Predicted decrease L(0) - L(h) in singular coordinates (units of |r|^2): a
                # sum of non-negative terms, free of the cancellation in -g.h - |Jh|^2 / 2.
                mu = mu / r_scale / r_scale
                den = s * s + mu
                pred = jnp.sum((s * ur) ** 2 * (s * s + 2.0 * mu) / (2.0 * den * den))
                return -common.matmul(vt.T, (s / den) * ur) / sqrt_d, pred, jnp.zeros((), jnp.int32)

        else:
            g = jnp.where(finite, lin.vjp(r / r_scale), 0.0) / r_scale  # J^T r / |r|^2
            diag = state.diag
            ratio = common.vdot(g, g) * r_scale * r_scale  # |J^T r|^2 / |r|^2
            mu0 = tau * jnp.where(ratio > 0, ratio, 1.0) if relative_damping else tau
            # The forcing term from |J^T r| in the original units, the tolerance in these.
            g_norm = common.safe_norm(g, dtype)
            tol = _forcing(forcing, state.count, g_norm * r_scale * r_scale) * g_norm
            steps = _cg_steps(max_cg_steps, lin.flat.size)

            def solve(mu):
                # (J^T J + mu I) h = -J^T r, divided through by |r|^2.
                mu = mu / r_scale / r_scale
                res = conjugate_gradient(
                    lambda v: lin.vjp(lin.jvp(v) / r_scale) / r_scale + mu * v,
                    -g,
                    tol=tol,
                    max_steps=steps,
                )
                jh = lin.jvp(res.x) / r_scale  # CG is inexact: the general model decrease
                pred = -common.vdot(g, res.x) - 0.5 * common.vdot(jh, jh)
                return res.x, pred, res.num_matvecs

        first = state.damping < 0
        mu_start = jnp.where(first, mu0, state.damping.astype(dtype))
        valid = jnp.isfinite(mu_start) & (mu_start > 0)
        # (stored in the state's dtype: a float32 state cannot hold a float64 bound)
        mu_min, mu_max = _damping_bounds(dtype, state.damping.dtype)
        mu_start = jnp.clip(jnp.where(valid, mu_start, 1.0), mu_min, mu_max)
        nu_start = jnp.where(first, 2.0, state.nu.astype(dtype))
        zero_h = jnp.zeros_like(lin.flat, dtype=dtype)
        z32 = jnp.zeros((), jnp.int32)
        running = finite & valid
        eps = jnp.finfo(dtype).eps

        # carry: trials, mu, nu, h, accepted, stalled, rho, products, non-finite trials seen
        def cond(c):
            k, _, _, _, accepted, stalled, _, _, _ = c
            return running & ~accepted & ~stalled & (k < max_inner_steps)

        def body(c):
            k, mu, nu, _, _, _, _, products, non_finite_trials = c
            h, pred, n_prod = solve(mu)
            r_new = lin.residual_at(lin.flat + h.astype(lin.flat.dtype)) / r_scale
            cost_new = 0.5 * common.vdot(r_new, r_new)
            h_ok = jnp.all(jnp.isfinite(h)) & jnp.isfinite(pred)
            rho = (cost - cost_new) / jnp.where(pred > 0, pred, 1.0)
            accepted = h_ok & (pred > 0) & jnp.isfinite(cost_new) & (cost_new < cost)
            # The model promises less than rounding can resolve (MINPACK's ftol = eps test).
            stalled = h_ok & ~accepted & (pred <= eps * cost)
            rho = jnp.where(jnp.isfinite(rho), rho, -jnp.inf)
            mu_acc = mu * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            mu_new = jnp.where(accepted, mu_acc, jnp.where(stalled, mu, mu * nu))
            nu_new = jnp.where(accepted, 2.0, jnp.where(stalled, nu, 2.0 * nu))
            mu_new = jnp.clip(mu_new, mu_min, mu_max)
            non_finite_trials = non_finite_trials | ~(h_ok & jnp.isfinite(cost_new))
            return (
                k + 1,
                mu_new,
                nu_new,
                h,
                accepted,
                stalled,
                rho,
                products + n_prod,
                non_finite_trials,
            )

        init = (
            z32,
            mu_start,
            nu_start,
            zero_h,
            jnp.asarray(False),
            jnp.asarray(False),
            jnp.zeros((), dtype),
            z32,
            state.non_finite_trials,
        )
        trials, mu, nu, h, accepted, stalled, rho, products, non_finite_trials = jax.lax.while_loop(
            cond, body, init
        )
        step = jnp.where(accepted, h, 0.0)
        status = common.first_status(
            [
                (~finite, Status.NON_FINITE),
                (~valid, Status.INVALID_HYPERPARAMETER),
                (accepted, Status.OK),
                # "No decrease possible at this precision" is not convergence when NaN/Inf
                # trials raised the damping (next to a region where r is not finite, the step
                # shrinks until the model's decrease is below rounding at a point that is not
                # stationary): no acceptable step, then.
                (stalled & non_finite_trials, Status.LINE_SEARCH_FAILED),
                (stalled, Status.CONVERGED),
                # Every trial rejected: a zero update with mu raised for the next one, which
                # can still succeed unless mu is at its maximum.
                (mu < mu_max, Status.OK),
            ],
            Status.LINE_SEARCH_FAILED,
        )
        keep = ~running
        new_state = LevenbergMarquardtState(
            count=base.safe_increment(state.count),
            damping=jnp.where(keep, state.damping, mu.astype(state.damping.dtype)),
            nu=jnp.where(keep, state.nu, nu.astype(state.nu.dtype)),
            diag=jnp.where(keep, state.diag, jnp.asarray(diag).astype(state.diag.dtype)),
            num_fun_evals=state.num_fun_evals + trials,
            num_grad_evals=state.num_grad_evals + 1,
            num_hess_evals=state.num_hess_evals + products,
            num_rejected=trials - accepted.astype(jnp.int32) - stalled.astype(jnp.int32),
            gain_ratio=rho.astype(state.gain_ratio.dtype),
            status=status,
            non_finite_trials=non_finite_trials & ~accepted,
        )
        unravel = ravel_pytree(params)[1]
        return base.cast_like(unravel(step), updates), new_state

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Convenience driver
# --------------------------------------------------------------------------------------------


class _HalfSquaredNorm:
    r""":math:`\tfrac12\lVert r(x, *args)\rVert^2`, equal (and hashing equal) for the same
    residual function, so repeated :func:`least_squares` calls reuse one compiled loop."""

    def __init__(self, residual_fn: Callable[..., Any]):
        self.residual_fn = residual_fn

    def __call__(self, params: Any, *args: Any) -> jax.Array:
        r = ravel_pytree(self.residual_fn(params, *args))[0]
        return 0.5 * common.vdot(r, r)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HalfSquaredNorm) and other.residual_fn == self.residual_fn

    def __hash__(self) -> int:
        return hash((_HalfSquaredNorm, self.residual_fn))


def least_squares(
    residual_fn: Callable[..., Any],
    x0: Any,
    method: str = "levenberg_marquardt",
    *,
    args: tuple = (),
    **minimize_kwargs: Any,
) -> MinimizeResult:
    r"""Minimise :math:`\tfrac12 \lVert r(x)\rVert^2` from ``x0`` with :func:`gradlab.minimize`.

    Equivalent to ``gradlab.minimize(lambda x, *args: 0.5 * sum(r(x, *args)**2), x0, method,
    args=args, extra_args={"residual_fn": residual_fn, "residual_args": args},
    **minimize_kwargs)``; ``method`` is any name :func:`gradlab.minimize` knows
    (``"levenberg_marquardt"``, ``"gauss_newton"``, or a general method such as ``"bfgs"``,
    which ignores the residual structure). Calls with the same ``residual_fn`` reuse one
    compiled loop.

    Args:
      residual_fn: ``(params, *args) -> residuals`` (an array or a pytree of arrays).
      x0: the starting parameters (any pytree).
      method: the solver's name.
      args: extra positional arguments of ``residual_fn`` (arrays, e.g. the data of a curve
        fit; traced, so ``jax.vmap`` over them fits many data sets in one program).
      **minimize_kwargs: passed to :func:`gradlab.minimize` (tolerances, step budget, ...).

    Returns:
      The :class:`gradlab.minimize.MinimizeResult` (parameters, value, gradient norm, steps,
      evaluation counts, status).
    """
    from gradlab.minimize import minimize

    args = tuple(args)
    extra = dict(minimize_kwargs.pop("extra_args", None) or {})
    extra["residual_fn"] = residual_fn
    if args:
        extra["residual_args"] = args
    return minimize(
        _HalfSquaredNorm(residual_fn), x0, method, args=args, extra_args=extra, **minimize_kwargs
    )
