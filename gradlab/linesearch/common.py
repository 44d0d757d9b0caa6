r"""Shared arithmetic for the line searches: scale-safe norms and dots, the line, interpolation.

Every search in :mod:`gradlab.linesearch` works on the one-dimensional restriction

.. math:: \varphi(\tau) = f\big(x + \tau\, \hat d\big), \qquad \hat d = d / \lVert d\rVert ,

that is, along the *unit* direction, with :math:`\tau` the length of the displacement. The step
size reported to the user is :math:`t = \tau / \lVert d\rVert` (so the update is :math:`t\,d`).
Working with :math:`\hat d` keeps :math:`\varphi'(0) = g^\top \hat d` representable in float32
when gradients are as small as :math:`10^{-30}` or as large as :math:`10^{30}`, where the raw
slope :math:`g^\top d = -\lVert g\rVert^2` would under- or overflow. Norms are computed with
the usual rescaling by :math:`\max_i |v_i|` for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import base, loops
from gradlab.status import Status

__all__ = [
    "compute_dtype",
    "safe_norm",
    "tree_vdot",
    "matmul",
    "vdot",
    "tree_scale",
    "tree_axpy",
    "tree_select",
    "first_status",
    "packed_while_loop",
    "trial_point",
    "scaled_or_zero",
    "unit_direction",
    "cubic_min",
    "quadratic_min",
    "initial_search_fields",
    "check_search_inputs",
    "search_update",
    "finish_search",
    "run_bracketing_search",
    "start_wolfe_search",
    "evaluate_trial",
    "INITIAL_GUESSES",
    "WolfeSearchState",
    "WolfeSettings",
    "wolfe_hyperparameters",
    "FATAL_STATUSES",
    "poisoned",
]

#: First-trial rules of the Wolfe searches (``initial_guess_strategy``).
INITIAL_GUESSES = ("one", "keep", "quadratic", "quadratic_capped")

#: Status codes after which a solver loop stops (a step that cannot be trusted).
FATAL_STATUSES = (
    int(Status.NON_FINITE),
    int(Status.LINE_SEARCH_FAILED),
    int(Status.INVALID_HYPERPARAMETER),
    int(Status.NOT_DESCENT),
    int(Status.UNBOUNDED),
)


def compute_dtype(*trees: Any) -> jnp.dtype:
    """float32, or float64 when any leaf of ``trees`` is float64 (x64 solvers)."""
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            if jnp.result_type(leaf) in (jnp.float64, jnp.complex128):
                return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def safe_norm(tree: Any, dtype=jnp.float32) -> jax.Array:
    r"""Euclidean norm of all leaves, rescaled so it neither under- nor overflows.

    .. math:: \lVert v\rVert = m \sqrt{\textstyle\sum_i (v_i/m)^2},\quad m = \max_i |v_i| .

    Zero for an all-zero tree (no NaN), ``inf`` if any entry is infinite, NaN if any is NaN.
    """
    leaves = [jnp.abs(jnp.asarray(x)).astype(dtype) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), dtype)
    m = base.small_max(jnp.stack([base.small_max(x, initial=0.0) for x in leaves]))
    safe_m = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    sq = sum(base.small_sum(jnp.square(x / safe_m)) for x in leaves)
    return jnp.where(jnp.isfinite(m), safe_m * jnp.sqrt(sq), m)


def tree_vdot(a: Any, b: Any, dtype=jnp.float32) -> jax.Array:
    """:math:`\\sum_\\ell \\langle a_\\ell, b_\\ell\\rangle` over all leaves, in ``dtype``."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if not la:
        return jnp.zeros((), dtype)
    return sum(jnp.sum(x.astype(dtype) * y.astype(dtype)) for x, y in zip(la, lb, strict=True))


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` in full precision. The solvers' own products (inverse-Hessian updates, the
    L-BFGS recursion, least-squares normal equations) must not use the reduced-precision
    passes XLA picks for float32 matrix products on GPUs and TPUs by default (TF32 keeps 10
    mantissa bits); on the CPU this changes nothing."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def vdot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.vdot(a, b)`` in full precision (see :func:`matmul`)."""
    return jnp.vdot(a, b, precision=jax.lax.Precision.HIGHEST)


def tree_scale(s: jax.Array, tree: Any) -> Any:
    """``s * tree``, each leaf back in its own dtype."""
    return jax.tree.map(lambda x: (s * x).astype(x.dtype), tree)


def tree_axpy(alpha: jax.Array, x: Any, y: Any) -> Any:
    """``y + alpha * x`` leafwise (``alpha`` cast to each leaf's dtype)."""
    return jax.tree.map(lambda xi, yi: yi + jnp.asarray(alpha).astype(yi.dtype) * xi, x, y)


def tree_select(pred: jax.Array, a: Any, b: Any) -> Any:
    """``jnp.where(pred, a, b)`` leafwise (``pred`` a scalar)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def first_status(cases: list[tuple[Any, Status]], default: Status) -> jax.Array:
    """The int32 code of the first case whose predicate holds, else ``default``."""
    out = jnp.asarray(int(default), jnp.int32)
    for pred, code in reversed(cases):  # nested selects: no reduction in the program
        out = jnp.where(jnp.asarray(pred), jnp.int32(int(code)), out)
    return out


def poisoned(*settings: Any) -> jax.Array:
    """True when any resolved traced setting is NaN: out of its range, so ``hyperparameter``
    replaced it by NaN (the step then reports ``INVALID_HYPERPARAMETER`` and takes no trial)."""
    return base.small_any(jnp.stack([jnp.isnan(jnp.asarray(v)) for v in settings]))


def packed_while_loop(
    cond_fun: Callable[[Any], jax.Array],
    body_fun: Callable[[Any], Any],
    init: NamedTuple,
    dtype,
) -> NamedTuple:
    """:func:`gradlab.loops.packed_while_loop` for a search's carry, whose integers are trial
    counters (below :math:`2^{24}`, exact in any float dtype): one packed vector in all."""
    return loops.packed_while_loop(cond_fun, body_fun, init, dtype, small_ints=True)


def scaled_or_zero(t: jax.Array, accepted: jax.Array, direction: Any) -> Any:
    """``t * direction`` when ``accepted``, else exact zeros (even for a NaN direction)."""
    return jax.tree.map(
        lambda x: jnp.where(accepted, t * x, jnp.zeros_like(x)).astype(x.dtype), direction
    )


def trial_point(params: Any, t: jax.Array, direction: Any) -> Any:
    """``apply_updates(params, t * direction)``: bit-for-bit the point a solver will reach when
    it applies the update a search returns, so the accepted value is the value there."""
    return optax.apply_updates(params, tree_scale(t, direction))


def unit_direction(direction: Any, grad: Any, dtype) -> tuple[Any, jax.Array, jax.Array, Any]:
    r"""Normalise a search direction and check its slope.

    Returns:
      ``(unit, norm, slope, code)`` where ``unit`` is :math:`\hat d = d/\lVert d\rVert` (in
      ``dtype``), ``norm`` is :math:`\lVert d\rVert`, ``slope`` is :math:`g^\top\hat d`, and
      ``code`` is ``OK``, ``NON_FINITE`` (NaN/Inf in ``d`` or ``g``) or ``NOT_DESCENT``
      (:math:`g^\top d \ge 0`, including :math:`d = 0`).
    """
    norm = safe_norm(direction, dtype)
    safe = jnp.where((norm > 0) & jnp.isfinite(norm), norm, 1.0)
    unit = jax.tree.map(lambda d: d.astype(dtype) / safe, direction)
    slope = tree_vdot(grad, unit, dtype)
    finite = jnp.isfinite(norm) & jnp.isfinite(slope)
    code = jnp.where(
        finite,
        jnp.where((slope < 0) & (norm > 0), int(Status.OK), int(Status.NOT_DESCENT)),
        int(Status.NON_FINITE),
    ).astype(jnp.int32)
    return unit, norm, slope, code


def cubic_min(a, fa, sa, b, fb, sb):
    r"""Minimiser of the cubic interpolating :math:`(a, f_a, f'_a)` and :math:`(b, f_b, f'_b)`.

    Nocedal & Wright (2006), eq. (3.59). NaN when the cubic has no minimiser (the caller
    safeguards).
    """
    d1 = sa + sb - 3.0 * (fa - fb) / (a - b)
    rad = d1 * d1 - sa * sb
    d2 = jnp.sign(b - a) * jnp.sqrt(jnp.where(rad >= 0, rad, jnp.nan))
    return b - (b - a) * (sb + d2 - d1) / (sb - sa + 2.0 * d2)


def quadratic_min(a, fa, sa, b, fb):
    """Minimiser of the quadratic through :math:`(a, f_a)` with slope :math:`f'_a`, and ``b``."""
    h = b - a
    curv = fb - fa - sa * h
    return a - sa * h * h / (2.0 * curv)


