"""Moré–Thuente line search: step-for-step agreement with MINPACK (scipy), Wolfe conditions,
failure modes, traced hyperparameters and use inside the solvers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64
from objectives import linear, nan_off_start, nan_region, square
from scipy.optimize._dcsrch import DCSRCH

import gradlab
from gradlab import base
from gradlab.linesearch import (
    get_linesearch,
    scale_by_more_thuente_linesearch,
    scale_by_zoom_linesearch,
)
from gradlab.minimize import minimize
from gradlab.second_order.quasi_newton import bfgs
from gradlab.status import Status

MT = scale_by_more_thuente_linesearch()


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


# --- the six test functions of Moré & Thuente (1994), §5, and Rosenbrock along a line ---------


def _mt1(a):
    return -a / (a**2 + 2.0)


def _mt2(a):
    return (a + 0.004) ** 5 - 2.0 * (a + 0.004) ** 4


def _mt3(a, b=0.01, k=39.0):
    base_part = jnp.where(
        a <= 1 - b, 1 - a, jnp.where(a >= 1 + b, a - 1, (a - 1) ** 2 / (2 * b) + b / 2)
    )
    return base_part + 2 * (1 - b) / (k * jnp.pi) * jnp.sin(k * jnp.pi * a / 2)


def _yanai(b1, b2):
    def g(b):
        return np.sqrt(1 + b**2) - b

    return lambda a: g(b1) * jnp.sqrt((1 - a) ** 2 + b2**2) + g(b2) * jnp.sqrt(a**2 + b1**2)


_X0 = np.array([-1.2, 1.0])
_D = -np.array([-215.6, -88.0]) / np.linalg.norm([-215.6, -88.0])  # -grad rosen(x0), unit


def _rosen_line(a):
    return rosen(jnp.asarray(_X0) + a * jnp.asarray(_D))


PHIS = [_mt1, _mt2, _mt3, _yanai(1e-3, 1e-3), _yanai(1e-2, 1e-3), _yanai(1e-3, 1e-2), _rosen_line]
# (c1, c2) per function: the paper's ftol/gtol, and the quasi-Newton pair for Rosenbrock.
TOLS = [(1e-3, 0.1), (0.1, 0.1), (0.1, 0.1), (1e-3, 1e-3), (1e-3, 1e-3), (1e-3, 1e-3)]
TOLS += [(1e-4, 0.9)]
STARTS = [1e-3, 1e-1, 1e1, 1e3]


def _phi(k, a):
    return jax.lax.switch(k, PHIS, a)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _search(ls, fn, x, d):
    value, grad = jax.value_and_grad(fn)(x)
    return ls.update(d, ls.init(x), x, value=value, grad=grad, value_fn=fn)


@jax.jit
def _batched_1d(k, a0, c1, c2, xtol):
    """One MT search per lane on phi_k from 0 along +1 with first trial a0 (one compile)."""

    def one(k, a0, c1, c2, xtol):
        fn = lambda x: _phi(k, x[0])
        ls = scale_by_more_thuente_linesearch(
            max_linesearch_steps=40,
            slope_rtol=c1,
            curv_rtol=c2,
            xtol=xtol,
            initial_guess_strategy="keep",
        )
        x = jnp.zeros(1)
        value, grad = jax.value_and_grad(fn)(x)
        state = ls.init(x)._replace(step_size=a0)  # "keep": the first trial is a0
        _, st = ls.update(jnp.ones(1), state, x, value=value, grad=grad, value_fn=fn)
        return st.step_size, st.num_fun_evals, st.status, st.curvature_satisfied

    return jax.vmap(one)(k, a0, c1, c2, xtol)


_PHI = jax.jit(_phi)
_DPHI = jax.jit(jax.grad(_phi, 1))


def _minpack(k, a0, c1, c2, xtol):
    """scipy's MINPACK port on phi_k: (step, evaluations, task)."""
    calls = [0]

    def f(a):
        calls[0] += 1
        return float(_PHI(k, a))

    search = DCSRCH(f, lambda a: float(_DPHI(k, a)), c1, c2, xtol, 0.0, 1e10)
    phi0, dphi0 = float(_PHI(k, 0.0)), float(_DPHI(k, 0.0))
    stp, _, _, task = search(a0, phi0=phi0, derphi0=dphi0, maxiter=100)
    return stp, calls[0], task


