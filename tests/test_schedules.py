"""Schedules: traceable arguments (vmap == loop), optax agreement, textbook formulas, bad inputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradlab
from gradlab import schedules as S

COUNTS = jnp.array([0, 1, 2, 3, 5, 7, 10, 14, 15, 20, 33, 50, 99, 100, 101, 150, 250, 1000])
C = np.asarray(COUNTS, np.float64)
INT32_MAX = np.iinfo(np.int32).max

# (name, factory, kwargs, {argument: values to sweep})
CASES = [
    ("constant", S.constant_schedule, dict(value=0.5), dict(value=[0.0, 0.1, 2.0])),
    (
        "step_decay",
        S.step_decay_schedule,
        dict(init_value=1.0, step_size=10, divisor=2.0),
        dict(init_value=[0.0, 0.3, 1.0], step_size=[1, 7, 10, 33.5], divisor=[0.5, 2.0, 10.0]),
    ),
    (
        "exponential",
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.9, transition_begin=5),
        dict(
            init_value=[0.0, 0.5, 2.0],
            transition_steps=[1, 10, 37.5],
            decay_rate=[0.5, 0.9, 1.0, 1.1],
            transition_begin=[0, 5, 120],
        ),
    ),
    (
        "exponential_staircase_end",
        lambda **kw: S.exponential_decay(staircase=True, **kw),
        dict(init_value=1.0, transition_steps=10, decay_rate=0.8, end_value=0.2),
        dict(transition_steps=[3, 10], decay_rate=[0.5, 0.8, 1.2], end_value=[0.0, 0.2, 1.5]),
    ),
    (
        "natural_exp",
        S.natural_exp_decay,
        dict(init_value=1.0, decay_rate=0.05, decay_steps=1),
        dict(init_value=[0.1, 1.0], decay_rate=[0.0, 0.05, 1.0], decay_steps=[1, 4.5, 10]),
    ),
    (
        "inverse_time",
        S.inverse_time_decay,
        dict(init_value=1.0, decay_steps=10, decay_rate=0.5),
        dict(init_value=[0.1, 1.0], decay_steps=[1, 10, 25.5], decay_rate=[0.0, 0.5, 3.0]),
    ),
    (
        "robbins_monro",
        S.robbins_monro_schedule,
        dict(a=1.0, b=2.0, kappa=0.75),
        dict(a=[0.0, 0.5, 3.0], b=[0.5, 1.0, 10.0], kappa=[0.5, 0.75, 1.0]),
    ),
    (
        "polynomial",
        S.polynomial_schedule,
        dict(init_value=1.0, end_value=0.01, power=2.0, transition_steps=100, transition_begin=10),
        dict(
            init_value=[0.5, 1.0],
            end_value=[0.0, 0.01, 2.0],
            power=[0.5, 1.0, 3.0],
            transition_steps=[1, 50, 100, 300],
            transition_begin=[0, 10, 40],
        ),
    ),
    (
        "linear",
        S.linear_schedule,
        dict(init_value=1.0, end_value=0.01, transition_steps=100, transition_begin=10),
        dict(
            init_value=[0.0, 1.0],
            end_value=[0.01, 2.0],
            transition_steps=[1, 100, 300],
            transition_begin=[0, 10, 40],
        ),
    ),
    (
        "cosine",
        S.cosine_decay_schedule,
        dict(init_value=1.0, decay_steps=100, alpha=0.1, exponent=1.5),
        dict(
            init_value=[0.2, 1.0],
            decay_steps=[1, 37, 100, 500],
            alpha=[0.0, 0.1, 1.0],
            exponent=[0.5, 1.0, 2.0],
        ),
    ),
    (
        "warmup_constant",
        S.warmup_constant_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=20),
        dict(init_value=[0.0, 0.5], peak_value=[0.0, 1.0, 3.0], warmup_steps=[0, 1, 20, 55.5]),
    ),
    (
        "warmup_cosine",
        S.warmup_cosine_decay_schedule,
        dict(
            init_value=0.1,
            peak_value=1.0,
            warmup_steps=20,
            decay_steps=200,
            end_value=0.01,
            exponent=1.0,
        ),
        dict(
            init_value=[0.0, 0.1],
            peak_value=[0.0, 0.5, 1.0, 4.0],
            warmup_steps=[0, 1, 20, 150],
            decay_steps=[160, 200, 1000],
            end_value=[0.0, 0.01, 2.0],
            exponent=[0.5, 1.0, 3.0],
        ),
    ),
    (
        "warmup_exponential",
        S.warmup_exponential_decay_schedule,
        dict(
            init_value=0.1,
            peak_value=1.0,
            warmup_steps=20,
            transition_steps=10,
            decay_rate=0.9,
            transition_begin=5,
            end_value=0.05,
        ),
        dict(
            init_value=[0.0, 0.1],
            peak_value=[0.5, 1.0],
            warmup_steps=[0, 20, 60],
            transition_steps=[1, 10],
            decay_rate=[0.5, 0.9, 1.05],
            transition_begin=[0, 5],
            end_value=[0.0, 0.05, 3.0],
        ),
    ),
]


def _loop(factory, kwargs, name, values):
    return np.stack([np.asarray(factory(**{**kwargs, name: v})(COUNTS)) for v in values])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vmap_over_every_numeric_argument_equals_python_loop(case):
    _, factory, kwargs, sweeps = case
    for name, values in sweeps.items():
        vals = jnp.asarray(values, jnp.float32)
        batched = jax.vmap(lambda v, name=name: factory(**{**kwargs, name: v})(COUNTS))(vals)
        expected = _loop(factory, kwargs, name, values)
        assert batched.dtype == jnp.float32
        np.testing.assert_allclose(batched, expected, rtol=2e-6, atol=1e-7, err_msg=name)
        assert np.all(np.isfinite(expected)), name
        assert np.all(np.asarray(batched) >= 0) and np.all(expected >= 0), name


def test_vmap_under_jit_over_several_arguments_at_once():
    def f(peak, warm, total):
        return S.warmup_cosine_decay_schedule(0.0, peak, warm, total)(COUNTS)

    peaks, warms, totals = (
        jnp.array([0.5, 1.0, 2.0]),
        jnp.array([0, 10, 30]),
        jnp.array([50, 90, 500]),
    )
    out = jax.jit(jax.vmap(f))(peaks, warms, totals)
    for i in range(3):
        ref = f(float(peaks[i]), int(warms[i]), int(totals[i]))
        np.testing.assert_allclose(out[i], ref, rtol=2e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Against optax (same names, same arguments)
# --------------------------------------------------------------------------------------------

OPTAX_PAIRS = [
    ("exponential_decay", dict(init_value=1.0, transition_steps=10, decay_rate=0.9)),
    (
        "exponential_decay",
        dict(
            init_value=2.0,
            transition_steps=7,
            decay_rate=0.5,
            transition_begin=12,
            staircase=True,
            end_value=0.1,
        ),
    ),
    ("exponential_decay", dict(init_value=0.1, transition_steps=5, decay_rate=1.3, end_value=3.0)),
    ("linear_schedule", dict(init_value=1.0, end_value=0.01, transition_steps=100)),
    (
        "linear_schedule",
        dict(init_value=0.0, end_value=1.0, transition_steps=30, transition_begin=15),
    ),
    (
        "polynomial_schedule",
        dict(init_value=1.0, end_value=0.1, power=2.0, transition_steps=80, transition_begin=5),
    ),
    ("polynomial_schedule", dict(init_value=0.5, end_value=0.0, power=0.5, transition_steps=200)),
    ("cosine_decay_schedule", dict(init_value=1.0, decay_steps=100)),
    ("cosine_decay_schedule", dict(init_value=0.3, decay_steps=150, alpha=0.2, exponent=2.0)),
    (
        "warmup_cosine_decay_schedule",
        dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.0),
    ),
    (
        "warmup_cosine_decay_schedule",
        dict(
            init_value=0.1,
            peak_value=0.8,
            warmup_steps=33,
            decay_steps=250,
            end_value=0.05,
            exponent=1.5,
        ),
    ),
    ("warmup_constant_schedule", dict(init_value=0.0, peak_value=1.0, warmup_steps=40)),
    (
        "warmup_exponential_decay_schedule",
        dict(
            init_value=0.0,
            peak_value=1.0,
            warmup_steps=10,
            transition_steps=20,
            decay_rate=0.7,
            transition_begin=4,
            staircase=True,
            end_value=0.1,
        ),
    ),
    ("piecewise_constant_schedule", dict(init_value=1.0, boundaries_and_scales={100: 0.1})),
    (
        "piecewise_constant_schedule",
        dict(init_value=0.5, boundaries_and_scales={20: 0.5, 7: 2.0, 150: 0.0, 250: 3.0}),
    ),
    ("constant_schedule", dict(value=0.25)),
]


@pytest.mark.parametrize("name,kwargs", OPTAX_PAIRS, ids=[p[0] for p in OPTAX_PAIRS])
def test_matches_optax(name, kwargs):
    counts = jnp.arange(0, 400, dtype=jnp.int32)
    ours = getattr(S, name)(**kwargs)(counts)
    theirs = jnp.broadcast_to(getattr(optax, name)(**kwargs)(counts), counts.shape)
    np.testing.assert_allclose(ours, theirs, rtol=3e-6, atol=1e-7)


def test_join_schedules_matches_optax():
    counts = jnp.arange(0, 300, dtype=jnp.int32)
    ours = S.join_schedules(
        [
            S.linear_schedule(0.0, 1.0, 10),
            S.constant_schedule(1.0),
            S.exponential_decay(1.0, 20, 0.5),
        ],
        [10, 60],
    )(counts)
    theirs = optax.join_schedules(
        [
            optax.linear_schedule(0.0, 1.0, 10),
            optax.constant_schedule(1.0),
            optax.exponential_decay(1.0, 20, 0.5),
        ],
        [10, 60],
    )(counts)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


def test_join_schedules_traced_boundaries():
    subs = [S.constant_schedule(1.0), S.linear_schedule(1.0, 0.0, 10), S.constant_schedule(0.5)]

    def f(b):
        return S.join_schedules(subs, b)(COUNTS)

    bs = jnp.array([[0.0, 10.0], [5.0, 20.0], [30.0, 30.0], [50.0, 40.0]])
    out = jax.vmap(f)(bs)
    for i in range(3):
        np.testing.assert_allclose(out[i], f(np.asarray(bs[i])), rtol=1e-6)
    # The last row is out of order: its lane is poisoned, the others are not.
    assert np.all(np.isnan(out[3])) and np.all(np.isfinite(out[:3]))
    # Textbook check of row 1: 1 until 5, then 1 - (t-5)/10 until 20, then 0.5.
    t = C
    ref = np.where(t < 5, 1.0, np.where(t < 20, 1.0 - np.minimum(t - 5, 10) / 10, 0.5))
    np.testing.assert_allclose(out[1], ref, atol=1e-6)


def test_piecewise_constant_traced_boundaries_and_scales():
    def f(b, s):
        return S.piecewise_constant_schedule(2.0, boundaries=b, scales=s)(COUNTS)

    bs = jnp.array([[10.0, 100.0], [100.0, 10.0], [0.0, 250.0]])
    ss = jnp.array([[0.5, 0.1], [0.1, 0.5], [3.0, 0.0]])
    out = jax.vmap(f)(bs, ss)
    for i in range(3):
        b, s = np.asarray(bs[i]), np.asarray(ss[i])
        ref = 2.0 * np.prod(np.where(C[:, None] >= b, s, 1.0), axis=-1)
        np.testing.assert_allclose(out[i], ref, rtol=1e-6)
        np.testing.assert_allclose(out[i], f(b, s), rtol=1e-6)
    # The dict form with a traced scale (optax raises TracerBoolConversionError here).
    g = jax.vmap(lambda s: S.piecewise_constant_schedule(1.0, {50: s, 100: 0.1})(COUNTS))
    out = g(jnp.array([0.5, 2.0]))
    ref = S.piecewise_constant_schedule(1.0, {50: 2.0, 100: 0.1})(COUNTS)
    np.testing.assert_allclose(out[1], ref, rtol=1e-6)
    # init_value traced too.
    out = jax.vmap(lambda v: S.piecewise_constant_schedule(v, {10: 0.5})(COUNTS))(jnp.ones(2))
    np.testing.assert_allclose(out[0], np.where(C >= 10, 0.5, 1.0))


# --------------------------------------------------------------------------------------------
# Textbook formulas (numpy) for the schedules optax does not have
# --------------------------------------------------------------------------------------------


def test_step_decay_divides_by_k_every_p_steps():
    # Deck 002: "if i % p == 0: eta = eta / k" -> eta_t = eta_0 / k ** floor(t / p).
    out = S.step_decay_schedule(0.2, step_size=5, divisor=2.0)(COUNTS)
    np.testing.assert_allclose(out, 0.2 / 2.0 ** np.floor(C / 5), rtol=1e-6, atol=1e-30)
    assert float(S.step_decay_schedule(0.2, 5, 2.0)(4)) == pytest.approx(0.2)
    assert float(S.step_decay_schedule(0.2, 5, 2.0)(5)) == pytest.approx(0.1)


def test_exponential_decay_textbook_eta0_lambda_s_over_k():
    # Deck 002: eta = eta_0 * lambda ** (s / k).
    out = S.exponential_decay(0.2, transition_steps=4, decay_rate=0.5)(COUNTS)
    np.testing.assert_allclose(out, 0.2 * 0.5 ** (C / 4), rtol=1e-6, atol=1e-30)


def test_natural_exp_decay_textbook():
    # Deck 004: alpha(tau) = alpha_0 * exp(-k tau).
    out = S.natural_exp_decay(0.3, decay_rate=0.02)(COUNTS)
    np.testing.assert_allclose(out, 0.3 * np.exp(-0.02 * C), rtol=1e-5)
    out = S.natural_exp_decay(0.3, decay_rate=0.5, decay_steps=10, staircase=True)(COUNTS)
    np.testing.assert_allclose(out, 0.3 * np.exp(-0.5 * np.floor(C / 10)), rtol=1e-6)
    # Equal to exponential_decay with lambda = e^{-k}.
    alt = S.exponential_decay(0.3, 1, math.exp(-0.02))(COUNTS)
    np.testing.assert_allclose(S.natural_exp_decay(0.3, 0.02)(COUNTS), alt, rtol=1e-4)


def test_inverse_time_decay_textbook():
    # Deck 004: alpha(tau) = alpha_0 / (1 + k tau); Keras InverseTimeDecay with decay_steps.
    out = S.inverse_time_decay(0.5, decay_steps=1, decay_rate=0.1)(COUNTS)
    np.testing.assert_allclose(out, 0.5 / (1 + 0.1 * C), rtol=1e-6)
    out = S.inverse_time_decay(0.5, decay_steps=10, decay_rate=2.0, staircase=True)(COUNTS)
    np.testing.assert_allclose(out, 0.5 / (1 + 2.0 * np.floor(C / 10)), rtol=1e-6)


def test_robbins_monro_textbook():
    out = S.robbins_monro_schedule(a=2.0, b=3.0, kappa=0.8)(COUNTS)
    np.testing.assert_allclose(out, 2.0 / (3.0 + C) ** 0.8, rtol=1e-6)
    out = S.robbins_monro_schedule(1.0)(COUNTS)  # a / (1 + t): the 1/t rate
    np.testing.assert_allclose(out, 1.0 / (1.0 + C), rtol=1e-6)


def test_linear_schedule_is_goodfellow_linear_decay():
    # eps_k = (1 - a) eps_0 + a eps_tau, a = k / tau, then constant (Goodfellow 8.3.1).
    e0, et, tau = 0.1, 0.001, 100
    out = S.linear_schedule(e0, et, tau)(COUNTS)
    a = np.minimum(C / tau, 1.0)
    np.testing.assert_allclose(out, (1 - a) * e0 + a * et, rtol=1e-5)


def test_cosine_and_warmup_textbook():
    out = S.cosine_decay_schedule(1.0, 100, alpha=0.1)(COUNTS)
    ref = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(C, 100) / 100))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)
    out = S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 110, end_value=0.1)(COUNTS)
    cos = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.clip(C - 10, 0, 100) / 100))
    ref = np.where(C < 10, C / 10, cos)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)
    # warmup_steps = 0 means no warm-up.
    out = S.warmup_cosine_decay_schedule(0.0, 1.0, 0, 100)(COUNTS)
    np.testing.assert_allclose(out, S.cosine_decay_schedule(1.0, 100)(COUNTS), atol=1e-7)
    np.testing.assert_allclose(S.warmup_constant_schedule(0.0, 2.0, 0)(COUNTS), 2.0)


# --------------------------------------------------------------------------------------------
# Counts: giant ints, dtypes, use inside an optimizer
# --------------------------------------------------------------------------------------------

DECAYING = [
    S.constant_schedule(0.1),
    S.step_decay_schedule(1.0, 10, 2.0),
    S.exponential_decay(1.0, 10, 0.9, transition_begin=100),
    S.exponential_decay(1.0, 10, 0.9, transition_begin=100, staircase=True, end_value=0.01),
    S.natural_exp_decay(1.0, 0.01),
    S.inverse_time_decay(1.0, 10, 0.5),
    S.robbins_monro_schedule(1.0, 1.0, 0.6),
    S.polynomial_schedule(1.0, 0.01, 2.0, 1000, 50),
    S.linear_schedule(1.0, 0.01, 1000, 50),
    S.cosine_decay_schedule(1.0, 1000, 0.1),
    S.warmup_constant_schedule(0.0, 1.0, 100),
    S.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000, 0.01),
    S.warmup_exponential_decay_schedule(0.0, 1.0, 100, 10, 0.9, 5),
    S.join_schedules([S.constant_schedule(1.0), S.linear_schedule(1.0, 0.1, 10)], [100]),
    S.piecewise_constant_schedule(1.0, {100: 0.1, 2_000_000_000: 0.5}),
]


def test_giant_int32_counts_are_finite_and_at_their_limits():
    counts = jnp.array([INT32_MAX, INT32_MAX - 1, 2**30], jnp.int32)
    for sched in DECAYING:
        out = jax.jit(sched)(counts)
        assert out.dtype == jnp.float32
        assert np.all(np.isfinite(out)) and np.all(np.asarray(out) >= 0)
    big = jnp.asarray(INT32_MAX, jnp.int32)
    assert float(S.linear_schedule(1.0, 0.01, 1000, 50)(big)) == pytest.approx(0.01)
    assert float(S.cosine_decay_schedule(1.0, 1000, 0.1)(big)) == pytest.approx(0.1)
    assert float(S.piecewise_constant_schedule(1.0, {100: 0.1, 2e9: 0.5})(big)) == pytest.approx(
        0.05
    )
    # count - transition_begin must not wrap around in int32 (float32(2**31 - 1) = 2**31).
    out = float(S.exponential_decay(1.0, 1e9, 0.5, transition_begin=10)(big))
    assert out == pytest.approx(0.5 ** (2**31 / 1e9), rel=1e-5)


def test_counts_of_any_shape_and_python_ints():
    s = S.piecewise_constant_schedule(1.0, boundaries=[2, 4], scales=[0.5, 0.5])
    np.testing.assert_allclose(s(3), 0.5)
    np.testing.assert_allclose(s(jnp.arange(6).reshape(2, 3)), [[1, 1, 0.5], [0.5, 0.25, 0.25]])
    assert S.constant_schedule(0.3)(jnp.arange(4)).shape == (4,)


def test_schedule_drives_learning_rate_and_sweeps_under_jit():
    """A schedule argument swept through an optimizer: one compile, lanes match the loop."""

    def run(rate):
        tx = gradlab.scale_by_learning_rate(S.exponential_decay(0.5, 1, rate))
        params = jnp.ones(2)
        state = tx.init(params)

        def step(carry, _):
            p, s = carry
            u, s = tx.update(p, s)  # gradient of 0.5|p|^2
            return (p + u, s), None

        (p, _), _ = jax.lax.scan(step, (params, state), None, length=20)
        return p

    rates = jnp.array([0.5, 0.9, 1.0])
    out = jax.jit(jax.vmap(run))(rates)
    for i, r in enumerate([0.5, 0.9, 1.0]):
        ref = np.prod([1 - 0.5 * r**k for k in range(20)])
        np.testing.assert_allclose(out[i], [ref, ref], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

BAD_VALUES = [
    (S.constant_schedule, dict(value=-1.0), "value"),
    (S.step_decay_schedule, dict(init_value=1.0, step_size=0, divisor=2.0), "step_size"),
    (S.step_decay_schedule, dict(init_value=1.0, step_size=5, divisor=0.0), "divisor"),
    (S.step_decay_schedule, dict(init_value=-1.0, step_size=5), "init_value"),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=0, decay_rate=0.5),
        "transition_steps",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=-3, decay_rate=0.5),
        "transition_steps",
    ),
    (S.exponential_decay, dict(init_value=1.0, transition_steps=10, decay_rate=0.0), "decay_rate"),
    (S.exponential_decay, dict(init_value=1.0, transition_steps=10, decay_rate=-0.5), "decay_rate"),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=float("nan")),
        "decay_rate",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.5, transition_begin=-1),
        "transition_begin",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.5, end_value=-1.0),
        "end_value",
    ),
    (S.natural_exp_decay, dict(init_value=1.0, decay_rate=-0.1), "decay_rate"),
    (S.natural_exp_decay, dict(init_value=1.0, decay_rate=0.1, decay_steps=0), "decay_steps"),
    (S.inverse_time_decay, dict(init_value=1.0, decay_steps=0, decay_rate=0.1), "decay_steps"),
    (S.inverse_time_decay, dict(init_value=1.0, decay_steps=10, decay_rate=-0.1), "decay_rate"),
    (S.robbins_monro_schedule, dict(a=-1.0), "a"),
    (S.robbins_monro_schedule, dict(a=1.0, b=0.0), "b"),
    (S.robbins_monro_schedule, dict(a=1.0, kappa=0.0), "kappa"),
    (
        S.polynomial_schedule,
        dict(init_value=1.0, end_value=0.0, power=0.0, transition_steps=10),
        "power",
    ),
    (
        S.polynomial_schedule,
        dict(init_value=1.0, end_value=0.0, power=1.0, transition_steps=0),
        "transition_steps",
    ),
    (
        S.linear_schedule,
        dict(init_value=1.0, end_value=0.0, transition_steps=0),
        "transition_steps",
    ),
    (S.linear_schedule, dict(init_value=1.0, end_value=-0.1, transition_steps=10), "end_value"),
    (
        S.linear_schedule,
        dict(init_value=1.0, end_value=0.0, transition_steps=10, transition_begin=-5),
        "transition_begin",
    ),
    (S.cosine_decay_schedule, dict(init_value=1.0, decay_steps=0), "decay_steps"),
    (S.cosine_decay_schedule, dict(init_value=1.0, decay_steps=10, alpha=1.5), "alpha"),
    (S.cosine_decay_schedule, dict(init_value=1.0, decay_steps=10, exponent=0.0), "exponent"),
    (
        S.warmup_constant_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=-1),
        "warmup_steps",
    ),
    (
        S.warmup_cosine_decay_schedule,
        dict(init_value=0.0, peak_value=-1.0, warmup_steps=10, decay_steps=100),
        "peak_value",
    ),
    (
        S.warmup_cosine_decay_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=0),
        "decay_steps",
    ),
    (
        S.warmup_exponential_decay_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=10, transition_steps=10, decay_rate=0.0),
        "decay_rate",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries_and_scales={10: -0.5}),
        "boundaries_and_scales",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries=[10, 20], scales=[0.5, -1.0]),
        "scales",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries=[-10], scales=[0.5]),
        "boundaries",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries=[10, 20], scales=[0.5]),
        "boundaries",
    ),
]


@pytest.mark.parametrize("factory,kwargs,arg", BAD_VALUES, ids=[b[2] for b in BAD_VALUES])
def test_concrete_invalid_value_raises_value_error_naming_argument(factory, kwargs, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        factory(**kwargs)


def test_warmup_cosine_names_user_arguments_not_a_derived_one():
    # optax quotes a derived "decay_steps=-5" here; gradlab names both user arguments.
    with pytest.raises(ValueError, match="decay_steps must be > warmup_steps") as info:
        S.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=5)
    assert "-5" not in str(info.value)
    with pytest.raises(ValueError, match="decay_steps must be > warmup_steps"):
        S.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=10)


def test_join_schedules_bad_inputs():
    one = S.constant_schedule(1.0)
    with pytest.raises(ValueError, match="boundaries"):
        S.join_schedules([one, one], [10, 20])
    with pytest.raises(ValueError, match="boundaries"):
        S.join_schedules([one, one, one], [20, 10])
    with pytest.raises(ValueError, match="boundaries"):
        S.join_schedules([one, one], [-1])
    with pytest.raises(ValueError, match="schedules"):
        S.join_schedules([], [])
    with pytest.raises(TypeError, match=r"schedules\[1\]"):
        S.join_schedules([one, 0.5], [10])


@pytest.mark.parametrize(
    "call",
    [
        lambda: S.constant_schedule("0.1"),
        lambda: S.constant_schedule(None),
        lambda: S.linear_schedule(1.0, 0.0, transition_steps=True),
        lambda: S.exponential_decay(1.0, 10, 0.5, staircase="yes"),
        lambda: S.natural_exp_decay(1.0, 0.1, staircase=1),
        lambda: S.cosine_decay_schedule(1.0, decay_steps=lambda c: 10),
        lambda: S.piecewise_constant_schedule(1.0, [(10, 0.5)]),
        lambda: S.piecewise_constant_schedule(1.0, boundaries=[10]),
        lambda: S.piecewise_constant_schedule(1.0, {10: 0.5}, boundaries=[10], scales=[0.5]),
        lambda: S.join_schedules([S.constant_schedule(1.0)] * 2, "10"),
    ],
)
def test_wrong_types_raise_type_error(call):
    with pytest.raises(TypeError):
        call()


def test_traced_invalid_arguments_poison_only_their_lane():
    cases = [
        (lambda v: S.exponential_decay(1.0, 10, v)(COUNTS), [0.5, 0.0, -1.0, 0.9]),
        (lambda v: S.exponential_decay(1.0, v, 0.9)(COUNTS), [10.0, 0.0, -2.0, 3.0]),
        (lambda v: S.linear_schedule(1.0, 0.0, v)(COUNTS), [10.0, 0.0, -1.0, 100.0]),
        (lambda v: S.cosine_decay_schedule(1.0, v)(COUNTS), [10.0, 0.0, -1.0, 100.0]),
        (
            lambda v: S.warmup_cosine_decay_schedule(0.0, v, 10, 100)(COUNTS),
            [1.0, -1.0, jnp.nan, 0.0],
        ),
        (lambda v: S.robbins_monro_schedule(1.0, v)(COUNTS), [1.0, 0.0, -1.0, 2.0]),
        (lambda v: S.step_decay_schedule(1.0, v)(COUNTS), [1.0, 0.0, -1.0, 2.0]),
    ]
    for fn, values in cases:
        out = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(values, jnp.float32)))
        assert np.all(np.isfinite(out[[0, 3]])), values
        assert np.all(np.isnan(out[[1, 2]])), values
        np.testing.assert_allclose(out[0], fn(values[0]), rtol=1e-6, atol=1e-7)