def safeguarded_interpolation(lo, f_lo, s_lo, hi, f_hi, s_hi, margin=0.1):
    """A trial point strictly inside ``[lo, hi]`` (either order): cubic, else quadratic, else
    bisection; each candidate must lie at least ``margin`` of the width from both ends."""
    left, right = jnp.minimum(lo, hi), jnp.maximum(lo, hi)
    width = right - left

    def inside(t):
        return jnp.isfinite(t) & (t >= left + margin * width) & (t <= right - margin * width)

    cubic = cubic_min(lo, f_lo, s_lo, hi, f_hi, s_hi)
    quad = quadratic_min(lo, f_lo, s_lo, hi, f_hi)
    mid = 0.5 * (lo + hi)
    return jnp.where(inside(cubic), cubic, jnp.where(inside(quad), quad, mid))


# --------------------------------------------------------------------------------------------
# What every search does before and after its own loop
# --------------------------------------------------------------------------------------------


def initial_search_fields(params: Any, step_size: float) -> dict[str, Any]:
    """The fields every search state starts with (``value`` = inf: no search yet)."""
    dtype = compute_dtype(params)
    # One buffer per field (a shared one cannot be donated: "donate the same buffer twice").
    return dict(
        count=base.zero_count(),
        step_size=jnp.asarray(step_size, dtype),
        value=jnp.asarray(jnp.inf, dtype),
        grad=base.zeros_like(params, dtype=None),
        status=jnp.asarray(int(Status.OK), jnp.int32),
        num_fun_evals=base.zero_count(),
        num_grad_evals=base.zero_count(),
    )


