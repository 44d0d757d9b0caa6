"""Numerics at the edges: low precision (bfloat16/float16), float64 end to end, extreme
magnitudes in clipping, schedules at large counts.

Each test here pins a defect found by probing the first-order optimizers, clipping and
schedules at the edges (it fails on the code before the fix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradlab as gl
from gradlab.transforms.clipping import clip_by_global_norm, robust_global_norm


def _one(tx, g):
    return tx.update(g, tx.init(g))


# --------------------------------------------------------------------------------------------
# clip_by_global_norm at the ends of the float range
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_clip_by_global_norm_clips_a_finite_tree_whose_norm_overflows(dtype):
    """The entries are finite but the norm (sqrt(3) * max) is above the largest float32: the
    norm came out inf and the tree passed through unclipped (3.4e38 entries with max_norm 1)."""
    big = float(jnp.finfo(dtype).max)
    g = {"a": jnp.array([big, big, -big], dtype), "b": jnp.array([1.0], dtype)}
    u, _ = jax.jit(lambda g: _one(clip_by_global_norm(1.0), g))(g)
    a = np.asarray(u["a"], np.float32)
    np.testing.assert_allclose(a, np.array([1, 1, -1]) / np.sqrt(3), rtol=1e-2)
    assert u["a"].dtype == dtype and np.all(np.isfinite(a))
    assert abs(float(np.asarray(u["b"], np.float32)[0])) < 1e-30


def test_clip_by_global_norm_clips_tiny_trees_whose_sum_of_squares_underflows():
    """[1e-20, 2e-20]^2 underflows float32: the norm was 0, so max_norm=0 left the gradient
    unchanged and max_norm=1e-21 did not clip."""
    g = {"a": jnp.array([1e-20, -1e-20, 2e-20])}
    true = float(np.sqrt(6.0)) * 1e-20
    np.testing.assert_allclose(robust_global_norm(g), true, rtol=1e-6)
    u0, _ = _one(clip_by_global_norm(0.0), g)
    np.testing.assert_array_equal(np.abs(u0["a"]), 0.0)
    u, _ = _one(clip_by_global_norm(1e-21), g)
    np.testing.assert_allclose(robust_global_norm(u), 1e-21, rtol=1e-5)
    np.testing.assert_allclose(u["a"], np.array([1.0, -1.0, 2.0]) * 1e-21 / np.sqrt(6.0), rtol=1e-5)
    # the gradient at an all-zero tree (now on the rescaled branch) stays finite
    grad = jax.grad(lambda x: jnp.sum(_one(clip_by_global_norm(1.0), {"a": x})[0]["a"]))
    assert np.all(np.isfinite(grad(jnp.zeros(3))))


# --------------------------------------------------------------------------------------------
# float64 end to end: schedules are not rounded to float32
# --------------------------------------------------------------------------------------------


def test_schedules_compute_in_float64_under_x64():
    """Under x64 a schedule returned float32: a float64 run's learning rate was rounded
    (linear_schedule(1, 0, 3) at t=1 gave 0.6666666865, adam with a cosine schedule and float64
    state differed from optax's float64 run by 4e-7 relative)."""
    with jax.enable_x64(True):
        for count in (1, 2):
            lin = gl.linear_schedule(1.0, 0.0, 3)(jnp.int32(count))
            assert lin.dtype == jnp.float64
            np.testing.assert_allclose(float(lin), 1.0 - count / 3.0, rtol=1e-15)
        cos = gl.cosine_decay_schedule(0.1, 7)(jnp.int32(3))
        assert abs(float(cos) - 0.05 * (1 + np.cos(np.pi * 3 / 7))) < 1e-17
        wc = gl.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, 0.01)(jnp.int32(3))
        np.testing.assert_allclose(float(wc), 0.3, rtol=1e-15)
        joined = gl.join_schedules(
            [gl.constant_schedule(0.1), gl.linear_schedule(0.3, 0.0, 3)], [2]
        )
        np.testing.assert_allclose(float(joined(jnp.int32(3))), 0.2, rtol=1e-15)

        tx = gl.sgd(gl.linear_schedule(1.0, 0.0, 3))
        p = {"x": jnp.ones(2, jnp.float64)}
        s = tx.init(p)
        for count in range(3):
            u, s = tx.update({"x": jnp.ones(2, jnp.float64)}, s, p)
            assert u["x"].dtype == jnp.float64
            np.testing.assert_allclose(u["x"], -(1.0 - count / 3.0), rtol=1e-15)
    # without x64 every schedule stays float32
    assert gl.linear_schedule(1.0, 0.0, 3)(1).dtype == jnp.float32


def test_irprop_plus_compares_float64_losses_in_float64():
    """iRprop+ stored the previous loss as float32 whatever the state dtype: with float64
    state and losses 1 and 1 + 1e-12 (it went up) the comparison saw two equal losses and
    skipped the backtracking step."""
    with jax.enable_x64(True):
        tx = gl.rprop(0.1, variant="irprop+", state_dtype=jnp.float64)
        p = {"x": jnp.zeros(1, jnp.float64)}
        outs = {}
        for second_loss in (1.0 + 1e-12, 1.0 - 1e-12):
            s = tx.init(p)
            assert s[0].prev_value.dtype == jnp.float64
            _, s = tx.update({"x": jnp.ones(1)}, s, p, value=jnp.float64(1.0))
            u, s = tx.update({"x": -jnp.ones(1)}, s, p, value=jnp.float64(second_loss))
            outs[second_loss > 1.0] = float(u["x"][0])
        assert outs[True] == pytest.approx(0.1)  # loss went up: undo the step -0.1
        assert outs[False] == 0.0  # went down: no step after the sign flip
    # float32 state keeps a float32 loss
    assert gl.rprop(0.1, variant="irprop+").init(p)[0].prev_value.dtype == jnp.float32


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: gl.adagrad(1.0, 0.0, 0.0, state_dtype=jnp.float64), 1.0),
        (lambda: gl.adagrad(1.0, 0.0, 0.0, eps_in_sqrt=False, state_dtype=jnp.float64), 1.0),
        (lambda: gl.rmsprop(1.0, 0.5, 0.0, state_dtype=jnp.float64), np.sqrt(2.0)),
    ],
    ids=["adagrad", "adagrad_eps_outside", "rmsprop"],
)
def test_float64_denominator_floor_is_float64s(make, expected):
    """The 0/0 floor of AdaGrad/RMSProp denominators was float32's smallest normal (1.2e-38)
    in every dtype: with float64 state and eps=0 a 1e-25 gradient moved by 9.2e-7 instead of
    1 (|g| / sqrt(G) = 1), and 1e-40 by 9e-22 (eps outside: 0.0085)."""
    with jax.enable_x64(True):
        tx = make()
        p = {"x": jnp.zeros(3, jnp.float64)}
        u, _ = tx.update({"x": jnp.array([1e-25, 1e-40, 0.0])}, tx.init(p), p)
        np.testing.assert_allclose(u["x"], [-expected, -expected, 0.0], rtol=1e-12)
