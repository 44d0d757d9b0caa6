r"""BFGS and L-BFGS: quasi-Newton *descents* (directions) followed by a strong-Wolfe search.

Both build an approximation :math:`H_k \approx \nabla^2 f(x_k)^{-1}` from the pairs
:math:`s_k = x_{k+1} - x_k`, :math:`y_k = g_{k+1} - g_k` and step along
:math:`d_k = -H_k g_k`. The BFGS update (Broyden, Fletcher, Goldfarb, Shanno 1970) is

.. math::

    H_{k+1} = (I - \rho_k s_k y_k^\top)\, H_k\, (I - \rho_k y_k s_k^\top) + \rho_k s_k s_k^\top,
    \qquad \rho_k = \frac{1}{y_k^\top s_k}.

**Initial matrix.** BFGS starts from the textbook's :math:`H_0 = I` (:math:`B_0 = I_m`): the
first direction is the gradient-descent direction :math:`-g_0`. ``initial_inverse_hessian``
chooses how the identity is safeguarded against the scale of :math:`f`:

* ``"max_identity_gamma"`` (default): :math:`H_0 = \max(1, 1/\lVert g_0\rVert)\, I` for the
  first direction (a gradient step, lengthened to unit length when :math:`\lVert g_0\rVert < 1`)
  and :math:`H_0 = \max(1, \gamma)\, I`, :math:`\gamma = s_0^\top y_0 / y_0^\top y_0`
  (Nocedal & Wright eq. 6.20), just before the first update. On a problem with gradients and
  inverse curvature not larger than 1 this *is* :math:`H_0 = I` (scipy's BFGS, the same
  steps); on :math:`10^{-30}f`, where the identity's steps would be :math:`10^{30}` times too
  short for a line search to recover, it becomes the scaled :math:`\gamma I`.
* ``"identity"``: :math:`H_0 = I` throughout (scipy's choice; fails on :math:`10^{-30}f` in
  float32).
* ``"gamma"``: a unit-length first direction :math:`-g_0/\lVert g_0\rVert` and
  :math:`H_0 = \gamma I`: invariant to the scale of :math:`f` (identical steps on
  :math:`10^{-30}f`, :math:`f`, :math:`10^{30}f`); fewer evaluations where the inverse
  Hessian has eigenvalues well above 1, many more where it is :math:`\preceq I` (see the
  benchmarks).

L-BFGS uses :math:`H^0_k = \gamma_k I` from the newest pair at every step (Liu & Nocedal) with
a unit-length first direction (``scale_init_precond=True``, as ``optax.lbfgs``), or
:math:`H^0_k = I` and :math:`-g_0` (``False``). The default BFGS search, More–Thuente, tries
:math:`t_0 = \min(1, 1.01 \cdot 2(f_k - f_{k-1})/g_k^\top d_k)` first (scipy's choice).

**Skipped updates.** The update keeps :math:`H` positive definite only when
:math:`y^\top s > 0`. A pair is *skipped* (not stored) unless

.. math:: y_k^\top s_k > \varepsilon\, \lVert s_k\rVert\, \lVert y_k\rVert ,

with :math:`\varepsilon` the machine epsilon of the state dtype (1.2e-7 in float32): a
relative, scale-free test that also rejects a rejected step (:math:`s = 0`). A strong-Wolfe
search guarantees :math:`y^\top s > 0`, so skips happen only with other searches or in
round-off. **Resets.** When :math:`d_k` is not a descent direction (:math:`g^\top d \ge 0`) or
not finite, the memory is cleared and the step restarts from :math:`-g` (its length set as for
the first direction).

References:
  Broyden (1970), Fletcher (1970), Goldfarb (1970), Shanno (1970).
  Liu & Nocedal, "On the limited memory BFGS method for large scale optimization", Math.
  Programming 45, 1989.
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), Algorithms 6.1, 7.4 and 7.5.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradlab import base
from gradlab.linesearch import common
from gradlab.second_order.common import check_update_inputs, with_search

__all__ = [
    "ScaleByBFGSState",
    "ScaleByLBFGSState",
    "scale_by_bfgs",
    "scale_by_lbfgs",
    "bfgs",
    "lbfgs",
]


def _pair(x, g, prev_x, prev_g, count):
    r"""``(s, y, sy, accept, gamma, |g|)`` for the newest pair (accept=False on the first step).

    Norms are rescaled by the largest entry (:func:`~gradlab.linesearch.common.safe_norm`), so
    :math:`10^{\pm 30}`-scaled problems neither under- nor overflow; :math:`\lVert g\rVert` is
    computed once here for :func:`_finish` as well.
    """
    s, y = x - prev_x, g - prev_g
    ns, ny, ng = (common.safe_norm(v, v.dtype) for v in (s, y, g))
    sy = common.vdot(s, y)
    eps = jnp.finfo(s.dtype).eps
    accept = (count > 0) & jnp.isfinite(sy) & (sy > eps * ns * ny) & (ny > 0)
    safe_ny = jnp.where(ny > 0, ny, 1.0)
    # s'y / y'y without forming y'y (it over/underflows at 1e+-30 scales); the barrier stops
    # XLA from rewriting (a / b) / b into a / (b * b).
    gamma = jax.lax.optimization_barrier(sy / safe_ny) / safe_ny
    return s, y, sy, accept, gamma, ng


#: Restart-direction lengths: ``-g/|g|``, ``-g``, or ``-g`` lengthened to unit length.
_UNIT, _RAW, _AT_LEAST_UNIT = "unit", "raw", "at_least_unit"


def _finish(g, ng, d, restart_length):
    """``(d, reset)``: ``d``, or the restart direction ``-g`` (``restart_length``: scaled to
    unit length, unscaled, or lengthened to unit length when shorter) when ``d`` is not a
    finite descent direction. ``g . d < 0`` is tested on ``g/|g|`` and ``d/max|d|`` (no
    underflow for tiny gradients)."""
    ok_g = (ng > 0) & jnp.isfinite(ng)
    inv = 1.0 / jnp.where(ok_g, ng, 1.0)
    factor = {_UNIT: inv, _RAW: 1.0, _AT_LEAST_UNIT: jnp.maximum(inv, 1.0)}[restart_length]
    steepest = -(factor * g)
    md = base.small_max(jnp.abs(d))
    ok_d = (md > 0) & jnp.isfinite(md)
    slope = common.vdot(inv * g, d / jnp.where(ok_d, md, 1.0))
    descent = ok_g & ok_d & (slope < 0)
    return jnp.where(descent, d, steepest), ~descent


def _dtype(params, state_dtype):
    return common.compute_dtype(params) if state_dtype is None else jnp.dtype(state_dtype)


def _initial_fields(params, state_dtype):
    """``(n, dtype, fields)``: raveled size, state dtype, and the fields both states share."""
    dtype = _dtype(params, state_dtype)
    n = ravel_pytree(params)[0].size
    # One buffer per field (a shared one cannot be donated: "donate the same buffer twice").
    return (
        n,
        dtype,
        dict(
            count=base.zero_count(),
            num_skipped=base.zero_count(),
            num_resets=base.zero_count(),
            prev_params=jnp.zeros([n], dtype),
            prev_grad=jnp.zeros([n], dtype),
        ),
    )


def _flat_inputs(owner, state, state_type, updates, params, dtype):
    """Checked, raveled ``g, x`` in ``dtype``, ``unravel``, and the newest pair
    ``(s, y, sy, accept, gamma, |g|)`` (``params`` give :math:`s_k`)."""
    check_update_inputs(owner, state, state_type, params, updates)
    g, unravel = ravel_pytree(updates)
    g, x = g.astype(dtype), ravel_pytree(params)[0].astype(dtype)
    if x.shape != state.prev_params.shape[-1:]:
        raise ValueError(
            f"{owner}: params have {x.size} entries but the state was built by init for "
            f"{state.prev_params.shape[-1]} (update must see the parameters init saw)"
        )
    return g, x, unravel, _pair(x, g, state.prev_params, state.prev_grad, state.count)


class ScaleByBFGSState(NamedTuple):
    r"""State of :func:`scale_by_bfgs` (vectors are the raveled parameters).

    The inverse-Hessian approximation is stored as :math:`H_k = \alpha I + M` (the property
    :attr:`inv_hessian` assembles it), so a fresh or reset matrix never materialises
    :math:`I` inside the solver loop.
    """

    count: jax.Array  # shape=(), int32: directions computed so far.
    inv_hessian_scale: jax.Array  # shape=(): alpha, the multiple of I in H_k.
    inv_hessian_rest: jax.Array  # shape=(n, n): M = H_k - alpha I.
    num_updates: jax.Array  # shape=(), int32: BFGS updates applied since the last reset.
    num_skipped: jax.Array  # shape=(), int32: pairs skipped (y's <= eps |s| |y|).
    num_resets: jax.Array  # shape=(), int32: resets to -g (non-descent / non-finite).
    prev_params: jax.Array  # shape=(n,): x_{k-1}.
    prev_grad: jax.Array  # shape=(n,): g_{k-1}.

    @property
    def inv_hessian(self) -> jax.Array:
        """:math:`H_k` as a dense ``(n, n)`` matrix (:math:`I` before the first update)."""
        fresh = self.num_updates == 0
        rest = jnp.where(fresh, 0.0, self.inv_hessian_rest)
        scale = jnp.where(fresh, 1.0, self.inv_hessian_scale).astype(rest.dtype)
        return scale * jnp.eye(rest.shape[-1], dtype=rest.dtype) + rest


#: ``initial_inverse_hessian`` rules of :func:`scale_by_bfgs`: the first direction's length and
#: the scale :math:`c_0` of :math:`H_0 = c_0 I` as a function of :math:`\gamma`.
_INITIAL_RULES = {
    "max_identity_gamma": (_AT_LEAST_UNIT, lambda gamma: jnp.maximum(gamma, 1.0)),
    "identity": (_RAW, lambda gamma: 1.0),
    "gamma": (_UNIT, lambda gamma: gamma),
}
INITIAL_INVERSE_HESSIANS = tuple(_INITIAL_RULES)


def scale_by_bfgs(
    initial_inverse_hessian: str = "max_identity_gamma", state_dtype: Any = None
) -> base.GradientTransformation:
    r"""The BFGS direction :math:`d_k = -H_k g_k` with the dense inverse-Hessian update.

    ``updates`` coming in are the gradient; ``params`` are required (for :math:`s_k`). The
    :math:`n \times n` matrix lives on the raveled parameters: for small problems (use
    :func:`scale_by_lbfgs` beyond a few thousand parameters).

    Args:
      initial_inverse_hessian: ``"max_identity_gamma"`` (default), ``"identity"`` or
        ``"gamma"``: :math:`H_0` and the first direction (see the module docstring).
      state_dtype: dtype of :math:`H` and the stored vectors (default float32, float64 for
        float64 parameters).
    """
    if initial_inverse_hessian not in INITIAL_INVERSE_HESSIANS:
        raise ValueError(
            f"scale_by_bfgs: initial_inverse_hessian must be one of {INITIAL_INVERSE_HESSIANS}, "
            f"got {initial_inverse_hessian!r}"
        )
    restart_length, initial_scale = _INITIAL_RULES[initial_inverse_hessian]
    if state_dtype is not None:
        state_dtype = base.state_dtype_of(state_dtype, "scale_by_bfgs")

    def init_fn(params):
        n, dtype, fields = _initial_fields(params, state_dtype)
        return ScaleByBFGSState(
            inv_hessian_scale=jnp.ones([], dtype),
            inv_hessian_rest=jnp.zeros([n, n], dtype),
            num_updates=jnp.zeros([], jnp.int32),
            **fields,
        )

    def update_fn(updates, state, params=None, **extra):
        del extra
        g, x, unravel, (s, y, sy, accept, gamma, ng) = _flat_inputs(
            "scale_by_bfgs", state, ScaleByBFGSState, updates, params, state.inv_hessian_rest.dtype
        )
        dtype = state.inv_hessian_rest.dtype

        # H = alpha I + M. A "fresh" matrix (no update since the start or a reset) is c0 I:
        # M is ignored and alpha = c0 (1, gamma = s'y / y'y of N&W eq. 6.20, or the larger of
        # the two), taken just before the first update.
        fresh = state.num_updates == 0
        alpha = jnp.where(fresh, initial_scale(gamma), state.inv_hessian_scale)
        acc = accept.astype(dtype)
        rho = 1.0 / jnp.where(accept, sy, 1.0)
        hy = alpha * y + jnp.where(fresh, 0.0, common.matmul(state.inv_hessian_rest, y))
        # rho * (rho * y'Hy): never form rho**2 (it under/overflows at 1e+-30 scales).
        coef = rho * jax.lax.optimization_barrier(rho * common.vdot(y, hy)) + rho
        # H+ = H - rho (Hy s' + s y'H) + coef s s': one fused pass over M (skipped pairs have
        # acc = 0); alpha I is untouched.
        rest = (
            jnp.where(fresh, 0.0, state.inv_hessian_rest)
            - (rho * acc) * (jnp.outer(hy, s) + jnp.outer(s, hy))
            + (coef * acc) * jnp.outer(s, s)
        )
        num_updates = state.num_updates + accept.astype(jnp.int32)
        skipped = (state.count > 0) & ~accept

        first = num_updates == 0
        # On the first step (nothing learned yet) d = 0 is "not descent": the restart
        # direction -g (its length set by initial_inverse_hessian) is taken, not counted.
        d = jnp.where(first, 0.0, -(alpha * g + common.matmul(rest, g)))
        d, reset = _finish(g, ng, d, restart_length)
        reset = reset & ~first
        new_state = ScaleByBFGSState(
            count=base.safe_increment(state.count),
            # After a reset num_updates = 0 marks (alpha, M) stale: the next step uses c0 I.
            inv_hessian_scale=alpha.astype(dtype),
            inv_hessian_rest=rest,
            num_updates=jnp.where(reset, 0, num_updates).astype(jnp.int32),
            num_skipped=state.num_skipped + skipped.astype(jnp.int32),
            num_resets=state.num_resets + (reset & (state.count > 0)).astype(jnp.int32),
            prev_params=x,
            prev_grad=g,
        )
        return base.cast_like(unravel(d), updates), new_state

    return base.GradientTransformation(init_fn, update_fn)


class ScaleByLBFGSState(NamedTuple):
    """State of :func:`scale_by_lbfgs` (vectors are the raveled parameters)."""

    count: jax.Array  # shape=(), int32: directions computed so far.
    memory_s: jax.Array  # shape=(m, n): stored s_i (circular buffer).
    memory_y: jax.Array  # shape=(m, n): stored y_i.
    memory_rho: jax.Array  # shape=(m,): 1 / y_i's_i (0 marks an empty slot).
    gamma: jax.Array  # shape=(): initial scaling s'y / y'y of the newest pair.
    num_pairs: jax.Array  # shape=(), int32: pairs stored since the last reset.
    num_skipped: jax.Array  # shape=(), int32: pairs skipped (y's <= eps |s| |y|).
    num_resets: jax.Array  # shape=(), int32: resets to -g.
    prev_params: jax.Array  # shape=(n,): x_{k-1}.
    prev_grad: jax.Array  # shape=(n,): g_{k-1}.


#: Largest memory whose two-loop recursion is unrolled on accelerators (larger memories run
#: that many pairs per loop iteration).
_MAX_UNROLL = 16


def _recursion(g, gamma, mem_s, mem_y, mem_rho, newest_first, unroll):
    """The two loops of Algorithm 7.4 as scans of ``unroll`` pairs per iteration."""

    def first_loop(q, i):
        alpha = mem_rho[i] * common.vdot(mem_s[i], q)
        return q - alpha * mem_y[i], alpha

    def second_loop(r, inputs):
        i, alpha = inputs
        b = mem_rho[i] * common.vdot(mem_y[i], r)
        return r + (alpha - b) * mem_s[i], None

    q, alphas = jax.lax.scan(first_loop, g, newest_first, unroll=unroll)
    pairs = (newest_first[::-1], alphas[::-1])
    return jax.lax.scan(second_loop, gamma * q, pairs, unroll=unroll)[0]


def _two_loop(g, mem_s, mem_y, mem_rho, num_pairs, gamma):
    """Nocedal & Wright Algorithm 7.4: :math:`H_k g` from the stored pairs.

    The same arithmetic on every backend, looped differently. On the CPU each recursion is a
    ``lax.scan`` (XLA:CPU compiles a small one into a single kernel; unrolled it is 1.2-1.5x
    slower on 2- and 10-dimensional problems). On a GPU every loop iteration is a round trip
    through the host, so the :math:`2m` iterations are unrolled into straight-line code:
    Rosenbrock L-BFGS solves 2.6-3.8x faster on an H200 (``docs/benchmarks.md``).
    """
    m = mem_rho.shape[0]
    newest_first = jnp.mod(num_pairs - 1 - jnp.arange(m, dtype=jnp.int32), m)
    loop = functools.partial(_recursion, newest_first=newest_first)
    pairs = (mem_s, mem_y, mem_rho)
    return jax.lax.platform_dependent(
        g,
        gamma,
        *pairs,
        cpu=functools.partial(loop, unroll=1),
        default=functools.partial(loop, unroll=min(m, _MAX_UNROLL)),
    )


def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True, state_dtype: Any = None
) -> base.GradientTransformation:
    r"""The L-BFGS direction :math:`d_k = -H_k g_k` by the two-loop recursion (N&W Alg. 7.4).

    :math:`H_k` is the BFGS matrix obtained by applying the last ``memory_size`` pairs
    :math:`(s_i, y_i)` to :math:`H^0_k = \gamma_k I`, :math:`\gamma_k = s^\top y / y^\top y`
    of the newest pair (1 with ``scale_init_precond=False``). Memory :math:`O(mn)`.

    Args:
      memory_size: :math:`m`, pairs kept (static int >= 1).
      scale_init_precond: use :math:`\gamma_k` (and a unit-length first step); ``False``:
        :math:`H^0_k = I`.
      state_dtype: dtype of the stored pairs (default float32, float64 for float64 params).
    """
    m = base.check_positive_int(memory_size, "memory_size", owner="scale_by_lbfgs")
    if state_dtype is not None:
        state_dtype = base.state_dtype_of(state_dtype, "scale_by_lbfgs")
    if not isinstance(scale_init_precond, bool):
        raise TypeError(
            f"scale_by_lbfgs: scale_init_precond must be a bool, got {scale_init_precond!r}"
        )

    def init_fn(params):
        n, dtype, fields = _initial_fields(params, state_dtype)
        return ScaleByLBFGSState(
            memory_s=jnp.zeros([m, n], dtype),
            memory_y=jnp.zeros([m, n], dtype),
            memory_rho=jnp.zeros([m], dtype),
            gamma=jnp.ones([], dtype),
            num_pairs=jnp.zeros([], jnp.int32),
            **fields,
        )

    def update_fn(updates, state, params=None, **extra):
        del extra
        g, x, unravel, (s, y, sy, accept, gamma, ng) = _flat_inputs(
            "scale_by_lbfgs", state, ScaleByLBFGSState, updates, params, state.memory_s.dtype
        )
        dtype = state.memory_s.dtype

        slot = jnp.mod(state.num_pairs, m)
        # In-place slot writes (a skipped pair rewrites the slot with its old contents).
        mem_s = jax.lax.dynamic_update_index_in_dim(
            state.memory_s, jnp.where(accept, s, state.memory_s[slot]), slot, 0
        )
        mem_y = jax.lax.dynamic_update_index_in_dim(
            state.memory_y, jnp.where(accept, y, state.memory_y[slot]), slot, 0
        )
        rho = 1.0 / jnp.where(accept, sy, 1.0)
        mem_rho = jax.lax.dynamic_update_index_in_dim(
            state.memory_rho, jnp.where(accept, rho, state.memory_rho[slot]), slot, 0
        )
        num_pairs = state.num_pairs + accept.astype(jnp.int32)
        gamma = jnp.where(accept, gamma, state.gamma) if scale_init_precond else state.gamma

        hg = _two_loop(g, mem_s, mem_y, mem_rho, num_pairs, gamma)
        first = num_pairs == 0
        d, reset = _finish(g, ng, jnp.where(first, 0.0, -hg), _UNIT if scale_init_precond else _RAW)
        reset = reset & ~first
        new_state = ScaleByLBFGSState(
            count=base.safe_increment(state.count),
            # A reset empties the memory by zeroing rho: a slot with rho = 0 contributes
            # nothing to the two-loop recursion (stored pairs are finite), so s and y stay.
            memory_s=mem_s,
            memory_y=mem_y,
            memory_rho=jnp.where(reset, 0.0, mem_rho),
            gamma=jnp.where(reset, 1.0, gamma).astype(dtype),
            num_pairs=jnp.where(reset, 0, num_pairs).astype(jnp.int32),
            num_skipped=state.num_skipped + ((state.count > 0) & ~accept).astype(jnp.int32),
            num_resets=state.num_resets + (reset & (state.count > 0)).astype(jnp.int32),
            prev_params=x,
            prev_grad=g,
        )
        return base.cast_like(unravel(d), updates), new_state

    return base.GradientTransformation(init_fn, update_fn)


def bfgs(
    learning_rate: base.ScalarOrSchedule | None = None,
    initial_inverse_hessian: str = "max_identity_gamma",
    linesearch: base.GradientTransformation | str | None = "more_thuente",
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""BFGS with a line search: ``chain(scale_by_bfgs, [learning rate], linesearch)``.

    .. math:: x_{k+1} = x_k - t_k H_k \nabla f(x_k)

    Args:
      learning_rate: optional fixed factor applied before the search (``None``: none).
      initial_inverse_hessian: see :func:`scale_by_bfgs`.
      linesearch: a transformation, ``"more_thuente"`` (default:
        :func:`~gradlab.linesearch.scale_by_more_thuente_linesearch`, :math:`c_1 = 10^{-4}`,
        :math:`c_2 = 0.9`, first trial ``"quadratic_capped"``), ``"strong_wolfe"`` (the zoom
        search), ``"backtracking"``, ``"exact"`` or ``None``. With
        ``initial_inverse_hessian="identity"`` this is scipy's BFGS (the same evaluation
        counts); the default differs from it only where the identity is too small.
      state_dtype: see :func:`scale_by_bfgs`.
    """
    descent = scale_by_bfgs(initial_inverse_hessian, state_dtype)
    return with_search(descent, learning_rate, linesearch, "quadratic_capped")


def lbfgs(
    learning_rate: base.ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: base.GradientTransformation | str | None = "strong_wolfe",
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""L-BFGS with a line search; the same call as ``optax.lbfgs``.

    ``chain(scale_by_lbfgs(memory_size, scale_init_precond), [learning rate], linesearch)``;
    unlike optax the direction already carries the minus sign and the default search reports
    its status and counts its evaluations.

    Args:
      learning_rate: optional fixed factor applied before the search (``None``: none).
      memory_size: pairs kept (static int >= 1).
      scale_init_precond: see :func:`scale_by_lbfgs`.
      linesearch: as in :func:`bfgs`; the default is the strong-Wolfe zoom search
        (``"strong_wolfe"``) trying :math:`t = 1` first (the natural quasi-Newton step,
        ``optax.lbfgs``'s choice).
      state_dtype: see :func:`scale_by_lbfgs`.
    """
    descent = scale_by_lbfgs(memory_size, scale_init_precond, state_dtype)
    return with_search(descent, learning_rate, linesearch, "one")