def check_search_inputs(
    owner: str, state: Any, state_type: type, params: Any, updates: Any, grad: Any, value: Any
) -> tuple[Any, Any, jax.Array]:
    """Check a search's inputs (state type, params present and unmasked, the extras given, tree
    structures); return ``(dtype, grad, f0)``."""
    base.check_state(state, state_type, owner)
    if params is None:
        raise ValueError(f"{owner}: update needs params (the point the search starts from)")
    base.check_unmasked(params, owner)
    base.check_tree_match(params, updates, "params", "updates", owner=owner)
    base.check_tree_match(params, grad, "params", "grad", owner=owner)
    dtype = state.value.dtype
    return dtype, jax.tree.map(jnp.asarray, grad), jnp.asarray(value, dtype)


def search_update(owner: str, state_type: type, search: Callable[..., Any]) -> Callable[..., Any]:
    """A search's ``update(updates, state, params, *, value, grad, value_fn, **extra)``: checks
    the inputs, then returns ``search(updates, state, params, dtype=, f0=, grad=, value_fn=)``
    (``updates`` is the direction; other keyword arguments are ignored)."""

    def update_fn(
        updates: base.Updates,
        state: Any,
        params: base.Params,
        *,
        value: jax.typing.ArrayLike | None = None,
        grad: base.Updates | None = None,
        value_fn: Callable[[Any], jax.Array] | None = None,
        **extra: Any,
    ):
        del extra
        missing = [
            n for n, v in (("value", value), ("grad", grad), ("value_fn", value_fn)) if v is None
        ]
        if missing:
            raise ValueError(
                f"{owner}: update needs the keyword extras value= (f at params), grad= (its "
                f"gradient) and value_fn= (params -> f); missing {', '.join(missing)}"
            )
        dtype, grad, f0 = check_search_inputs(
            owner, state, state_type, params, updates, grad, value
        )
        return search(updates, state, params, dtype=dtype, f0=f0, grad=grad, value_fn=value_fn)

    return update_fn


