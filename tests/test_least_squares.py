"""Gauss-Newton and Levenberg–Marquardt: scipy MINPACK, damping rule, degenerate inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from gradlab import base
from gradlab.second_order.least_squares import (
    gauss_newton,
    levenberg_marquardt,
    scale_by_gauss_newton,
)
from gradlab.status import Status

XS = np.linspace(0.0, 3.0, 20)


def exp_fit(p):
    """K1: y = 2 exp(-x) fitted by p0 exp(p1 x); solution (2, -1)."""
    x = jnp.asarray(XS, p.dtype)
    return p[0] * jnp.exp(p[1] * x) - 2.0 * jnp.exp(-x)


def rank_deficient(p):
    """K2: depends on p0 + p1 only."""
    s = p[0] + p[1] - 3.0
    return jnp.stack([s, 2.0 * s, s**2])


def run(tx, residual_fn, x0, steps):
    """``steps`` updates (one compiled scan), applying each update; returns x, state, history."""

    def step(carry, _):
        x, s = carry
        u, s_new = tx.update(x, s, x, residual_fn=residual_fn)
        inner = s_new[0] if isinstance(s_new, tuple) and not hasattr(s_new, "_fields") else s_new
        r = residual_fn(x)
        return (x + u, s_new), (0.5 * jnp.vdot(r, r), inner)

    (x, s), hist = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
    return x, s, hist


def first_update(tx, params, residual_fn):
    return jax.jit(lambda p: tx.update(p, tx.init(p), p, residual_fn=residual_fn))(params)


# ----------------------------------------------------------------------------------------------
# Solutions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: levenberg_marquardt(),
        lambda: levenberg_marquardt(scaling="marquardt"),
        lambda: levenberg_marquardt(jacobian="matrix_free"),
        lambda: gauss_newton(linesearch=None),
        lambda: gauss_newton(linesearch=None, jacobian="matrix_free"),
    ],
    ids=["lm", "lm-marquardt", "lm-matrix-free", "gn", "gn-matrix-free"],
)
def test_exponential_fit_converges_to_2_minus_1(make):
    x, _, (costs, inner) = jax.jit(lambda x0: run(make(), exp_fit, x0, 25))(jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(x, [2.0, -1.0], atol=1e-4)
    assert np.all(np.isfinite(np.asarray(costs)))
    if hasattr(inner, "damping"):
        # At the float32 floor LM stops moving and says so (MINPACK's ftol = eps test).
        assert int(inner.status[-1]) == Status.CONVERGED and int(inner.status[0]) == Status.OK


@pytest.mark.parametrize("jacobian", ["auto", "matrix_free"])
def test_lm_takes_the_same_steps_on_1e30_and_1e_minus_30_scaled_problems(jacobian):
    # float32; f = |r|^2 / 2 scaled by 1e30 and 1e-30 (residuals by 1e15, 1e-15). Earlier the
    # predicted decrease overflowed (1e30) or underflowed to 0, which read as "converged" at
    # x0, and the damping was clipped to [1e-30, 1e30], a scale of its own.
    from gradlab.second_order.least_squares import least_squares

    x0 = jnp.asarray([1.0, 0.0])
    runs = {
        k: least_squares(lambda p, k=k: k * exp_fit(p), x0, options={"jacobian": jacobian})
        for k in (1.0, 1e15, 1e-15)
    }
    for k, res in runs.items():
        assert int(res.status) == Status.CONVERGED, k  # 1e-30: "converged" at x0 before
        # The same path up to rounding (the CG solves of the matrix-free mode round apart).
        assert abs(int(res.num_steps) - int(runs[1.0].num_steps)) <= (jacobian != "auto"), k
        np.testing.assert_allclose(res.params, [2.0, -1.0], atol=1e-3)


def test_lm_matches_scipy_minpack_on_noisy_curve_fit():
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 4.0, 40)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * rng.normal(size=t.size)

    def residual(p):
        return p[0] * jnp.exp(-p[1] * t) + p[2] - y

    x0 = np.array([1.0, 1.0, 0.0])
    with jax.enable_x64(True):
        jac = jax.jit(jax.jacfwd(residual))
        fun = jax.jit(residual)
        ref = scipy.optimize.least_squares(
            lambda p: np.asarray(fun(p)), x0, jac=lambda p: np.asarray(jac(p)), method="lm"
        )
        outs = {}
        for scaling in ("levenberg", "marquardt"):
            tx = levenberg_marquardt(scaling=scaling)
            x, s, (costs, _) = jax.jit(lambda x0, tx=tx: run(tx, residual, x0, 40))(jnp.asarray(x0))
            outs[scaling] = (np.asarray(x), np.asarray(costs))
    for x, costs in outs.values():
        np.testing.assert_allclose(x, ref.x, rtol=1e-7, atol=1e-9)
        assert np.all(np.diff(costs) <= 0)  # a step that increases the cost is never accepted


def test_marquardt_scaling_is_invariant_to_parameter_scale():
    # K5: columns scaled by 1e3 and 1e-2. Marquardt's diag(J^T J) scaling makes the iterates
    # of r(S q) exactly S^{-1} times those of r(p).
    scale = np.array([1e3, 1e-2])
    with jax.enable_x64(True):
        tx = levenberg_marquardt(scaling="marquardt")
        p, _, _ = jax.jit(lambda x0: run(tx, exp_fit, x0, 6))(jnp.array([1.0, 0.0]))
        scaled = lambda q: exp_fit(q * scale)
        q, _, _ = jax.jit(lambda x0: run(tx, scaled, x0, 6))(jnp.array([1.0, 0.0]) / scale)
        np.testing.assert_allclose(np.asarray(q) * scale, np.asarray(p), rtol=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: levenberg_marquardt(),
        lambda: levenberg_marquardt(jacobian="matrix_free"),
        lambda: gauss_newton(linesearch=None),
        lambda: gauss_newton(linesearch=None, jacobian="matrix_free"),
    ],
    ids=["lm", "lm-matrix-free", "gn", "gn-matrix-free"],
)
def test_rank_deficient_jacobian_gives_finite_solution_on_the_line(make):
    x, s, (_, inner) = jax.jit(lambda x0: run(make(), rank_deficient, x0, 30))(jnp.zeros(2))
    assert np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_allclose(float(x[0] + x[1]), 3.0, atol=1e-4)
    np.testing.assert_allclose(x, [1.5, 1.5], atol=1e-3)  # minimum-norm steps from 0
    assert int(inner.status[0]) == Status.OK


# ----------------------------------------------------------------------------------------------
# Damping
# ----------------------------------------------------------------------------------------------


def test_damping_rule_rejects_raises_and_lowers():
    # r = exp(x) - 1 from x = -3: the undamped Gauss-Newton step (+19) overshoots.
    res = lambda x: jnp.exp(x) - 1.0
    tx = levenberg_marquardt(damping_init=1e-8, relative_damping=False, max_inner_steps=1)
    with jax.enable_x64(True):
        x, _, (costs, st) = jax.jit(lambda x0: run(tx, res, x0, 40))(jnp.array([-3.0]))
        x, costs = np.asarray(x), np.asarray(costs)
        mu, nu, status, rho = (np.asarray(a) for a in (st.damping, st.nu, st.status, st.gain_ratio))
    np.testing.assert_allclose(x, [0.0], atol=1e-8)
    assert np.all(np.diff(costs) <= 0)
    # A rejected trial is a zero update with status OK (mu can still rise): the run goes on.
    assert status[0] == Status.OK and mu[0] == pytest.approx(2e-8)
    assert nu[0] == 4.0 and int(st.num_rejected[0]) == 1
    mu_prev, nu_prev = np.concatenate([[1e-8], mu[:-1]]), np.concatenate([[2.0], nu[:-1]])
    rejected = np.asarray(st.num_rejected) == 1
    accepted = (status == Status.OK) & ~rejected
    assert rejected.sum() >= 2 and accepted.sum() >= 3
    # Rejected: mu <- nu mu, nu <- 2 nu (so mu goes up).
    np.testing.assert_allclose(mu[rejected], (mu_prev * nu_prev)[rejected], rtol=1e-6)
    np.testing.assert_allclose(nu[rejected], 2 * nu_prev[rejected])
    assert np.all(mu[rejected] > mu_prev[rejected])
    # Accepted: Nielsen's factor max(1/3, 1 - (2 rho - 1)^3), nu <- 2.
    factor = np.maximum(1 / 3, 1 - (2 * np.where(accepted, rho, 0.5) - 1) ** 3)
    np.testing.assert_allclose(mu[accepted], (mu_prev * factor)[accepted], rtol=1e-6)
    assert np.all(nu[accepted] == 2.0)
    good = accepted & (rho > 0.5)
    assert good.any() and np.all(mu[good] < mu_prev[good])
    # rho >> 1 (the step did better than the model): accepted, mu divided by exactly 3.
    big = accepted & (rho > 1.5)
    assert big.any()
    np.testing.assert_allclose(mu[big], mu_prev[big] / 3, rtol=1e-6)


def test_non_finite_trial_is_rejected_and_retried():
    # NaN for x >= 1: the undamped Gauss-Newton step from 0 goes to the root x = 2.
    res = lambda x: jnp.where(x < 1.0, 1.0 - 0.5 * x, jnp.nan)
    tx = levenberg_marquardt(damping_init=1e-6, relative_damping=False)
    u, s = first_update(tx, jnp.array([0.0]), res)
    assert int(s.status) == Status.OK and int(s.num_rejected) >= 1
    assert 0.0 < float(u[0]) < 1.0 and float(s.damping) > 1e-6


def test_lm_limits_equal_gauss_newton_and_gradient_descent():
    p = jnp.array([1.8, -0.9])
    gn_step, _ = first_update(scale_by_gauss_newton(), p, exp_fit)
    lm0, s0 = first_update(
        levenberg_marquardt(damping_init=1e-12, relative_damping=False), p, exp_fit
    )
    assert int(s0.status) == Status.OK
    np.testing.assert_allclose(lm0, gn_step, rtol=1e-4, atol=1e-6)
    mu = 1e6
    lm_big, s_big = first_update(
        levenberg_marquardt(damping_init=mu, relative_damping=False), p, exp_fit
    )
    g = np.asarray(jax.jacfwd(exp_fit)(p)).T @ np.asarray(exp_fit(p))
    assert int(s_big.status) == Status.OK
    np.testing.assert_allclose(lm_big, -g / mu, rtol=1e-3)


def test_jacobian_modes_agree_on_one_step_and_pytrees():
    p = jnp.array([1.0, 0.0])
    lm = lambda **kw: levenberg_marquardt(damping_init=1e-2, relative_damping=False, **kw)
    steps = [
        first_update(lm(jacobian=j, forcing=1e-6), p, exp_fit)[0]
        for j in ("jacfwd", "jacrev", "matrix_free")
    ]
    np.testing.assert_allclose(steps[1], steps[0], rtol=1e-4)
    np.testing.assert_allclose(steps[2], steps[0], rtol=1e-3)
    tree = {"a": jnp.array(1.0), "b": jnp.array([0.0])}
    tree_res = lambda t: (
        exp_fit(jnp.stack([t["a"], t["b"][0]]))[:10],
        exp_fit(jnp.stack([t["a"], t["b"][0]]))[10:],
    )
    u, s = first_update(lm(), tree, tree_res)
    assert u["b"].shape == (1,) and int(s.status) == Status.OK
    np.testing.assert_allclose([u["a"], u["b"][0]], steps[0], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Faults and bad inputs
# ----------------------------------------------------------------------------------------------


def test_nan_residual_at_start_reports_non_finite_and_keeps_params():
    res = lambda p: jnp.array([jnp.nan, p[0] - 1.0])
    for tx in (
        levenberg_marquardt(),
        scale_by_gauss_newton(),
        levenberg_marquardt(jacobian="matrix_free"),
        scale_by_gauss_newton(jacobian="matrix_free"),
    ):
        u, s = first_update(tx, jnp.zeros(2), res)
        np.testing.assert_array_equal(u, [0.0, 0.0])
        assert int(s.status) == Status.NON_FINITE


def test_traced_damping_poisons_only_its_lane():
    def solve(tau):
        tx = levenberg_marquardt(damping_init=tau, relative_damping=False)
        x, s, _ = run(tx, exp_fit, jnp.array([1.0, 0.0]), 25)
        return x, s.status

    x, status = jax.jit(jax.vmap(solve))(jnp.array([1e-3, 10.0, -1.0]))
    np.testing.assert_allclose(x[:2], [[2.0, -1.0]] * 2, atol=1e-4)
    np.testing.assert_array_equal(x[2], [1.0, 0.0])
    assert int(status[2]) == Status.INVALID_HYPERPARAMETER
    assert int(status[0]) != Status.INVALID_HYPERPARAMETER


BAD_ARGUMENTS = [
    (ValueError, "jacobian", lambda: levenberg_marquardt(jacobian="dense")),
    (ValueError, "scaling", lambda: levenberg_marquardt(scaling="nielsen")),
    (
        ValueError,
        "marquardt",
        lambda: levenberg_marquardt(scaling="marquardt", jacobian="matrix_free"),
    ),
    (ValueError, "damping_init", lambda: levenberg_marquardt(damping_init=0.0)),
    (ValueError, "max_inner_steps", lambda: levenberg_marquardt(max_inner_steps=0)),
    (TypeError, "relative_damping", lambda: levenberg_marquardt(relative_damping=1)),
    (ValueError, "forcing", lambda: scale_by_gauss_newton(forcing=0.0)),
]


@pytest.mark.parametrize("error, name, make", BAD_ARGUMENTS, ids=[b[1] for b in BAD_ARGUMENTS])
def test_bad_arguments_raise(error, name, make):
    with pytest.raises(error, match=name):
        make()


@pytest.mark.parametrize(
    "make, other",
    [(levenberg_marquardt, scale_by_gauss_newton), (scale_by_gauss_newton, levenberg_marquardt)],
    ids=["lm", "gn"],
)
def test_bad_update_inputs_raise_by_type(make, other):
    tx, p, residual = make(), jnp.zeros(2), lambda q: q
    with pytest.raises(ValueError, match="residual_fn"):
        tx.update(p, tx.init(p), p)
    with pytest.raises(base.TreeMismatchError) as e:
        tx.update({"w": jnp.zeros((2, 1))}, tx.init({"w": p}), {"w": p}, residual_fn=residual)
    assert e.value.path == "['w']"
    with pytest.raises(base.StateMismatchError):
        tx.update(p, other().init(p), p, residual_fn=residual)


def test_least_squares_convenience_through_minimize():
    from gradlab.second_order.least_squares import least_squares

    with jax.enable_x64(True):
        for method in ("levenberg_marquardt", "gauss_newton"):
            r = least_squares(exp_fit, jnp.array([1.0, 0.0]), method, tol=1e-8)
            assert int(r.status) == Status.CONVERGED, (method, r.summary())
            np.testing.assert_allclose(np.asarray(r.params), [2.0, -1.0], atol=1e-7)
            assert int(r.num_steps) <= 6  # scipy MINPACK lm: 7 residual, 6 Jacobian evaluations
    # float32 with an unreachable tolerance: LM reports CONVERGED at machine precision (zero
    # update) and minimize stops there instead of spinning to max_steps (regression).
    r = least_squares(exp_fit, jnp.array([1.0, 0.0]), tol=1e-12)
    assert int(r.status) == Status.CONVERGED and int(r.num_steps) < 30, r.summary()
    np.testing.assert_allclose(np.asarray(r.params), [2.0, -1.0], atol=1e-4)


def test_least_squares_reuses_its_compiled_loop_for_the_same_residual():
    from gradlab.second_order.least_squares import least_squares

    traces = [0]

    def residual(p):
        traces[0] += 1  # counts traces: a recompile traces the residual again
        return exp_fit(p)

    for _ in range(3):
        r = least_squares(residual, jnp.array([1.0, 0.0]))
        assert int(r.status) == Status.CONVERGED
        if _ == 0:
            first = traces[0]
    assert traces[0] == first


@pytest.mark.parametrize("method", ["levenberg_marquardt", "gauss_newton", "bfgs"])
def test_least_squares_args_reach_the_residual_and_vmap_over_data_sets(method):
    from gradlab.second_order.least_squares import least_squares

    def residual(p, x, y):
        return p[0] * jnp.exp(p[1] * x) - y

    x = jnp.asarray(XS, jnp.float32)
    amplitudes = jnp.asarray([2.0, 3.0, 0.5])
    ys = amplitudes[:, None] * jnp.exp(-x)[None, :]  # three data sets, rates all -1
    fit = jax.vmap(
        lambda y: least_squares(residual, jnp.array([1.0, 0.0]), method, args=(x, y), tol=1e-6)
    )
    r = fit(ys)
    assert (np.asarray(r.status) == Status.CONVERGED).all(), r.status
    np.testing.assert_allclose(r.params[:, 0], amplitudes, rtol=2e-3)
    np.testing.assert_allclose(r.params[:, 1], -1.0, atol=2e-3)
