"""Newton's method (dense, modified) and Hessian-free Newton-CG, against scipy and the formulas."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from gradlab import base
from gradlab.minimize import minimize
from gradlab.second_order.least_squares import least_squares
from gradlab.second_order.newton import newton, scale_by_newton
from gradlab.second_order.newton_cg import (
    conjugate_gradient,
    hvp,
    newton_cg,
    scale_by_newton_cg,
)
from gradlab.status import Status


def saddle(p):
    """x^2 - y^2 + 0.1 y^4: a saddle at 0, minima at (0, +-sqrt 5)."""
    return p[0] ** 2 - p[1] ** 2 + 0.1 * p[1] ** 4


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def first_update(tx, grads, params, **extra):
    """``tx.update`` from a fresh state, compiled (eager dispatch of lax loops is slow)."""
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p, **extra))(grads, params)


def run_unit_steps(tx, f, x0, steps):
    """``steps`` updates with unit step (one compiled scan); returns iterates and statuses."""

    def step(carry, _):
        x, s = carry
        g = jax.grad(f)(x)
        d, s = tx.update(g, s, x, value_fn=f)
        inner = s[0] if isinstance(s, tuple) and not hasattr(s, "_fields") else s
        return (jax.tree.map(jnp.add, x, d), s), (x, jnp.vdot(g, d), inner.status)

    (x, s), (xs, slopes, statuses) = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
    return x, s, xs, slopes, statuses


def run_armijo(descent, f, x0, steps):
    """Descent + a plain Armijo backtracking (halving) written here, independent of gradlab's."""

    def step(carry, _):
        x, s, nfev = carry
        v, g = jax.value_and_grad(f)(x)
        d, s = descent.update(g, s, x, value_fn=f)
        slope = jnp.vdot(g, d)

        def cond(c):
            t, k = c
            return (f(x + t * d) > v + 1e-4 * t * slope) & (k < 40)

        t, k = jax.lax.while_loop(cond, lambda c: (0.5 * c[0], c[1] + 1), (1.0, 0))
        t = jnp.where(slope < 0, t, 0.0)
        return (x + t * d, s, nfev + k + 1), None

    (x, s, nfev), _ = jax.lax.scan(step, (x0, descent.init(x0), 0), None, length=steps)
    return x, s, nfev


# ----------------------------------------------------------------------------------------------
# Hessian-vector products and conjugate gradient
# ----------------------------------------------------------------------------------------------


def test_hvp_agrees_with_dense_hessian_on_quadratic_and_large_logsumexp():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6)).astype(np.float32)
    a = a @ a.T
    quad = lambda x: 0.5 * x @ (a @ x) + jnp.sum(jnp.sin(x))
    x = jnp.asarray(rng.normal(size=6), jnp.float32)
    v = jnp.asarray(rng.normal(size=6), jnp.float32)
    out, dense = jax.jit(lambda x, v: (hvp(quad, x, v), jax.hessian(quad)(x) @ v))(x, v)
    np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)
    lse = jax.nn.logsumexp
    x_big = jnp.array([1000.0, 0.0, -3.0])
    v3 = jnp.array([1.0, -2.0, 0.5])
    out, dense = jax.jit(lambda x, v: (hvp(lse, x, v), jax.hessian(lse)(x) @ v))(x_big, v3)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, dense, atol=1e-5)