def test_same_steps_and_evaluations_as_minpack():
    with enable_x64(True):
        cases = [
            (k, a0, xtol)
            for k in range(len(PHIS))
            for a0 in STARTS
            for xtol in (1e-14, 0.1)
            if not (k == len(PHIS) - 1 and a0 > 10)
        ]
        k, a0, xtol = (np.asarray(v) for v in zip(*cases, strict=True))
        c1 = np.asarray([TOLS[i][0] for i in k])
        c2 = np.asarray([TOLS[i][1] for i in k])
        step, nfev, status, wolfe = (
            np.asarray(v) for v in _batched_1d(jnp.asarray(k), a0, c1, c2, xtol)
        )
        assert np.all(status == Status.OK)
        converged = 0
        for i in range(len(cases)):
            stp, calls, task = _minpack(int(k[i]), a0[i], c1[i], c2[i], xtol[i])
            if task.startswith(b"CONV"):
                converged += 1
                np.testing.assert_allclose(step[i], stp, rtol=1e-9)
                assert nfev[i] == calls and wolfe[i]
            else:
                # MINPACK's interval collapsed (xtol): it evaluates its best step once more and
                # returns it; gradlab returns that stored step directly, one evaluation sooner.
                assert task.startswith(b"WARNING: XTOL") and xtol[i] == 0.1
                assert nfev[i] == calls - 1 and not wolfe[i]
                a, ki = step[i], int(k[i])
                phi0, dphi0 = float(_PHI(ki, 0.0)), float(_DPHI(ki, 0.0))
                assert float(_PHI(ki, a)) <= phi0 + c1[i] * a * dphi0
        assert converged >= 40  # the comparison above is mostly the exact one


def test_float32_any_gradient_scale():
    # The search runs on the unit direction with values and slopes divided by |phi'(0)|, so the
    # same steps are taken for f, 1e-30 f and 1e30 f (first trial: a unit displacement).
    ls = scale_by_more_thuente_linesearch(initial_guess_strategy="quadratic")

    @jax.jit
    def run(scale):
        fn = lambda x: scale * jnp.sum(jnp.asarray([1.0, 10.0]) * (x - 3.0) ** 2)
        x = jnp.zeros(2)
        value, grad = jax.value_and_grad(fn)(x)
        return ls.update(-grad, ls.init(x), x, value=value, grad=grad, value_fn=fn)

    upd1, st1 = run(jnp.float32(1.0))
    assert int(st1.status) == Status.OK and bool(st1.curvature_satisfied)
    for scale in (1e-30, 1e30):
        upd, st = run(jnp.float32(scale))
        assert int(st.status) == Status.OK and bool(st.curvature_satisfied)
        assert int(st.num_fun_evals) == int(st1.num_fun_evals)
        np.testing.assert_allclose(np.asarray(upd), np.asarray(upd1), rtol=1e-4)
        np.testing.assert_allclose(float(st.value), scale * float(st1.value), rtol=1e-4)


def test_failure_modes():
    x = jnp.asarray([1.0, 2.0])
    upd, st = _search(MT, square, x, 2.0 * x)  # uphill
    assert int(st.status) == Status.NOT_DESCENT and int(st.num_fun_evals) == 0
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    np.testing.assert_allclose(float(st.value), 5.0)
    upd, st = _search(MT, square, x, jnp.asarray([jnp.nan, -1.0]))
    assert int(st.status) == Status.NON_FINITE and int(st.num_fun_evals) == 0
    np.testing.assert_array_equal(np.asarray(upd), 0.0)

    z = jnp.zeros(2)
    upd, st = _search(MT, nan_off_start, z, jnp.ones(2))  # every trial NaN
    assert int(st.status) == Status.LINE_SEARCH_FAILED
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    assert np.isfinite(float(st.value)) and base.tree_all_finite(st.grad)
    assert int(st.num_fun_evals) <= 20

    upd, st = _search(MT, nan_region, z, jnp.ones(2))  # NaN beyond 0.5: shrink to a decrease
    assert int(st.status) == Status.OK
    assert float(st.value) < 2.0 and np.isfinite(float(nan_region(z + upd)))
    np.testing.assert_allclose(float(st.value), float(nan_region(z + upd)))

    ls = scale_by_more_thuente_linesearch(max_step_norm=1e6)
    upd, st = _search(ls, linear, jnp.zeros(3), jnp.ones(3))
    assert int(st.status) == Status.UNBOUNDED
    np.testing.assert_allclose(float(jnp.linalg.norm(upd)), 1e6, rtol=1e-5)
    assert int(st.num_fun_evals) <= 20

    # A tiny budget that ends before sufficient decrease rejects the step (never uphill).
    ls = scale_by_more_thuente_linesearch(max_linesearch_steps=1)
    upd, st = _search(ls, square, jnp.ones(1), jnp.asarray([-1000.0]))
    assert int(st.status) == Status.LINE_SEARCH_FAILED and float(upd[0]) == 0.0


