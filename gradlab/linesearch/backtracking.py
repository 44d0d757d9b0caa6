r"""Backtracking (Armijo) line search: the last link of a chain.

Given the search direction :math:`d` (the incoming ``updates``), the search tries
:math:`t_0, \rho t_0, \rho^2 t_0, \dots` and accepts the first step with *sufficient decrease*

.. math:: f(x + t d) \le f(x) + c_1\, t\, \nabla f(x)^\top d

(Armijo 1966). Unlike ``optax.scale_by_backtracking_linesearch``, a search that finds no such
step within ``max_backtracking_steps`` trials **takes no step** (:math:`t = 0`) and says so
(:attr:`~gradlab.status.Status.LINE_SEARCH_FAILED`); it never returns its last, uphill, trial.
The slope is checked *before* searching: a direction with :math:`\nabla f^\top d \ge 0` is not
searched at all (:attr:`~gradlab.status.Status.NOT_DESCENT`, :math:`t = 0`).

References:
  Armijo, "Minimization of functions having Lipschitz continuous first partial derivatives",
  Pacific J. Math. 16(1), 1966.
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), Algorithm 3.1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base
from gradlab.linesearch import common
from gradlab.status import Status

__all__ = ["ScaleByBacktrackingLinesearchState", "scale_by_backtracking_linesearch"]

_OWNER = "scale_by_backtracking_linesearch"


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of :func:`scale_by_backtracking_linesearch`.

    ``value`` and ``grad`` are those at the point the last search returned (``params +
    updates``; the old point when the step was rejected), so a solver loop can reuse them.
    """

    count: jax.Array  # shape=(), int32: searches run so far (the schedule clock).
    step_size: jax.Array  # shape=(): the accepted t (0 when rejected); inf before any search.
    value: jax.Array  # shape=(): f at the accepted point (inf before any search).
    grad: base.Updates  # gradient at the accepted point.
    status: jax.Array  # shape=(), int32: gradlab.status code of the last search.
    num_fun_evals: jax.Array  # shape=(), int32: cumulative evaluations of value_fn.
    num_grad_evals: jax.Array  # shape=(), int32: cumulative gradient evaluations.


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int = 30,
    slope_rtol: base.ScalarOrSchedule = 1e-4,
    decrease_factor: base.ScalarOrSchedule = 0.8,
    increase_factor: base.ScalarOrSchedule = 1.5,
    max_learning_rate: base.ScalarOrSchedule = 1.0,
) -> base.GradientTransformationExtraArgs:
    r"""Scale the direction by the first step size that satisfies the Armijo condition.

    The first trial is :math:`t_0 = \min(\gamma\, t_{\text{prev}}, t_{\max})` (the previous
    accepted step grown by ``increase_factor`` :math:`\gamma`; :math:`t_{\max}` on the first
    search or after a rejection), then :math:`t \leftarrow \rho t` until

    .. math:: f(x + t d) \le f(x) + c_1\, t\, g^\top d, \qquad g = \nabla f(x),

    with :math:`c_1` = ``slope_rtol`` and :math:`\rho` = ``decrease_factor``. Each trial
    evaluates ``value_fn`` and its gradient once (``jax.value_and_grad``), and the gradient at
    the accepted point is kept in the state for reuse. A trial with a NaN/Inf value or gradient
    is rejected like one that increases :math:`f`.

    ``update(updates, state, params, *, value, grad, value_fn, **extra)``: ``updates`` is the
    direction :math:`d`; ``value`` :math:`= f(x)`; ``grad`` :math:`=\nabla f(x)`; ``value_fn``
    maps params to the scalar loss. Other keyword arguments are ignored. Returns :math:`t\,d`.

    Outcomes (``state.status``): ``OK``; ``NOT_DESCENT`` (:math:`g^\top d \ge 0`, no trial);
    ``NON_FINITE`` (NaN/Inf in :math:`d` or :math:`g`, no trial); ``LINE_SEARCH_FAILED`` (no
    trial accepted). In the three failure cases :math:`t = 0`.

    Args:
      max_backtracking_steps: most trials per search (static, >= 1).
      slope_rtol: :math:`c_1 \in (0, 1)`.
      decrease_factor: :math:`\rho \in (0, 1)`.
      increase_factor: :math:`\gamma \ge 1`; ``float('inf')`` always starts at
        :math:`t_{\max}` (the classical choice for Newton and quasi-Newton directions).
      max_learning_rate: :math:`t_{\max} > 0`, the largest and default first step.

    Returns:
      A :class:`~gradlab.base.GradientTransformationExtraArgs`.

    References:
      Armijo (1966); Nocedal & Wright (2006), Algorithm 3.1.
    """
    max_steps = base.check_positive_int(max_backtracking_steps, "max_backtracking_steps")
    open_unit = base.Interval(0.0, 1.0, lower_closed=False, upper_closed=False)
    c1 = base.hyperparameter(slope_rtol, "slope_rtol", open_unit, owner=_OWNER)
    rho = base.hyperparameter(decrease_factor, "decrease_factor", open_unit, owner=_OWNER)
    gamma = base.hyperparameter(
        increase_factor, "increase_factor", base.Interval(1.0, None, allow_inf=True), owner=_OWNER
    )
    t_max = base.hyperparameter(
        max_learning_rate, "max_learning_rate", base.POSITIVE_OR_INF, owner=_OWNER
    )

    def init_fn(params):
        return ScaleByBacktrackingLinesearchState(**common.initial_search_fields(params, jnp.inf))

    def search(updates, state, params, *, dtype, f0, grad, value_fn):
        count = state.count
        c1_t = base.resolve(c1, count, dtype)
        rho_t = base.resolve(rho, count, dtype)
        gamma_t = base.resolve(gamma, count, dtype)
        t_max_t = base.resolve(t_max, count, dtype)

        _, d_norm, slope, code = common.unit_direction(updates, grad, dtype)
        invalid = common.poisoned(c1_t, rho_t, gamma_t, t_max_t)
        code = jnp.where(invalid, int(Status.INVALID_HYPERPARAMETER), code)
        prev = state.step_size
        t0 = jnp.where(
            (prev > 0) & jnp.isfinite(prev), jnp.minimum(prev * gamma_t, t_max_t), t_max_t
        )
        value_and_grad = jax.value_and_grad(value_fn)

        def cond(carry):
            i, _, accepted, _, _ = carry
            return (i < max_steps) & ~accepted & (code == int(Status.OK))

        def body(carry):
            i, t, _, _, _ = carry
            f, g = value_and_grad(common.trial_point(params, t, updates))
            f = jnp.asarray(f, dtype)
            g = base.cast_like(g, grad)
            ok = jnp.isfinite(f) & base.tree_all_finite(g)
            ok = ok & (f <= f0 + c1_t * (t * d_norm) * slope) & (f < f0)  # strict: no no-op step
            return i + 1, jnp.where(ok, t, rho_t * t), ok, f, g

        carry = (jnp.zeros([], jnp.int32), t0, jnp.asarray(False), f0, grad)
        n, t, accepted, f, g = jax.lax.while_loop(cond, body, carry)
        return common.finish_search(
            state,
            updates,
            code=code,
            accepted=accepted,
            step=t,
            value=f,
            grad=g,
            f0=f0,
            grad0=grad,
            num_evals=(n, n),
        )

    return base.GradientTransformationExtraArgs(
        init_fn, common.search_update(_OWNER, ScaleByBacktrackingLinesearchState, search)
    )