def finish_search(
    state: NamedTuple,
    direction: Any,
    *,
    code: jax.Array,
    accepted: jax.Array,
    step: jax.Array,
    value: jax.Array,
    grad: Any,
    f0: jax.Array,
    grad0: Any,
    num_evals: tuple[jax.Array, jax.Array],
    unbounded: Any = False,
    **fields: Any,
) -> tuple[Any, NamedTuple]:
    r"""The update :math:`t\,d` (exact zeros when rejected) and the search's new state.

    The status is ``code`` when the search did not start (``code != OK``), else ``OK`` /
    ``UNBOUNDED`` for an accepted step and ``LINE_SEARCH_FAILED`` otherwise. ``value``/``grad``
    are kept when ``accepted``, else ``f0``/``grad0`` (the old point); ``num_evals`` (function,
    gradient) are added to the counters; ``fields`` are other state fields to set.
    """
    status = jnp.where(
        code != int(Status.OK),
        code,
        first_status(
            [(accepted & unbounded, Status.UNBOUNDED), (accepted, Status.OK)],
            Status.LINE_SEARCH_FAILED,
        ),
    ).astype(jnp.int32)
    new_state = state._replace(
        count=base.safe_increment(state.count),
        step_size=jnp.where(accepted, step, jnp.zeros_like(step)),
        value=jnp.where(accepted, value, f0),
        grad=base.cast_like(tree_select(accepted, grad, grad0), state.grad),
        status=status,
        num_fun_evals=state.num_fun_evals + num_evals[0],
        num_grad_evals=state.num_grad_evals + num_evals[1],
        **fields,
    )
    return scaled_or_zero(step, accepted, direction), new_state


class WolfeSearchState(NamedTuple):
    """The fields of a Wolfe search's state (each search subclasses it, so states of different
    searches are different types).

    ``value`` and ``grad`` are those at the point the last search returned (``params +
    updates``; the old point when the step was rejected), so a solver loop can reuse them.
    """

    count: jax.Array  # shape=(), int32: searches run so far (the schedule clock).
    step_size: jax.Array  # shape=(): accepted t (update = t * d); 0 when rejected.
    value: jax.Array  # shape=(): f at the accepted point (inf before any search).
    grad: Any  # gradient at the accepted point.
    start_value: jax.Array  # shape=(): f at the start of the last search (for "quadratic").
    curvature_satisfied: jax.Array  # shape=(), bool: the accepted step met strong Wolfe.
    status: jax.Array  # shape=(), int32: gradlab.status code of the last search.
    num_fun_evals: jax.Array  # shape=(), int32: cumulative evaluations of value_fn.
    num_grad_evals: jax.Array  # shape=(), int32: cumulative gradient evaluations.


def initial_wolfe_state(state_type: type, params: Any) -> NamedTuple:
    """A fresh Wolfe search state (no search yet)."""
    dtype = compute_dtype(params)
    return state_type(
        start_value=jnp.asarray(jnp.inf, dtype),
        curvature_satisfied=jnp.asarray(False),
        **initial_search_fields(params, 1.0),
    )


