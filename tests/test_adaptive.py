"""Adaptive per-parameter optimizers: trajectories vs optax, dtypes, bad inputs, structure errors.

The textbook variants optax lacks are checked against numpy formulas in
``test_adaptive_variants.py``.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import base
from gradlab.optimizers import adaptive as gl
from gradlab.transforms.adadelta import ScaleByAdaDeltaState, scale_by_adadelta
from gradlab.transforms.adagrad import ScaleByRssState, scale_by_rss
from gradlab.transforms.adam import ScaleByAdamState, scale_by_adam, scale_by_adamax
from gradlab.transforms.rms import ScaleByRmsState, ScaleByStddevState, scale_by_rms

HAS_WD = importlib.util.find_spec("gradlab.transforms.weight_decay") is not None
needs_wd = pytest.mark.skipif(not HAS_WD, reason="gradlab.transforms.weight_decay not written yet")

STEPS = 100


def make_params(complex_leaf: bool = False):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "w": jax.random.normal(k[0], (3, 4)),
        "nest": [jax.random.normal(k[1], (4,)), jnp.asarray(0.7)],
    }
    if complex_leaf:
        re, im = jax.random.normal(k[3], (2, 3))
        params["z"] = (re + 1j * im).astype(jnp.complex64)
    return params


def make_noise(params, steps=STEPS, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noise = []
    for k, p in zip(keys, leaves, strict=True):
        n = jax.random.normal(k, (steps, *jnp.shape(p)))
        if jnp.iscomplexobj(p):
            n = (n + 1j * jax.random.normal(jax.random.fold_in(k, 1), n.shape)).astype(p.dtype)
        noise.append(n)
    return treedef.unflatten(noise)


def run(opt, params, noise):
    """Scan ``steps`` updates on f(p) = |p|^2 / 4 + noise . p; return final params and updates."""

    def step(carry, n):
        p, s = carry
        g = jax.tree.map(lambda p_, n_: 0.5 * p_ + n_, p, n)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), u

    (p, _), us = jax.lax.scan(step, (params, opt.init(params)), noise)
    return p, us


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def sched(c):
    return 0.02 / (1.0 + 0.05 * c)


# (id, gradlab factory, optax factory, complex leaf?)
REFERENCE = [
    ("adagrad", lambda: gl.adagrad(0.1), lambda: optax.adagrad(0.1), True),
    (
        "adagrad_g0_0",
        lambda: gl.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-3),
        lambda: optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-3),
        False,
    ),
    ("rmsprop", lambda: gl.rmsprop(0.01), lambda: optax.rmsprop(0.01), True),
    (
        "rmsprop_eps_out_bc_init",
        lambda: gl.rmsprop(0.01, 0.95, 1e-4, 0.5, eps_in_sqrt=False, bias_correction=True),
        lambda: optax.rmsprop(0.01, 0.95, 1e-4, 0.5, eps_in_sqrt=False, bias_correction=True),
        False,
    ),
    (
        "rmsprop_centered",
        lambda: gl.rmsprop(0.01, centered=True),
        lambda: optax.rmsprop(0.01, centered=True),
        False,
    ),
    (
        "rmsprop_centered_eps_out_momentum_nesterov",
        lambda: gl.rmsprop(0.01, centered=True, eps_in_sqrt=False, momentum=0.9, nesterov=True),
        lambda: optax.rmsprop(0.01, centered=True, eps_in_sqrt=False, momentum=0.9, nesterov=True),
        False,
    ),
    (
        "rmsprop_momentum_schedule",
        lambda: gl.rmsprop(sched, momentum=0.5),
        lambda: optax.rmsprop(sched, momentum=0.5),
        False,
    ),
    ("adadelta", lambda: gl.adadelta(0.5), lambda: optax.adadelta(0.5), False),
    ("adadelta_zeiler", lambda: gl.adadelta(), lambda: optax.adadelta(1.0, rho=0.9), False),
    ("adam", lambda: gl.adam(0.01), lambda: optax.adam(0.01), True),
    (
        "adam_eps_root_schedule",
        lambda: gl.adam(sched, b1=0.5, b2=0.99, eps=1e-6, eps_root=1e-8),
        lambda: optax.adam(sched, b1=0.5, b2=0.99, eps=1e-6, eps_root=1e-8),
        False,
    ),
    ("adamax", lambda: gl.adamax(0.01), lambda: optax.adamax(0.01), True),
    ("nadam", lambda: gl.nadam(0.01), lambda: optax.nadam(0.01), True),
    ("adam_nesterov", lambda: gl.adam(0.01, nesterov=True), lambda: optax.nadam(0.01), False),
]
REFERENCE_WD = [
    (
        "adamw",
        lambda: gl.adamw(0.01, weight_decay=0.1),
        lambda: optax.adamw(0.01, weight_decay=0.1),
        False,
    ),
    (
        "adamw_mask",
        lambda: gl.adamw(0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(jnp.ndim, p)),
        lambda: optax.adamw(0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(jnp.ndim, p)),
        False,
    ),
    (
        "nadamw",
        lambda: gl.nadamw(0.01, weight_decay=0.05),
        lambda: optax.nadamw(0.01, weight_decay=0.05),
        False,
    ),
    (
        "adadelta_weight_decay",
        lambda: gl.adadelta(0.5, weight_decay=0.1),
        lambda: optax.adadelta(0.5, weight_decay=0.1),
        False,
    ),
]


def _reference_case(make_gl, make_optax, cplx):
    params = make_params(cplx)
    noise = make_noise(params)
    both = jax.jit(lambda p, n: (run(make_gl(), p, n), run(make_optax(), p, n)))
    (p_gl, u_gl), (p_ox, u_ox) = both(params, noise)
    assert_trees_close(u_gl, u_ox)
    assert_trees_close(p_gl, p_ox)
    # The trajectory actually moved (a vacuous comparison of zeros would pass too).
    leaves = zip(jax.tree.leaves(p_gl), jax.tree.leaves(params), strict=True)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
    assert moved > 1e-2


@pytest.mark.parametrize("case", REFERENCE, ids=[c[0] for c in REFERENCE])
def test_trajectory_matches_optax(case):
    _reference_case(*case[1:])


@needs_wd
@pytest.mark.parametrize("case", REFERENCE_WD, ids=[c[0] for c in REFERENCE_WD])
def test_trajectory_matches_optax_weight_decay(case):
    _reference_case(*case[1:])


# ---------------------------------------------------------------------------------------------
# vmap over every numeric hyperparameter == a Python loop
# ---------------------------------------------------------------------------------------------

# Each optimizer with three lanes in which *every* numeric hyperparameter differs.
SWEEPS = {
    "adagrad": (
        gl.adagrad,
        {},
        dict(learning_rate=[0.1, 0.05, 0.2], initial_accumulator_value=[0.1, 0.0, 1.0],
             eps=[1e-7, 1e-3, 1e-5]),
    ),
    "rmsprop": (
        gl.rmsprop,
        {},
        dict(learning_rate=[0.01, 0.03, 0.001], decay=[0.9, 0.5, 0.99], eps=[1e-8, 1e-3, 1e-6],
             initial_scale=[0.0, 0.5, 2.0], momentum=[0.0, 0.9, 0.5]),
    ),
    "rmsprop_centered": (
        gl.rmsprop,
        dict(centered=True, eps_in_sqrt=False),
        dict(learning_rate=[0.01, 0.03, 0.001], decay=[0.9, 0.5, 0.99], eps=[1e-8, 1e-3, 1e-6],
             initial_scale=[0.0, 0.5, 2.0]),
    ),
    "adadelta": (
        gl.adadelta,
        {},
        dict(learning_rate=[1.0, 0.5, 2.0], rho=[0.9, 0.5, 0.99], eps=[1e-6, 1e-3, 1e-4]),
    ),
    "adam": (
        gl.adam,
        {},
        dict(learning_rate=[0.01, 0.1, 0.001], b1=[0.9, 0.0, 0.5], b2=[0.999, 0.9, 0.5],
             eps=[1e-8, 1e-3, 1e-5], eps_root=[0.0, 1e-8, 1e-3]),
    ),
    "nadam": (
        gl.nadam,
        dict(bias_correction="first", eps_in_sqrt=True),
        dict(learning_rate=[0.01, 0.1, 0.001], b1=[0.9, 0.0, 0.5], b2=[0.999, 0.9, 0.5],
             eps=[1e-8, 1e-3, 1e-5], eps_root=[0.0, 1e-8, 1e-3]),
    ),
    "adamax": (
        gl.adamax,
        {},
        dict(learning_rate=[0.01, 0.1, 0.001], b1=[0.9, 0.0, 0.5], b2=[0.999, 0.9, 0.5],
             eps=[1e-8, 1e-3, 1e-5]),
    ),
}  # fmt: skip
if HAS_WD:
    SWEEPS["adamw"] = (
        gl.adamw,
        {},
        dict(learning_rate=[0.01, 0.1, 0.001], b1=[0.9, 0.0, 0.5], b2=[0.999, 0.9, 0.5],
             eps=[1e-8, 1e-3, 1e-5], eps_root=[0.0, 1e-8, 1e-3], weight_decay=[1e-4, 0.0, 0.5]),
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_vmap_over_every_hyperparameter_equals_loop(name):
    factory, static, lanes = SWEEPS[name]
    params = make_params()
    noise = make_noise(params, steps=10)
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in lanes.items()}

    def one(h):
        return run(factory(**static, **h), params, noise)[0]

    batched = jax.jit(jax.vmap(one))(hp)
    single = jax.jit(one)
    for i in range(3):
        lane = jax.tree.map(lambda x, i=i: x[i], batched)
        looped = single({k: v[i] for k, v in hp.items()})
        assert_trees_close(lane, looped, rtol=1e-6, atol=1e-7)


def test_traced_invalid_hyperparameter_poisons_only_its_lane():
    params = make_params()
    noise = make_noise(params, steps=5)

    def one(b1):
        return run(gl.adam(0.01, b1=b1), params, noise)[0]

    out, good = jax.jit(lambda b: (jax.vmap(one)(b), run(gl.adam(0.01, b1=0.9), params, noise)[0]))(
        jnp.array([0.9, 1.0, -0.5])
    )
    # The valid lane equals the run with a concrete (Python float) b1.
    assert_trees_close(jax.tree.map(lambda x: x[0], out), good)
    for lane in (1, 2):
        assert all(bool(jnp.all(jnp.isnan(x[lane]))) for x in jax.tree.leaves(out))


@pytest.mark.parametrize(
    "make",
    [
        lambda v: gl.adam(0.1, b2=v),
        lambda v: gl.adam(0.1, eps=v),
        lambda v: gl.adam(0.1, eps_root=v),
        lambda v: gl.adamax(0.1, b2=v),
        lambda v: gl.adamax(0.1, eps=v),
        lambda v: gl.rmsprop(0.1, eps=v, eps_in_sqrt=False),
        lambda v: gl.adadelta(0.1, eps=v),
    ],
    ids=["adam-b2", "adam-eps", "adam-eps_root", "adamax-b2", "adamax-eps", "rmsprop-eps",
         "adadelta-eps"],
)  # fmt: skip
def test_an_invalid_denominator_setting_poisons_its_lane(make):
    # A poisoned (NaN) setting inside a denominator must not be floored to 1: that lane became
    # an un-normalised finite SGD step, which a sweep could even rank best.
    params = make_params()
    noise = make_noise(params, steps=3)
    out = jax.jit(jax.vmap(lambda v: run(make(v), params, noise)[0]))(jnp.array([0.5, -0.1]))
    assert all(bool(jnp.all(jnp.isfinite(x[0]))) for x in jax.tree.leaves(out))
    assert all(bool(jnp.all(jnp.isnan(x[1]))) for x in jax.tree.leaves(out))


def test_a_nan_gradient_poisons_the_second_moment_and_the_update_as_in_optax():
    p = jnp.zeros(2)
    for tx, reference in [
        (gl.rmsprop(0.1, eps_in_sqrt=False), optax.rmsprop(0.1, eps_in_sqrt=False)),
        (gl.adam(0.1), optax.adam(0.1)),
    ]:
        state, ref_state = tx.init(p), reference.init(p)
        for g in (jnp.array([jnp.nan, 1.0]), jnp.array([5.0, 1.0])):
            u, state = tx.update(g, state, p)
            ref, ref_state = reference.update(g, ref_state, p)
        np.testing.assert_array_equal(np.isnan(u), [True, False])
        np.testing.assert_allclose(u, ref, rtol=2e-5)  # adam: gradlab nearer float64


def test_schedules_for_decay_rates():
    params = make_params()
    noise = make_noise(params, steps=10)
    const, scheduled = jax.jit(
        lambda: (run(gl.adam(0.01, b1=0.9, b2=0.99), params, noise)[0],
                 run(gl.adam(0.01, b1=lambda c: 0.9, b2=lambda c: 0.99), params, noise)[0])
    )()  # fmt: skip
    assert_trees_close(const, scheduled)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

BAD = [
    (gl.adam, dict(learning_rate=-1.0), ValueError),
    (gl.adam, dict(learning_rate=float("nan")), ValueError),
    (gl.adam, dict(learning_rate="0.1"), TypeError),
    (gl.adam, dict(learning_rate=None), TypeError),
    (gl.adam, dict(learning_rate=0.1, b1=1.0), ValueError),
    (gl.adam, dict(learning_rate=0.1, b1=-0.1), ValueError),
    (gl.adam, dict(learning_rate=0.1, b1=1.5), ValueError),
    (gl.adam, dict(learning_rate=0.1, b2=1.0), ValueError),
    (gl.adam, dict(learning_rate=0.1, b2=float("nan")), ValueError),
    (gl.adam, dict(learning_rate=0.1, b1=np.array([0.9, 1.0])), ValueError),
    (gl.adam, dict(learning_rate=0.1, eps=-1e-8), ValueError),
    (gl.adam, dict(learning_rate=0.1, eps_root=-1.0), ValueError),
    (gl.adam, dict(learning_rate=0.1, b1="0.9"), TypeError),
    (gl.adam, dict(learning_rate=0.1, b1=True), TypeError),
    (gl.adam, dict(learning_rate=0.1, bias_correction="sometimes"), ValueError),
    (gl.adam, dict(learning_rate=0.1, bias_correction=True), TypeError),
    (gl.adam, dict(learning_rate=0.1, eps_in_sqrt="yes"), TypeError),
    (gl.adam, dict(learning_rate=0.1, nesterov=1), TypeError),
    (gl.adam, dict(learning_rate=0.1, state_dtype=jnp.int32), TypeError),
    (gl.adam, dict(learning_rate=0.1, mu_dtype="not a dtype"), TypeError),
    (gl.nadam, dict(learning_rate=0.1, b2=1.0), ValueError),
    (gl.adamax, dict(learning_rate=0.1, b1=1.0), ValueError),
    (gl.adamax, dict(learning_rate=0.1, b2=-0.5), ValueError),
    (gl.adamax, dict(learning_rate=0.1, eps=-1.0), ValueError),
    (gl.adamax, dict(learning_rate=-0.1), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, decay=1.0), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, decay=-0.1), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, eps=-1e-8), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, initial_scale=-1.0), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, momentum=1.0), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, momentum=-0.5), ValueError),
    (gl.rmsprop, dict(learning_rate=float("nan")), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, centered="no"), TypeError),
    (gl.rmsprop, dict(learning_rate=0.1, nesterov=True), ValueError),
    (gl.adam, dict(learning_rate=float("inf")), ValueError),
    (gl.adam, dict(learning_rate=0.1, eps=float("inf")), ValueError),
    (gl.rmsprop, dict(learning_rate=0.1, centered=True, init_with_first_gradient=True), ValueError),
    (
        gl.rmsprop,
        dict(learning_rate=0.1, bias_correction=True, init_with_first_gradient=True),
        ValueError,
    ),
    (gl.adagrad, dict(learning_rate=-0.1), ValueError),
    (gl.adagrad, dict(learning_rate=0.1, initial_accumulator_value=-0.1), ValueError),
    (gl.adagrad, dict(learning_rate=0.1, eps=-1.0), ValueError),
    (gl.adagrad, dict(learning_rate=0.1, eps=float("nan")), ValueError),
    (gl.adagrad, dict(learning_rate=0.1, eps_in_sqrt=None), TypeError),
    (gl.adadelta, dict(rho=1.0), ValueError),
    (gl.adadelta, dict(rho=-0.5), ValueError),
    (gl.adadelta, dict(eps=-1e-6), ValueError),
    (gl.adadelta, dict(learning_rate=-1.0), ValueError),
    (gl.adadelta, dict(learning_rate="1"), TypeError),
]


@pytest.mark.parametrize(
    "factory,kwargs,exc", BAD, ids=[f"{f.__name__}-{'-'.join(k)}" for f, k, _ in BAD]
)
def test_bad_hyperparameters_raise(factory, kwargs, exc):
    with pytest.raises(exc):
        factory(**kwargs)


@needs_wd
@pytest.mark.parametrize("wd", [-1.0, float("nan")])
def test_adamw_bad_weight_decay(wd):
    with pytest.raises(ValueError):
        gl.adamw(0.1, weight_decay=wd)


def test_int_hyperparameters_are_floats():
    params = make_params()
    noise = make_noise(params, steps=70)
    a, b = jax.jit(
        lambda: (run(gl.adam(1, b1=0, b2=0), params, noise)[0],
                 run(gl.adam(1.0, b1=0.0, b2=0.0), params, noise)[0])
    )()  # fmt: skip
    assert_trees_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Dtypes and degenerate gradients
# ---------------------------------------------------------------------------------------------

ALL = {
    "adagrad": lambda: gl.adagrad(0.1),
    "adagrad_eps_out": lambda: gl.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False),
    "rmsprop": lambda: gl.rmsprop(0.1),
    "rmsprop_centered_eps_out": lambda: gl.rmsprop(
        0.1, centered=True, eps_in_sqrt=False, momentum=0.9
    ),
    "rmsprop_first_gradient": lambda: gl.rmsprop(0.1, init_with_first_gradient=True),
    "adadelta": lambda: gl.adadelta(),
    "adam": lambda: gl.adam(0.1),
    "adam_simple": lambda: gl.adam(0.1, bias_correction="none", eps_in_sqrt=True),
    "adamax": lambda: gl.adamax(0.1),
    "nadam": lambda: gl.nadam(0.1),
}
if HAS_WD:
    ALL["adamw"] = lambda: gl.adamw(0.1)


def _state_float_dtypes(state):
    return {
        x.dtype
        for x in jax.tree.leaves(state)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0
    }


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_gradients_never_nan_and_dtypes_kept(name):
    # One tree mixing float32, bfloat16 and float16 leaves: every leaf keeps its dtype.
    dtypes = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
    params = {k: {"a": jnp.zeros((3,), d), "b": jnp.zeros((2, 2), d)} for k, d in dtypes.items()}
    opt = ALL[name]()

    @jax.jit
    def three(params):
        state = opt.init(params)
        us = []
        for _ in range(3):
            u, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
            params = optax.apply_updates(params, u)
            us.append(u)
        return params, state, us

    p, s, us = three(params)
    for key, dtype in dtypes.items():
        for u in us:
            for leaf in jax.tree.leaves(u[key]):
                assert leaf.dtype == dtype
                assert bool(jnp.all(leaf == 0)), (name, key)
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(p[key]))
    assert _state_float_dtypes(s) == {jnp.dtype(jnp.float32)}, name


def test_eps_zero_with_zero_gradients_gives_zero_step():
    """Catalogue B6: eps = 0 is allowed; a 0/0 denominator gives a zero step, never NaN."""
    opts = [
        gl.adam(0.1, eps=0.0),
        gl.adam(0.1, eps=0.0, eps_in_sqrt=True),
        gl.adamax(0.1, eps=0.0),
        gl.rmsprop(0.1, eps=0.0),
        gl.rmsprop(0.1, eps=0.0, eps_in_sqrt=False, centered=True),
        gl.adagrad(0.1, 0.0, 0.0),
        gl.adagrad(0.1, 0.0, 0.0, eps_in_sqrt=False),
    ]
    params = {"w": jnp.zeros((3,))}
    outs = jax.jit(lambda: [o.update(params, o.init(params), params)[0]["w"] for o in opts])()
    for u in outs:
        assert bool(jnp.all(u == 0))


def test_bf16_params_f32_state_bf16_updates_track_f32_run():
    params32 = make_params()
    noise = make_noise(params32, steps=20)
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32)
    noise16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), noise)
    opt = gl.adam(0.01)
    state = opt.init(params16)
    assert _state_float_dtypes(state) == {jnp.dtype(jnp.float32)}
    (p16, u16), (p32, _) = jax.jit(
        lambda: (run(opt, params16, noise16), run(opt, params32, noise))
    )()
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p16, u16)))
    assert_trees_close(jax.tree.map(lambda x: x.astype(jnp.float32), p16), p32, 0.05, 0.05)


def test_state_dtype_and_mu_dtype():
    params = make_params()
    noise = make_noise(params, steps=20)
    opt = gl.adam(0.01, state_dtype=jnp.bfloat16)
    s = opt.init(params)
    assert _state_float_dtypes(s) == {jnp.dtype(jnp.bfloat16)}
    (p, u), (ref, _) = jax.jit(
        lambda: (run(opt, params, noise), run(gl.adam(0.01), params, noise))
    )()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u))
    assert_trees_close(p, ref, 0.02, 0.02)
    # optax #328: 1 - b2**t must not round to 0 in a low-precision state (0.9995 -> 1 in bf16).
    for b2 in (0.999, 0.9995):
        tx = scale_by_adam(b2=b2, state_dtype=jnp.bfloat16)
        g = {"w": jnp.full((3,), 1e-3, jnp.bfloat16)}
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(np.asarray(u["w"], np.float32), 1.0, rtol=1e-2)
    s = gl.adam(0.01, mu_dtype=jnp.bfloat16).init(params)
    assert {x.dtype for x in jax.tree.leaves(s[0].mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(s[0].nu)} == {jnp.dtype(jnp.float32)}


def test_complex_second_moment_is_real():
    params = {"z": jnp.ones((2,), jnp.complex64)}
    opts = (gl.adam(0.1), gl.rmsprop(0.1), gl.adagrad(0.1), gl.adadelta())
    g = {"z": jnp.array([1 + 1j, 0j], jnp.complex64)}
    outs = jax.jit(lambda g: [o.update(g, o.init(params), params) for o in opts])(g)
    for u, s in outs:
        assert u["z"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(u["z"])))
        assert any(x.dtype == jnp.float32 and x.shape == (2,) for x in jax.tree.leaves(s))


def test_count_saturates_at_int32_max():
    params = make_params()
    opt = scale_by_adam()
    s = opt.init(params)._replace(count=jnp.asarray(jnp.iinfo(jnp.int32).max, jnp.int32))
    u, s2 = jax.jit(opt.update)(params, s)
    assert int(s2.count) == jnp.iinfo(jnp.int32).max
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_none_leaves_are_kept():
    params = {"a": jnp.ones(3), "frozen": None}
    for opt in (gl.adam(0.1), gl.rmsprop(0.1, centered=True), gl.adagrad(0.1), gl.adadelta()):
        s = opt.init(params)
        u, _ = opt.update({"a": jnp.ones(3), "frozen": None}, s, params)
        assert u["frozen"] is None and u["a"].shape == (3,)


# ---------------------------------------------------------------------------------------------
# Structure and state errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "rmsprop_centered_eps_out", "adadelta",
                                  "adam", "adamax", "nadam"])  # fmt: skip
def test_tree_mismatch_names_the_path(name):
    opt = ALL[name]()
    params = {"w": jnp.ones((3,)), "b": jnp.ones((2,))}
    state = opt.init(params)
    with pytest.raises(base.TreeMismatchError) as info:
        opt.update({"w": jnp.ones((3, 1)), "b": jnp.ones((2,))}, state, params)
    assert info.value.path == "['w']"
    with pytest.raises(base.TreeMismatchError) as info:
        opt.update({"w": jnp.ones((3,))}, state, params)
    assert info.value.path == "['b']"
    with pytest.raises(base.TreeMismatchError):
        jax.jit(opt.update)({"w": jnp.ones((3, 1)), "b": jnp.ones((2,))}, state, params)


def test_integer_gradient_leaf_is_type_error():
    params = {"w": jnp.ones((3,)), "n": jnp.ones((2,))}
    opt = gl.adam(0.1)
    with pytest.raises(TypeError, match=r"\['n'\]"):
        opt.update({"w": jnp.ones((3,)), "n": jnp.ones((2,), jnp.int32)}, opt.init(params))


@pytest.mark.parametrize(
    "atom,other_state",
    [
        (scale_by_adam(), ScaleByRmsState),
        (scale_by_adamax(), ScaleByRssState),
        (scale_by_rms(), ScaleByAdamState),
        (scale_by_rms(centered=True), ScaleByRmsState),
        (scale_by_rss(), ScaleByAdaDeltaState),
        (scale_by_adadelta(), ScaleByStddevState),
    ],
)
def test_wrong_state_type_raises(atom, other_state):
    params = {"w": jnp.ones(3)}
    fake = other_state(*([jnp.zeros([], jnp.int32)] + [params] * (len(other_state._fields) - 1)))
    with pytest.raises(base.StateMismatchError):
        atom.update(params, fake)


def test_wrong_state_for_named_optimizer_and_swapped_arguments():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    adam, rms = gl.adam(0.1), gl.rmsprop(0.1)
    with pytest.raises(base.StateMismatchError):
        adam.update(params, rms.init(params), params)
    atom = scale_by_adam()
    with pytest.raises(base.StateMismatchError):
        atom.update(params, params, atom.init(params))


# ---------------------------------------------------------------------------------------------
# Differentiating through the update at zero gradient (meta-learning, optax #882)
# ---------------------------------------------------------------------------------------------

META = {
    "adam": lambda: gl.adam(0.1, eps_root=1e-8),
    "nadam": lambda: gl.nadam(0.1, eps_root=1e-8),
    "adam_eps_in_sqrt": lambda: gl.adam(0.1, eps_in_sqrt=True, bias_correction="none"),
    "rmsprop": lambda: gl.rmsprop(0.1),
    "rmsprop_centered": lambda: gl.rmsprop(0.1, centered=True),
    "adagrad": lambda: gl.adagrad(0.1, initial_accumulator_value=0.0),
    "adadelta": lambda: gl.adadelta(),
    "adamax": lambda: gl.adamax(0.1),
}


def test_derivative_through_update_at_zero_gradient():
    params = {"w": jnp.ones((3,))}
    zeros = {"w": jnp.zeros((3,))}
    opts = {name: make() for name, make in META.items()}
    opts["adam_eps_root_0"] = gl.adam(0.1)

    def derivative(opt):
        state = opt.init(params)
        return jax.grad(lambda g: jnp.sum(opt.update(g, state, params)[0]["w"]))(zeros)["w"]

    ds = jax.jit(lambda: {name: derivative(opt) for name, opt in opts.items()})()
    for name in META:
        assert bool(jnp.all(jnp.isfinite(ds[name]))), name
    # Pinned behaviour: with eps_root = 0 the derivative of sqrt at 0 makes Adam's NaN.
    assert bool(jnp.all(jnp.isnan(ds["adam_eps_root_0"])))


@pytest.mark.parametrize("b2", [0.999, 0.99999])
def test_adam_first_step_is_the_sign_for_python_and_traced_betas(b2):
    # With eps = 0, m1 = (1-b1) g and v1 = (1-b2) g^2, so the debiased first step is -lr sign(g).
    # The correction 1 - b2 is computed from the same complement as the moment: exact for a
    # Python float (double-precision complement) and for a traced float32 b2 (as in a sweep).
    g = jnp.asarray([1.0, -3.0, 1e-3])

    def first_step(b2_value):
        tx = gl.adam(1.0, b2=b2_value, eps=0.0)
        return tx.update(g, tx.init(g))[0]

    expected = -np.sign(np.asarray(g))
    np.testing.assert_allclose(first_step(b2), expected, rtol=3e-7)
    traced = jax.jit(first_step)(jnp.asarray(b2, jnp.float32))
    np.testing.assert_allclose(traced, expected, rtol=3e-7)
