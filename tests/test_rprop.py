"""Rprop+, Rprop-, iRprop+, iRprop- against the textbook pseudo-code (numpy), torch, optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import assert_vmap_matches_loop

from gradlab import base
from gradlab.optimizers.rprop import rprop
from gradlab.transforms.rprop import RPROP_VARIANTS, ScaleByRpropState, scale_by_rprop

C = np.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])
S = np.array([1.0, 4.0, 0.5, 2.0, 8.0, 1.0])
W0 = np.array([-1.5, 1.0, 2.0, 0.0, 0.3, -0.7])


def f_np(w):
    d = w - C
    return float(np.sum(S * d**2 + 0.5 * d**4))


def grad_np(w):
    d = w - C
    return 2 * S * d + 2 * d**3


def f_jax(w):
    d = w - jnp.asarray(C, jnp.float32)
    return jnp.sum(jnp.asarray(S, jnp.float32) * d**2 + 0.5 * d**4)


def textbook(variant, steps, lr=0.7, em=0.5, ep=1.2, lo=1e-6, hi=50.0):
    """Igel & Hüsken (2000) pseudo-code for the four variants, one weight at a time."""
    w = W0.copy()
    delta = np.full_like(w, lr)
    g_prev = np.zeros_like(w)
    dw_prev = np.zeros_like(w)
    e_prev = np.inf
    path, flips, backtracks = [], 0, 0
    for _ in range(steps):
        e, g = f_np(w), grad_np(w)
        dw = np.zeros_like(w)
        for j in range(len(w)):
            if g_prev[j] * g[j] > 0:
                delta[j] = min(delta[j] * ep, hi)
                dw[j] = -np.sign(g[j]) * delta[j]
            elif g_prev[j] * g[j] < 0:
                flips += 1
                delta[j] = max(delta[j] * em, lo)
                if variant == "rprop+":
                    dw[j] = -dw_prev[j]
                    g[j] = 0.0
                    backtracks += 1
                elif variant == "irprop+":
                    if e > e_prev:
                        dw[j] = -dw_prev[j]
                        backtracks += 1
                    g[j] = 0.0
                elif variant == "irprop-":
                    g[j] = 0.0  # so dw = -sign(0) delta = 0
                else:  # rprop-
                    dw[j] = -np.sign(g[j]) * delta[j]
            else:
                dw[j] = -np.sign(g[j]) * delta[j]
        w = w + dw
        g_prev, dw_prev, e_prev = g, dw, e
        path.append(w.copy())
    return np.stack(path), flips, backtracks


def run(tx, steps, with_value=True):
    def step(carry, _):
        w, s = carry
        value, g = jax.value_and_grad(f_jax)(w)
        kw = {"value": value} if with_value else {}
        u, s = tx.update(g, s, w, **kw)
        w = optax.apply_updates(w, u)
        return (w, s), w

    w0 = jnp.asarray(W0, jnp.float32)
    return jax.jit(lambda w: jax.lax.scan(step, (w, tx.init(w)), None, length=steps))(w0)


@pytest.mark.parametrize("variant", RPROP_VARIANTS)
def test_variant_matches_textbook_pseudocode(variant):
    ref, flips, backtracks = textbook(variant, 40)
    assert flips > 3  # the problem exercises the sign-flip branch
    if variant.endswith("+"):
        assert backtracks > 0
    (_, state), path = run(rprop(0.7, variant=variant), 40)
    np.testing.assert_allclose(path, ref, rtol=1e-5, atol=1e-5)
    assert isinstance(state[0], ScaleByRpropState)
    assert f_np(np.asarray(path[-1], np.float64)) < 1e-3 * f_np(W0)


def test_variants_differ():
    paths = {v: textbook(v, 40)[0] for v in RPROP_VARIANTS}
    for a in RPROP_VARIANTS:
        for b in RPROP_VARIANTS:
            if a < b:
                assert np.abs(paths[a] - paths[b]).max() > 1e-3, (a, b)


def test_first_step_already_moves():
    g = {"a": jnp.array([2.0, -3.0, 0.0])}
    for variant in RPROP_VARIANTS:
        tx = rprop(0.1, variant=variant)
        u, state = tx.update(g, tx.init(g), g, value=1.0)
        np.testing.assert_allclose(u["a"], [-0.1, 0.1, 0.0], rtol=1e-7)
    # optax's rprop emits a stale (zero) first update (optax PR #1725)
    opt = optax.rprop(0.1)
    u, _ = opt.update(g, opt.init(g), g)
    assert np.all(np.asarray(u["a"]) == 0.0)


def test_irprop_minus_matches_torch_documented_algorithm():
    """torch.optim.Rprop's documented algorithm (iRprop-), written out in numpy."""
    lr, em, ep, lo, hi = 0.7, 0.5, 1.2, 1e-6, 50.0
    theta = W0.copy()
    eta = np.full_like(theta, lr)
    g_prev = np.zeros_like(theta)
    ref = []
    for _ in range(40):
        g = grad_np(theta)
        prod = g_prev * g
        eta = np.where(prod > 0, np.minimum(eta * ep, hi), eta)
        eta = np.where(prod < 0, np.maximum(eta * em, lo), eta)
        g = np.where(prod < 0, 0.0, g)
        theta = theta - eta * np.sign(g)
        g_prev = g
        ref.append(theta.copy())
    (_, _), path = run(rprop(lr, em, ep, lo, hi), 40, with_value=False)
    np.testing.assert_allclose(path, np.stack(ref), rtol=1e-5, atol=1e-5)