class WolfeStart(NamedTuple):
    """What a Wolfe search knows before its first trial (see :func:`start_wolfe_search`)."""

    unit: Any  #: the unit direction d / |d|.
    direction_norm: jax.Array  #: |d| (1 when the search does not start).
    slope: jax.Array  #: phi'(0) = g . unit.
    code: jax.Array  #: OK, NOT_DESCENT or NON_FINITE.
    searching: jax.Array  #: code == OK.
    tau0: jax.Array  #: first trial displacement.
    tau_max: jax.Array  #: largest displacement.
    #: the largest displacement is ``max_step_norm``'s (a step there that still decreases fast
    #: means "unbounded below"), not ``max_learning_rate``'s (a cap the caller chose: a step
    #: there is accepted).
    norm_capped: jax.Array


class WolfeSettings(NamedTuple):
    """A Wolfe search's validated arguments (numbers, traced arrays or schedules)."""

    slope_rtol: Any  #: c1.
    curv_rtol: Any  #: c2.
    max_learning_rate: Any  #: None: no bound on t.
    max_step_norm: Any
    initial_guess_strategy: str


def wolfe_hyperparameters(
    owner: str,
    initial_guess_strategy: str,
    slope_rtol: Any,
    curv_rtol: Any,
    max_learning_rate: Any,
    max_step_norm: Any,
    *,
    strict_order: bool,
) -> tuple[Any, Any, Any, Any]:
    r"""Validate the arguments every Wolfe search takes; return ``(c1, c2, max_learning_rate,
    max_step_norm)`` (``ValueError`` naming the argument: :math:`0 < c_1 < c_2 < 1`, or
    :math:`c_1 \le c_2` where the search allows equal ones, positive bounds, a known
    ``initial_guess_strategy``)."""
    check_initial_guess(initial_guess_strategy, owner)
    open_unit = base.Interval(0.0, 1.0, lower_closed=False, upper_closed=False)
    c1 = base.hyperparameter(slope_rtol, "slope_rtol", open_unit, owner=owner)
    c2 = base.hyperparameter(curv_rtol, "curv_rtol", open_unit, owner=owner)
    base.check_order(c1, c2, "slope_rtol", "curv_rtol", owner=owner, strict=strict_order)
    t_max = (
        None
        if max_learning_rate is None
        else base.hyperparameter(
            max_learning_rate, "max_learning_rate", base.POSITIVE_OR_INF, owner=owner
        )
    )
    step_norm_max = base.hyperparameter(
        max_step_norm, "max_step_norm", base.POSITIVE_OR_INF, owner=owner
    )
    return WolfeSettings(c1, c2, t_max, step_norm_max, initial_guess_strategy)


def check_initial_guess(strategy: str, owner: str) -> str:
    """``ValueError`` unless ``strategy`` is one of :data:`INITIAL_GUESSES`."""
    if strategy not in INITIAL_GUESSES:
        raise ValueError(
            f"{owner}: initial_guess_strategy must be one of {INITIAL_GUESSES}, got {strategy!r}"
        )
    return strategy


