"""reduce_on_plateau: patience, cooldown, min_scale, accumulation, vmap, optax agreement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradlab
from gradlab.transforms.plateau import ReduceLROnPlateauState, reduce_on_plateau

PARAMS = {"w": jnp.ones((3,)), "b": jnp.ones(())}


def _scales(tx, values, params=PARAMS):
    """Run ``tx`` over a loss sequence with lax.scan; return the scale after every update."""

    def step(state, v):
        updates, state = tx.update(params, state, params, value=v)
        return state, (state.scale, updates["w"][0])

    _, (scales, applied) = jax.lax.scan(step, tx.init(params), jnp.asarray(values, jnp.float32))
    return np.asarray(scales), np.asarray(applied)


def _reference(values, factor, patience, rtol, atol, cooldown, accumulation_size, min_scale):
    """The plateau rule written out in plain Python (torch/optax mode='min' semantics)."""
    scale, best, bad, cool, window, out = np.float32(1.0), np.inf, 0, 0, [], []
    for v in values:
        window.append(float(v))
        if len(window) == accumulation_size:
            avg = float(np.mean(np.asarray(window, np.float32)))
            window = []
            if avg < (1 - rtol) * best - atol:
                best, bad = avg, 0
            else:
                bad += 1
            if cool > 0:
                cool, bad = cool - 1, 0
            elif bad >= patience:
                scale = max(np.float32(scale) * np.float32(factor), np.float32(min_scale))
                bad, cool = 0, cooldown
        out.append(scale)
    return np.asarray(out)


def test_reduces_after_patience_non_improving_values():
    # 1 improvement (inf -> 1), then flat: the 3rd bad value triggers the reduction.
    scales, applied = _scales(reduce_on_plateau(factor=0.5, patience=3), [1.0] * 10)
    np.testing.assert_allclose(scales, [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])
    np.testing.assert_allclose(applied, scales)  # the updates are scaled by the current scale


def test_improvement_resets_the_plateau_counter():
    values = [5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0]
    scales, _ = _scales(reduce_on_plateau(factor=0.1, patience=3, rtol=0.0, atol=0.0), values)
    np.testing.assert_allclose(scales, [1, 1, 1, 1, 1, 1, 0.1], rtol=1e-6)
    # rtol: 4.9999 is not an improvement on 5 at rtol=1e-3.
    values = [5.0, 4.9999, 4.9999, 4.9999]
    scales, _ = _scales(reduce_on_plateau(factor=0.1, patience=3, rtol=1e-3), values)
    np.testing.assert_allclose(scales, [1, 1, 1, 0.1], rtol=1e-6)


def test_cooldown_ignores_bad_values_after_a_reduction():
    tx = reduce_on_plateau(factor=0.5, patience=2, cooldown=3)
    scales, _ = _scales(tx, [1.0] * 12)
    # reduce at 3; cooldown 4,5,6; counting resumes at 7,8 -> reduce at 8; cooldown 9..11.
    expected = [1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    np.testing.assert_allclose(scales, expected)


def test_min_scale_floor():
    scales, _ = _scales(reduce_on_plateau(factor=0.1, patience=1, min_scale=0.005), [1.0] * 6)
    np.testing.assert_allclose(scales, [1, 0.1, 0.01, 0.005, 0.005, 0.005], rtol=1e-6)


def test_accumulation_averages_windows():
    # Windows of 2: means 2.5, 2.5, 2.5 -> improvement then two bad windows.
    values = [3.0, 2.0, 2.0, 3.0, 2.5, 2.5]
    scales, _ = _scales(reduce_on_plateau(factor=0.5, patience=2, accumulation_size=2), values)
    np.testing.assert_allclose(scales, [1, 1, 1, 1, 1, 0.5])


CONFIGS = [
    dict(),
    dict(factor=0.5, patience=3, cooldown=2, accumulation_size=2, min_scale=0.01),
    dict(factor=0.3, patience=2, rtol=0.0, atol=0.01),
    dict(factor=0.8, patience=1, rtol=1e-2, cooldown=1, accumulation_size=3),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_matches_optax_contrib_and_reference(kwargs):
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            np.linspace(5, 1, 20),
            1 + 0.01 * rng.standard_normal(40),
            np.linspace(1, 0.5, 10),
            0.5 + 0.05 * rng.standard_normal(50),
        ]
    ).astype(np.float32)
    ours, _ = _scales(reduce_on_plateau(**kwargs), values)
    theirs, _ = _scales(optax.contrib.reduce_on_plateau(**kwargs), values)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    full = dict(factor=0.1, patience=10, rtol=1e-4, atol=0.0, cooldown=0)
    full.update(accumulation_size=1, min_scale=0.0)
    full.update(kwargs)
    np.testing.assert_allclose(ours, _reference(values, **full), rtol=1e-6)
    assert ours[-1] < 1.0  # the sequence does plateau


def test_vmap_over_every_numeric_argument_equals_python_loop():
    # Slow improvement (0.5% every other value), then a plateau.
    slow = 2.0 * 0.995 ** (np.arange(12) // 2)
    values = jnp.asarray(np.concatenate([slow, np.full(12, slow[-1])]), jnp.float32)
    base_kw = dict(factor=0.5, patience=2, rtol=1e-3, atol=0.0, cooldown=1)
    base_kw.update(accumulation_size=1, min_scale=0.0)
    sweeps = dict(
        factor=[0.1, 1.0],
        patience=[1, 3],
        rtol=[0.0, 0.1],
        atol=[0.0, 0.5],
        cooldown=[0, 4],
        accumulation_size=[1, 3],
        min_scale=[0.0, 0.6],
    )
    for name, sweep in sweeps.items():

        def run(v, name=name):
            return _scales(reduce_on_plateau(**{**base_kw, name: v}), values)

        def run_traced(v, name=name):
            tx = reduce_on_plateau(**{**base_kw, name: v})

            def step(state, x):
                _, state = tx.update(PARAMS, state, PARAMS, value=x)
                return state, state.scale

            return jax.lax.scan(step, tx.init(PARAMS), values)[1]

        batched = jax.jit(jax.vmap(run_traced))(jnp.asarray(sweep, jnp.float32))
        for i, v in enumerate(sweep):
            np.testing.assert_allclose(batched[i], run(v)[0], rtol=1e-6, err_msg=name)
        assert len({tuple(np.asarray(b)) for b in batched}) > 1, name  # the sweep matters


def test_traced_invalid_factor_poisons_only_its_lane():
    def run(factor):
        tx = reduce_on_plateau(factor=factor, patience=1)
        state = tx.init(PARAMS)
        updates, _ = tx.update(PARAMS, state, PARAMS, value=1.0)
        return updates["w"]

    out = np.asarray(jax.vmap(run)(jnp.array([0.5, 0.0, 1.5, 0.1])))
    assert np.all(np.isnan(out[1:3])) and np.all(np.isfinite(out[[0, 3]]))


def test_dtypes_state_float32_updates_in_gradient_dtype():
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    tx = reduce_on_plateau(factor=0.5, patience=1)
    state = tx.init(params)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(params, state, params, value=jnp.bfloat16(1.0))
    assert updates["w"].dtype == jnp.bfloat16
    assert state.scale.dtype == jnp.float32 and state.best_value.dtype == jnp.float32
    assert state.plateau_count.dtype == jnp.int32 and state.count.dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 0.25)


def test_in_a_chain_rescues_a_too_large_learning_rate():
    """SGD with lr too large for the curvature bounces; plateau reductions make it converge."""

    def loss(p):
        return 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * p**2)

    def run(tx):
        params = jnp.array([1.0, 1.0])

        def step(carry, _):
            p, s = carry
            v, g = jax.value_and_grad(loss)(p)
            u, s = tx.update(g, s, p, value=v)
            return (p + u, s), v

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=300)
        return loss(p)

    plain = run(optax.sgd(0.2))  # 1 - 0.2 * 10 = -1: pure oscillation
    rescued = run(optax.chain(optax.sgd(0.2), reduce_on_plateau(factor=0.5, patience=5)))
    assert plain > 1.0 and rescued < 1e-6


def test_missing_value_is_a_type_error_and_shapes_are_checked():
    tx = reduce_on_plateau()
    state = tx.init(PARAMS)
    with pytest.raises(TypeError):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match="value"):
        tx.update(PARAMS, state, PARAMS, value=jnp.ones(2))
    with pytest.raises(gradlab.StateMismatchError):
        tx.update(PARAMS, optax.sgd(0.1).init(PARAMS), PARAMS, value=1.0)
    assert isinstance(state, ReduceLROnPlateauState)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(factor=0.0), "factor"),
        (dict(factor=1.5), "factor"),
        (dict(factor=float("nan")), "factor"),
        (dict(patience=0), "patience"),
        (dict(patience=2.5), "patience"),
        (dict(rtol=-0.1), "rtol"),
        (dict(rtol=1.5), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(cooldown=-1), "cooldown"),
        (dict(accumulation_size=0), "accumulation_size"),
        (dict(min_scale=-0.1), "min_scale"),
    ],
)
def test_concrete_bad_values_raise_value_error_naming_argument(kwargs, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        reduce_on_plateau(**kwargs)


def test_wrong_types():
    with pytest.raises(TypeError):
        reduce_on_plateau(factor="0.1")
    with pytest.raises(TypeError):
        reduce_on_plateau(patience=lambda c: 3)
