"""Clipping, decoupled weight decay, parameter EMA and the finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import assert_vmap_matches_loop

import gradlab
from gradlab import base
from gradlab.optimizers.sgd import sgd
from gradlab.transforms.averaging import get_params_ema, params_ema
from gradlab.transforms.clipping import clip, clip_by_global_norm, robust_global_norm
from gradlab.transforms.finite_guard import ApplyIfFiniteState, apply_if_finite
from gradlab.transforms.weight_decay import add_decayed_weights

KEY = jax.random.PRNGKey(0)
TREE = {
    "w": jax.random.normal(KEY, (3, 4)) * 3.0,
    "b": jnp.array([0.5, -2.0]),
    "n": {"c": jnp.array([7.0])},
}


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def one(tx, updates, params=None, **extra):
    """One update from a fresh state, compiled as a single program."""

    def go(updates, params, extra):
        state = tx.init(params if params is not None else updates)
        return tx.update(updates, state, params, **extra)

    return jax.jit(go)(updates, params, extra)


# ------------------------------------------------------------------ clipping


def test_clip_matches_optax_and_maps_inf_to_the_bound():
    assert_trees_close(one(clip(1.0), TREE)[0], one(optax.clip(1.0), TREE)[0])
    u, _ = one(clip(0.5), {"a": jnp.array([jnp.inf, -jnp.inf, jnp.nan, 0.25], jnp.bfloat16)})
    assert u["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(u["a"], np.float32)[[0, 1, 3]], [0.5, -0.5, 0.25])
    assert np.isnan(np.asarray(u["a"], np.float32)[2])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_by_global_norm_matches_optax(max_norm):
    ours, _ = one(clip_by_global_norm(max_norm), TREE)
    ref, _ = one(optax.clip_by_global_norm(max_norm), TREE)
    assert_trees_close(ours, ref, rtol=1e-6)
    assert float(base.global_norm(ours)) <= max_norm * (1 + 1e-6)


def test_clip_by_global_norm_zero_grads_and_zero_max_norm_are_finite():
    @jax.jit
    def cases():
        outs = [
            one(clip_by_global_norm(c), {"a": jnp.zeros(3, dtype)})[0]["a"]
            for dtype in (jnp.float32, jnp.bfloat16, jnp.float16)
            for c in (0.0, 1.0)
        ]
        clipped = one(clip_by_global_norm(0.0), {"a": jnp.array([3.0, 4.0])})[0]["a"]
        grad = jax.grad(lambda x: jnp.sum(one(clip_by_global_norm(1.0), {"a": x})[0]["a"]))
        return outs, clipped, grad(jnp.zeros(3))

    outs, clipped, grad = cases()
    dtypes = [jnp.float32] * 2 + [jnp.bfloat16] * 2 + [jnp.float16] * 2
    for u, dtype in zip(outs, dtypes, strict=True):
        assert u.dtype == dtype and np.all(np.asarray(u, np.float32) == 0)
    np.testing.assert_array_equal(clipped, [0.0, 0.0])
    assert np.all(np.isfinite(grad))


def test_clip_by_global_norm_negative_raises():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="max_norm"):
            clip_by_global_norm(bad)
    with pytest.raises(ValueError, match="max_delta"):
        clip(-0.1)


def test_clip_by_global_norm_never_creates_nan_from_inf():
    grads = {"a": jnp.array([jnp.inf, 1.0, -2.0])}
    u, _ = one(clip_by_global_norm(1.0), grads)
    np.testing.assert_array_equal(u["a"], [jnp.inf, 1.0, -2.0])  # left for the finite guard
    ref, _ = one(optax.clip_by_global_norm(1.0), grads)
    assert np.isnan(np.asarray(ref["a"])[0])  # optax: inf -> nan, others zeroed
    guarded = apply_if_finite(optax.chain(clip_by_global_norm(1.0), sgd(0.1)), 3)
    u, state = one(guarded, grads)
    np.testing.assert_array_equal(u["a"], [0.0, 0.0, 0.0])
    assert int(state.notfinite_count) == 1


def test_clip_by_global_norm_handles_float32_overflow_of_the_sum_of_squares():
    big = {"a": jnp.array([3e20, 4e20]), "b": jnp.array([0.0])}
    assert not np.isfinite(float(base.global_norm(big)))  # naive sum of squares overflows
    np.testing.assert_allclose(robust_global_norm(big), 5e20, rtol=1e-6)
    u, _ = one(clip_by_global_norm(1.0), big)
    np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
    assert np.isnan(float(robust_global_norm({"a": jnp.array([jnp.nan, 1.0])})))
    assert float(robust_global_norm({})) == 0.0


def test_clip_schedules_use_their_count():
    tx = clip_by_global_norm(lambda c: 1.0 + c)
    g = {"a": jnp.array([30.0, 40.0])}
    s = tx.init(g)
    for expected in (1.0, 2.0, 3.0):
        u, s = tx.update(g, s)
        np.testing.assert_allclose(float(base.global_norm(u)), expected, rtol=1e-6)


# ------------------------------------------------------------------ weight decay


@pytest.mark.parametrize(
    "mask", [{"w": True}, {"w": True, "b": False, "c": True}, lambda p: {"w": True}]
)
def test_a_mask_that_does_not_fit_the_params_is_named(mask):
    # optax.masked raised a "prefix pytree" structure error that named neither mask nor a key.
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    tx = gradlab.adamw(0.1, weight_decay=0.1, mask=mask)
    with pytest.raises(
        base.TreeMismatchError, match=r"mask must be a tree .* params leaves \['b'\]"
    ):
        tx.init(params)


def test_add_decayed_weights_matches_optax_with_and_without_mask():
    params = jax.tree.map(lambda x: x * 0.5 + 1.0, TREE)
    mask = {"w": True, "b": False, "n": {"c": True}}
    for kwargs in ({}, {"mask": mask}, {"mask": lambda p: jax.tree.map(lambda x: x.ndim > 1, p)}):
        ours, _ = one(add_decayed_weights(0.1, **kwargs), TREE, params)
        ref, _ = one(optax.add_decayed_weights(0.1, **kwargs), TREE, params)
        assert_trees_close(ours, ref)


def test_add_decayed_weights_errors_and_dtypes():
    with pytest.raises(ValueError, match="weight_decay"):
        add_decayed_weights(-1e-4)
    tx = add_decayed_weights(1e-2)
    params = {"a": jnp.ones(3, jnp.bfloat16)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(base.TreeMismatchError) as info:
        tx.update({"a": jnp.ones((3, 1), jnp.bfloat16)}, state, params)
    assert info.value.path == "['a']"
    with pytest.raises(base.StateMismatchError):
        tx.update(params, params, params)
    u, _ = tx.update({"a": jnp.zeros(3, jnp.bfloat16)}, state, params)
    assert u["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(u["a"], np.float32), 1e-2, rtol=1e-2)


# ------------------------------------------------------------------ parameter EMA


def _ema_run(tx, params, updates):
    def step(carry, u):
        p, s = carry
        u, s = tx.update(u, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p, get_params_ema(s))

    return jax.lax.scan(step, (params, tx.init(params)), updates)[1]


@pytest.mark.parametrize("debias", [True, False])
def test_params_ema_matches_textbook_average(debias):
    updates = jax.random.normal(KEY, (20, 3)) * 0.1
    p0 = jnp.array([1.0, -1.0, 0.5])
    tx = optax.chain(sgd(1.0), params_ema(0.8, debias=debias))  # update = -g
    iterates, averages = _ema_run(tx, p0, updates)
    theta = np.asarray(iterates, np.float64)
    # textbook: m_t = beta m_{t-1} + (1-beta) theta_t; m_0 = 0 (debiased) or theta_0
    m = np.zeros(3) if debias else np.asarray(p0, np.float64)
    for t in range(20):
        m = 0.8 * m + 0.2 * theta[t]
        want = m / (1 - 0.8 ** (t + 1)) if debias else m
        np.testing.assert_allclose(averages[t], want, rtol=1e-5, atol=1e-6)
    if debias:
        np.testing.assert_allclose(averages[0], theta[0], rtol=1e-6)


def test_params_ema_state_reading_and_errors():
    params = {"a": jnp.ones(2, jnp.bfloat16)}
    tx = params_ema(0.9)
    state = tx.init(params)
    assert state.ema["a"].dtype == jnp.float32
    assert get_params_ema(state, params)["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(get_params_ema(state)["a"], [1.0, 1.0])  # theta_0 before
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="decay"):
        params_ema(1.0)
    with pytest.raises(ValueError, match="exactly one"):
        get_params_ema(sgd(0.1).init(params))
    with pytest.raises(base.TreeMismatchError):
        tx.update({"a": jnp.ones(3, jnp.bfloat16)}, state, params)


# ------------------------------------------------------------------ finite guard


def test_apply_if_finite_rejects_and_keeps_inner_state_bitwise():
    tx = apply_if_finite(optax.chain(sgd(0.1, 0.9), optax.adam(1e-3)), 3)
    params = {"a": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    _, state = tx.update({"a": jnp.array([0.3, 0.7])}, state, params)  # a finite step first
    before = state.inner_state
    u, state = tx.update({"a": jnp.array([jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(u["a"], [0.0, 0.0])
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state.inner_state), strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
    assert not bool(state.last_finite)


def test_apply_if_finite_give_up_rule_is_exact():
    """max=2: updates 0, 0, <non-finite>, 0, then finite; the streak restarts after giving up."""
    tx = apply_if_finite(sgd(1.0), 2)
    nan = {"a": jnp.array([jnp.nan])}
    state = tx.init(nan)
    outs, counts, totals, gave_up = [], [], [], []
    for g in [nan, nan, nan, nan, {"a": jnp.array([2.0])}, nan]:
        u, state = jax.jit(tx.update)(g, state)
        outs.append(float(u["a"][0]))
        counts.append(int(state.notfinite_count))
        totals.append(int(state.total_notfinite))
        gave_up.append(int(state.total_gave_up))
    assert outs[:2] == [0.0, 0.0] and np.isnan(outs[2]) and outs[3] == 0.0
    assert outs[4] == -2.0 and outs[5] == 0.0
    assert counts == [1, 2, 0, 1, 0, 1]
    assert totals == [1, 2, 3, 4, 4, 5]
    assert gave_up == [0, 0, 1, 1, 1, 1]
    # max_consecutive_errors=0 never rejects
    u, state = one(apply_if_finite(sgd(1.0), 0), nan)
    assert np.isnan(float(u["a"][0])) and int(state.notfinite_count) == 0


def test_apply_if_finite_checks_inner_output_and_forwards_extra_args():
    from gradlab.optimizers.rprop import rprop

    overflow = apply_if_finite(sgd(1e30), 1)
    u, state = one(overflow, {"a": jnp.array([1e10])})  # finite grad, inf update
    np.testing.assert_array_equal(u["a"], [0.0])
    assert int(state.notfinite_count) == 1
    guarded = apply_if_finite(rprop(0.1, variant="irprop+"), 1)
    u, _ = one(guarded, {"a": jnp.array([1.0])}, {"a": jnp.array([0.0])}, value=1.0)
    np.testing.assert_allclose(u["a"], [-0.1])


def test_apply_if_finite_validation():
    for bad in (-1,):
        with pytest.raises(ValueError, match="max_consecutive_errors"):
            apply_if_finite(sgd(0.1), bad)
    for bad in (1.5, None, True):
        with pytest.raises(TypeError, match="max_consecutive_errors"):
            apply_if_finite(sgd(0.1), bad)
    with pytest.raises(base.StateMismatchError):
        apply_if_finite(sgd(0.1), 1).update({"a": jnp.ones(1)}, {"a": jnp.ones(1)})
    assert isinstance(apply_if_finite(sgd(0.1), 1).init({"a": jnp.ones(1)}), ApplyIfFiniteState)


def test_apply_if_finite_traced_negative_max_errors_poisons_only_its_run():
    # It behaved exactly like M = 0 (a concrete -1 raises).
    def run(m):
        tx = apply_if_finite(sgd(0.1), m)
        u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
        return u

    out = jax.jit(jax.vmap(run))(jnp.array([3, -1, 0]))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and np.isfinite(out[2]).all()


# ------------------------------------------------------------------ vmap over hyperparameters

GSEQ = jax.random.normal(KEY, (8, 4)) * 5.0
P0 = jnp.array([1.0, -2.0, 0.5, 3.0])
VMAP_CASES = {
    "clip.max_delta": (lambda h: clip(h), [0.5, 2.0]),
    "clip_by_global_norm.max_norm": (lambda h: clip_by_global_norm(h), [0.0, 1.0, 50.0]),
    "add_decayed_weights.weight_decay": (lambda h: add_decayed_weights(h), [0.0, 0.1]),
    "params_ema.decay": (lambda h: optax.chain(sgd(0.1), params_ema(h)), [0.5, 0.9]),
    "apply_if_finite.max_consecutive_errors": (
        lambda h: apply_if_finite(sgd(0.1), h),
        [0, 1, 3],
    ),
}


@pytest.mark.parametrize("case", sorted(VMAP_CASES))
def test_vmap_over_hyperparameter_equals_loop(case):
    make, values = VMAP_CASES[case]
    grads = GSEQ.at[2, 1].set(jnp.nan) if case.startswith("apply_if_finite") else GSEQ

    def run(h):
        tx = make(h)

        def step(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), u

        (p, s), us = jax.lax.scan(step, (P0, tx.init(P0)), grads)
        return us, jax.tree.leaves(s)

    dtype = jnp.int32 if case.startswith("apply_if_finite") else jnp.float32
    assert_vmap_matches_loop(run, values, dtype)


def test_degenerate_trees_are_no_ops():
    """Empty trees, None leaves (frozen params) and zero-size leaves pass through every atom."""
    from gradlab.optimizers.rprop import rprop

    txs = [
        sgd(0.1, 0.9),
        rprop(0.1, variant="irprop+"),
        clip(1.0),
        clip_by_global_norm(1.0),
        add_decayed_weights(0.1),
        params_ema(0.9),
        apply_if_finite(sgd(0.1, 0.9), 2),
    ]
    trees = ({}, {"frozen": None, "b": jnp.ones(2)}, {"e": jnp.zeros((0,))})

    @jax.jit
    def run_all():
        out = []
        for params in trees:
            for tx in txs:
                tx = optax.chain(tx)
                out.append(tx.update(params, tx.init(params), params, value=1.0)[0])
        return out

    outs = run_all()
    for i, u in enumerate(outs):
        assert jax.tree.structure(u) == jax.tree.structure(trees[i // len(txs)])
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))


def test_clip_by_global_norm_is_right_for_gradients_near_float32_max():
    # 1/m and c/norm are subnormal above ~2^126 and XLA:CPU flushes them to zero: the norm of
    # [1e38, 1e37] came out 0 (no clipping) and [2e38] clipped to [0].
    tx = clip_by_global_norm(1.0)
    for g in ([1e38, 1e37], [2e38], [3e38, -3e38 / 7], [1e20, 1e20]):
        g = jnp.asarray(g, jnp.float32)
        exact = np.asarray(g, np.float64) / np.linalg.norm(np.asarray(g, np.float64))
        true_norm = np.linalg.norm(np.asarray(g, np.float64))
        np.testing.assert_allclose(float(robust_global_norm(g)), true_norm, rtol=1e-6)
        out, _ = jax.jit(tx.update)(g, tx.init(g))
        np.testing.assert_allclose(out, exact, rtol=1e-6)
    small = jnp.asarray([3.0, 4.0])  # the ordinary case is unchanged: g * (c / norm)
    np.testing.assert_array_equal(tx.update(small, tx.init(small))[0], small * (1.0 / 5.0))
