r"""Newton's method with a dense Hessian, a Cholesky solve and a modified-Newton fallback.

The Newton direction minimises the local quadratic model
:math:`f(x + d) \approx f(x) + g^\top d + \tfrac12 d^\top H d`:

.. math:: H_t d_t = -g_t,\qquad x_{t+1} = x_t + \alpha_t d_t .

The Hessian is formed with ``jax.hessian`` on the raveled parameters
(``jax.flatten_util.ravel_pytree``), so this is for small problems only: a :math:`d`-parameter
model needs :math:`d^2` numbers (a million float32 parameters: 3.6 TiB). The transformation
refuses, with a :class:`ValueError` naming the size, when the Hessian would exceed
``hessian_memory_budget``; use :func:`gradlab.second_order.newton_cg.scale_by_newton_cg`
(Hessian-free) instead.

**When the Hessian is not positive definite** plain Newton heads for the nearest stationary
point, saddles and maxima included. The Cholesky factorisation :math:`H = LL^\top` is tried
first; it fails (NaN, or a pivot below :math:`\varepsilon\, d \max_i H_{ii}`) exactly when
:math:`H` is not numerically positive definite. Then one of two documented modifications
takes over (``fallback``):

* ``"shift"`` — a Levenberg shift, Nocedal & Wright Algorithm 3.3 ("Cholesky with
  added multiple of the identity"): with :math:`\beta = \beta_0 \max(1, \max_i |H_{ii}|)`,
  start at :math:`\tau_0 = \max(0, -\min_i H_{ii}) + \beta` and multiply :math:`\tau` by
  ``damping_increase`` until :math:`H + \tau I` factorises; the direction solves
  :math:`(H + \tau I) d = -g`.
* ``"eigen"`` (default) — an eigenvalue modification (Gill, Murray & Wright §4.4.2; "saddle-free
  Newton", Dauphin et al. 2014): :math:`H = Q \Lambda Q^\top`,
  :math:`d = -Q\, |\Lambda|_\delta^{-1} Q^\top g` with
  :math:`|\lambda|_\delta = \max(|\lambda|, \delta \max_j |\lambda_j|)`, so negative curvature
  is followed downhill with the step length it suggests.

The shift is the cheaper modification (Cholesky only) but a small :math:`\tau` on a direction
of negative curvature gives a very long step (from :math:`(1, 0.5)` on
:math:`x^2 - y^2 + 0.1y^4` the first shifted step goes to :math:`y \approx 475`); it is meant to
be used with a line search. The eigenvalue modification costs one ``eigh`` (only on the steps
where Cholesky fails) and takes sensible unit steps, which is why it is the default.

Either way the modified matrix is positive definite, so :math:`g^\top d < 0`: every direction
descends, and Newton does not walk to a saddle. The step's ``status`` says what happened:
``OK`` (plain Newton), ``NEGATIVE_CURVATURE`` (the Hessian was indefinite or singular and was
modified), ``NON_FINITE`` (NaN/Inf gradient or Hessian: the update is zero),
``INVALID_HYPERPARAMETER`` (a traced fallback setting was out of range, used or not: the
update is zero).

References:
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), §3.4, Algorithm 3.3.
  Gill, Murray & Wright, *Practical Optimization* (1981), §4.4.2.
  Dauphin et al., "Identifying and attacking the saddle point problem in high-dimensional
  non-convex optimization", NeurIPS 2014.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradlab import base
from gradlab.linesearch import common
from gradlab.second_order.common import check_update_inputs, with_search
from gradlab.status import Status

__all__ = ["ScaleByNewtonState", "newton", "scale_by_newton", "hessian_bytes"]

_OWNER = "scale_by_newton"
_FALLBACKS = ("shift", "eigen")


class ScaleByNewtonState(NamedTuple):
    """State of :func:`scale_by_newton`."""

    count: jax.Array  # shape=(), int32: updates taken so far.
    shift: jax.Array  # shape=(), state dtype: last shift tau (0 = plain Newton; eigen: floor).
    num_fun_evals: jax.Array  # shape=(), int32: evaluations of value_fn (none: g comes in).
    num_grad_evals: jax.Array  # shape=(), int32: gradient evaluations (none: g comes in).
    num_hess_evals: jax.Array  # shape=(), int32: dense Hessians computed (one per update).
    status: jax.Array  # shape=(), int32: last step's gradlab.status code.


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def hessian_bytes(params: Any, state_dtype: Any = None) -> tuple[int, int]:
    """Number of parameters and bytes of the dense Hessian :func:`scale_by_newton` would form."""
    leaves = jax.tree.leaves(params)
    size = int(sum(np.size(x) for x in leaves))
    dtype = jnp.float32
    for x in leaves:
        dtype = jnp.promote_types(dtype, jnp.asarray(x).dtype)
    dtype = jnp.promote_types(dtype, base.state_dtype_of(state_dtype))
    return size, size * size * jnp.dtype(dtype).itemsize


def _check_budget(params: Any, budget: int, state_dtype: Any) -> None:
    size, nbytes = hessian_bytes(params, state_dtype)
    if nbytes > budget:
        raise ValueError(
            f"{_OWNER}: the dense Hessian of {size} parameters needs {_format_bytes(nbytes)} "
            f"({nbytes} bytes), over hessian_memory_budget={_format_bytes(budget)} ({budget} "
            "bytes). Use "
            f"gradlab newton_cg (Hessian-free, O(d) memory) or raise hessian_memory_budget."
        )


def _cholesky_ok(chol: jax.Array, mat: jax.Array) -> jax.Array:
    """Whether a Cholesky factor is a numerically valid factorisation of ``mat``."""
    n = mat.shape[0]
    eps = jnp.finfo(mat.dtype).eps
    diag = jnp.diagonal(chol)
    scale = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(mat))), jnp.finfo(mat.dtype).tiny)
    return jnp.all(jnp.isfinite(chol)) & (jnp.min(diag) ** 2 > eps * n * scale)


def _shift_direction(h, g, beta0, increase, max_tries):
    n = h.shape[0]
    eye = jnp.eye(n, dtype=h.dtype)
    diag = jnp.diagonal(h)
    beta = beta0 * jnp.maximum(1.0, jnp.max(jnp.abs(diag)))
    tau0 = jnp.where(jnp.min(diag) > 0, 0.0, beta - jnp.min(diag)).astype(h.dtype)

    def factor(tau):
        chol = jnp.linalg.cholesky(h + tau * eye)
        return chol, _cholesky_ok(chol, h + tau * eye)

    chol0, ok0 = factor(tau0)

    def cond(carry):
        k, _, _, ok = carry
        return ~ok & (k < max_tries)

    def body(carry):
        k, tau, _, _ = carry
        tau = jnp.maximum(increase * tau, beta)
        chol, ok = factor(tau)
        return k + 1, tau, chol, ok

    _, tau, chol, ok = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), tau0, chol0, ok0))
    solved = -jax.scipy.linalg.cho_solve((chol, True), g)
    # Never factorised within max_tries (only for absurd scales): a gradient step of 1/tau.
    direction = jnp.where(ok, solved, -g / jnp.where(tau > 0, tau, 1.0))
    return direction, tau


def _eigen_direction(h, g, floor):
    lam, q = jnp.linalg.eigh(h)
    lam_abs = jnp.abs(lam)
    largest = jnp.max(lam_abs)
    # H = 0 (a linear objective): no curvature to scale by, the gradient step -g.
    cut = jnp.where(largest > 0, jnp.maximum(floor * largest, jnp.finfo(h.dtype).tiny), 1.0)
    lam_mod = jnp.maximum(lam_abs, cut)
    return -common.matmul(q, common.matmul(q.T, g) / lam_mod), cut


def scale_by_newton(
    *,
    fallback: str = "eigen",
    damping_init: base.ScalarOrSchedule = 1e-3,
    damping_increase: base.ScalarOrSchedule = 10.0,
    max_shift_tries: int = 60,
    eigenvalue_floor: base.ScalarOrSchedule = 1e-6,
    hessian_memory_budget: int = 512 * 2**20,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Newton direction :math:`d_t = -\tilde H_t^{-1} u_t` with a dense Hessian of ``value_fn``.

    A *descent*: the output has the minus sign included, :math:`x_{t+1} = x_t + \alpha_t d_t`
    (chain a line search, or use :func:`newton` for :math:`\alpha_t = 1`). :math:`u_t` is the
    incoming update (the gradient, as a chain receives it); :math:`\tilde H_t` is
    ``jax.hessian(value_fn)`` at ``params`` when it is positive definite (Cholesky), otherwise
    its modification chosen by ``fallback`` (module docstring): the Levenberg shift
    :math:`H + \tau I` (``"shift"``) or the eigenvalue modification
    :math:`Q |\Lambda|_\delta Q^\top` (``"eigen"``). On a convex quadratic one unit step lands
    on the minimum.

    Args:
      fallback: ``"shift"`` (Nocedal & Wright Algorithm 3.3) or ``"eigen"`` (|eigenvalues| with a
        relative floor).
      damping_init: :math:`\beta_0 > 0`, the smallest shift relative to
        :math:`\max(1, \max_i |H_{ii}|)` (``"shift"``).
      damping_increase: factor :math:`> 1` by which a failed shift grows (``"shift"``).
      max_shift_tries: the most Cholesky attempts after the first (static, ``"shift"``).
      eigenvalue_floor: :math:`\delta \in (0, 1]`, eigenvalues' floor relative to the largest
        (``"eigen"``; a zero Hessian gives the gradient step :math:`-g`).
      hessian_memory_budget: the largest dense Hessian allowed, in bytes (static, default 512
        MiB); :func:`init` raises :class:`ValueError` above it.
      state_dtype: dtype of the Hessian and the solve (default float32, or the parameters'
        dtype when wider).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update`` needs ``params`` and the keyword
      extra ``value_fn``.

    Raises:
      ValueError: unknown ``fallback``, an invalid hyperparameter, or (at ``init``) a Hessian
        over ``hessian_memory_budget``.

    References:
      Nocedal & Wright, *Numerical Optimization* (2006), §3.4.
    """
    if fallback not in _FALLBACKS:
        raise ValueError(f"{_OWNER}: fallback must be one of {_FALLBACKS}, got {fallback!r}")
    damping_init = base.hyperparameter(damping_init, "damping_init", base.POSITIVE, owner=_OWNER)
    damping_increase = base.hyperparameter(
        damping_increase, "damping_increase", base.Interval(1.0, None, False), owner=_OWNER
    )
    eigenvalue_floor = base.hyperparameter(
        eigenvalue_floor, "eigenvalue_floor", base.Interval(0.0, 1.0, False, True), owner=_OWNER
    )
    max_shift_tries = base.check_positive_int(max_shift_tries, "max_shift_tries", owner=_OWNER)
    hessian_memory_budget = base.check_positive_int(
        hessian_memory_budget, "hessian_memory_budget", owner=_OWNER
    )

    def init_fn(params):
        _check_budget(params, hessian_memory_budget, state_dtype)
        shift = jnp.zeros([], base.state_dtype_of(state_dtype))
        z = base.zero_count  # one buffer per field (donation)
        return ScaleByNewtonState(z(), shift, z(), z(), z(), jnp.asarray(int(Status.OK), jnp.int32))

    def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
        del extra_args
        check_update_inputs(_OWNER, state, ScaleByNewtonState, params, updates, value_fn=value_fn)
        _check_budget(params, hessian_memory_budget, state_dtype)
        flat, unravel = ravel_pytree(params)
        dtype = jnp.promote_types(flat.dtype, base.state_dtype_of(state_dtype))
        g = ravel_pytree(updates)[0].astype(dtype)
        h = jax.hessian(lambda z: value_fn(unravel(z)))(flat).astype(dtype)
        h = 0.5 * (h + h.T)
        finite = jnp.all(jnp.isfinite(h)) & jnp.all(jnp.isfinite(g))
        h = jnp.where(finite, h, jnp.eye(h.shape[0], dtype=dtype))
        g_safe = jnp.where(finite, g, 0.0)

        chol = jnp.linalg.cholesky(h)
        plain_ok = _cholesky_ok(chol, h)
        plain = -jax.scipy.linalg.cho_solve((chol, True), g_safe)
        if fallback == "shift":
            beta0 = base.resolve(damping_init, state.count, dtype)
            increase = base.resolve(damping_increase, state.count, dtype)
            settings = (beta0, increase)
            modified, shift = jax.lax.cond(
                plain_ok,
                lambda: (plain, jnp.zeros((), dtype)),
                lambda: _shift_direction(h, g_safe, beta0, increase, max_shift_tries),
            )
        else:
            floor = base.resolve(eigenvalue_floor, state.count, dtype)
            settings = (floor,)
            modified, shift = jax.lax.cond(
                plain_ok,
                lambda: (plain, jnp.zeros((), dtype)),
                lambda: _eigen_direction(h, g_safe, floor),
            )
        # A poisoned (invalid traced) setting stops the run even where the fallback is unused.
        valid = ~common.poisoned(*settings)
        ok = finite & jnp.all(jnp.isfinite(modified))
        direction = jnp.where(ok & valid, modified, 0.0)
        status = common.first_status(
            [
                (~valid, Status.INVALID_HYPERPARAMETER),
                (~ok, Status.NON_FINITE),
                (plain_ok, Status.OK),
            ],
            Status.NEGATIVE_CURVATURE,
        )
        new_state = ScaleByNewtonState(
            count=base.safe_increment(state.count),
            shift=shift.astype(state.shift.dtype),
            num_fun_evals=state.num_fun_evals,
            num_grad_evals=state.num_grad_evals,
            num_hess_evals=state.num_hess_evals + 1,
            status=status,
        )
        return base.cast_like(unravel(direction), updates), new_state

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def newton(
    learning_rate: base.ScalarOrSchedule | None = None,
    *,
    linesearch: base.GradientTransformation | str | None = "strong_wolfe",
    **newton_options: Any,
) -> base.GradientTransformationExtraArgs:
    r"""Newton's method: :func:`scale_by_newton`, an optional fixed factor, then a line search.

    .. math:: x_{t+1} = x_t - \alpha_t \tilde H_t^{-1} \nabla f(x_t)

    ``chain(scale_by_newton(**newton_options), [scale_by_learning_rate(learning_rate)],
    linesearch)``. The default strong-Wolfe search tries :math:`\alpha = 1` first (the classical
    Newton–Raphson step); ``linesearch=None`` with ``learning_rate=None`` takes the unit step as
    is, and ``learning_rate=eta, linesearch=None`` is the damped iteration
    :math:`x - \eta H^{-1} g` of the lecture notes.

    Args:
      learning_rate: optional fixed factor applied before the search (``None``: none).
      linesearch: a transformation, ``"strong_wolfe"`` (default), ``"backtracking"``,
        ``"exact"`` or ``None``.
      **newton_options: :func:`scale_by_newton`'s keyword arguments (``fallback``,
        ``damping_init``, ``damping_increase``, ``max_shift_tries``, ``eigenvalue_floor``,
        ``hessian_memory_budget``, ``state_dtype``).

    Returns:
      A chain whose ``update`` needs ``params`` and the extra ``value_fn`` (and ``value``,
      ``grad`` for a line search).
    """
    return with_search(scale_by_newton(**newton_options), learning_rate, linesearch)
