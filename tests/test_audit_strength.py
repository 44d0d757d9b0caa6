"""Switches whose semantics no other test pinned down, each against its formula written out here.

Every test below was checked to fail on a deliberately broken library (the switch made a no-op
or the rule changed) and to pass on the real code: the PR+ clamp of nonlinear CG, CG's default
restart period, the backtracking search's growth of the first trial, Marquardt's running
maximum of diag(J^T J), the directions of both Newton fallbacks on an indefinite Hessian, and
a curv_rtol other than the default in the zoom search.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from gradlab.linesearch import (
    scale_by_backtracking_linesearch,
    scale_by_more_thuente_linesearch,
    scale_by_zoom_linesearch,
)
from gradlab.second_order.conjugate_gradient import scale_by_nonlinear_cg
from gradlab.second_order.least_squares import levenberg_marquardt
from gradlab.second_order.newton import scale_by_newton
from gradlab.status import Status

# ---------------------------------------------------------------------------------------------
# Nonlinear CG
# ---------------------------------------------------------------------------------------------


def test_cg_polak_ribiere_plus_clamps_a_negative_beta_and_plain_pr_does_not():
    """beta^PR = g1.(g1 - g0) / g0.g0 < 0 here; PR+ uses max(0, beta) = 0, i.e. d1 = -g1, while
    plain PR keeps the negative beta (its direction is still descent, so no restart)."""
    g0 = np.asarray([1.0, 0.0])
    g1 = np.asarray([0.8, 0.1])
    beta_pr = g1 @ (g1 - g0) / (g0 @ g0)
    assert beta_pr < 0  # the case the clamp is for
    d0 = -g0
    expected = {"polak_ribiere": -g1 + beta_pr * d0, "polak_ribiere_plus": -g1}
    assert expected["polak_ribiere"] @ g1 < 0  # descent: plain PR is not restarted
    for rule, want in expected.items():
        tx = scale_by_nonlinear_cg(rule, restart_every=100)
        state = tx.init(jnp.asarray(g0, jnp.float32))
        _, state = tx.update(jnp.asarray(g0, jnp.float32), state)
        d1, state = tx.update(jnp.asarray(g1, jnp.float32), state)
        np.testing.assert_allclose(np.asarray(d1), want, rtol=1e-6, atol=1e-7, err_msg=rule)
        assert int(state.num_restarts) == 1, rule  # only the first step restarted
    assert np.abs(expected["polak_ribiere"] - expected["polak_ribiere_plus"]).max() > 0.1


def test_cg_default_restart_period_is_the_number_of_parameters_over_all_leaves():
    """restart_every=None restarts to -g every m = (total parameter count) steps; here m = 3
    (a pytree of a 2-vector and a scalar). Fletcher-Reeves on shrinking, aligned gradients is
    always a descent direction, so every restart comes from the period."""
    base_g = {"a": np.asarray([1.0, 2.0]), "b": np.asarray(3.0)}
    grads = [jax.tree.map(lambda x, k=k: jnp.asarray(0.5**k * x, jnp.float32), base_g)
             for k in range(7)]  # fmt: skip
    tx = scale_by_nonlinear_cg("fletcher_reeves")  # restart_every=None
    state = tx.init(grads[0])
    flat = lambda t: np.concatenate([np.ravel(t["a"]), np.ravel(t["b"])])  # noqa: E731
    d_prev, g_prev, restarts = None, None, []
    for k, g in enumerate(grads):
        d, state = tx.update(g, state)
        gk = flat(g).astype(np.float64)
        # Textbook FR with a restart at k = 0, 3, 6 (period m = 3).
        if k % 3 == 0:
            want = -gk
        else:
            want = -gk + (gk @ gk) / (g_prev @ g_prev) * d_prev
        np.testing.assert_allclose(flat(d), want, rtol=1e-6, atol=1e-7, err_msg=str(k))
        restarts.append(int(state.num_restarts))
        d_prev, g_prev = want, gk
    assert restarts == [1, 1, 1, 2, 2, 2, 3]
    # Between restarts the direction really is not -g (so the check above can tell them apart).
    tx = scale_by_nonlinear_cg("fletcher_reeves")
    state = tx.init(grads[0])
    _, state = tx.update(grads[0], state)
    d1, _ = tx.update(grads[1], state)
    assert np.abs(flat(d1) + flat(grads[1])).max() > 0.1


# ---------------------------------------------------------------------------------------------
# Backtracking line search: the first trial of later searches
# ---------------------------------------------------------------------------------------------


def _np_backtracking(f, x, d, g, t0, c1, rho, max_steps):
    """Nocedal & Wright Algorithm 3.1 from t0 (strict decrease as well, as documented)."""
    f0, t = f(x), t0
    for _ in range(max_steps):
        ft = f(x + t * d)
        if ft <= f0 + c1 * t * (g @ d) and ft < f0:
            return t
        t *= rho
    return 0.0


@pytest.mark.parametrize("increase", [1.5, 3.0, float("inf")])
def test_backtracking_first_trial_grows_the_previous_step_by_increase_factor(increase):
    """Documented: t0 = min(gamma t_prev, t_max) after an accepted search (t_max first and for
    gamma = inf). Three successive searches on f = sum(a x^2) / 2 along d = -g, whose accepted
    steps (about 0.1, well below t_max = 1) differ with the starting trial."""
    a = np.asarray([4.0, 12.0, 20.0])
    f_np = lambda x: 0.5 * float(np.sum(a * x * x))  # noqa: E731
    f = lambda x: 0.5 * jnp.sum(jnp.asarray(a, x.dtype) * x * x)  # noqa: E731
    ls = scale_by_backtracking_linesearch(decrease_factor=0.7, increase_factor=increase)
    with enable_x64(True):
        x = jnp.asarray([1.0, -1.0, 0.5], jnp.float64)
        state = ls.init(x)
        update = jax.jit(lambda d, s, x: ls.update(d, s, x, value=f(x), grad=a * x, value_fn=f))
        xr, t_prev, steps, ref = np.asarray(x), None, [], []
        for _ in range(3):
            g = a * np.asarray(x)
            u, state = update(jnp.asarray(-g), state, x)
            steps.append(float(state.step_size))
            assert int(state.status) == Status.OK
            x = x + u
            # the reference, from its own iterate
            gr = a * xr
            t0 = 1.0 if t_prev is None else min(increase * t_prev, 1.0)
            t_prev = _np_backtracking(f_np, xr, -gr, gr, t0, 1e-4, 0.7, 30)
            ref.append(t_prev)
            xr = xr - t_prev * gr
    np.testing.assert_allclose(steps, ref, rtol=1e-10)
    assert all(0.0 < t < 1.0 for t in ref)
    # The growth rule matters on this problem: restarting every search at t_max gives other
    # steps (so a search ignoring increase_factor would fail above).
    xr, from_max = np.asarray([1.0, -1.0, 0.5]), []
    for _ in range(3):
        gr = a * xr
        from_max.append(_np_backtracking(f_np, xr, -gr, gr, 1.0, 1e-4, 0.7, 30))
        xr = xr - from_max[-1] * gr
    if np.isfinite(increase):
        assert np.abs(np.asarray(from_max) - np.asarray(ref)).max() > 1e-3
    else:
        np.testing.assert_allclose(ref, from_max)


# ---------------------------------------------------------------------------------------------
# Levenberg-Marquardt with Marquardt's scaling
# ---------------------------------------------------------------------------------------------

_XS = np.linspace(0.0, 3.0, 20)


def _exp_fit(p):
    x = jnp.asarray(_XS, p.dtype)
    return p[0] * jnp.exp(p[1] * x) - 2.0 * jnp.exp(-x)


def test_marquardt_scaling_uses_the_running_max_of_diag_jtj():
    """(J^T J + mu D) h = -J^T r with D = max over the updates so far of diag(J^T J) (MINPACK),
    mu_0 = damping_init. From (1, 0) toward (2, -1) the first column's norm shrinks, so the
    running max and the current diag(J^T J) give different second steps."""
    tau = 0.5
    tx = levenberg_marquardt(scaling="marquardt", damping_init=tau, max_inner_steps=1)
    with enable_x64(True):
        update = jax.jit(lambda p, s: tx.update(p, s, p, residual_fn=_exp_fit))
        p = jnp.asarray([1.0, 0.0], jnp.float64)
        state = tx.init(p)
        mu, d_run, pn = tau, None, np.asarray(p)
        for k in range(3):
            jac = np.asarray(jax.jacfwd(_exp_fit)(jnp.asarray(pn)))
            r = np.asarray(_exp_fit(jnp.asarray(pn)))
            colsq = np.sum(jac * jac, axis=0)
            d_run = colsq if d_run is None else np.maximum(d_run, colsq)
            h_ref = -np.linalg.solve(jac.T @ jac + mu * np.diag(d_run), jac.T @ r)
            h_cur = -np.linalg.solve(jac.T @ jac + mu * np.diag(colsq), jac.T @ r)
            u, state = update(p, state)
            assert int(state.status) == Status.OK and int(state.num_rejected) == 0, k
            # mu and D are kept in float32 state: rtol 1e-6 (the two D rules differ by > 1e-3)
            np.testing.assert_allclose(np.asarray(u), h_ref, rtol=1e-6, err_msg=str(k))
            np.testing.assert_allclose(np.asarray(state.diag), d_run, rtol=1e-6)  # float32 state
            if k > 0:  # the running max is not the current diagonal here
                assert np.any(d_run > colsq * (1 + 1e-3)), k
                assert np.abs(h_ref - h_cur).max() > 1e-3 * np.abs(h_ref).max(), k
            p = p + u
            pn = np.asarray(p)
            mu = float(state.damping)  # Nielsen's update is checked in test_least_squares


# ---------------------------------------------------------------------------------------------
# Newton's fallbacks on an indefinite Hessian
# ---------------------------------------------------------------------------------------------

_H = np.asarray([[1.0, 2.5, 0.0], [2.5, 1.0, 0.0], [0.0, 0.0, 4.0]])  # eigenvalues 3.5, -1.5, 4
# A negative diagonal entry: Algorithm 3.3 starts at tau_0 = beta - min H_ii, not 0.
_H_NEG_DIAG = np.asarray([[-1.0, 0.5, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0]])
_B = np.asarray([0.3, -1.0, 2.0])


def _newton_direction(h=_H, **kwargs):
    def quadratic(x):
        return 0.5 * x @ jnp.asarray(h, x.dtype) @ x + jnp.asarray(_B, x.dtype) @ x

    x = jnp.asarray([0.5, -0.2, 1.0], jnp.float64)
    g = jax.grad(quadratic)(x)
    tx = scale_by_newton(**kwargs)
    d, state = jax.jit(lambda g, x: tx.update(g, tx.init(x), x, value_fn=quadratic))(g, x)
    return np.asarray(g), np.asarray(d), state


@pytest.mark.parametrize("floor", [1e-6, 0.5])
def test_newton_eigen_fallback_is_the_absolute_eigenvalue_modification(floor):
    """d = -Q diag(1 / max(|lambda|, delta max|lambda|)) Q^T g (N&W eq. 3.41 with |.|)."""
    with enable_x64(True):
        g, d, state = _newton_direction(fallback="eigen", eigenvalue_floor=floor)
    lam, q = np.linalg.eigh(_H)
    lam_mod = np.maximum(np.abs(lam), floor * np.abs(lam).max())
    want = -(q @ ((q.T @ g) / lam_mod))
    np.testing.assert_allclose(d, want, rtol=1e-10)
    assert int(state.status) == Status.NEGATIVE_CURVATURE
    np.testing.assert_allclose(float(state.shift), floor * 4.0, rtol=1e-6)  # float32 state
    # The modification matters: the plain Newton step (toward the saddle) is different.
    assert np.abs(d + np.linalg.solve(_H, g)).max() > 0.1


@pytest.mark.parametrize("h", [_H, _H_NEG_DIAG], ids=["positive-diagonal", "negative-diagonal"])
@pytest.mark.parametrize("beta0, increase", [(1e-3, 10.0), (0.05, 3.0)])
def test_newton_shift_fallback_follows_algorithm_3_3(beta0, increase, h):
    """N&W Algorithm 3.3: beta = beta0 max(1, max|H_ii|); tau_0 = 0 if min H_ii > 0 else
    beta - min H_ii; tau <- max(increase tau, beta) until H + tau I is positive definite;
    d = -(H + tau I)^{-1} g."""
    with enable_x64(True):
        g, d, state = _newton_direction(
            h, fallback="shift", damping_init=beta0, damping_increase=increase
        )
    assert np.linalg.eigvalsh(h).min() < 0
    beta = beta0 * max(1.0, np.abs(np.diag(h)).max())
    tau = 0.0 if np.diag(h).min() > 0 else beta - np.diag(h).min()
    while np.linalg.eigvalsh(h + tau * np.eye(3)).min() <= 1e-12:
        tau = max(increase * tau, beta)
    want = -np.linalg.solve(h + tau * np.eye(3), g)
    np.testing.assert_allclose(float(state.shift), tau, rtol=1e-6)  # float32 state
    np.testing.assert_allclose(d, want, rtol=1e-10)
    assert int(state.status) == Status.NEGATIVE_CURVATURE
    # Not the eigen fallback's direction (a test that ignored the switch would fail here).
    lam, q = np.linalg.eigh(h)
    eigen = -(q @ ((q.T @ g) / np.maximum(np.abs(lam), 1e-6 * np.abs(lam).max())))
    assert np.abs(d - eigen).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Wolfe searches: curv_rtol (c2) other than the default
# ---------------------------------------------------------------------------------------------


def _rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("search", ["zoom", "more_thuente"])
def test_wolfe_search_honours_a_tight_curv_rtol(search):
    """c2 = 0.1 (nonlinear CG's setting): the accepted t satisfies Armijo with c1 = 1e-4 and
    |phi'(t)| <= 0.1 |phi'(0)|, checked on f itself; with the default c2 = 0.9 the same searches
    accept steps that violate the tight condition (so c2 must reach the acceptance test)."""
    make = scale_by_zoom_linesearch if search == "zoom" else scale_by_more_thuente_linesearch

    def search_fn(ls):
        def go(x):
            f0, g = jax.value_and_grad(_rosen)(x)
            return ls.update(-g, ls.init(x), x, value=f0, grad=g, value_fn=_rosen)

        return jax.jit(go)

    runs = {"tight": search_fn(make(curv_rtol=0.1)), "loose": search_fn(make())}
    loose_violates = 0
    with enable_x64(True):
        for start in [(-1.2, 1.0), (0.0, 0.0), (1.5, 2.5), (-0.5, 0.8), (2.0, 3.0)]:
            x = jnp.asarray(start, jnp.float64)
            f0, g = jax.value_and_grad(_rosen)(x)
            d = -np.asarray(g)
            phi0 = float(np.asarray(g) @ d)
            ratios = {}
            for name, go in runs.items():
                u, st = go(x)
                assert int(st.status) == Status.OK, (name, start)
                t = float(st.step_size)
                np.testing.assert_allclose(np.asarray(u), t * d, rtol=1e-12)
                f1, g1 = jax.value_and_grad(_rosen)(x + t * jnp.asarray(d))
                assert float(f1) <= float(f0) + 1e-4 * t * phi0, (name, start)
                ratios[name] = abs(float(np.asarray(g1) @ d)) / abs(phi0)
            assert ratios["tight"] <= 0.1, start
            loose_violates += ratios["loose"] > 0.1
    assert loose_violates >= 1
