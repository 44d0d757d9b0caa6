"""minimize: stopping rules, status per problem, vmapped batches, counters, any transformation."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import base
from gradlab.minimize import METHODS, MinimizeResult, minimize, register_method
from gradlab.status import Status


def rosenbrock(x, a=1.0, b=100.0):
    return jnp.sum(b * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


def scaled_quadratic(x, scale):
    return scale * jnp.sum(jnp.arange(1.0, 5.0) * (x - 1.0) ** 2)


def unbounded(x):
    return -jnp.sum(x)


def nan_beyond_half(x):
    return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum((x - 1.0) ** 2))


def test_start_at_minimiser_converges_in_zero_steps():
    res = minimize(rosenbrock, jnp.ones(2), "bfgs")
    assert int(res.status) == Status.CONVERGED and int(res.num_steps) == 0
    assert int(res.num_fun_evals) == 1 and isinstance(res, MinimizeResult)
    assert "converged: 0 steps" in res.summary()


def test_max_steps_is_reported():
    res = minimize(rosenbrock, jnp.asarray([-1.2, 1.0]), "bfgs", max_steps=3)
    assert int(res.status) == Status.MAX_STEPS and int(res.num_steps) == 3
    assert float(res.value) < float(rosenbrock(jnp.asarray([-1.2, 1.0])))


@pytest.mark.parametrize("method", ["bfgs", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_vmapped_batch_one_nan_start_and_problem_parameters(method):
    starts = jnp.asarray([[-1.2, 1.0], [0.0, 0.0], [jnp.nan, 0.0], [2.0, 2.0]])
    ab = jnp.asarray([[1.0, 100.0], [1.0, 10.0], [1.0, 100.0], [2.0, 100.0]])
    solve = functools.partial(minimize, rosenbrock, method=method)
    res = jax.vmap(lambda x, p: solve(x, args=(p[0], p[1])))(starts, ab)
    np.testing.assert_array_equal(
        np.asarray(res.status),
        [Status.CONVERGED, Status.CONVERGED, Status.NON_FINITE, Status.CONVERGED],
    )
    np.testing.assert_allclose(np.asarray(res.params)[:2], np.ones((2, 2)), atol=1e-2)
    # Lane 3 starts where |g0| ~ 1e3: the relative test (tol 1e-5) stops on the flat valley
    # floor within ~0.1 of (2, 4).
    np.testing.assert_allclose(np.asarray(res.params[3]), [2.0, 4.0], atol=0.1)
    assert int(res.num_steps[2]) == 0
    # A lane is not disturbed by the others: with other companions (lanes that finish sooner,
    # later, or at once) lane 0 is bit-identical.
    others = jax.vmap(lambda x, p: solve(x, args=(p[0], p[1])))(
        starts.at[1:].set(jnp.asarray([[jnp.inf, 0.0], [0.9, 0.8], [-2.0, 3.0]])), ab
    )
    for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(others), strict=True):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert list(np.asarray(others.num_steps)[1:]) != list(np.asarray(res.num_steps)[1:])
    # ...and it follows the unbatched run (XLA compiles the batched program differently, so
    # float32 round-off may move it by a step).
    single = solve(starts[0], args=(1.0, 100.0))
    assert abs(int(single.num_steps) - int(res.num_steps[0])) <= 1
    np.testing.assert_allclose(np.asarray(single.params), np.asarray(res.params[0]), atol=1e-3)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "cg", "steepest_descent"])
def test_tiny_and_huge_scale_converge_relative_to_start(method):
    scales = jnp.asarray([1e-30, 1.0, 1e30], jnp.float32)
    # tol=1e-3: closer than that, f = 1e-30 * err**2 itself underflows float32.
    res = jax.vmap(lambda s: minimize(scaled_quadratic, jnp.zeros(4), method, args=(s,), tol=1e-3))(
        scales
    )
    np.testing.assert_array_equal(np.asarray(res.status), [Status.CONVERGED] * 3)
    # No false convergence at 1e-30 (optax L-BFGS stops at x~2e-28 there).
    np.testing.assert_allclose(np.asarray(res.params), np.ones((3, 4)), atol=1e-2)


@pytest.mark.parametrize(
    "method",
    [
        "lbfgs",
        "cg",
        pytest.param("bfgs", marks=pytest.mark.slow),
        pytest.param("steepest_descent", marks=pytest.mark.slow),
    ],
)
def test_unbounded_objective_is_never_converged(method):
    res = minimize(unbounded, jnp.zeros(2), method, max_steps=50)
    assert int(res.status) == Status.UNBOUNDED
    assert np.all(np.isfinite(np.asarray(res.params)))


def test_nan_region_ends_with_line_search_failed_at_a_finite_point():
    res = minimize(nan_beyond_half, jnp.zeros(3), "bfgs")
    assert int(res.status) == Status.LINE_SEARCH_FAILED
    assert np.isfinite(float(res.value)) and float(res.params[0]) <= 0.5


def test_nan_objective_at_start_is_non_finite():
    res = minimize(lambda x: jnp.sum(x) * jnp.nan, jnp.zeros(2), "lbfgs")
    assert int(res.status) == Status.NON_FINITE and int(res.num_steps) == 0


def test_first_order_transformation_runs_and_counts_its_evaluations():
    res = minimize(scaled_quadratic, jnp.zeros(4), optax.adam(0.1), args=(1.0,), max_steps=2000)
    assert int(res.status) == Status.CONVERGED
    # adam evaluates nothing itself: one value_and_grad at the start and one per step.
    assert int(res.num_fun_evals) == int(res.num_steps) + 1


def _counting(fun):
    """``fun`` and a list whose first entry counts its forward evaluations (host callback)."""
    calls = [0]

    def counted(x, *args):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return fun(x, *args)

    return counted, calls


def _optax_backtracking(store_grad):
    return optax.scale_by_backtracking_linesearch(30, store_grad=store_grad)


@pytest.mark.parametrize(
    "tx, reused",
    [
        (optax.lbfgs(), True),
        (optax.chain(optax.sgd(1.0), _optax_backtracking(store_grad=True)), True),
        (optax.chain(optax.sgd(1.0), _optax_backtracking(store_grad=False)), False),
    ],
)  # fmt: skip
def test_optax_line_searches_are_counted_from_their_trial_counts(tx, reused):
    fun, calls = _counting(rosenbrock)
    res = minimize(fun, jnp.asarray([-1.2, 1.0]), tx, max_steps=60)
    jax.block_until_ready(res)
    assert int(res.num_fun_evals) == calls[0] > int(res.num_steps) + 1
    if reused:  # the search's value and gradient at the new point: no extra evaluation
        assert int(res.num_grad_evals) == calls[0]
    else:  # no stored gradient: minimize evaluates value and gradient once per step
        assert int(res.num_grad_evals) == int(res.num_steps) + 1


def test_counters_add_up_with_the_line_search_state():
    res = minimize(rosenbrock, jnp.asarray([-1.2, 1.0]), "lbfgs")
    # Every step's search evaluates at least once, plus the start.
    assert int(res.num_fun_evals) >= int(res.num_steps) + 1
    assert int(res.num_grad_evals) == int(res.num_fun_evals)


def _scale_by_extra():
    def init_fn(params):
        return base.EmptyState()

    def update_fn(updates, state, params=None, *, factor, shift_fn, **extra):
        return jax.tree.map(lambda g: -factor * shift_fn(g), updates), state

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def _converged_after(k):
    """Takes gradient steps of 0.1, then reports CONVERGED with a zero update from step k on."""

    class State(NamedTuple):
        count: jax.Array
        status: jax.Array

    def init_fn(params):
        return State(jnp.zeros([], jnp.int32), jnp.asarray(int(Status.OK), jnp.int32))

    def update_fn(updates, state, params=None, **extra):
        done = state.count >= k
        upd = jax.tree.map(lambda g: jnp.where(done, 0.0, -0.1 * g), updates)
        code = jnp.where(done, int(Status.CONVERGED), int(Status.OK)).astype(jnp.int32)
        return upd, State(state.count + 1, code)

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def test_a_step_reporting_converged_ends_the_run_as_converged():
    # Regression: a transformation that says CONVERGED (LM at machine precision, zero update)
    # used to spin to max_steps when the gradient tolerance was out of reach.
    res = minimize(scaled_quadratic, jnp.zeros(4), _converged_after(3), args=(1.0,), tol=1e-30)
    assert int(res.status) == Status.CONVERGED
    assert int(res.num_steps) == 4  # three gradient steps, then the step that reports it


def test_extra_args_are_forwarded_arrays_traced_callables_static():
    tx = _scale_by_extra()
    res = minimize(
        scaled_quadratic,
        jnp.zeros(4),
        tx,
        args=(1.0,),
        extra_args={"factor": jnp.asarray(0.05), "shift_fn": lambda g: g},
        max_steps=500,
    )
    assert int(res.status) == Status.CONVERGED


def test_bad_methods_and_arguments_raise():
    with pytest.raises(ValueError, match="unknown method"):
        minimize(rosenbrock, jnp.zeros(2), "nelder_mead")
    with pytest.raises(TypeError, match="method"):
        minimize(rosenbrock, jnp.zeros(2), 3)
    with pytest.raises(ValueError, match="value_fn"):
        minimize(rosenbrock, jnp.zeros(2), "bfgs", extra_args={"value_fn": rosenbrock})
    with pytest.raises(TypeError, match="options"):
        minimize(rosenbrock, jnp.zeros(2), optax.sgd(0.1), options={"a": 1})
    for name in ("bfgs", "lbfgs", "cg", "steepest_descent", "newton", "levenberg_marquardt"):
        assert name in METHODS


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tol=-1.0), r"tol must be in \[0, inf\)"),
        (dict(atol=float("nan")), r"atol must be in \[0, inf\)"),
        (dict(max_steps=2.7), "max_steps must be a whole number >= 0"),
        (dict(max_steps=-1), "max_steps must be a whole number >= 0"),
    ],
)
def test_bad_tolerances_raise_and_traced_ones_end_as_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        minimize(rosenbrock, jnp.zeros(2), "bfgs", **kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: minimize(rosenbrock, {}, "bfgs"), ValueError, "empty pytree"),
        (lambda: minimize(rosenbrock, {"w": jnp.zeros(2, jnp.int32)}, "bfgs"), TypeError,
         r"x0\['w'\] has dtype int32"),
        (lambda: minimize(rosenbrock, jnp.zeros(2), tol=jnp.ones(2)), ValueError,
         r"tol must be a scalar \(shape \(\)\), got shape \(2,\)"),
        (lambda: minimize(rosenbrock, jnp.zeros(2), max_steps=None), TypeError, "max_steps"),
        (lambda: jax.jit(lambda k: minimize(rosenbrock, jnp.zeros(2), max_steps=k))(2.7),
         TypeError, "max_steps must be an integer, got dtype float32"),
        (lambda: minimize(rosenbrock, jnp.zeros(2), has_aux=True), TypeError,
         r"has_aux=True needs fun to return a pair \(value, aux\)"),
    ],
    ids=["empty", "integer", "tol-shape", "max-steps-none", "traced-float-max-steps", "aux"],
)  # fmt: skip
def test_bad_inputs_raise_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_python_max_steps_beyond_int32_means_no_limit():
    res = minimize(rosenbrock, jnp.asarray([-1.2, 1.0]), "bfgs", max_steps=10**10)
    assert res.status == Status.CONVERGED


def test_traced_invalid_tolerance_ends_only_its_member_as_invalid_hyperparameter():
    solve = jax.vmap(lambda t: minimize(rosenbrock, jnp.zeros(2), "bfgs", tol=t))
    res = solve(jnp.asarray([1e-5, -1.0, jnp.nan]))
    assert [int(s) for s in res.status] == [Status.CONVERGED] + 2 * [Status.INVALID_HYPERPARAMETER]
    assert int(res.num_steps[0]) > 0 and int(res.num_steps[1]) == int(res.num_steps[2]) == 0


def test_register_method_and_options():
    register_method("lbfgs3", lambda **kw: METHODS_LBFGS(memory_size=3, **kw))
    res = minimize(rosenbrock, jnp.asarray([-1.2, 1.0]), "lbfgs3", options={"linesearch": None})
    assert int(res.status) in (Status.CONVERGED, Status.MAX_STEPS, Status.NON_FINITE)
    del METHODS["lbfgs3"]
    with pytest.raises(TypeError):
        register_method("", lambda: None)


def METHODS_LBFGS(**kw):
    from gradlab.second_order.quasi_newton import lbfgs

    return lbfgs(**kw)


def test_pytree_parameters_with_lbfgs():
    def fun(p):
        return jnp.sum((p["w"] - 2.0) ** 2) + (p["b"] + 1.0) ** 2 + 0.1 * jnp.sum(p["w"] ** 4)

    x0 = {"w": jnp.zeros((2, 2)), "b": jnp.asarray(0.0)}
    res = minimize(fun, x0, "lbfgs")
    assert int(res.status) == Status.CONVERGED
    assert res.params["w"].shape == (2, 2) and res.params["w"].dtype == jnp.float32
    np.testing.assert_allclose(float(res.params["b"]), -1.0, atol=1e-3)


def test_has_aux_returns_aux_at_the_final_point():
    def fun(x):
        return jnp.sum((x - 3.0) ** 2), {"mean": jnp.mean(x)}

    res = minimize(fun, jnp.zeros(3), "bfgs", has_aux=True)
    assert int(res.status) == Status.CONVERGED
    np.testing.assert_allclose(float(res.aux["mean"]), 3.0, atol=1e-3)
    with pytest.raises(TypeError, match="has_aux"):
        minimize(rosenbrock, jnp.zeros(2), "bfgs", has_aux=1)


def test_python_number_settings_are_cached_device_scalars_with_python_semantics():
    from gradlab.minimize import _device_scalar

    a, b = _device_scalar(1e-5), _device_scalar(1e-5)
    assert a is b and a.weak_type and a.dtype == jnp.float32  # transferred once, weakly typed
    assert _device_scalar(7).dtype == jnp.int32 and _device_scalar(7) is not _device_scalar(7.0)
    with jax.enable_x64():
        assert _device_scalar(1e-5).dtype == jnp.float64  # the x64 mode is part of the key
    traced = jnp.asarray(0.5)
    assert _device_scalar(traced) is traced
    # Same results as passing arrays.
    direct = minimize(rosenbrock, jnp.zeros(2), "bfgs", tol=1e-6, max_steps=50)
    arrays = minimize(rosenbrock, jnp.zeros(2), "bfgs", tol=jnp.asarray(1e-6), max_steps=50)
    assert int(direct.num_fun_evals) == int(arrays.num_fun_evals)


def test_settings_first_seen_inside_a_users_jit_work_in_later_programs():
    # Regression: a cached setting first made while the caller's jax.jit traced minimize was
    # hoisted as an argument of that program only; the next program capturing it failed with
    # "Execution supplied 1 arguments but compiled program expected 4".
    tol = 0.123456  # a value no other test uses, so the cache entry is made inside the trace
    for method in ("bfgs", "lbfgs"):
        solve = lambda x, m=method: minimize(rosenbrock, x, m, tol=tol, max_steps=77).num_steps
        first = jax.jit(solve)(jnp.zeros(2))
        again = jax.jit(solve)(jnp.zeros(2))  # a second jit object: a fresh dispatch path
        assert int(first) == int(again) > 0


@pytest.mark.parametrize(
    "tx",
    [
        optax.chain(optax.lbfgs(), optax.scale(0.5)),
        optax.chain(optax.lbfgs(), optax.clip_by_global_norm(0.1)),
        optax.chain(optax.sgd(1.0), _optax_backtracking(store_grad=True), optax.scale(0.5)),
    ],
    ids=["lbfgs-then-scale", "lbfgs-then-clip", "backtracking-then-scale"],
)
def test_a_link_after_the_search_is_evaluated_not_reused(tx):
    # The search's value and gradient belong to the point it tried, not to where a later link
    # moved the parameters: the reported value must be f(params) at every stage.
    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    for max_steps in (1, 3):
        res = minimize(f, jnp.zeros(3), tx, max_steps=max_steps)
        np.testing.assert_allclose(float(res.value), float(f(res.params)), rtol=1e-6)
        assert res.status == Status.MAX_STEPS
    res = minimize(f, jnp.zeros(3), tx, max_steps=500)
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(res.params, 1.0, atol=1e-4)


def test_a_link_after_gradlabs_search_is_evaluated_not_reused():
    from gradlab import bfgs

    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    res = minimize(f, jnp.zeros(3), optax.chain(bfgs(), optax.scale(0.5)), max_steps=1)
    np.testing.assert_allclose(float(res.value), float(f(res.params)), rtol=1e-6)
    assert float(res.value) > 0.1  # half a step: not at the minimum the search found
