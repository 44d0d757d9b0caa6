r"""Strong-Wolfe line search by bracketing and zoom (Nocedal & Wright, Algorithms 3.5 and 3.6).

A step :math:`t` along the direction :math:`d` satisfies the *strong Wolfe conditions* when

.. math::

    f(x + t d) \le f(x) + c_1\, t\, \nabla f(x)^\top d
    \quad\text{and}\quad
    |\nabla f(x + t d)^\top d| \le c_2\, |\nabla f(x)^\top d| ,

:math:`0 < c_1 < c_2 < 1`. The search first *brackets* an interval that contains such steps
(growing the trial by safeguarded cubic extrapolation), then *zooms* into it with safeguarded
cubic, then quadratic, then bisection interpolation. Everything runs in one bounded
``lax.while_loop`` (at most ``max_linesearch_steps`` evaluations), so it is jittable and
vmappable.

Failure handling, where the anchors go wrong (reliability notes H1–H4):

* the slope :math:`\nabla f^\top d` is checked first: :math:`\ge 0` is ``NOT_DESCENT``, NaN is
  ``NON_FINITE``; no trial is made and the step is 0;
* a NaN/Inf value or gradient at a trial counts as :math:`f = +\infty`: the interval shrinks
  towards the last good point; when *every* trial is non-finite the search fails
  (``LINE_SEARCH_FAILED``, step 0) rather than reporting success;
* when :math:`f` keeps decreasing up to a displacement of ``max_step_norm``, the search stops
  there with ``UNBOUNDED``; up to ``max_learning_rate`` (a cap the caller chose), the step at
  the cap is taken (``OK``, ``curvature_satisfied=False``);
* when the budget runs out, the lowest trial that satisfied sufficient decrease is taken
  (``OK``, with ``curvature_satisfied=False``); with none, the step is rejected
  (``LINE_SEARCH_FAILED``, step 0). An uphill step is never returned.

References:
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), §3.5, Algorithms 3.5–3.6.
  Wolfe, "Convergence conditions for ascent methods", SIAM Review 11(2), 1969.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.linesearch import common

__all__ = ["ScaleByZoomLinesearchState", "scale_by_zoom_linesearch", "INITIAL_GUESSES"]

_OWNER = "scale_by_zoom_linesearch"
INITIAL_GUESSES = common.INITIAL_GUESSES


class ScaleByZoomLinesearchState(common.WolfeSearchState):
    """State of :func:`scale_by_zoom_linesearch` (the fields of
    :class:`~gradlab.linesearch.common.WolfeSearchState`)."""

    __slots__ = ()


class _Carry(NamedTuple):
    i: jax.Array  # evaluations so far
    done: jax.Array
    zooming: jax.Array
    tau: jax.Array  # next trial (displacement length along the unit direction)
    prev: jax.Array  # (tau, f, phi') of the previous bracketing trial
    lo: jax.Array  # (tau, f, phi') of the interval end with the lower value
    hi: jax.Array  # (tau, f, phi') of the other end
    tau_b: jax.Array  # best point with sufficient decrease (0: none yet)
    f_b: jax.Array
    g_b: Any
    wolfe: jax.Array  # the best point satisfies strong Wolfe (accepted)
    unbounded: jax.Array


def scale_by_zoom_linesearch(
    max_linesearch_steps: int = 30,
    max_learning_rate: base.ScalarOrSchedule | None = None,
    slope_rtol: base.ScalarOrSchedule = 1e-4,
    curv_rtol: base.ScalarOrSchedule = 0.9,
    initial_guess_strategy: str = "one",
    max_step_norm: base.ScalarOrSchedule = 1e10,
) -> base.GradientTransformationExtraArgs:
    r"""Scale the direction by a step satisfying the strong Wolfe conditions.

    With :math:`g = \nabla f(x)`, :math:`c_1` = ``slope_rtol`` and :math:`c_2` = ``curv_rtol``,
    the accepted :math:`t` satisfies

    .. math::

        f(x + t d) \le f(x) + c_1 t\, g^\top d, \qquad
        |\nabla f(x + t d)^\top d| \le c_2 |g^\top d| .

    Internally the search runs on the unit direction :math:`\hat d = d/\lVert d\rVert` with
    displacement :math:`\tau = t\lVert d\rVert`, so slopes stay representable in float32 for
    gradients of size :math:`10^{\pm 30}`.

    The first trial (``initial_guess_strategy``):

    * ``"one"``: :math:`t_0 = 1` (Newton and quasi-Newton directions, whose natural step is 1);
    * ``"keep"``: the previous accepted :math:`t` (1 on the first search);
    * ``"quadratic"``: :math:`t_0 = 1.01 \cdot 2 (f_k - f_{k-1}) / g_k^\top d_k` (Nocedal &
      Wright eq. 3.60: the step of the previous decrease, for steepest descent and nonlinear
      CG); on the first search :math:`t_0 = 1.01\,\lVert g\rVert / |g^\top \hat d|/\lVert d
      \rVert`, a displacement of about unit length.
    * ``"quadratic_capped"``: :math:`\min(1, \cdot)` of the above (scipy's BFGS choice: 1 is
      the natural quasi-Newton step, the cap stops an over-estimated :math:`H` from wasting
      evaluations).

    ``update(updates, state, params, *, value, grad, value_fn, **extra)`` as in
    :func:`~gradlab.linesearch.scale_by_backtracking_linesearch`; returns :math:`t\,d`.

    Args:
      max_linesearch_steps: most evaluations per search (static, >= 1).
      max_learning_rate: largest :math:`t` (``None``: no bound on :math:`t`); a step at the cap
        that still decreases is taken.
      slope_rtol: :math:`c_1 \in (0, 1)`.
      curv_rtol: :math:`c_2 \in (c_1, 1)`; 0.9 for quasi-Newton, about 0.1–0.4 for CG.
      initial_guess_strategy: ``"one"``, ``"keep"``, ``"quadratic"`` or
        ``"quadratic_capped"`` (static).
      max_step_norm: largest displacement :math:`\lVert t d\rVert`; a search whose value still
        decreases there stops with ``UNBOUNDED``.

    Returns:
      A :class:`~gradlab.base.GradientTransformationExtraArgs`.

    References:
      Nocedal & Wright (2006), Algorithms 3.5 and 3.6, eqs. (3.59)–(3.60).
    """
    max_steps = base.check_positive_int(max_linesearch_steps, "max_linesearch_steps", owner=_OWNER)
    settings = common.wolfe_hyperparameters(
        _OWNER,
        initial_guess_strategy,
        slope_rtol,
        curv_rtol,
        max_learning_rate,
        max_step_norm,
        strict_order=True,  # c1 = c2 leaves no strong-Wolfe interval for the zoom to find
    )

    def init_fn(params):
        return common.initial_wolfe_state(ScaleByZoomLinesearchState, params)

    def search(updates, state, params, *, dtype, f0, grad, value_fn):
        count = state.count
        c1_t = base.resolve(settings.slope_rtol, count, dtype)
        c2_t = base.resolve(settings.curv_rtol, count, dtype)
        # An invalid traced pair (c1 >= c2) poisons this lane instead of misbehaving silently.
        c2_t = jnp.where(c1_t < c2_t, c2_t, jnp.nan)
        start = common.start_wolfe_search(
            updates, state, grad, f0, settings, dtype=dtype, hyperparameters_ok=jnp.isfinite(c2_t)
        )
        unit, safe_norm, s0, code, searching, tau0, tau_max, norm_capped = start

        value_and_grad = jax.value_and_grad(value_fn)
        eps = jnp.finfo(dtype).eps
        zero = jnp.zeros([], dtype)

        s_scale = jnp.where(searching, jnp.abs(s0), 1.0)

        origin = jnp.stack([zero, f0, s0])  # phi at tau = 0
        offset = jnp.stack([zero, f0, zero])
        scale = jnp.stack([jnp.ones([], dtype), s_scale, s_scale])

        def normalise(point):
            """(tau, f, phi') -> (tau, (f - f0)/|phi'(0)|, phi'/|phi'(0)|)."""
            return (point - offset) / scale

        def cond(c: _Carry):
            return ~c.done & searching

        def body(c: _Carry):
            tau = c.tau
            f, g, s, finite = common.evaluate_trial(
                value_and_grad, params, updates, start, tau, grad
            )
            f = jnp.where(finite, f, jnp.inf)
            s = jnp.where(finite, s, 0.0)
            # Strict decrease as well: in float32, f0 + c1*tau*s0 can round to f0 and accept a
            # step that changes nothing.
            armijo = finite & (f <= f0 + c1_t * tau * s0) & (f < f0)
            curv = finite & (jnp.abs(s) <= c2_t * jnp.abs(s0))

            # Bracketing phase (Algorithm 3.5).
            first = c.i == 0
            br_a = ~armijo | (~first & (f >= c.prev[1]))
            br_accept = ~br_a & curv
            br_c = ~br_a & ~curv & (s >= 0)
            br_extrap = ~br_a & ~curv & (s < 0)
            at_max = tau >= tau_max * (1 - 4 * eps)
            br_unbounded = br_extrap & at_max & norm_capped
            capped = br_extrap & at_max & ~norm_capped  # at max_learning_rate: taken as OK
            # Zoom phase (Algorithm 3.6).
            zm_a = ~armijo | (f >= c.lo[1])
            zm_accept = ~zm_a & curv
            zm_flip = ~zm_a & ~curv & (s * (c.hi[0] - c.lo[0]) >= 0)

            z = c.zooming
            accept = jnp.where(z, zm_accept, br_accept)
            unbounded = ~z & br_unbounded
            start_zoom = ~z & (br_a | br_c)
            # New interval ends, each a (tau, f, phi') triple selected whole.
            # Bracketing: (a) lo=prev, hi=cur; (c) lo=cur, hi=prev.
            # Zooming: (a) hi=cur; otherwise hi=lo if flip, then lo=cur.
            cur = jnp.stack([tau, f, s])
            lo_is_cur = jnp.where(z, ~zm_a, br_c)
            lo_is_prev = ~z & br_a
            hi_is_cur = jnp.where(z, zm_a, br_a)
            hi_is_prev = ~z & br_c
            hi_is_lo = z & zm_flip
            lo = jnp.where(lo_is_cur, cur, jnp.where(lo_is_prev, c.prev, c.lo))
            hi = jnp.where(
                hi_is_cur, cur, jnp.where(hi_is_prev, c.prev, jnp.where(hi_is_lo, c.lo, c.hi))
            )
            zooming = z | start_zoom

            # Next trial: interpolate inside [lo, hi], or extrapolate beyond tau.
            # Interpolate on f and slopes divided by |phi'(0)|: O(tau) numbers at any scale.
            lo_n, hi_n, prev_n, cur_n = (normalise(v) for v in (lo, hi, c.prev, cur))
            interp = common.safeguarded_interpolation(*lo_n, *hi_n)
            cub = common.cubic_min(*prev_n, *cur_n)
            width = tau - c.prev[0]
            lo_ext, hi_ext = tau + 1.1 * width, tau + 4.0 * width
            ext = jnp.where(jnp.isfinite(cub) & (cub > tau), jnp.clip(cub, lo_ext, hi_ext), hi_ext)
            ext = jnp.minimum(ext, tau_max)
            next_tau = jnp.where(zooming, interp, ext)

            better = armijo & (f < c.f_b)
            take = accept | unbounded | better
            tau_b = jnp.where(take, tau, c.tau_b)
            f_b = jnp.where(take, f, c.f_b)
            g_b = common.tree_select(take, g, c.g_b)

            i = c.i + 1
            tiny_interval = zooming & (
                jnp.abs(hi[0] - lo[0]) <= 8 * eps * jnp.maximum(lo[0], hi[0])
            )
            done = accept | unbounded | (~z & capped) | (i >= max_steps) | tiny_interval
            return _Carry(
                i=i,
                done=done,
                zooming=zooming,
                tau=next_tau,
                prev=jnp.where(br_extrap, cur, c.prev),
                lo=lo,
                hi=hi,
                tau_b=tau_b,
                f_b=f_b,
                g_b=g_b,
                wolfe=accept,
                unbounded=unbounded,
            )

        carry = _Carry(
            i=jnp.zeros([], jnp.int32),
            done=jnp.asarray(False),
            zooming=jnp.asarray(False),
            tau=tau0,
            prev=origin,
            lo=origin,
            hi=origin,
            tau_b=zero,
            f_b=jnp.asarray(jnp.inf, dtype),
            g_b=grad,
            wolfe=jnp.asarray(False),
            unbounded=jnp.asarray(False),
        )
        return common.run_bracketing_search(cond, body, carry, state, updates, start, f0, grad)

    return base.GradientTransformationExtraArgs(
        init_fn, common.search_update(_OWNER, ScaleByZoomLinesearchState, search)
    )