def test_cg_solves_spd_system_on_pytrees():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(8, 8))
    a = jnp.asarray(m @ m.T + 8 * np.eye(8), jnp.float32)
    b = jnp.asarray(rng.normal(size=8), jnp.float32)
    split = lambda v: {"u": v[:3], "w": v[3:].reshape(5, 1)}
    join = lambda t: jnp.concatenate([t["u"], t["w"].ravel()])
    res = conjugate_gradient(lambda t: split(a @ join(t)), split(b), tol=1e-6, max_steps=50)
    assert int(res.status) == Status.CONVERGED
    np.testing.assert_allclose(join(res.x), np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_cg_solution_scales_with_b_without_under_or_overflow(scale):
    # float32: b.b of a 1e-30 (1e30) scaled b under- (over-)flows; CG solves for b / |b|.
    a = jnp.asarray([[4.0, 1.0], [1.0, 3.0]])
    b = jnp.asarray([1.0, 2.0])
    ref = conjugate_gradient(lambda v: a @ v, b, tol=1e-6, max_steps=10)
    res = conjugate_gradient(lambda v: a @ v, scale * b, tol=scale * 1e-6, max_steps=10)
    assert int(res.status) == int(ref.status) == Status.CONVERGED
    np.testing.assert_allclose(res.x / scale, ref.x, rtol=1e-5)
    np.testing.assert_allclose(res.curvature, ref.curvature, rtol=1e-5)  # a Rayleigh quotient


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_newton_cg_and_matrix_free_gauss_newton_on_scaled_problems(scale):
    res = minimize(lambda x: scale * rosenbrock(x), jnp.asarray([-1.2, 1.0]), "newton_cg")
    assert int(res.status) == Status.CONVERGED  # was NOT_DESCENT / NON_FINITE (|g|^2 out of range)
    np.testing.assert_allclose(res.params, [1.0, 1.0], atol=2e-2)
    x = jnp.linspace(0.0, 1.0, 10)
    r = lambda p: np.sqrt(scale) * (p[0] * jnp.exp(p[1] * x) - 2.0 * jnp.exp(-x))
    fit = least_squares(
        r, jnp.asarray([1.0, 0.0]), "gauss_newton", options={"jacobian": "matrix_free"}
    )
    assert int(fit.status) == Status.CONVERGED
    np.testing.assert_allclose(fit.params, [2.0, -1.0], atol=1e-3)


def test_cg_stops_on_negative_curvature_and_singular_and_nan():
    # L1: indefinite. The first direction b = (1, 1) has zero curvature -> stop at once.
    a = jnp.diag(jnp.array([1.0, -1.0]))
    res = conjugate_gradient(lambda v: a @ v, jnp.array([1.0, 1.0]), tol=1e-6, max_steps=10)
    assert int(res.status) == Status.NEGATIVE_CURVATURE and int(res.num_matvecs) == 1
    np.testing.assert_array_equal(res.x, [0.0, 0.0])
    # Indefinite after a positive first step: returns that (finite) first iterate.
    a = jnp.diag(jnp.array([3.0, -1.0]))
    b = jnp.array([1.0, 0.5])
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-6, max_steps=10)
    assert int(res.status) == Status.NEGATIVE_CURVATURE
    alpha = (b @ b) / (b @ (a @ b))
    np.testing.assert_allclose(res.x, alpha * b, rtol=1e-6)
    # L2: singular PSD, b not in the range: finite output, a status, no NaN.
    a = jnp.diag(jnp.array([1.0, 0.0]))
    res = conjugate_gradient(lambda v: a @ v, jnp.array([1.0, 1.0]), tol=1e-6, max_steps=10)
    assert np.all(np.isfinite(res.x)) and int(res.status) != Status.CONVERGED
    # NaN right-hand side.
    res = conjugate_gradient(lambda v: v, jnp.array([jnp.nan, 1.0]), tol=1e-6, max_steps=10)
    assert int(res.status) == Status.NON_FINITE and int(res.num_matvecs) == 0


# ----------------------------------------------------------------------------------------------
# Newton (dense)
# ----------------------------------------------------------------------------------------------


def test_newton_one_unit_step_lands_on_quadratic_minimum_pytree():
    rng = np.random.default_rng(2)
    m = rng.normal(size=(5, 5))
    a = jnp.asarray(m @ m.T + np.eye(5), jnp.float32)
    c = jnp.asarray(rng.normal(size=5), jnp.float32)
    join = lambda p: jnp.concatenate([p["a"], p["b"].ravel()])
    f = lambda p: 0.5 * (join(p) - c) @ (a @ (join(p) - c))
    params = {"a": jnp.zeros(2), "b": jnp.ones((3, 1))}
    tx = newton(linesearch=None)
    upd, state = first_update(tx, jax.grad(f)(params), params, value_fn=f)
    new = jax.tree.map(jnp.add, params, upd)
    np.testing.assert_allclose(join(new), c, rtol=1e-4, atol=1e-4)
    assert upd["b"].shape == (3, 1)
    assert int(state[0].status) == Status.OK and float(state[0].shift) == 0.0