def test_step_sizes_match_optax_and_optax_update_is_one_step_stale():
    grads = jax.random.normal(jax.random.PRNGKey(0), (25, 7))
    ours, ref = scale_by_rprop(0.1), optax.scale_by_rprop(0.1)

    def feed(tx):
        def step(s, g):
            u, s = tx.update(g, s)
            return s, (u, s.step_sizes)

        return jax.lax.scan(step, tx.init(grads[0]), grads)[1]

    (u_ours, steps_ours), (u_ref, steps_ref) = feed(ours), feed(ref)
    np.testing.assert_allclose(steps_ours[1:], steps_ref[1:], rtol=1e-6)
    # optax emits at t the update gradlab emitted at t-1 (zeroed again on a sign flip)
    flip = np.sign(np.asarray(grads[1:])) * np.sign(np.asarray(u_ours[:-1])) < 0
    expected = np.where(flip, 0.0, np.asarray(u_ours[:-1]))
    np.testing.assert_allclose(u_ref[1:], expected, rtol=1e-6)
    assert np.all(np.asarray(u_ref[0]) == 0.0)


def test_irprop_plus_requires_value():
    tx = rprop(0.1, variant="iRprop+")
    params = {"a": jnp.ones(2)}
    with pytest.raises(TypeError, match="value"):
        tx.update(params, tx.init(params), params)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"eta_minus": 0.0}, "eta_minus"),
        ({"eta_minus": 1.0}, "eta_minus"),
        ({"eta_minus": float("nan")}, "eta_minus"),
        ({"eta_plus": 1.0}, "eta_plus"),
        ({"eta_plus": 0.5}, "eta_plus"),
        ({"min_step_size": -1e-3}, "min_step_size"),
        ({"min_step_size": 2.0, "max_step_size": 1.0}, "min_step_size must be <= max_step_size"),
        ({"max_step_size": float("nan")}, "max_step_size"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, name):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        rprop(**kwargs)


