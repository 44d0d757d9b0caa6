"""Textbook variants optax lacks, checked against the formulas written out in numpy (float64).

Each reference below is the slide's/paper's formula, element by element, on the same
gradient sequence g_t = p_{t-1} / 2 + noise_t; gradlab runs all of them in one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab.optimizers import adaptive as gl

STEPS = 50
DIM = 6
LR = 0.05


def _data():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=DIM)
    noise = rng.normal(size=(STEPS, DIM))
    noise[:, 0] = 0.0  # one coordinate sees only the deterministic part
    return p0, noise


def np_run(step_fn, state):
    """Drive a numpy update rule ``step_fn(g, state, t) -> (delta, state)`` (t from 1)."""
    p0, noise = _data()
    p = p0.copy()
    traj = []
    for t in range(1, STEPS + 1):
        g = 0.5 * p + noise[t - 1]
        delta, state = step_fn(g, state, t)
        p = p + delta
        traj.append(p.copy())
    return np.stack(traj)


# ---- numpy references (the formulas) --------------------------------------------------------


def adagrad_eps_outside(g0, eps):
    # Goodfellow et al. Alg. 8.4: r <- r + g*g; delta = -lr / (eps + sqrt(r)) * g
    def step(g, r, t):
        r = r + g * g
        return -LR / (eps + np.sqrt(r)) * g, r

    return np_run(step, np.full(DIM, g0))


def rmsprop_first_gradient(rho, eps, eps_in_sqrt):
    # MEPhI deck: G(0) = g_0^2, G(t) = rho G(t-1) + (1 - rho) g_t^2, step lr / sqrt(G + eps)
    def step(g, G, t):
        G = g * g if t == 1 else rho * G + (1 - rho) * g * g
        den = np.sqrt(G + eps) if eps_in_sqrt else np.sqrt(G) + eps
        return -LR * g / den, G

    return np_run(step, np.zeros(DIM))


def adam_variant(b1, b2, eps, correct_m, correct_v, eps_in_sqrt, nesterov=False):
    # Kingma & Ba / Goodfellow Alg. 8.7 / "simple Adam" (Dinh deck), switchable corrections.
    def step(g, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if nesterov:
            if correct_m:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = b1 * m + (1 - b1) * g
        else:
            m_hat = m / (1 - b1**t) if correct_m else m
        v_hat = v / (1 - b2**t) if correct_v else v
        den = np.sqrt(v_hat + eps) if eps_in_sqrt else np.sqrt(v_hat) + eps
        return -LR * m_hat / den, (m, v)

    return np_run(step, (np.zeros(DIM), np.zeros(DIM)))


def adamax_no_correction(b1, b2, eps):
    def step(g, s, t):
        m, u = s
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        return -LR * m / u, (m, u)

    return np_run(step, (np.zeros(DIM), np.zeros(DIM)))


def adadelta_zeiler(rho, eps):
    # Zeiler 2012 Alg. 1 (learning rate 1): dx = -sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) g
    def step(g, s, t):
        eg, ex = s
        eg = rho * eg + (1 - rho) * g * g
        dx = -np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
        ex = rho * ex + (1 - rho) * dx * dx
        return dx, (eg, ex)

    return np_run(step, (np.zeros(DIM), np.zeros(DIM)))


# name -> (gradlab optimizer, numpy reference)
CASES = {
    "adagrad_eps_outside_g0_0": (
        lambda: gl.adagrad(LR, 0.0, 1e-7, eps_in_sqrt=False),
        lambda: adagrad_eps_outside(0.0, 1e-7),
    ),
    "adagrad_eps_outside_g0_0.1": (
        lambda: gl.adagrad(LR, 0.1, 1e-3, eps_in_sqrt=False),
        lambda: adagrad_eps_outside(0.1, 1e-3),
    ),
    "rmsprop_first_gradient": (
        lambda: gl.rmsprop(LR, 0.9, 1e-8, init_with_first_gradient=True),
        lambda: rmsprop_first_gradient(0.9, 1e-8, True),
    ),
    "rmsprop_first_gradient_eps_outside": (
        lambda: gl.rmsprop(LR, 0.8, 1e-4, eps_in_sqrt=False, init_with_first_gradient=True),
        lambda: rmsprop_first_gradient(0.8, 1e-4, False),
    ),
    "adam_first_only": (
        lambda: gl.adam(LR, 0.9, 0.99, 1e-8, bias_correction="first"),
        lambda: adam_variant(0.9, 0.99, 1e-8, True, False, False),
    ),
    "adam_second_only": (
        lambda: gl.adam(LR, 0.9, 0.99, 1e-8, bias_correction="second"),
        lambda: adam_variant(0.9, 0.99, 1e-8, False, True, False),
    ),
    "adam_none": (
        lambda: gl.adam(LR, 0.9, 0.99, 1e-8, bias_correction="none"),
        lambda: adam_variant(0.9, 0.99, 1e-8, False, False, False),
    ),
    "adam_simple_eps_in_sqrt": (
        lambda: gl.adam(LR, 0.9, 0.99, 1e-7, bias_correction="none", eps_in_sqrt=True),
        lambda: adam_variant(0.9, 0.99, 1e-7, False, False, True),
    ),
    "adam_goodfellow_8_7": (
        lambda: gl.adam(LR, 0.9, 0.999, 1e-8, eps_in_sqrt=True),
        lambda: adam_variant(0.9, 0.999, 1e-8, True, True, True),
    ),
    "nadam_no_correction": (
        lambda: gl.nadam(LR, 0.9, 0.99, 1e-8, bias_correction="none"),
        lambda: adam_variant(0.9, 0.99, 1e-8, False, False, False, nesterov=True),
    ),
    "nadam_eps_in_sqrt": (
        lambda: gl.nadam(LR, 0.8, 0.99, 1e-6, eps_in_sqrt=True),
        lambda: adam_variant(0.8, 0.99, 1e-6, True, True, True, nesterov=True),
    ),
    "adamax_no_correction": (
        lambda: gl.adamax(LR, 0.9, 0.99, 1e-8, bias_correction=False),
        lambda: adamax_no_correction(0.9, 0.99, 1e-8),
    ),
    "adadelta_zeiler": (
        lambda: gl.adadelta(None, 0.95, 1e-6),
        lambda: adadelta_zeiler(0.95, 1e-6),
    ),
}


@functools.lru_cache(maxsize=1)
def gradlab_trajectories():
    """Every case in one jitted program (one compile)."""
    p0, noise = _data()
    p0 = jnp.asarray(p0, jnp.float32)
    noise = jnp.asarray(noise, jnp.float32)

    def run(opt):
        def step(carry, n):
            p, s = carry
            u, s = opt.update(0.5 * p + n, s, p)
            p = p + u
            return (p, s), p

        return jax.lax.scan(step, (p0, opt.init(p0)), noise)[1]

    out = jax.jit(lambda: {name: run(make()) for name, (make, _) in CASES.items()})()
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_matches_textbook_formula(name):
    got = gradlab_trajectories()[name]
    want = CASES[name][1]()
    assert np.max(np.abs(want[-1] - _data()[0])) > 1e-2  # the trajectory moved
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_variants_really_differ():
    """The switches change the result (so the textbook tests cannot pass vacuously)."""
    runs = gradlab_trajectories()
    pairs = [
        ("adam_first_only", "adam_none"),
        ("adam_second_only", "adam_none"),
        ("nadam_no_correction", "adam_none"),
    ]
    for a, b in pairs:
        assert np.max(np.abs(runs[a] - runs[b])) > 1e-3, (a, b)
    ref_zero_init = adam_variant(0.0, 0.9, 1e-8, False, False, True)  # rmsprop, G(0)=0
    assert np.max(np.abs(runs["rmsprop_first_gradient"] - ref_zero_init)) > 1e-3


def test_rmsprop_worked_example_from_the_slides():
    """Dinh deck: f = x^2, x0 = 9, eta = 0.1, rho = 0.9, eps = 1e-7 -> 8.6837, 8.458, 8.27."""
    opt = gl.rmsprop(0.1, decay=0.9, eps=1e-7)
    x = jnp.asarray(9.0)
    s = opt.init(x)
    xs = []
    for _ in range(3):
        u, s = opt.update(2 * x, s, x)
        x = x + u
        xs.append(float(x))
    np.testing.assert_allclose(xs, [8.6837, 8.458, 8.27], atol=2e-3)


def test_adagrad_worked_example_eps_inside():
    """Dinh deck AdaGrad: s_t = s_{t-1} + g_t^2, x_t = x_{t-1} - eta g_t / sqrt(s_t + eps)."""
    for s0 in (0.0, 0.1):
        opt = gl.adagrad(0.5, initial_accumulator_value=s0, eps=1e-7)
        x = jnp.asarray(9.0)
        s = opt.init(x)
        xr, sr = 9.0, s0
        for _ in range(5):
            u, s = opt.update(2 * x, s, x)
            x = x + u
            g = 2 * xr
            sr = sr + g * g
            xr = xr - 0.5 * g / np.sqrt(sr + 1e-7)
        np.testing.assert_allclose(float(x), xr, rtol=1e-5)