def start_wolfe_search(
    updates: Any,
    state: NamedTuple,
    grad: Any,
    f0: jax.Array,
    settings: WolfeSettings,
    *,
    dtype,
    hyperparameters_ok: jax.Array,
) -> WolfeStart:
    r"""The shared start of the Wolfe searches: the unit direction and its slope (``code`` is
    ``NON_FINITE`` as well when ``f0`` is not finite, ``INVALID_HYPERPARAMETER`` when a traced
    setting was out of range), the largest
    displacement, and the first trial displacement :math:`\tau_0` (``initial_guess_strategy``,
    documented in :func:`~gradlab.linesearch.scale_by_zoom_linesearch`)."""
    count = state.count
    unit, d_norm, s0, code = unit_direction(updates, grad, dtype)
    tau_max = base.resolve(settings.max_step_norm, count, dtype)
    t_max = None
    if settings.max_learning_rate is not None:
        t_max = base.resolve(settings.max_learning_rate, count, dtype)
    bounds = (tau_max,) if t_max is None else (tau_max, t_max)
    # A poisoned (invalid traced) setting: no trial at all, the status says why.
    ok = hyperparameters_ok & ~poisoned(*bounds)
    code = jnp.where(ok, code, int(Status.INVALID_HYPERPARAMETER))
    code = jnp.where(jnp.isfinite(f0), code, int(Status.NON_FINITE))
    searching = code == int(Status.OK)
    d_norm = jnp.where(searching, d_norm, 1.0)

    strategy = settings.initial_guess_strategy
    norm_capped = jnp.asarray(True)
    if t_max is not None:
        norm_capped = tau_max <= t_max * d_norm
        tau_max = jnp.minimum(tau_max, t_max * d_norm)

    if strategy == "one":
        tau0 = d_norm
    elif strategy == "keep":
        prev = state.step_size
        tau0 = jnp.where((prev > 0) & jnp.isfinite(prev), prev, 1.0) * d_norm
    else:
        # First search: about a unit-length displacement (exactly 1.01 for d = -g).
        first_guess = 1.01 * safe_norm(grad, dtype) / jnp.abs(s0)
        quad = 1.01 * 2.0 * (f0 - state.start_value) / s0
        usable = (count > 0) & jnp.isfinite(quad) & (quad > 0)
        tau0 = jnp.where(usable, quad, first_guess)
        if strategy == "quadratic_capped":
            tau0 = jnp.minimum(tau0, d_norm)
    tau0 = jnp.where(jnp.isfinite(tau0) & (tau0 > 0), tau0, 1.0)
    tau0 = jnp.minimum(tau0, tau_max)
    return WolfeStart(unit, d_norm, s0, code, searching, tau0, tau_max, norm_capped)


def evaluate_trial(
    value_and_grad: Callable[[Any], tuple[jax.Array, Any]],
    params: Any,
    direction: Any,
    start: WolfeStart,
    tau: jax.Array,
    grad0: Any,
) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
    r"""``(f, g, slope, finite)`` at the trial displacement ``tau`` along the unit direction:
    :math:`f(x + \tau\hat d)`, its gradient (in ``grad0``'s dtypes), :math:`g^\top\hat d`, and
    whether both are finite (a NaN/Inf anywhere in ``g`` makes the slope NaN: one check)."""
    dtype = start.tau0.dtype
    f, g = value_and_grad(trial_point(params, tau / start.direction_norm, direction))
    g = base.cast_like(g, grad0)
    s = tree_vdot(g, start.unit, dtype)
    f = jnp.asarray(f, dtype)
    return f, g, s, jnp.isfinite(f) & jnp.isfinite(s)


def run_bracketing_search(
    cond_fun: Callable[[Any], jax.Array],
    body_fun: Callable[[Any], Any],
    init: NamedTuple,
    state: NamedTuple,
    direction: Any,
    start: WolfeStart,
    f0: jax.Array,
    grad0: Any,
) -> tuple[Any, NamedTuple]:
    """Run a Wolfe search's loop (:func:`packed_while_loop`) and finish it.

    The carry must track ``i`` (evaluations), ``tau_b``/``f_b``/``g_b`` (the best point with
    sufficient decrease along the unit direction; ``tau_b = 0``: none), ``wolfe`` (it meets
    strong Wolfe) and ``unbounded``. Returns :func:`finish_search`'s ``(updates, state)``.
    """
    c = packed_while_loop(cond_fun, body_fun, init, jnp.result_type(f0))
    found = start.searching & (c.tau_b > 0)
    return finish_search(
        state,
        direction,
        code=start.code,
        accepted=found,
        step=c.tau_b / start.direction_norm,
        value=c.f_b,
        grad=c.g_b,
        f0=f0,
        grad0=grad0,
        num_evals=(c.i, c.i),
        unbounded=c.unbounded,
        start_value=f0,
        curvature_satisfied=found & c.wolfe,
    )