def test_structural_errors():
    with pytest.raises(ValueError, match="variant"):
        rprop(0.1, variant="rprop")
    with pytest.raises(TypeError, match=r"\['z'\]"):
        rprop(0.1).init({"z": jnp.ones(2, jnp.complex64)})
    tx = rprop(0.1)
    params = {"a": jnp.ones(3), "b": {"c": jnp.ones(2)}}
    state = tx.init(params)
    with pytest.raises(base.TreeMismatchError) as info:
        tx.update({"a": jnp.ones((3, 1)), "b": {"c": jnp.ones(2)}}, state)
    assert info.value.path == "['a']"
    with pytest.raises(base.TreeMismatchError) as info:
        tx.update({"a": jnp.ones(3), "b": {}}, state)
    assert info.value.path == "['b']['c']"
    with pytest.raises(base.StateMismatchError):
        scale_by_rprop(0.1).update(params, params)


def test_dtypes_and_zero_gradients():
    dtypes = (jnp.float32, jnp.bfloat16, jnp.float16)

    @jax.jit
    def three_zero_steps():
        out = []
        for variant in RPROP_VARIANTS:
            tx = rprop(0.1, variant=variant)
            for dtype in dtypes:
                params = {"a": jnp.zeros(4, dtype)}
                state = tx.init(params)
                for _ in range(3):
                    u, state = tx.update({"a": jnp.zeros(4, dtype)}, state, params, value=0.0)
                out.append((u, state[0]))
        return out

    for i, (u, inner) in enumerate(three_zero_steps()):
        dtype = dtypes[i % 3]
        assert u["a"].dtype == dtype and np.all(np.asarray(u["a"], np.float32) == 0)
        assert inner.step_sizes["a"].dtype == jnp.float32
        assert inner.prev_sign["a"].dtype == jnp.int8
        np.testing.assert_allclose(inner.step_sizes["a"], 0.1)  # unchanged on zero grads
    params = {"a": jnp.full(3, 0.5, jnp.bfloat16)}
    tx = rprop(0.01)
    u, _ = tx.update({"a": jnp.array([1.0, -1.0, 0.0], jnp.bfloat16)}, tx.init(params))
    assert u["a"].dtype == jnp.bfloat16


def test_tiny_gradients_do_not_underflow_the_sign_test():
    tx = scale_by_rprop(1.0)
    s = tx.init(jnp.zeros(1))
    _, s = tx.update(jnp.array([1e-30]), s)
    _, s = tx.update(jnp.array([1e-30]), s)  # 1e-30 * 1e-30 underflows in float32
    np.testing.assert_allclose(s.step_sizes, 1.2 * 1.0, rtol=1e-6)


def test_step_bounds():
    tx = scale_by_rprop(1.0, min_step_size=0.3, max_step_size=1.5)
    s = tx.init(jnp.zeros(2))
    for _ in range(4):
        _, s = tx.update(jnp.array([1.0, 1.0]), s)
    np.testing.assert_allclose(s.step_sizes, 1.5)
    for i in range(4):
        _, s = tx.update(jnp.array([(-1.0) ** i, 1.0]), s)
    assert float(s.step_sizes[0]) == pytest.approx(0.375)  # 1.5 * 0.5 * 0.5, then no flips
    sign = 1.0
    for _ in range(8):
        sign = -sign
        _, s = tx.update(jnp.array([sign, sign]), s)
    np.testing.assert_allclose(s.step_sizes, 0.3)


VMAP_CASES = {
    "learning_rate": [0.05, 0.7],
    "eta_minus": [0.3, 0.5],
    "eta_plus": [1.1, 1.5],
    "min_step_size": [1e-6, 0.2],
    "max_step_size": [0.5, 50.0],
}


@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_over_hyperparameter_equals_loop(name):
    def final(h):
        kwargs = {"learning_rate": 0.7, name: h}
        return run(rprop(variant="irprop+", **kwargs), 15)[1][-1]

    assert_vmap_matches_loop(final, VMAP_CASES[name])


def test_traced_min_above_max_poisons_only_its_lane():
    def first(lo):
        tx = scale_by_rprop(0.1, min_step_size=lo, max_step_size=1.0)
        g = jnp.ones(2)
        return tx.update(g, tx.init(g))[0]

    out = np.asarray(jax.jit(jax.vmap(first))(jnp.array([0.01, 2.0])))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))
