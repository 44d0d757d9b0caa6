"""Tests for gradlab.lab.models: MLP modes (BatchNorm, dropout) and functional split/apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradlab.lab import init
from gradlab.lab.models import MLP, apply_model, merge_model, split_model

# One input shape and (mostly) one layer width throughout: eager calls reuse compiled ops.
X = jax.random.normal(jax.random.key(0), (16, 6))


def test_shapes_and_parameter_layout():
    m = MLP(6, [8, 8], 3, rngs=nnx.Rngs(0))
    assert m(X).shape == (16, 3)
    parts = split_model(m)
    shapes = jax.tree.map(jnp.shape, parts.params)
    assert shapes["hidden"][1]["kernel"] == (8, 8) and shapes["out"]["kernel"] == (8, 3)
    assert parts.state == {}
    assert MLP(6, [], 3, rngs=nnx.Rngs(0))(X).shape == (16, 3)  # linear model


def test_dropout_only_in_training():
    m = MLP(6, [8], 3, dropout=0.5, rngs=nnx.Rngs(0))
    ref = MLP(6, [8], 3, rngs=nnx.Rngs(0))  # same init, no dropout
    np.testing.assert_allclose(m(X), ref(X), rtol=1e-6)  # eval: identity
    a = m(X, train=True, key=jax.random.key(1))
    b = m(X, train=True, key=jax.random.key(2))
    assert not np.allclose(a, b)
    _, _, post = m(X, train=True, key=jax.random.key(1), return_hidden=True)
    assert post[0].shape == (16, 8)
    with pytest.raises(ValueError):
        m(X, train=True)  # dropout needs a key


def test_batchnorm_batch_stats_in_train_running_averages_in_eval():
    m = MLP(6, [8], 3, batch_norm=True, bn_momentum=0.9, rngs=nnx.Rngs(0))
    g, p, s = split_model(m)
    assert "hidden" in p and "bias" not in p["hidden"][0]  # BN replaces the bias
    x = 3.0 + 2.0 * X
    out, pre, _ = m(x, train=True, return_hidden=True)
    h = np.asarray(pre[0])
    np.testing.assert_allclose(h.mean(0), 0.0, atol=1e-5)  # normalised with batch statistics
    np.testing.assert_allclose(h.var(0), 1.0, atol=1e-2)
    # Running mean moved toward the batch mean: 0.9 * 0 + 0.1 * mean(x W).
    z = np.asarray(x) @ np.asarray(p["hidden"][0]["kernel"])
    _, _, s2 = split_model(m)
    np.testing.assert_allclose(s2["norms"][0]["mean"], 0.1 * z.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s2["norms"][0]["var"], 0.9 + 0.1 * z.var(0), rtol=1e-4)
    # Eval uses the running averages and leaves them untouched.
    _, pre_eval, _ = m(x, return_hidden=True)
    expected = (z - s2["norms"][0]["mean"]) / np.sqrt(s2["norms"][0]["var"] + 1e-5)
    np.testing.assert_allclose(pre_eval[0], expected, rtol=1e-3, atol=1e-4)
    _, _, s3 = split_model(m)
    np.testing.assert_array_equal(s3["norms"][0]["mean"], s2["norms"][0]["mean"])


def test_functional_apply_is_pure_jittable_and_vmappable():
    m = MLP(6, [8], 3, batch_norm=True, dropout=0.2, rngs=nnx.Rngs(0))
    g, p, s = split_model(m)

    @jax.jit
    def f(p, s, key):
        return apply_model(g, p, s, X, train=True, key=key)

    o1, s1 = f(p, s, jax.random.key(0))
    o2, s2 = f(p, s, jax.random.key(0))
    np.testing.assert_array_equal(o1, o2)  # pure: same inputs, same outputs
    assert not np.allclose(s1["norms"][0]["mean"], s["norms"][0]["mean"])
    keys = jax.random.split(jax.random.key(1), 4)
    outs = jax.vmap(lambda k: f(p, s, k)[0])(keys)
    assert outs.shape == (4, 16, 3)
    oe, se = apply_model(g, p, s, X)
    np.testing.assert_allclose(oe, merge_model(g, p, s)(X), rtol=1e-6)
    np.testing.assert_array_equal(se["norms"][0]["var"], s["norms"][0]["var"])


def test_taps_give_gradients_wrt_preactivations():
    m = MLP(6, [8, 8], 3, activation="tanh", rngs=nnx.Rngs(0))
    taps = [jnp.zeros((16, 8)), jnp.zeros((16, 8))]
    np.testing.assert_allclose(m(X, taps=taps), m(X), rtol=1e-6)
    grads = jax.jit(jax.grad(lambda t: jnp.sum(m(X, taps=t))))(taps)
    # Last hidden layer: dL/dh = (W_out 1) * tanh'(h) for L = the sum of the outputs.
    _, pre, _ = m(X, return_hidden=True)
    w_out = np.asarray(m.out.kernel[...]).sum(axis=1)
    expected = w_out * (1 - np.tanh(np.asarray(pre[1])) ** 2)
    np.testing.assert_allclose(grads[1], expected, rtol=1e-5, atol=1e-6)


def test_kernel_init_is_used():
    m = MLP(6, [8], 3, kernel_init=init.constant(0.5), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(m.hidden[0].kernel[...], np.full((6, 8), 0.5, np.float32))
    m = MLP(6, [8], 3, kernel_init="orthogonal", activation="tanh", rngs=nnx.Rngs(0))
    w = np.asarray(m.hidden[0].kernel[...])
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)  # orthonormal rows


@pytest.mark.parametrize(
    "kwargs", [{"activation": "swish2"}, {"dropout": 1.0}, {"dropout": -0.1}, {"widths": [0]}]
)
def test_bad_arguments(kwargs):
    args = {"widths": [4], **kwargs}
    with pytest.raises(ValueError):
        MLP(6, args.pop("widths"), 2, rngs=nnx.Rngs(0), **args)


@pytest.mark.parametrize(
    "args", [(64, 128, 10), (6, "8", 2), (6.0, [8], 2), (6, [8], None)], ids=str
)
def test_widths_must_be_a_sequence_and_sizes_ints(args):
    """``MLP(64, 128, 10)`` (widths as an int) said "'int' object is not iterable"."""
    with pytest.raises(TypeError, match="widths|in_features|out_features"):
        MLP(*args, rngs=nnx.Rngs(0))
