"""Momentum forms, Nesterov (reformulated and true lookahead), and the sgd optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import assert_vmap_matches_loop

from gradlab import base
from gradlab.optimizers.sgd import nesterov_lookahead, sgd
from gradlab.transforms import momentum as mom

A = {"w": jnp.linspace(0.2, 2.0, 12).reshape(3, 4), "b": jnp.array([0.5, 1.0, 1.5, 3.0])}


def loss(p):
    """A random-ish pytree problem: ill-conditioned quadratic plus a smooth nonconvex term."""
    quad = 0.5 * sum(jnp.sum(A[k] * p[k] ** 2) for k in A)
    return quad + 0.1 * jnp.sum(jnp.cos(p["w"])) + jnp.sum(p["n"]["c"] ** 4)


def init_params(dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "w": jax.random.normal(k1, (3, 4), dtype),
        "b": jax.random.normal(k2, (4,), dtype),
        "n": {"c": jax.random.normal(k3, (2,), dtype)},
    }


def trajectory(tx, params, steps=100):
    """Run ``steps`` steps of ``tx`` on ``loss`` in one compiled scan; return the iterates."""

    @jax.jit
    def go(params):
        def step(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)

    return go(params)


def updates_for(tx, grads):
    """Feed a fixed gradient sequence ``grads[t]`` (shape (T, n)) and return the updates."""

    def go(grads):
        def step(s, g):
            u, s = tx.update(g, s)
            return s, u

        return jax.lax.scan(step, tx.init(grads[0]), grads)[1]

    return jax.jit(go)(grads)


GRADS = jax.random.normal(jax.random.PRNGKey(1), (30, 5))
SCHED = lambda c: 0.1 * 0.9**c  # noqa: E731 - a decaying learning-rate schedule
SCHED_NP = [0.1 * 0.9**t for t in range(30)]


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ------------------------------------------------------------------ reference: optax.sgd


@pytest.mark.parametrize(
    "lr, kwargs",
    [
        (0.05, {}),
        (0.05, {"momentum": 0.9}),
        (0.05, {"momentum": 0.9, "nesterov": True}),
        (optax.exponential_decay(0.05, 10, 0.8), {"momentum": 0.8}),
    ],
)
def test_sgd_matches_optax_over_100_steps(lr, kwargs):
    params = init_params()
    (ours, _), path = trajectory(sgd(lr, **kwargs), params)
    (ref, _), ref_path = trajectory(optax.sgd(lr, **kwargs), params)
    assert_trees_close(path, ref_path, rtol=1e-6, atol=1e-7)
    assert float(loss(ours)) < float(loss(params))


# ------------------------------------------------------------------ forms: identities


def test_constant_lr_forms_coincide():
    params = init_params()
    lr, mu = 0.05, 0.9

    @jax.jit
    def all_paths(params):
        out = {}
        for nesterov in (False, True):
            for form in mom.MOMENTUM_FORMS:
                tx = sgd(lr, mu, nesterov, momentum_form=form)
                out[form, nesterov] = trajectory(tx, params, 60)[1]
            out["scaled", nesterov] = trajectory(sgd(lr * (1 - mu), mu, nesterov), params, 60)[1]
        return out

    paths = all_paths(params)
    for nesterov in (False, True):
        p = {k[0]: v for k, v in paths.items() if k[1] == nesterov}
        # lr outside == lr inside for a constant learning rate
        assert_trees_close(p["heavy_ball"], p["trace"], rtol=2e-5, atol=2e-6)
        assert_trees_close(p["sutskever"], p["trace"], rtol=2e-5, atol=2e-6)
        assert_trees_close(p["damped"], p["ema"], rtol=2e-5, atol=2e-6)
        # ema(mu, eta) == trace(mu, (1 - mu) eta)
        assert_trees_close(p["ema"], p["scaled"], rtol=2e-5, atol=2e-6)


def test_heavy_ball_and_sutskever_are_bitwise_equal_even_under_a_schedule():
    hb = updates_for(mom.heavy_ball_momentum(SCHED, 0.9), GRADS)
    sk = updates_for(mom.sutskever_momentum(SCHED, 0.9), GRADS)
    np.testing.assert_array_equal(hb, sk)


def _textbook(form, grads, lrs, mu, nesterov=False):
    """The five momentum recursions written out in numpy (float64)."""
    v = np.zeros(grads.shape[1])
    out = []
    for g, lr in zip(np.asarray(grads, np.float64), lrs, strict=True):
        if form == "trace":  # m = g + mu m; step = -lr m
            v = g + mu * v
            step = -lr * (g + mu * v if nesterov else v)
        elif form == "ema":  # m = mu m + (1-mu) g; step = -lr m
            v = mu * v + (1 - mu) * g
            step = -lr * (mu * v + (1 - mu) * g if nesterov else v)
        elif form == "heavy_ball":  # u = mu u + lr g; theta -= u
            v = mu * v + lr * g
            step = -(mu * v + lr * g) if nesterov else -v
        elif form == "sutskever":  # v = mu v - lr g; theta += v
            v = mu * v - lr * g
            step = mu * v - lr * g if nesterov else v
        else:  # damped: dw = mu dw - lr (1-mu) g
            v = mu * v - lr * (1 - mu) * g
            step = mu * v - lr * (1 - mu) * g if nesterov else v
        out.append(step)
    return np.stack(out)


@pytest.mark.parametrize("nesterov", [False, True])
def test_each_form_follows_its_textbook_formula_under_a_schedule(nesterov):
    got = {
        form: np.asarray(updates_for(sgd(SCHED, 0.9, nesterov, momentum_form=form), GRADS))
        for form in mom.MOMENTUM_FORMS
    }
    for form, u in got.items():
        np.testing.assert_allclose(
            u, _textbook(form, GRADS, SCHED_NP, 0.9, nesterov), rtol=1e-5, atol=1e-6
        )
    # Under a schedule, lr-outside and lr-inside forms are different methods.
    scale = np.abs(got["trace"]).max()
    assert np.abs(got["trace"] - got["heavy_ball"]).max() > 0.05 * scale
    assert np.abs(got["ema"] - got["damped"]).max() > 0.01 * np.abs(got["ema"]).max()


def test_ema_debias_and_optax_ema():
    ours = updates_for(mom.ema(0.9, debias=True), GRADS)
    ref = updates_for(optax.ema(0.9, debias=True), GRADS)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # with a decay schedule, the debiasing uses the product of the applied decays
    decays = [0.5 + 0.04 * t for t in range(10)]
    ours = np.asarray(updates_for(mom.ema(lambda c: 0.5 + 0.04 * c), GRADS[:10]))
    m, prod = np.zeros(5), 1.0
    for t, b in enumerate(decays):
        m = b * m + (1 - b) * np.asarray(GRADS[t], np.float64)
        prod *= b
        np.testing.assert_allclose(ours[t], m / (1 - prod), rtol=1e-5, atol=1e-6)


def test_trace_matches_optax_trace_with_nesterov():
    for nesterov in (False, True):
        ours = updates_for(mom.trace(0.7, nesterov), GRADS)
        ref = updates_for(optax.trace(0.7, nesterov), GRADS)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ true lookahead Nesterov


def test_lookahead_matches_algorithm_8_3_with_schedules():
    a = np.linspace(0.5, 4.0, 6)
    b = np.linspace(-1.0, 1.0, 6)
    grad = lambda x: a * x + b  # noqa: E731 - gradient of sum(a x^2 / 2 + b x)
    eps = lambda t: 0.2 / (1.0 + 0.05 * t)  # noqa: E731
    alpha = lambda t: 0.5 + 0.4 * (1 - 0.9**t)  # noqa: E731 - a momentum warm-up
    # Goodfellow et al. algorithm 8.3, gradient evaluated explicitly at theta + alpha v.
    theta, v = np.linspace(-2.0, 2.0, 6), np.zeros(6)
    thetas, lookaheads = [], []
    for t in range(40):
        g = grad(theta + alpha(t) * v)
        v = alpha(t) * v - eps(t) * g
        theta = theta + v
        thetas.append(theta)
        lookaheads.append(theta + alpha(t + 1) * v)

    tx = nesterov_lookahead(lambda c: 0.2 / (1.0 + 0.05 * c), lambda c: 0.5 + 0.4 * (1 - 0.9**c))
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def step(carry, _):
        phi, s = carry
        u, s = tx.update(a32 * phi + b32, s, phi)  # one gradient, at the params held
        phi = optax.apply_updates(phi, u)
        return (phi, s), (phi, mom.nesterov_base_params(phi, s))

    phi0 = jnp.linspace(-2.0, 2.0, 6)
    _, (phis, bases) = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=40))(phi0)
    np.testing.assert_allclose(phis, np.stack(lookaheads), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bases, np.stack(thetas), rtol=1e-5, atol=1e-5)


def test_lookahead_equals_reformulated_nesterov_for_constants_only():
    params = init_params()
    look = trajectory(nesterov_lookahead(0.05, 0.9), params)[1]
    ref = trajectory(optax.sgd(0.05, 0.9, nesterov=True), params)[1]
    assert_trees_close(look, ref, rtol=1e-5, atol=1e-6)
    sched = lambda c: 0.05 * 0.95**c  # noqa: E731
    look = trajectory(nesterov_lookahead(sched, 0.9), params, 30)[1]
    ref = trajectory(optax.sgd(sched, 0.9, nesterov=True), params, 30)[1]
    assert np.abs(np.asarray(look["w"]) - np.asarray(ref["w"])).max() > 1e-3


def test_nesterov_base_params_finds_state_in_chain_and_rejects_others():
    params = {"x": jnp.ones(3)}
    tx = optax.chain(optax.clip(1.0), nesterov_lookahead(0.1, 0.5))
    state = tx.init(params)
    u, state = tx.update({"x": jnp.ones(3)}, state, params)
    new = optax.apply_updates(params, u)
    # theta_1 = theta_0 + v_1, v_1 = -0.1; phi_1 = theta_1 + 0.5 v_1
    np.testing.assert_allclose(new["x"], 1.0 - 0.1 - 0.05, rtol=1e-6)
    np.testing.assert_allclose(mom.nesterov_base_params(new, state)["x"], 0.9, rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        mom.nesterov_base_params(params, optax.sgd(0.1).init(params))


# ------------------------------------------------------------------ bad input


ATOMS = {
    "trace": lambda **k: mom.trace(k.get("momentum", 0.9)),
    "ema": lambda **k: mom.ema(k.get("momentum", 0.9)),
    "heavy_ball": lambda **k: mom.heavy_ball_momentum(
        k.get("learning_rate", 0.1), k.get("momentum", 0.9)
    ),
    "sutskever": lambda **k: mom.sutskever_momentum(
        k.get("learning_rate", 0.1), k.get("momentum", 0.9)
    ),
    "damped": lambda **k: mom.damped_momentum(k.get("learning_rate", 0.1), k.get("momentum", 0.9)),
    "lookahead": lambda **k: mom.scale_by_nesterov_lookahead(
        k.get("learning_rate", 0.1), k.get("momentum", 0.9)
    ),
}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.5}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
    ],
)
def test_invalid_hyperparameters_raise_naming_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sgd(kwargs.get("learning_rate", 0.1), kwargs.get("momentum", 0.9))
    for form in mom.MOMENTUM_FORMS:
        with pytest.raises(ValueError, match=r"(momentum|decay|learning_rate) must be in"):
            sgd(kwargs.get("learning_rate", 0.1), kwargs.get("momentum", 0.9), momentum_form=form)
    with pytest.raises(ValueError, match=name):
        nesterov_lookahead(kwargs.get("learning_rate", 0.1), kwargs.get("momentum", 0.9))


def test_structural_errors():
    with pytest.raises(ValueError, match="momentum_form"):
        sgd(0.1, 0.9, momentum_form="polyak")
    with pytest.raises(ValueError, match="nesterov"):
        sgd(0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov"):
        sgd(0.1, 0.9, nesterov=1)
    with pytest.raises(ValueError, match="accumulator_dtype"):
        sgd(0.1, 0.9, state_dtype=jnp.float32, accumulator_dtype=jnp.float32)
    state = sgd(0.1, 0.9, accumulator_dtype=jnp.bfloat16).init({"a": jnp.ones(2)})
    assert state[0].trace["a"].dtype == jnp.bfloat16


@pytest.mark.parametrize("name", sorted(ATOMS))
def test_tree_and_state_mismatch(name):
    tx = ATOMS[name]()
    params = {"enc": {"w": jnp.ones(3), "b": jnp.ones(2)}}
    state = tx.init(params)
    with pytest.raises(base.TreeMismatchError) as info:
        tx.update({"enc": {"w": jnp.ones((3, 1)), "b": jnp.ones(2)}}, state)
    assert info.value.path == "['enc']['w']"
    with pytest.raises(base.TreeMismatchError) as info:
        tx.update({"enc": {"w": jnp.ones(3)}}, state)
    assert info.value.path == "['enc']['b']"
    with pytest.raises(base.StateMismatchError):
        tx.update(params, params)
    with pytest.raises(base.StateMismatchError):
        tx.update(params, optax.adam(0.1).init(params))


@pytest.mark.parametrize("name", sorted(ATOMS))
def test_dtypes_and_zero_gradients(name):
    tx = ATOMS[name]()
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        params = {"a": jnp.zeros(4, dtype), "none": None}
        state = tx.init(params)
        step = jax.jit(tx.update)
        for _ in range(3):
            u, state = step({"a": jnp.zeros(4, dtype), "none": None}, state)
        assert u["a"].dtype == dtype and u["none"] is None
        assert np.all(np.asarray(u["a"], np.float32) == 0.0)
        for leaf in jax.tree.leaves(state):
            assert jnp.issubdtype(leaf.dtype, jnp.integer) or leaf.dtype == jnp.float32
            assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


def test_bf16_params_keep_float32_state_and_bf16_updates():
    params = {"a": jnp.full(4, 0.3, jnp.bfloat16)}
    tx = sgd(0.01, 0.9)
    state = tx.init(params)
    u, state = tx.update({"a": jnp.full(4, 1e-3, jnp.bfloat16)}, state)
    assert state[0].trace["a"].dtype == jnp.float32 and u["a"].dtype == jnp.bfloat16
    params = optax.apply_updates(params, u)
    assert params["a"].dtype == jnp.bfloat16


# ------------------------------------------------------------------ vmap over hyperparameters

VMAP_CASES = {
    "trace.decay": (lambda h: mom.trace(h), [0.0, 0.5, 0.9]),
    "ema.decay": (lambda h: mom.ema(h), [0.1, 0.5, 0.9]),
    "heavy_ball.learning_rate": (lambda h: mom.heavy_ball_momentum(h, 0.9), [0.01, 0.1]),
    "heavy_ball.momentum": (lambda h: mom.heavy_ball_momentum(0.1, h), [0.0, 0.9]),
    "sutskever.learning_rate": (lambda h: mom.sutskever_momentum(h, 0.9), [0.01, 0.1]),
    "sutskever.momentum": (lambda h: mom.sutskever_momentum(0.1, h, True), [0.0, 0.9]),
    "damped.learning_rate": (lambda h: mom.damped_momentum(h, 0.9), [0.01, 0.1]),
    "damped.momentum": (lambda h: mom.damped_momentum(0.1, h), [0.0, 0.9]),
    "lookahead.learning_rate": (lambda h: nesterov_lookahead(h, 0.9), [0.01, 0.1]),
    "lookahead.momentum": (lambda h: nesterov_lookahead(0.1, h), [0.0, 0.9]),
    "sgd.learning_rate": (lambda h: sgd(h, 0.9, True), [0.01, 0.1]),
}


@pytest.mark.parametrize("case", sorted(VMAP_CASES))
def test_vmap_over_hyperparameter_equals_loop(case):
    make, values = VMAP_CASES[case]

    def run(h):
        tx = make(h)

        def step(s, g):
            u, s = tx.update(g, s)
            return s, u

        return jax.lax.scan(step, tx.init(GRADS[0]), GRADS[:10])[1]

    assert_vmap_matches_loop(run, values)


def test_traced_invalid_momentum_poisons_only_its_lane():
    def run(mu):
        tx = sgd(0.1, mu)
        u, _ = tx.update(GRADS[0], tx.init(GRADS[0]))
        return u

    out = jax.jit(jax.vmap(run))(jnp.array([0.5, 1.5, 0.9]))
    out = np.asarray(out)
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[[0, 2]]))
