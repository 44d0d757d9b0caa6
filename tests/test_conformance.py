"""Conformance of every named gradlab optimizer (tests/registry.py) to the library contracts.

For each registry entry:

* **jit, no recompilation**: a jitted step compiles once; the second call (fed the first call's
  outputs) triggers no XLA compilation (JAX's ``log_compiles`` records are captured), so the
  state keeps its structure, dtypes and weak types;
* **dtypes**: float32 and bfloat16 params/grads give updates in the same dtype, with every
  floating accumulator in float32;
* **vmap over every numeric hyperparameter**: one jitted ``jax.vmap`` in which every numeric
  hyperparameter is traced, one lane per (argument, swept value), equals a Python loop of
  constructions from concrete numbers (3 updates on a quadratic, rtol 1e-5);
* **convergence**: a separable quadratic in 300 steps (max |x - x*| < 1e-2) and the 2-D
  Rosenbrock function from (-1.2, 1) (max |x - (1, 1)| < the entry's ``rosenbrock_tol``,
  0.05 unless stated in the registry), each one ``lax.scan``;
* **composition**: inside ``optax.chain`` after ``optax.clip_by_global_norm`` (equal to clipping
  by hand), and inside Flax ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from registry import OPTIMIZER_MODULES, REGISTRY, numeric_arguments

IDS = [e.name for e in REGISTRY]

# A separable quadratic on a two-leaf tree: f(x) = sum_i d_i (x_i - c_i)^2 / 2.
CURV = {"a": jnp.array([1.0, 2.0, 5.0]), "b": jnp.array([0.5, 3.0])}
TARGET = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([3.0, -1.0])}
QUAD_TOL = 1e-2
QUAD_STEPS = 300


def quadratic(params):
    return sum(
        0.5 * jnp.sum(CURV[k] * (params[k].astype(jnp.float32) - TARGET[k]) ** 2) for k in params
    )


def rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def _build(entry, **overrides):
    return entry.factory(**{**entry.kwargs, **overrides})


def _step(tx, loss, needs_value):
    """One optimizer step on ``loss`` (value, grad, update, apply)."""

    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        extra = dict(value=value) if needs_value else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state, updates

    return step


def _run(tx, loss, params, steps, needs_value):
    step = _step(tx, loss, needs_value)

    def body(carry, _):
        p, s = carry
        p, s, _ = step(p, s)
        return (p, s), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


def _zeros(dtype=jnp.float32):
    return jax.tree.map(lambda t: jnp.zeros_like(t, dtype), TARGET)


def _float_state_dtypes(state):
    return {
        jnp.dtype(x.dtype)
        for x in jax.tree.leaves(state)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
    }


class _CompileLog(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Finished XLA compilation") or msg.startswith("Compiling"):
            self.messages.append(msg)


@contextmanager
def _compilations():
    handler = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield handler.messages
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------------------------
# The registry itself
# --------------------------------------------------------------------------------------------


def test_registry_covers_every_named_optimizer_and_numeric_argument():
    factories = {e.factory for e in REGISTRY}
    for module in OPTIMIZER_MODULES:
        for name in module.__all__:
            assert getattr(module, name) in factories, f"{module.__name__}.{name} not in registry"
    swept: dict = {}
    for e in REGISTRY:
        numeric = numeric_arguments(e.factory)
        assert set(e.hyperparameters) <= numeric, (e.name, set(e.hyperparameters) - numeric)
        swept.setdefault(e.factory, set()).update(e.hyperparameters)
    for factory, names in swept.items():
        missing = numeric_arguments(factory) - names
        assert not missing, f"{factory.__name__}: numeric arguments never vmapped: {missing}"
    assert len(set(IDS)) == len(IDS)


# --------------------------------------------------------------------------------------------
# jit, recompilation, dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_jit_no_recompilation_and_float32(entry):
    tx = _build(entry)
    params = _zeros()
    state0 = tx.init(params)
    step = jax.jit(_step(tx, quadratic, entry.needs_value))
    params1, state1, updates = step(params, state0)
    with _compilations() as compiled:
        params2, state2, _ = step(params1, state1)
        jax.block_until_ready(params2)
    assert not compiled, f"{entry.name} recompiles on the second update: {compiled}"
    # The state keeps its structure and dtypes across updates.
    assert jax.tree.structure(state0) == jax.tree.structure(state2)
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state2), strict=True):
        assert jnp.asarray(a).dtype == jnp.asarray(b).dtype and jnp.shape(a) == jnp.shape(b)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    assert _float_state_dtypes(state2) <= {jnp.dtype(jnp.float32)}
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params2))
    assert quadratic(params2) < quadratic(params)


def test_recompilation_detector_catches_state_drift():
    """Negative control: a state that changes weak type between calls must be caught."""

    def init(params):
        return jnp.asarray(0.0)  # weak-typed float32

    def update(updates, state, params=None):
        return updates, (state + 1).astype(jnp.float32)  # strong float32: a new signature

    tx = optax.GradientTransformation(init, update)
    step = jax.jit(_step(tx, quadratic, False))
    params, state, _ = step(_zeros(), tx.init(_zeros()))
    with _compilations() as compiled:
        step(params, state)
    assert compiled


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_bfloat16_params_and_grads(entry):
    tx = _build(entry)
    params = jax.tree.map(lambda t: (0.5 * t).astype(jnp.bfloat16), TARGET)

    @jax.jit
    def two_steps(params):
        state = tx.init(params)
        outs = []
        for grads in (jax.grad(quadratic)(params), _zeros(jnp.bfloat16)):
            assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
            extra = dict(value=quadratic(params)) if entry.needs_value else {}
            updates, state = tx.update(grads, state, params, **extra)
            params = optax.apply_updates(params, updates)
            outs.append(updates)
        return outs, state, params

    outs, state, new_params = two_steps(params)
    for updates in outs:
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates)), entry.name
        assert all(np.all(np.isfinite(np.asarray(u, np.float32))) for u in jax.tree.leaves(updates))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new_params))
    assert _float_state_dtypes(state) <= {jnp.dtype(jnp.float32)}, _float_state_dtypes(state)


# --------------------------------------------------------------------------------------------
# vmap over hyperparameters
# --------------------------------------------------------------------------------------------


def _three_steps(entry, **overrides):
    tx = _build(entry, **overrides)
    params = _zeros()
    state = tx.init(params)
    step = _step(tx, quadratic, entry.needs_value)
    for _ in range(3):
        params, state, _ = step(params, state)
    return params


def _lanes(entry):
    """One lane per (hyperparameter, swept value): that argument set, the others at default."""
    defaults = {}
    for name, values in entry.hyperparameters.items():
        defaults[name] = entry.kwargs.get(name, values[-1])
    lanes = []
    for name, values in entry.hyperparameters.items():
        for v in values:
            lane = {**defaults, name: v}
            if lane not in lanes:
                lanes.append(lane)
    return lanes


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_vmap_over_every_numeric_hyperparameter_equals_loop(entry):
    # Every numeric hyperparameter is traced in every lane (one compiled vmap); each lane must
    # equal the run built from concrete Python numbers.
    lanes = _lanes(entry)
    stacked = {k: jnp.asarray([lane[k] for lane in lanes], jnp.float32) for k in lanes[0]}
    batched = jax.jit(jax.vmap(lambda hp: _three_steps(entry, **hp)))(stacked)
    for i, lane in enumerate(lanes):
        expected = _three_steps(entry, **lane)
        for k in expected:
            np.testing.assert_allclose(
                batched[k][i], expected[k], rtol=1e-5, atol=1e-6, err_msg=f"{entry.name} {lane}"
            )
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(batched))


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_converges_on_quadratic(entry):
    tx = _build(entry, **(entry.quadratic or {}))
    final = jax.jit(lambda p: _run(tx, quadratic, p, QUAD_STEPS, entry.needs_value))(_zeros())
    err = max(float(jnp.max(jnp.abs(final[k] - TARGET[k]))) for k in final)
    assert err < QUAD_TOL, f"{entry.name}: max |x - x*| = {err:.3g} after {QUAD_STEPS} steps"


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_converges_on_rosenbrock(entry):
    tx = _build(entry, **(entry.rosenbrock or {}))
    steps = entry.rosenbrock_steps
    final = jax.jit(lambda p: _run(tx, rosenbrock, p, steps, entry.needs_value))(
        jnp.array([-1.2, 1.0])
    )
    err = float(jnp.max(jnp.abs(final - 1.0)))
    assert err < entry.rosenbrock_tol, f"{entry.name}: max |x - 1| = {err:.3g} after {steps}"


# --------------------------------------------------------------------------------------------
# Composition: optax.chain and flax nnx.Optimizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_inside_optax_chain_after_clipping(entry):
    max_norm = 0.5
    chained = optax.chain(optax.clip_by_global_norm(max_norm), _build(entry))
    alone = _build(entry)
    params_c = params_a = _zeros()
    state_c, state_a = chained.init(params_c), alone.init(params_a)
    for _ in range(2):
        value, grads = jax.value_and_grad(quadratic)(params_c)
        extra = dict(value=value) if entry.needs_value else {}
        u_c, state_c = chained.update(grads, state_c, params_c, **extra)
        factor = jnp.minimum(1.0, max_norm / optax.tree.norm(grads))
        clipped = jax.tree.map(lambda g, f=factor: g * f, grads)
        u_a, state_a = alone.update(clipped, state_a, params_a, **extra)
        for k in u_c:
            np.testing.assert_allclose(u_c[k], u_a[k], rtol=1e-5, atol=1e-7)
        params_c = optax.apply_updates(params_c, u_c)
        params_a = optax.apply_updates(params_a, u_a)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_inside_flax_nnx_optimizer(entry):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    y = jnp.array([[1.0, 0.0], [0.0, 1.0]])

    def loss_fn(m):
        return jnp.mean((m(x) - y) ** 2)

    before = nnx.state(model, nnx.Param)
    before = jax.tree.map(jnp.array, before)
    optimizer = nnx.Optimizer(model, _build(entry), wrt=nnx.Param)
    value, grads = nnx.value_and_grad(loss_fn)(model)
    extra = dict(value=value) if entry.needs_value else {}
    optimizer.update(model, grads, **extra)
    after = nnx.state(model, nnx.Param)
    # The same update computed by hand on the raw parameter pytree.
    tx = _build(entry)
    raw_params = jax.tree.map(lambda v: v, before)
    raw_grads = nnx.state(grads, nnx.Param) if not isinstance(grads, nnx.State) else grads
    updates, _ = tx.update(raw_grads, tx.init(raw_params), raw_params, **extra)
    expected = optax.apply_updates(raw_params, updates)
    for got, want in zip(jax.tree.leaves(after), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    ), f"{entry.name}: nnx.Optimizer.update did not change the parameters"