@pytest.mark.parametrize("fallback", ["eigen", "shift"])
def test_newton_indefinite_hessian_reaches_a_minimum_not_the_saddle(fallback):
    # J1: plain Newton from (1, 0.5) goes to the saddle (0, 0).
    x, _, xs, slopes, statuses = run_unit_steps(
        newton(linesearch=None, fallback=fallback), saddle, jnp.array([1.0, 0.5]), 40
    )
    np.testing.assert_allclose(jnp.abs(x), [0.0, np.sqrt(5.0)], atol=1e-4)
    assert int(statuses[0]) == Status.NEGATIVE_CURVATURE
    moving = np.asarray(jnp.linalg.norm(jax.vmap(jax.grad(saddle))(xs), axis=1)) > 1e-6
    assert np.all(np.asarray(slopes)[moving] < 0)  # every direction descends
    assert np.all(np.linalg.eigvalsh(np.asarray(jax.hessian(saddle)(x))) > 0)


@pytest.mark.parametrize("fallback", ["eigen", "shift"])
def test_newton_singular_hessian_gives_finite_step_and_status(fallback):
    # J2: f = x^2 with y flat: H = diag(2, 0); a plain solve gives [nan, inf].
    f = lambda p: p[0] ** 2
    p = jnp.array([1.0, 0.5])
    tx = scale_by_newton(fallback=fallback)
    d, s = first_update(tx, jax.grad(f)(p), p, value_fn=f)
    assert np.all(np.isfinite(d)) and int(s.status) == Status.NEGATIVE_CURVATURE
    np.testing.assert_allclose(d, [-1.0, 0.0], atol=2e-3)


def test_newton_non_finite_value_leaves_params_and_reports():
    f = lambda p: jnp.sum(p**2) + jnp.sqrt(p[0] - 10.0)  # NaN Hessian at 0
    p = jnp.zeros(2)
    tx = scale_by_newton()
    d, s = first_update(tx, jnp.ones(2), p, value_fn=f)
    np.testing.assert_array_equal(d, [0.0, 0.0])
    assert int(s.status) == Status.NON_FINITE


def test_newton_refuses_large_hessian_and_bad_arguments():
    with pytest.raises(ValueError, match="20000 parameters"):
        scale_by_newton().init({"w": jnp.zeros((100, 200))})
    assert scale_by_newton(hessian_memory_budget=2 * 10**9).init(jnp.zeros(20000)) is not None
    with pytest.raises(ValueError, match="fallback"):
        scale_by_newton(fallback="cholesky")
    with pytest.raises(ValueError, match="damping_increase"):
        scale_by_newton(damping_increase=1.0)
    with pytest.raises(ValueError, match="damping_init"):
        scale_by_newton(damping_init=0.0)
    with pytest.raises(ValueError, match="eigenvalue_floor"):
        scale_by_newton(eigenvalue_floor=2.0)
    tx = scale_by_newton()
    p = jnp.zeros(2)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(p, tx.init(p), p)
    with pytest.raises(base.TreeMismatchError) as e:
        tx.update({"a": jnp.zeros(2)}, tx.init({"a": p}), {"a": jnp.zeros((2, 1))}, value_fn=saddle)
    assert e.value.path == "['a']"
    with pytest.raises(base.StateMismatchError):
        tx.update(p, scale_by_newton_cg().init(p), p, value_fn=saddle)


