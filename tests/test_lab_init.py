"""Statistical tests of gradlab.lab.init (variances with tolerances from the sample size)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab.lab import init

N_IN, N_OUT = 300, 200
N = N_IN * N_OUT
KEY = jax.random.key(0)


def _check_var(w, target, kurtosis):
    # Var of the sample variance is (kurtosis - 1) sigma^4 / N: allow 6 standard errors.
    w = np.asarray(w, np.float64)
    tol = 6 * math.sqrt((kurtosis - 1) / w.size) * target
    assert abs(w.var() - target) < tol, (w.var(), target, tol)
    assert abs(w.mean()) < 6 * math.sqrt(target / w.size)


def test_gain_table():
    assert init.gain("linear") == 1.0 and init.gain("tanh") == 1.0
    assert init.gain("relu") == pytest.approx(math.sqrt(2))
    assert init.gain("sigmoid") == 4.0 and init.gain("logistic") == 4.0
    assert init.gain(2.5) == 2.5
    with pytest.raises(ValueError):
        init.gain("swishy")
    with pytest.raises(ValueError):
        init.gain(-1.0)


@pytest.mark.parametrize("activation,g2", [("tanh", 1.0), ("relu", 2.0), ("sigmoid", 16.0)])
def test_xavier_normal_variance(activation, g2):
    w = init.xavier_normal(activation)(KEY, (N_IN, N_OUT))
    assert w.shape == (N_IN, N_OUT) and w.dtype == jnp.float32
    _check_var(w, g2 * 2.0 / (N_IN + N_OUT), kurtosis=3.0)


def test_xavier_relu_variance_is_4_over_fan_sum():
    w = init.xavier_normal("relu")(KEY, (N_IN, N_OUT))
    _check_var(w, 4.0 / (N_IN + N_OUT), kurtosis=3.0)


@pytest.mark.parametrize("activation", ["linear", "relu", "logistic"])
def test_xavier_uniform_bounds_and_variance(activation):
    a = init.gain(activation) * math.sqrt(6.0 / (N_IN + N_OUT))
    w = np.asarray(init.xavier_uniform(activation)(KEY, (N_IN, N_OUT)))
    assert w.max() <= a and w.min() >= -a and w.max() > 0.99 * a
    _check_var(w, a * a / 3.0, kurtosis=1.8)


def test_he_normal_and_uniform():
    w = init.he_normal()(KEY, (N_IN, N_OUT))
    _check_var(w, 2.0 / N_IN, kurtosis=3.0)
    u = np.asarray(init.he_uniform()(KEY, (N_IN, N_OUT)))
    a = math.sqrt(6.0 / N_IN)
    assert u.max() <= a and u.min() >= -a
    _check_var(u, 2.0 / N_IN, kurtosis=1.8)


def test_truncated_normal_support_and_variance():
    sigma = 0.3
    w = np.asarray(init.truncated_normal(sigma)(KEY, (N_IN, N_OUT)))
    assert np.all(np.abs(w) < 2 * sigma)  # support (-2 sigma, 2 sigma), redrawn outside
    # Variance of N(0,1) truncated to [-2, 2]: 1 - 2 * 2 phi(2) / (2 Phi(2) - 1).
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    factor = 1 - 4 * phi / mass
    _check_var(w, sigma**2 * factor, kurtosis=2.4)


def test_xavier_truncated_is_variance_corrected():
    w = init.xavier_normal("tanh", truncated=True)(KEY, (N_IN, N_OUT))
    _check_var(w, 2.0 / (N_IN + N_OUT), kurtosis=2.4)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_orthogonal(activation):
    w = np.asarray(init.orthogonal(activation)(KEY, (64, 32)), np.float64)
    g = init.gain(activation)
    np.testing.assert_allclose(w.T @ w, g * g * np.eye(32), atol=1e-4)


def test_constant_bias_and_scaled():
    b = init.constant(0.01)(KEY, (5,))
    np.testing.assert_array_equal(np.asarray(b), np.full(5, 0.01, np.float32))
    base = init.he_normal()(KEY, (20, 10))
    np.testing.assert_allclose(init.scaled(init.he_normal(), 0.1)(KEY, (20, 10)), 0.1 * base)


def test_get_by_name():
    a = init.get("xavier_uniform", "relu")(KEY, (10, 10))
    np.testing.assert_array_equal(a, init.xavier_uniform("relu")(KEY, (10, 10)))
    with pytest.raises(ValueError):
        init.get("nope")
