r"""Exact line search (bracketing, golden section and a parabolic step), for teaching.

Cauchy's steepest descent and the textbook conjugate-gradient method take the step

.. math:: t^\star = \arg\min_{t > 0} f(x + t d),

the *exact* line search. This module computes it numerically, with a fixed, jittable amount
of work: a bounded doubling/halving loop finds a bracket :math:`a < b < c` with
:math:`\varphi(b) < \varphi(a)` and :math:`\varphi(b) \le \varphi(c)`, golden-section search
(Kiefer 1953) shrinks it for ``num_iterations`` steps, and one parabolic interpolation through
the bracket (exact when :math:`f` is quadratic along the line) is kept if it is lower. It costs
tens of evaluations per step: use it for demonstrations and for the finite-termination property
of CG on quadratics, and a Wolfe search (:func:`~gradlab.linesearch.scale_by_zoom_linesearch`)
in practice.

References:
  Kiefer, "Sequential minimax search for a maximum", Proc. AMS 4(3), 1953.
  Cauchy, "Méthode générale pour la résolution des systèmes d'équations simultanées",
  C. R. Acad. Sci. Paris 25, 1847.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.linesearch import common
from gradlab.status import Status

__all__ = ["ScaleByExactLinesearchState", "scale_by_exact_linesearch"]

_OWNER = "scale_by_exact_linesearch"
_INV_PHI = 0.6180339887498949  # 1 / golden ratio


class ScaleByExactLinesearchState(NamedTuple):
    """State of :func:`scale_by_exact_linesearch` (``value``/``grad`` at the returned point)."""

    count: jax.Array  # shape=(), int32: searches run so far.
    step_size: jax.Array  # shape=(): accepted t (0 when rejected).
    value: jax.Array  # shape=(): f at the accepted point.
    grad: base.Updates  # gradient at the accepted point.
    status: jax.Array  # shape=(), int32: gradlab.status code of the last search.
    num_fun_evals: jax.Array  # shape=(), int32: cumulative evaluations of value_fn.
    num_grad_evals: jax.Array  # shape=(), int32: cumulative gradient evaluations.


def scale_by_exact_linesearch(
    num_iterations: int = 40,
    max_bracket_steps: int = 60,
    initial_step: base.ScalarOrSchedule | None = None,
) -> base.GradientTransformationExtraArgs:
    r"""Scale the direction by (a numerical approximation of) the exact minimising step.

    .. math:: t^\star \approx \arg\min_{t>0} \varphi(t), \qquad \varphi(t) = f(x + t d).

    Bracketing starts from ``initial_step`` (default: a unit-length displacement
    :math:`t = 1/\lVert d\rVert`), halving while :math:`\varphi(t) \ge \varphi(0)` and doubling
    while :math:`\varphi` still decreases, at most ``max_bracket_steps`` evaluations. Then
    ``num_iterations`` golden-section steps, one parabolic step through the bracket, and a
    final ``value_and_grad`` at the chosen point (kept in the state).

    Outcomes: ``OK``; ``NOT_DESCENT`` / ``NON_FINITE`` (checked before searching, step 0);
    ``UNBOUNDED`` (still decreasing after ``max_bracket_steps`` doublings: the furthest point
    is taken); ``LINE_SEARCH_FAILED`` (no point below :math:`\varphi(0)` found: step 0).

    Args:
      num_iterations: golden-section iterations (static, >= 1).
      max_bracket_steps: most evaluations to find the bracket (static, >= 1).
      initial_step: first trial :math:`t` (``None``: :math:`1/\lVert d\rVert`).

    Returns:
      A :class:`~gradlab.base.GradientTransformationExtraArgs` consuming ``value``, ``grad``
      and ``value_fn``.
    """
    n_golden = base.check_positive_int(num_iterations, "num_iterations", owner=_OWNER)
    n_bracket = base.check_positive_int(max_bracket_steps, "max_bracket_steps", owner=_OWNER)
    t_init = (
        None
        if initial_step is None
        else base.hyperparameter(initial_step, "initial_step", base.POSITIVE, owner=_OWNER)
    )

    def init_fn(params):
        return ScaleByExactLinesearchState(**common.initial_search_fields(params, 0.0))

    def search(updates, state, params, *, dtype, f0, grad, value_fn):
        unit, d_norm, _, code = common.unit_direction(updates, grad, dtype)
        if t_init is not None:  # a poisoned (invalid traced) first step: no trial at all
            t0 = base.resolve(t_init, state.count, dtype)
            code = jnp.where(common.poisoned(t0), int(Status.INVALID_HYPERPARAMETER), code)
        code = jnp.where(jnp.isfinite(f0), code, int(Status.NON_FINITE))
        searching = code == int(Status.OK)
        safe_norm = jnp.where(searching, d_norm, 1.0)
        h0 = jnp.ones([], dtype) if t_init is None else t0 * safe_norm

        def phi(tau):
            f = jnp.asarray(value_fn(common.trial_point(params, tau / safe_norm, updates)), dtype)
            return jnp.where(jnp.isfinite(f), f, jnp.inf)

        # Bracketing: invariant phi(b) < phi(a) (or a = b = 0), and phi(c) >= phi(b) once c < inf.
        def br_cond(c):
            j, _, _, _, _, _, _, done = c
            return ~done & (j < n_bracket) & searching

        def br_body(c):
            j, a, fa, b, fb, upper, trial, _ = c
            ft = phi(trial)
            better = ft < fb
            a2, fa2 = jnp.where(better, b, a), jnp.where(better, fb, fa)
            b2, fb2 = jnp.where(better, trial, b), jnp.where(better, ft, fb)
            upper2 = jnp.where(better, upper, trial)
            done = (better & jnp.isfinite(upper)) | (~better & (b > 0))
            nxt = jnp.where(better, 2.0 * trial, 0.5 * trial)
            return j + 1, a2, fa2, b2, fb2, upper2, nxt, done

        zero = jnp.zeros([], dtype)
        inf = jnp.asarray(jnp.inf, dtype)
        j, a, fa, b, fb, upper, _, _ = jax.lax.while_loop(
            br_cond, br_body, (jnp.zeros([], jnp.int32), zero, f0, zero, f0, inf, h0, False)
        )
        found = searching & (b > 0)
        unbounded = found & ~jnp.isfinite(upper)
        c = jnp.where(jnp.isfinite(upper), upper, b)

        # Golden section on [a, c].
        def golden(_, carry):
            lo, hi, x1, f1, x2, f2 = carry
            left = f1 < f2  # minimum in [lo, x2]
            lo, hi = jnp.where(left, lo, x1), jnp.where(left, x2, hi)
            new = jnp.where(left, hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo))
            fn = phi(new)
            x1n = jnp.where(left, new, x2)
            f1n = jnp.where(left, fn, f2)
            x2n = jnp.where(left, x1, new)
            f2n = jnp.where(left, f1, fn)
            return lo, hi, x1n, f1n, x2n, f2n

        x1 = c - _INV_PHI * (c - a)
        x2 = a + _INV_PHI * (c - a)
        init = (a, c, x1, phi(x1), x2, phi(x2))
        _, _, x1, f1, x2, f2 = jax.lax.fori_loop(0, n_golden, golden, init)
        tau_g = jnp.where(f1 < f2, x1, x2)
        # One parabolic step through (a, b, c) (exact for a quadratic along the line).
        fc = phi(c)
        num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
        den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
        tau_p = b - 0.5 * num / den
        ok_p = jnp.isfinite(tau_p) & (tau_p > a) & (tau_p < c)
        tau_p = jnp.where(ok_p, tau_p, b)

        # Keep whichever of the golden-section and parabolic points has the smaller |slope|:
        # near the minimum slopes are resolved to machine precision, values only to its root.
        def at(tau):
            f, g = jax.value_and_grad(value_fn)(
                common.trial_point(params, tau / safe_norm, updates)
            )
            f = jnp.asarray(f, dtype)
            g = base.cast_like(g, grad)
            slope = common.tree_vdot(g, unit, dtype)
            ok = jnp.isfinite(f) & (f < f0) & base.tree_all_finite(g)
            return f, g, jnp.where(ok, jnp.abs(slope), jnp.inf), ok

        f_p, g_p, s_p, ok_p = at(tau_p)
        f_g2, g_g, s_g, ok_g = at(tau_g)
        use_p = s_p <= s_g
        n_fun = jnp.where(searching, j + n_golden + 5, 0).astype(jnp.int32)
        n_grad = jnp.where(searching, 2, 0).astype(jnp.int32)
        return common.finish_search(
            state,
            updates,
            code=code,
            accepted=found & jnp.where(use_p, ok_p, ok_g),
            step=jnp.where(use_p, tau_p, tau_g) / safe_norm,
            value=jnp.where(use_p, f_p, f_g2),
            grad=common.tree_select(use_p, g_p, g_g),
            f0=f0,
            grad0=grad,
            num_evals=(n_fun, n_grad),
            unbounded=unbounded,
        )

    return base.GradientTransformationExtraArgs(
        init_fn, common.search_update(_OWNER, ScaleByExactLinesearchState, search)
    )