def _scipy_rosenbrock(x0, method, **kwargs):
    """scipy on the jitted float64 Rosenbrock (callbacks compiled once)."""
    grad = jax.jit(jax.grad(rosenbrock))
    hessp = jax.jit(lambda z, v: hvp(rosenbrock, z, v))
    hess = jax.jit(jax.hessian(rosenbrock))
    fun = jax.jit(rosenbrock)
    with jax.enable_x64(True):
        return scipy.optimize.minimize(
            lambda z: float(fun(z)),
            x0,
            method=method,
            jac=lambda z: np.asarray(grad(z)),
            **(
                {"hessp": lambda z, v: np.asarray(hessp(z, v))}
                if method == "Newton-CG"
                else {"hess": lambda z: np.asarray(hess(z))}
            ),
            **kwargs,
        )


def test_newton_vs_scipy_trust_exact_on_rosenbrock():
    x0 = np.array([-1.2, 1.0, -1.2, 1.0])
    with jax.enable_x64(True):
        x, _, _ = run_armijo(scale_by_newton(), rosenbrock, jnp.asarray(x0), 40)
        x = np.asarray(x)
    ref = _scipy_rosenbrock(x0, "trust-exact")
    np.testing.assert_allclose(x, ref.x, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Newton-CG
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 10])
def test_newton_cg_vs_scipy_on_rosenbrock(dim):
    x0 = np.tile([-1.2, 1.0], dim // 2)
    ref = _scipy_rosenbrock(x0, "Newton-CG", options={"xtol": 1e-10})
    with jax.enable_x64(True):
        x, s, _ = run_armijo(scale_by_newton_cg(), rosenbrock, jnp.asarray(x0), 200)
        x = np.asarray(x)
    np.testing.assert_allclose(x, ref.x, atol=1e-5)
    np.testing.assert_allclose(x, np.ones(dim), atol=1e-5)
    assert int(s.status) in (Status.OK, Status.NEGATIVE_CURVATURE)


def test_newton_cg_first_iteration_negative_curvature_uses_scaled_steepest_descent():
    p = jnp.array([0.0, 0.5])  # g = (0, -0.95), H = diag(2, -1.7): g^T H g < 0
    g = jax.grad(saddle)(p)
    tx = scale_by_newton_cg()
    d, s = first_update(tx, g, p, value_fn=saddle)
    assert int(s.status) == Status.NEGATIVE_CURVATURE and int(s.cg_steps) == 1
    curv = float(g @ jax.hessian(saddle)(p) @ g)
    np.testing.assert_allclose(d, -float(g @ g) / abs(curv) * g, rtol=1e-6)
    assert float(g @ d) < 0


def test_newton_cg_indefinite_reaches_minimum_with_line_search():
    x, s, _ = run_armijo(scale_by_newton_cg(), saddle, jnp.array([1.0, 0.5]), 40)
    np.testing.assert_allclose(jnp.abs(x), [0.0, np.sqrt(5.0)], atol=1e-4)


def test_newton_cg_exact_step_on_pytree_quadratic_and_counters():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(7, 7))
    a = jnp.asarray(m @ m.T + np.eye(7), jnp.float32)
    join = lambda p: jnp.concatenate([p["w"].ravel(), p["b"]])
    f = lambda p: 0.5 * join(p) @ (a @ join(p)) - jnp.sum(join(p))
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}
    tx = newton_cg(linesearch=None, forcing=1e-6)
    upd, (s,) = first_update(tx, jax.grad(f)(params), params, value_fn=f)
    new = join(jax.tree.map(jnp.add, params, upd))
    np.testing.assert_allclose(new, np.linalg.solve(a, np.ones(7)), rtol=1e-3, atol=1e-4)
    assert upd["w"].shape == (2, 2)
    assert int(s.num_hess_evals) == int(s.cg_steps) <= 7 + 1
    assert int(s.num_grad_evals) == 1 and int(s.status) == Status.OK