def test_traced_hyperparameters_vmap_equals_loop_and_poison_their_lane():
    x = jnp.asarray([-1.2, 1.0])
    value, grad = jax.value_and_grad(rosen)(x)

    @jax.jit
    def run(c2, xtol):
        ls = scale_by_more_thuente_linesearch(curv_rtol=c2, xtol=xtol)
        upd, st = ls.update(-grad, ls.init(x), x, value=value, grad=grad, value_fn=rosen)
        return upd, st.status, st.num_fun_evals

    c2s = jnp.asarray([0.9, 0.1, 0.5, 1.5, 0.9])
    xtols = jnp.asarray([0.1, 1e-6, 0.1, 0.1, -1.0])
    upd, status, nfev = jax.jit(jax.vmap(run))(c2s, xtols)
    for i in range(3):
        u_i, s_i, n_i = run(c2s[i], xtols[i])
        np.testing.assert_allclose(np.asarray(upd[i]), np.asarray(u_i), rtol=1e-6)
        assert int(status[i]) == int(s_i) == Status.OK and int(nfev[i]) == int(n_i)
    assert list(np.asarray(status[3:])) == [Status.INVALID_HYPERPARAMETER] * 2
    np.testing.assert_array_equal(np.asarray(upd[3:]), 0.0)
    assert list(np.asarray(nfev[3:])) == [0, 0]


def test_invalid_hyperparameters_raise():
    bad = [
        (ValueError, "slope_rtol", dict(slope_rtol=0.0)),
        (ValueError, "curv_rtol", dict(curv_rtol=1.0)),
        (ValueError, "slope_rtol must be <= curv_rtol", dict(slope_rtol=0.5, curv_rtol=0.1)),
        (ValueError, "xtol", dict(xtol=-0.1)),
        (ValueError, "xtol", dict(xtol=1.0)),
        (TypeError, "xtol", dict(xtol="small")),
        (ValueError, "max_step_norm", dict(max_step_norm=0.0)),
        (ValueError, "max_learning_rate", dict(max_learning_rate=-1.0)),
        (ValueError, "max_linesearch_steps", dict(max_linesearch_steps=0)),
        (ValueError, "initial_guess_strategy", dict(initial_guess_strategy="two")),
    ]
    for err, name, kwargs in bad:
        with pytest.raises(err, match=name):
            scale_by_more_thuente_linesearch(**kwargs)
    scale_by_more_thuente_linesearch(slope_rtol=0.1, curv_rtol=0.1)  # c1 = c2 is allowed


def test_mismatched_trees_and_states_raise_by_type():
    x = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    f = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)
    bad = {"a": jnp.zeros((2, 1)), "b": jnp.zeros(3)}
    with pytest.raises(base.TreeMismatchError) as err:
        MT.update(bad, MT.init(x), x, value=0.0, grad=x, value_fn=f)
    assert err.value.path == "['a']"
    with pytest.raises(base.StateMismatchError):
        MT.update(x, scale_by_zoom_linesearch().init(x), x, value=0.0, grad=x, value_fn=f)


def test_inside_bfgs_and_by_name():
    ls = get_linesearch("more_thuente", initial_guess_strategy="quadratic_capped")
    assert isinstance(ls.init(jnp.zeros(2)), type(MT.init(jnp.zeros(2))))
    with enable_x64(True):
        x0 = jnp.asarray([-1.2, 1.0], jnp.float64)
        res = minimize(rosen, x0, bfgs(linesearch=ls), tol=0.0, atol=1e-6, max_steps=200)
        assert int(res.status) == Status.CONVERGED
        np.testing.assert_allclose(np.asarray(res.params), [1.0, 1.0], atol=1e-5)
        # minimize reuses the search's value and gradient: every evaluation is a trial.
        assert int(res.num_fun_evals) == int(res.num_grad_evals) < 80


def test_a_strong_wolfe_step_at_the_step_cap_is_accepted_not_unbounded():
    # t = max_learning_rate = 0.1 satisfies both conditions on sum(x^2) from x = (1, 1) along
    # -g: MINPACK reports convergence there (its STPMAX warning is for steps that are not).
    tx = gradlab.chain(optax.scale(-1.0), scale_by_more_thuente_linesearch(max_learning_rate=0.1))
    res = minimize(lambda x: jnp.sum(x**2), jnp.ones(2), tx)
    assert int(res.status) == Status.CONVERGED and int(res.num_steps) > 1
