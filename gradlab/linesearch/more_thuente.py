r"""Moré–Thuente line search: MINPACK's ``dcsrch``/``dcstep`` as one bounded ``lax.while_loop``.

The search looks for a step :math:`t` along :math:`d` that satisfies the *strong Wolfe
conditions*

.. math::

    \varphi(t) \le \varphi(0) + c_1\, t\, \varphi'(0)
    \quad\text{and}\quad
    |\varphi'(t)| \le c_2\, |\varphi'(0)| ,
    \qquad \varphi(t) = f(x + t d),

by keeping an interval :math:`I` with end points :math:`t_x` (the best step so far) and
:math:`t_y`, and choosing every new trial :math:`t_+` by MINPACK's ``dcstep``, a safeguarded
cubic, quadratic or secant step whose case depends on how the trial compares with :math:`t_x`
(Moré & Thuente 1994, §4):

1. :math:`\varphi_t > \varphi_x`: a minimiser is bracketed in :math:`[t_x, t]`; take the cubic
   step if it is closer to :math:`t_x` than the quadratic one, else their average;
2. :math:`\varphi_t \le \varphi_x` and the derivatives have opposite signs: bracketed in
   :math:`[t, t_x]`; the cubic or the secant step, whichever is farther from :math:`t`;
3. same signs, :math:`|\varphi'_t|` decreasing: the cubic step if the cubic tends to infinity
   beyond :math:`t`, else the secant step; inside a bracket the step is held within
   :math:`t + 0.66 (t_y - t)`;
4. same signs, :math:`|\varphi'_t|` not decreasing: the cubic through :math:`t` and
   :math:`t_y` when bracketed, else the extrapolation limit.

Until a step with :math:`\psi(t) \le 0` and :math:`\varphi'(t) \ge 0` is found, the steps are
chosen on the *modified function* :math:`\psi(t) = \varphi(t) - \varphi(0) - c_1 t
\varphi'(0)` (first stage), whose minimisers satisfy sufficient decrease. Before a bracket is
found the trial is kept in :math:`[t + 1.1 (t - t_x),\ t + 4 (t - t_x)]`; once bracketed, a
bisection replaces the step whenever the interval has not shrunk by a factor 0.66 in two
trials, and the search stops when the interval is narrower than ``xtol`` relative to its upper
end (or rounding makes the next trial fall outside it).

As in :mod:`gradlab.linesearch.zoom`, the search runs on the unit direction
:math:`\hat d = d/\lVert d\rVert` (displacement :math:`\tau = t\lVert d\rVert`) with values and
slopes divided by :math:`|\varphi'(0)|`, so float32 works at any gradient scale. Failure
handling is the same as the zoom search's:

* :math:`g^\top d \ge 0` is ``NOT_DESCENT``, NaN is ``NON_FINITE``: no trial, step 0;
* a NaN/Inf value or gradient at a trial counts as :math:`\varphi = +\infty`: the interval
  closes at that trial and the next trial bisects towards :math:`t_x`; when every trial is
  non-finite the search fails (``LINE_SEARCH_FAILED``, step 0);
* a step at the largest allowed displacement that still decreases fast
  (:math:`\psi \le 0,\ \varphi' \le c_1 \varphi'(0)`) stops the search: with ``UNBOUNDED``
  at ``max_step_norm``, with the step taken (``OK``) at ``max_learning_rate``;
* when the budget runs out or the interval collapses, the lowest trial that satisfied
  sufficient decrease is taken (``OK``, ``curvature_satisfied=False``); with none the step is
  rejected (``LINE_SEARCH_FAILED``). An uphill step is never returned.

The one departure from MINPACK: when the interval collapses, MINPACK evaluates :math:`t_x`
once more before it returns it; this search returns its stored value and gradient instead, one
evaluation fewer.

References:
  Moré & Thuente, "Line search algorithms with guaranteed sufficient decrease", ACM
  Transactions on Mathematical Software 20(3), 286–307, 1994.
  Averick, Carter & Moré, MINPACK-2 routines ``dcsrch``/``dcstep`` (1993).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.linesearch import common

__all__ = ["ScaleByMoreThuenteLinesearchState", "scale_by_more_thuente_linesearch"]

_OWNER = "scale_by_more_thuente_linesearch"
_XTRAPL, _XTRAPU, _P66 = 1.1, 4.0, 0.66


class ScaleByMoreThuenteLinesearchState(common.WolfeSearchState):
    """State of :func:`scale_by_more_thuente_linesearch` (the fields of
    :class:`~gradlab.linesearch.common.WolfeSearchState`)."""

    __slots__ = ()


class _Carry(NamedTuple):
    i: jax.Array  # evaluations so far
    done: jax.Array
    tau: jax.Array  # next trial (displacement along the unit direction)
    brackt: jax.Array  # a minimiser is bracketed by [stx, sty]
    stage2: jax.Array  # psi(t) <= 0 and phi'(t) >= 0 was seen: work on phi itself
    stx: jax.Array  # best step and its (normalised) value and slope
    fx: jax.Array
    gx: jax.Array
    sty: jax.Array  # other end of the interval
    fy: jax.Array
    gy: jax.Array
    stmin: jax.Array  # where the next trial may lie
    stmax: jax.Array
    width: jax.Array  # interval widths of the last two trials (for the 0.66 rule)
    width1: jax.Array
    tau_b: jax.Array  # best point with sufficient decrease (0: none yet)
    f_b: jax.Array
    g_b: Any
    wolfe: jax.Array  # the best point satisfies strong Wolfe (accepted)
    unbounded: jax.Array


def _cubic_parts(theta, da, db):
    """``(s, s * sqrt((theta/s)^2 - (da/s)(db/s)))``: the cubic's discriminant, rescaled by
    :math:`s = \\max(|\\theta|, |d_a|, |d_b|)` so that it neither over- nor underflows."""
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(da)), jnp.abs(db))
    s = jnp.where(s > 0, s, 1.0)
    rad = (theta / s) ** 2 - (da / s) * (db / s)
    return s, rad


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    r"""One safeguarded step of Moré & Thuente (1994), §4 (the four cases of the module doc).

    ``(stx, fx, dx)`` is the best point, ``(sty, fy, dy)`` the other end of the interval,
    ``(stp, fp, dp)`` the new trial; ``stpmin``/``stpmax`` bound the step when not bracketed.

    Returns:
      ``(stx, fx, dx, sty, fy, dy, next_step, brackt)``: the updated interval and the next
      trial (NaN when the arithmetic broke down; the caller safeguards).
    """
    sgnd = dp * jnp.sign(dx)
    case1 = fp > fx
    case2 = ~case1 & (sgnd < 0)
    case3 = ~case1 & ~case2 & (jnp.abs(dp) < jnp.abs(dx))

    # Cases 1-3 interpolate between stx and stp.
    h = stp - stx
    theta = 3.0 * (fx - fp) / h + dx + dp
    s, rad = _cubic_parts(theta, dx, dp)
    root = s * jnp.sqrt(jnp.where(case3, jnp.maximum(rad, 0.0), rad))
    secant = stp + (dp / (dp - dx)) * (stx - stp)

    # Case 1: a higher value; cubic if closer to stx than the quadratic, else their average.
    g1 = jnp.where(stp < stx, -root, root)
    r1 = ((g1 - dx) + theta) / (((g1 - dx) + g1) + dp)
    stpc1 = stx + r1 * h
    stpq1 = stx + ((dx / ((fx - fp) / h + dx)) / 2.0) * h
    step1 = jnp.where(
        jnp.abs(stpc1 - stx) <= jnp.abs(stpq1 - stx), stpc1, stpc1 + (stpq1 - stpc1) / 2.0
    )

    # Cases 2 and 3 share the cubic written around stp.
    g23 = jnp.where(stp > stx, -root, root)
    p23 = (g23 - dp) + theta
    # Case 2: slopes of opposite signs; the cubic or the secant step, the farther from stp.
    r2 = p23 / (((g23 - dp) + g23) + dx)
    stpc2 = stp + r2 * (stx - stp)
    step2 = jnp.where(jnp.abs(stpc2 - stp) > jnp.abs(secant - stp), stpc2, secant)

    # Case 3: same signs, |slope| decreasing; the cubic only if it tends to infinity beyond stp.
    r3 = p23 / ((g23 + (dx - dp)) + g23)
    stpc3 = jnp.where(
        (r3 < 0) & (g23 != 0), stp + r3 * (stx - stp), jnp.where(stp > stx, stpmax, stpmin)
    )
    closer = jnp.where(jnp.abs(stpc3 - stp) < jnp.abs(secant - stp), stpc3, secant)
    limit = stp + _P66 * (sty - stp)
    step3_in = jnp.where(stp > stx, jnp.minimum(limit, closer), jnp.maximum(limit, closer))
    farther = jnp.where(jnp.abs(stpc3 - stp) > jnp.abs(secant - stp), stpc3, secant)
    step3_out = jnp.clip(farther, stpmin, stpmax)
    step3 = jnp.where(brackt, step3_in, step3_out)

    # Case 4: same signs, |slope| not decreasing; the cubic through stp and sty if bracketed.
    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    s4, rad4 = _cubic_parts(theta4, dy, dp)
    root4 = s4 * jnp.sqrt(rad4)
    g4 = jnp.where(stp > sty, -root4, root4)
    r4 = ((g4 - dp) + theta4) / (((g4 - dp) + g4) + dy)
    step4 = jnp.where(brackt, stp + r4 * (sty - stp), jnp.where(stp > stx, stpmax, stpmin))

    step = jnp.where(case1, step1, jnp.where(case2, step2, jnp.where(case3, step3, step4)))

    # The new interval: a higher value closes it at stp; otherwise stp becomes the best point
    # (and the old best the other end when the slopes changed sign).
    to_y = case1
    swap = ~case1 & (sgnd < 0)
    sty_n = jnp.where(to_y, stp, jnp.where(swap, stx, sty))
    fy_n = jnp.where(to_y, fp, jnp.where(swap, fx, fy))
    dy_n = jnp.where(to_y, dp, jnp.where(swap, dx, dy))
    stx_n = jnp.where(to_y, stx, stp)
    fx_n = jnp.where(to_y, fx, fp)
    dx_n = jnp.where(to_y, dx, dp)
    return stx_n, fx_n, dx_n, sty_n, fy_n, dy_n, step, brackt | case1 | case2


def scale_by_more_thuente_linesearch(
    max_linesearch_steps: int = 20,
    slope_rtol: base.ScalarOrSchedule = 1e-4,
    curv_rtol: base.ScalarOrSchedule = 0.9,
    xtol: base.ScalarOrSchedule = 0.1,
    initial_guess_strategy: str = "one",
    max_learning_rate: base.ScalarOrSchedule | None = None,
    max_step_norm: base.ScalarOrSchedule = 1e10,
) -> base.GradientTransformationExtraArgs:
    r"""Scale the direction by a strong-Wolfe step found by the Moré–Thuente algorithm.

    With :math:`g = \nabla f(x)`, :math:`c_1` = ``slope_rtol`` (MINPACK's ``ftol``) and
    :math:`c_2` = ``curv_rtol`` (``gtol``), the accepted :math:`t` satisfies

    .. math::

        f(x + t d) \le f(x) + c_1 t\, g^\top d, \qquad
        |\nabla f(x + t d)^\top d| \le c_2 |g^\top d| ,

    unless the interval of uncertainty becomes narrower than ``xtol`` times its upper end,
    where the best sufficient-decrease trial is returned. The algorithm (the module docstring
    has the four cases) is the one behind scipy's BFGS, CG and L-BFGS-B searches: given the
    same :math:`c_1, c_2`, ``xtol`` and first trial it visits the same steps.

    The first trial (``initial_guess_strategy``, as in
    :func:`~gradlab.linesearch.scale_by_zoom_linesearch`): ``"one"`` (:math:`t_0 = 1`),
    ``"keep"`` (the previous accepted step), ``"quadratic"`` (:math:`t_0 = 1.01 \cdot 2 (f_k -
    f_{k-1}) / g_k^\top d_k`; a unit displacement on the first search) and
    ``"quadratic_capped"`` (:math:`\min(1, \cdot)` of it: scipy's BFGS/CG choice).

    ``update(updates, state, params, *, value, grad, value_fn, **extra)`` as in the other
    searches; returns :math:`t\,d`.

    Args:
      max_linesearch_steps: most evaluations per search (static, >= 1).
      slope_rtol: :math:`c_1 \in (0, 1)`, the sufficient-decrease constant.
      curv_rtol: :math:`c_2 \in [c_1, 1)`; 0.9 for quasi-Newton, about 0.1–0.4 for CG
        (:math:`c_2 = c_1` is allowed, as in MINPACK).
      xtol: relative width :math:`\in [0, 1)` of the interval at which the search gives up
        refining (0.1 in MINPACK and L-BFGS-B; scipy's BFGS/CG use ``1e-14``).
      initial_guess_strategy: ``"one"``, ``"keep"``, ``"quadratic"`` or
        ``"quadratic_capped"`` (static).
      max_learning_rate: largest :math:`t` (``None``: no bound on :math:`t`); a step at the cap
        that still decreases fast is taken.
      max_step_norm: largest displacement :math:`\lVert t d\rVert`; a search whose value still
        decreases fast there stops with ``UNBOUNDED``.

    Returns:
      A :class:`~gradlab.base.GradientTransformationExtraArgs`.

    References:
      Moré & Thuente, "Line search algorithms with guaranteed sufficient decrease", ACM TOMS
      20(3), 1994.
    """
    max_steps = base.check_positive_int(max_linesearch_steps, "max_linesearch_steps", owner=_OWNER)
    settings = common.wolfe_hyperparameters(
        _OWNER,
        initial_guess_strategy,
        slope_rtol,
        curv_rtol,
        max_learning_rate,
        max_step_norm,
        strict_order=False,  # MINPACK's dcsrch accepts ftol = gtol
    )
    x_tol = base.hyperparameter(xtol, "xtol", base.UNIT_INTERVAL_OPEN_RIGHT, owner=_OWNER)

    def init_fn(params):
        return common.initial_wolfe_state(ScaleByMoreThuenteLinesearchState, params)

    def search(updates, state, params, *, dtype, f0, grad, value_fn):
        count = state.count
        c1_t = base.resolve(settings.slope_rtol, count, dtype)
        c2_t = base.resolve(settings.curv_rtol, count, dtype)
        xtol_t = base.resolve(x_tol, count, dtype)
        # An invalid traced pair (c1 > c2) poisons this lane instead of misbehaving silently.
        c2_t = jnp.where(c1_t <= c2_t, c2_t, jnp.nan)
        ok_hyper = jnp.isfinite(c2_t) & jnp.isfinite(xtol_t)
        start = common.start_wolfe_search(
            updates, state, grad, f0, settings, dtype=dtype, hyperparameters_ok=ok_hyper
        )
        unit, safe_norm, s0, code, searching, tau0, tau_max, norm_capped = start

        value_and_grad = jax.value_and_grad(value_fn)
        eps = jnp.finfo(dtype).eps
        zero = jnp.zeros([], dtype)
        # Work on phi(tau)/|phi'(0)| - phi(0): phi(0) = 0, phi'(0) = -1, and every number is
        # O(tau) whatever the scale of f.
        s_scale = jnp.where(searching, jnp.abs(s0), 1.0)
        gtest = -c1_t  # c1 * phi'(0)

        def cond(c: _Carry):
            return ~c.done & searching

        def body(c: _Carry):
            tau = c.tau
            f, g, s, finite = common.evaluate_trial(
                value_and_grad, params, updates, start, tau, grad
            )
            fn = jnp.where(finite, (f - f0) / s_scale, jnp.inf)
            sn = jnp.where(finite, s / s_scale, 0.0)
            ftest = tau * gtest
            # Strict decrease as well: in float32, f0 + c1*tau*s0 can round to f0.
            armijo = finite & (fn <= ftest) & (f < f0)
            accept = armijo & (jnp.abs(sn) <= c2_t)
            at_max = tau >= tau_max * (1 - 4 * eps)
            # MINPACK stops at the largest step while it still decreases fast (convergence wins):
            # "unbounded" at max_step_norm, an accepted step at max_learning_rate.
            at_cap = at_max & armijo & (sn <= gtest) & ~accept
            unbounded = at_cap & norm_capped
            stage2 = c.stage2 | (finite & (fn <= ftest) & (sn >= 0))

            # First stage with a lower but insufficient value: step on psi = phi - c1 tau phi'(0).
            shift = jnp.where(~stage2 & (fn <= c.fx) & (fn > ftest), gtest, 0.0)
            stx, fx, gx, sty, fy, gy, nxt, brackt = _dcstep(
                c.stx,
                c.fx - c.stx * shift,
                c.gx - shift,
                c.sty,
                c.fy - c.sty * shift,
                c.gy - shift,
                tau,
                fn - tau * shift,
                sn - shift,
                c.brackt,
                c.stmin,
                c.stmax,
            )
            fx, gx = fx + stx * shift, gx + shift
            fy, gy = fy + sty * shift, gy + shift
            # A non-finite trial closes the interval there; the next trial bisects towards stx.
            sty = jnp.where(finite, sty, tau)
            fy = jnp.where(finite, fy, jnp.inf)
            gy = jnp.where(finite, gy, 0.0)
            stx, fx, gx = (
                jnp.where(finite, stx, c.stx),
                jnp.where(finite, fx, c.fx),
                jnp.where(finite, gx, c.gx),
            )
            brackt = brackt | ~finite
            mid = stx + 0.5 * (sty - stx)
            nxt = jnp.where(finite & jnp.isfinite(nxt), nxt, jnp.where(brackt, mid, c.stmax))

            # Bisect when two trials did not shrink the bracket by 0.66.
            new_width = jnp.abs(sty - stx)
            nxt = jnp.where(brackt & (new_width >= _P66 * c.width1), mid, nxt)
            width1 = jnp.where(brackt, c.width, c.width1)
            width = jnp.where(brackt, new_width, c.width)
            stmin = jnp.where(brackt, jnp.minimum(stx, sty), nxt + _XTRAPL * (nxt - stx))
            stmax = jnp.where(brackt, jnp.maximum(stx, sty), nxt + _XTRAPU * (nxt - stx))
            nxt = jnp.clip(nxt, 0.0, tau_max)
            # MINPACK would evaluate stx once more here and return it; stop instead.
            collapsed = brackt & (
                (nxt <= stmin) | (nxt >= stmax) | (stmax - stmin <= xtol_t * stmax)
            )

            better = armijo & (f < c.f_b)
            take = accept | unbounded | better
            tau_b = jnp.where(take, tau, c.tau_b)
            f_b = jnp.where(take, f, c.f_b)
            g_b = common.tree_select(take, g, c.g_b)

            i = c.i + 1
            done = accept | at_cap | (i >= max_steps) | collapsed | ~(nxt > 0)
            return _Carry(
                i=i,
                done=done,
                tau=nxt,
                brackt=brackt,
                stage2=stage2,
                stx=stx,
                fx=fx,
                gx=gx,
                sty=sty,
                fy=fy,
                gy=gy,
                stmin=stmin,
                stmax=stmax,
                width=width,
                width1=width1,
                tau_b=tau_b,
                f_b=f_b,
                g_b=g_b,
                wolfe=accept,
                unbounded=unbounded,
            )

        minus_one = -jnp.ones([], dtype)
        carry = _Carry(
            i=jnp.zeros([], jnp.int32),
            done=jnp.asarray(False),
            tau=tau0,
            brackt=jnp.asarray(False),
            stage2=jnp.asarray(False),
            stx=zero,
            fx=zero,
            gx=minus_one,
            sty=zero,
            fy=zero,
            gy=minus_one,
            stmin=zero,
            stmax=tau0 + _XTRAPU * tau0,
            width=tau_max,
            width1=2.0 * tau_max,
            tau_b=zero,
            f_b=jnp.asarray(jnp.inf, dtype),
            g_b=grad,
            wolfe=jnp.asarray(False),
            unbounded=jnp.asarray(False),
        )
        return common.run_bracketing_search(cond, body, carry, state, updates, start, f0, grad)

    return base.GradientTransformationExtraArgs(
        init_fn, common.search_update(_OWNER, ScaleByMoreThuenteLinesearchState, search)
    )