def test_newton_cg_nan_gradient_and_bad_arguments():
    p = jnp.zeros(3)
    tx = scale_by_newton_cg()
    d, s = first_update(tx, jnp.array([jnp.nan, 0.0, 1.0]), p, value_fn=jnp.sum)
    np.testing.assert_array_equal(d, np.zeros(3))
    assert int(s.status) == Status.NON_FINITE
    with pytest.raises(ValueError, match="forcing"):
        scale_by_newton_cg(forcing=1.0)
    with pytest.raises(ValueError, match="max_cg_steps"):
        scale_by_newton_cg(max_cg_steps=0)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(p, tx.init(p), p)


def separable(x):
    """A strictly convex separable problem with curvatures spread over [1, 1e3]."""
    n = x.shape[0]
    a = jnp.logspace(0.0, 3.0, n, dtype=x.dtype)
    return jnp.sum(0.5 * a * (x - 1.0) ** 2 + jnp.log(jnp.cosh(x)))


def _solve_separable(n, steps):
    x0 = jnp.zeros(n, jnp.float32)
    tx = newton_cg(linesearch=None)

    @jax.jit
    def solve(x0):
        x, s, _, _, _ = run_unit_steps(tx, separable, x0, steps)
        return (
            x,
            s[0],
            jnp.linalg.norm(jax.grad(separable)(x)) / jnp.linalg.norm(jax.grad(separable)(x0)),
        )

    return solve(x0)


def test_newton_cg_separable_medium_dimension():
    x, s, rel = _solve_separable(10_000, 16)
    assert float(rel) < 1e-5
    assert np.all(np.isfinite(np.asarray(x)))
    assert int(s.status) == Status.OK


@pytest.mark.slow
def test_newton_cg_runs_at_one_million_parameters():
    start = time.perf_counter()
    x, s, rel = _solve_separable(10**6, 16)
    x.block_until_ready()
    elapsed = time.perf_counter() - start
    assert float(rel) < 1e-5, float(rel)
    print(f"\nnewton_cg d=1e6: {elapsed:.1f}s, {int(s.num_hess_evals)} HVPs, rel grad {rel:.2e}")


def test_newton_methods_through_minimize_match_scipy_minimizer():
    from gradlab.minimize import minimize

    x0 = np.array([-1.2, 1.0])
    ref = _scipy_rosenbrock(x0, "Newton-CG", options={"xtol": 1e-10})
    with jax.enable_x64(True):
        for method in ("newton", "newton_cg"):
            r = minimize(rosenbrock, jnp.asarray(x0), method, tol=1e-8)
            assert int(r.status) == Status.CONVERGED, (method, r.summary())
            np.testing.assert_allclose(np.asarray(r.params), ref.x, atol=1e-6)
            assert int(r.num_steps) <= ref.nit  # scipy Newton-CG: 83 iterations here


@pytest.mark.parametrize("fallback", ["eigen", "shift"])
def test_newton_on_a_linear_objective_is_unbounded_not_an_uphill_refusal(fallback):
    # H = 0: the eigen fallback takes the gradient step (it divided by the smallest float).
    res = minimize(lambda x: -jnp.sum(x), jnp.zeros(2), "newton", options={"fallback": fallback})
    assert int(res.status) == Status.UNBOUNDED


@pytest.mark.parametrize(
    "make, good, bad",
    [
        (lambda v: newton(fallback="shift", damping_init=v), 1e-3, -1.0),
        (lambda v: newton(eigenvalue_floor=v), 1e-6, 2.0),
        (lambda v: newton_cg(forcing=v), 0.1, 2.0),
    ],
    ids=["newton-damping_init", "newton-eigenvalue_floor", "newton_cg-forcing"],
)
def test_invalid_traced_setting_stops_its_member_even_where_unused(make, good, bad):
    # On Rosenbrock from (-1.2, 1) the Hessian is positive definite: the fallback's settings
    # are never used, but an invalid one still ends its batch member, with the reason.
    solve = jax.vmap(lambda v: minimize(rosenbrock, jnp.asarray([-1.2, 1.0]), make(v)))
    res = solve(jnp.asarray([good, bad]))
    assert [int(s) for s in res.status] == [Status.CONVERGED, Status.INVALID_HYPERPARAMETER]
    assert int(res.num_steps[1]) == 1
