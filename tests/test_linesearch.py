"""Line searches: Wolfe/Armijo conditions on accepted steps, scipy, and every failure mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from jax import enable_x64
from objectives import linear, nan_off_start, nan_region, square

from gradlab import base
from gradlab.linesearch import (
    scale_by_backtracking_linesearch,
    scale_by_exact_linesearch,
    scale_by_more_thuente_linesearch,
    scale_by_zoom_linesearch,
)
from gradlab.status import Status


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _search(ls, fn, x, d):
    """One search from x along d (compiled once per (search, objective) pair)."""
    value, grad = jax.value_and_grad(fn)(x)
    return ls.update(d, ls.init(x), x, value=value, grad=grad, value_fn=fn)


ZOOM = scale_by_zoom_linesearch()
MORE_THUENTE = scale_by_more_thuente_linesearch()
BACKTRACK = scale_by_backtracking_linesearch()
EXACT = scale_by_exact_linesearch()


@pytest.mark.parametrize("start", [(-1.2, 1.0), (0.0, 0.0), (1.5, 2.5)])
@pytest.mark.parametrize("search", ["zoom", "more_thuente"])
def test_wolfe_search_accepts_strong_wolfe_step_and_stores_value_grad(search, start):
    ls = ZOOM if search == "zoom" else MORE_THUENTE
    with enable_x64(True):
        x = jnp.asarray(start, jnp.float64)
        g = np.asarray(jax.grad(rosen)(x))
        d = -g
        upd, st = _search(ls, rosen, x, jnp.asarray(d))
        t = float(st.step_size)
        assert int(st.status) == Status.OK and bool(st.curvature_satisfied)
        np.testing.assert_allclose(np.asarray(upd), t * d, rtol=1e-12)
        x1 = np.asarray(x) + t * d
        f0, f1 = float(rosen(x)), float(rosen(jnp.asarray(x1)))
        g1 = np.asarray(jax.grad(rosen)(jnp.asarray(x1)))
        assert f1 <= f0 + 1e-4 * t * g @ d  # Armijo
        assert abs(g1 @ d) <= 0.9 * abs(g @ d)  # strong curvature
        np.testing.assert_allclose(float(st.value), f1, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(st.grad), g1, rtol=1e-10)
        assert 1 <= int(st.num_fun_evals) == int(st.num_grad_evals) <= 30
        # scipy's Wolfe search finds a step satisfying the same conditions.
        f_np = lambda z: float(rosen(jnp.asarray(z)))
        g_np = lambda z: np.asarray(jax.grad(rosen)(jnp.asarray(z)))
        alpha = so.line_search(f_np, g_np, np.asarray(x), d, c1=1e-4, c2=0.9)[0]
        assert alpha is not None
        assert abs(g_np(np.asarray(x) + alpha * d) @ d) <= 0.9 * abs(g @ d)


def test_backtracking_matches_textbook_loop():
    x = jnp.asarray([-1.2, 1.0])
    g = np.asarray(jax.grad(rosen)(x), np.float64)
    d = -g / np.linalg.norm(g) * 3.0
    f0 = float(rosen(x))
    t = 1.0
    while float(rosen(x + t * d)) > f0 + 1e-4 * t * (g @ d):
        t *= 0.8
    upd, st = _search(BACKTRACK, rosen, x, jnp.asarray(d, jnp.float32))
    np.testing.assert_allclose(float(st.step_size), t, rtol=1e-5)
    assert int(st.status) == Status.OK
    np.testing.assert_allclose(float(st.value), float(rosen(x + upd)), rtol=1e-6)


def test_exact_linesearch_on_quadratic_matches_formula():
    with enable_x64(True):
        a = jnp.diag(jnp.asarray([1.0, 4.0, 9.0], jnp.float64))
        f = lambda x: 0.5 * x @ a @ x
        x = jnp.asarray([1.0, 1.0, 1.0], jnp.float64)
        g = a @ x
        d = -g
        _, st = _search(EXACT, f, x, d)
        t_star = float(g @ g / (d @ a @ d))
        np.testing.assert_allclose(float(st.step_size), t_star, rtol=1e-8)
        assert int(st.status) == Status.OK


@pytest.mark.parametrize("ls", [ZOOM, BACKTRACK, EXACT], ids=["zoom", "backtracking", "exact"])
def test_non_descent_or_nan_direction_takes_no_step(ls):
    x = jnp.asarray([1.0, 2.0])
    upd, st = _search(ls, square, x, 2.0 * x)  # uphill: the gradient itself
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    assert int(st.status) == Status.NOT_DESCENT
    assert int(st.num_fun_evals) == 0 and float(st.step_size) == 0.0
    np.testing.assert_allclose(float(st.value), 5.0)
    upd, st = _search(ls, square, x, jnp.asarray([jnp.nan, -1.0]))
    assert int(st.status) == Status.NON_FINITE and int(st.num_fun_evals) == 0
    np.testing.assert_array_equal(np.asarray(upd), 0.0)


def test_zoom_unbounded_stops_at_max_step_norm():
    x = jnp.zeros(3)
    upd, st = _search(scale_by_zoom_linesearch(max_step_norm=1e6), linear, x, jnp.ones(3))
    assert int(st.status) == Status.UNBOUNDED
    np.testing.assert_allclose(float(jnp.linalg.norm(upd)), 1e6, rtol=1e-5)
    assert int(st.num_fun_evals) <= 30
    _, st = _search(EXACT, linear, x, jnp.ones(3))
    assert int(st.status) == Status.UNBOUNDED


@pytest.mark.parametrize("make", [scale_by_zoom_linesearch, scale_by_more_thuente_linesearch])
def test_a_binding_max_learning_rate_takes_the_capped_step_not_unbounded(make):
    # Along d = -g/10 on sum(x^2) from (1, 1), f decreases fast all the way to t = 0.1 (the
    # minimum is at t = 5): the cap is the caller's choice, so the step is taken as OK.
    x = jnp.ones(2)
    upd, st = _search(make(max_learning_rate=0.1), square, x, -0.2 * x)
    assert int(st.status) == Status.OK
    assert not bool(st.curvature_satisfied)
    np.testing.assert_allclose(np.asarray(upd), -0.02, rtol=1e-5)  # t d = 0.1 * (-0.2)
    # Past max_step_norm it is still UNBOUNDED, with or without a looser rate cap.
    upd, st = _search(
        make(max_learning_rate=1e9, max_step_norm=1e3), linear, jnp.zeros(3), jnp.ones(3)
    )
    assert int(st.status) == Status.UNBOUNDED
    np.testing.assert_allclose(float(jnp.linalg.norm(upd)), 1e3, rtol=1e-5)


@pytest.mark.parametrize("ls", [ZOOM, BACKTRACK, EXACT], ids=["zoom", "backtracking", "exact"])
def test_all_nan_trials_fail_without_moving(ls):
    x = jnp.zeros(2)
    upd, st = _search(ls, nan_off_start, x, jnp.ones(2))
    assert int(st.status) == Status.LINE_SEARCH_FAILED
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    assert np.isfinite(float(st.value)) and base.tree_all_finite(st.grad)


@pytest.mark.parametrize("ls", [ZOOM, BACKTRACK, EXACT], ids=["zoom", "backtracking", "exact"])
def test_nan_region_shrinks_to_a_finite_decrease(ls):
    x = jnp.zeros(2)
    upd, st = _search(ls, nan_region, x, jnp.ones(2))
    assert int(st.status) == Status.OK
    assert float(st.value) < 2.0 and np.isfinite(float(nan_region(x + upd)))
    np.testing.assert_allclose(float(st.value), float(nan_region(x + upd)))


def test_backtracking_never_returns_an_uphill_step():
    # optax returns its last trial here (f goes up); gradlab rejects the step.
    x = jnp.ones(1)
    ls = scale_by_backtracking_linesearch(max_backtracking_steps=3, decrease_factor=0.5)
    upd, st = _search(ls, square, x, jnp.asarray([-1000.0]))
    assert int(st.status) == Status.LINE_SEARCH_FAILED
    assert float(upd[0]) == 0.0 and int(st.num_fun_evals) == 3


def test_searches_vmap_over_points_one_nan_lane_isolated():
    xs = jnp.asarray([[-1.2, 1.0], [jnp.nan, 0.0], [0.5, 0.5]])
    ds = -jax.vmap(jax.grad(rosen))(xs)
    upd, st = jax.vmap(lambda x, d: _search(ZOOM, rosen, x, d))(xs, ds)
    np.testing.assert_array_equal(np.asarray(st.status), [Status.OK, Status.NON_FINITE, Status.OK])
    np.testing.assert_array_equal(np.asarray(upd[1]), 0.0)
    for i in (0, 2):  # each lane equals the unbatched search
        u_i, _ = _search(ZOOM, rosen, xs[i], ds[i])
        np.testing.assert_allclose(np.asarray(upd[i]), np.asarray(u_i), rtol=1e-5)


def test_traced_hyperparameter_and_invalid_traced_value_poison_only_their_lane():
    x = jnp.asarray([-1.2, 1.0])
    value, grad = jax.value_and_grad(rosen)(x)

    def run(c2):
        ls = scale_by_zoom_linesearch(curv_rtol=c2)
        _, st = ls.update(-grad, ls.init(x), x, value=value, grad=grad, value_fn=rosen)
        return st.status, st.step_size

    status, step = jax.jit(jax.vmap(run))(jnp.asarray([0.9, 0.1, 1.5]))
    assert list(np.asarray(status[:2])) == [Status.OK, Status.OK]
    assert int(status[2]) == Status.INVALID_HYPERPARAMETER and float(step[2]) == 0.0


def test_invalid_hyperparameters_raise():
    with pytest.raises(ValueError, match="slope_rtol"):
        scale_by_zoom_linesearch(slope_rtol=0.0)
    with pytest.raises(ValueError, match="slope_rtol must be < curv_rtol"):
        scale_by_zoom_linesearch(slope_rtol=0.5, curv_rtol=0.1)
    with pytest.raises(ValueError, match="slope_rtol must be < curv_rtol, got slope_rtol=0.1 >="):
        scale_by_zoom_linesearch(slope_rtol=0.1, curv_rtol=0.1)
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        scale_by_zoom_linesearch(initial_guess_strategy="two")
    with pytest.raises(ValueError, match="max_linesearch_steps"):
        scale_by_zoom_linesearch(max_linesearch_steps=0)
    with pytest.raises(TypeError, match="max_backtracking_steps"):
        scale_by_backtracking_linesearch(max_backtracking_steps=2.5)
    with pytest.raises(ValueError, match="decrease_factor"):
        scale_by_backtracking_linesearch(decrease_factor=1.0)
    with pytest.raises(ValueError, match="initial_step"):
        scale_by_exact_linesearch(initial_step=-1.0)


def test_mismatched_trees_and_states_raise_by_type():
    x = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    f = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)
    st = ZOOM.init(x)
    bad = {"a": jnp.zeros((2, 1)), "b": jnp.zeros(3)}
    with pytest.raises(base.TreeMismatchError) as err:
        ZOOM.update(bad, st, x, value=0.0, grad=x, value_fn=f)
    assert err.value.path == "['a']"
    with pytest.raises(base.StateMismatchError):
        ZOOM.update(x, BACKTRACK.init(x), x, value=0.0, grad=x, value_fn=f)


_INVALID_TRACED = {
    "zoom curv_rtol": (lambda v: scale_by_zoom_linesearch(curv_rtol=v), 0.9, 1e-5),
    "zoom max_learning_rate": (lambda v: scale_by_zoom_linesearch(max_learning_rate=v), 10.0, -1.0),
    "more_thuente xtol": (lambda v: scale_by_more_thuente_linesearch(xtol=v), 0.1, 2.0),
    "backtracking decrease_factor": (
        lambda v: scale_by_backtracking_linesearch(decrease_factor=v),
        0.5,
        1.5,
    ),
    "exact initial_step": (lambda v: scale_by_exact_linesearch(initial_step=v), 1.0, -1.0),
}


@pytest.mark.parametrize("name", sorted(_INVALID_TRACED))
def test_invalid_traced_setting_ends_its_lane_at_once_as_invalid_hyperparameter(name):
    from gradlab.minimize import minimize
    from gradlab.second_order.quasi_newton import bfgs

    make, good, bad = _INVALID_TRACED[name]

    def solve(v):
        return minimize(square, jnp.asarray([1.0, -2.0]), bfgs(linesearch=make(v)), max_steps=50)

    res = jax.vmap(solve)(jnp.asarray([good, bad]))
    assert int(res.status[0]) == Status.CONVERGED
    assert int(res.status[1]) == Status.INVALID_HYPERPARAMETER
    assert int(res.num_fun_evals[1]) == 1  # the start only: no trial was spent on it


@pytest.mark.parametrize("ls", [ZOOM, MORE_THUENTE, BACKTRACK, EXACT])
def test_a_search_called_without_params_or_extras_names_what_is_missing(ls):
    x = jnp.ones(2)
    value, grad = jax.value_and_grad(square)(x)
    with pytest.raises(ValueError, match="update needs params"):
        ls.update(-grad, ls.init(x), None, value=value, grad=grad, value_fn=square)
    with pytest.raises(ValueError, match="missing value_fn"):
        ls.update(-grad, ls.init(x), x, value=value, grad=grad)


def test_links_that_evaluate_the_objective_refuse_masked_params_and_the_freeze_recipe_works():
    import optax

    from gradlab.second_order.newton import scale_by_newton
    from gradlab.second_order.newton_cg import scale_by_newton_cg

    def f(p):
        return jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum(p["b"] ** 2)

    params = {"a": jnp.zeros(2), "b": jnp.ones(2)}
    labels = {"a": "opt", "b": "frozen"}
    for descent in (scale_by_newton(), scale_by_newton_cg()):
        tx = optax.chain(
            optax.multi_transform({"opt": descent, "frozen": optax.set_to_zero()}, labels), ZOOM
        )
        value, grad = jax.value_and_grad(f)(params)
        with pytest.raises(ValueError, match=r"params\['b'\] is masked out"):
            tx.update(grad, tx.init(params), params, value=value, grad=grad, value_fn=f)
    masked_search = optax.masked(ZOOM, {"a": True, "b": False})
    with pytest.raises(ValueError, match=r"params\['b'\] is masked out"):
        masked_search.update(
            grad, masked_search.init(params), params, value=value, grad=grad, value_fn=f
        )
    # The documented recipe: zero the frozen leaves' updates between the descent and the search.
    frozen = {"a": False, "b": True}
    tx = optax.chain(scale_by_newton(), optax.masked(optax.set_to_zero(), frozen), ZOOM)
    updates, _ = tx.update(grad, tx.init(params), params, value=value, grad=grad, value_fn=f)
    np.testing.assert_allclose(updates["a"], 2.0, rtol=1e-5)
    np.testing.assert_array_equal(updates["b"], 0.0)
