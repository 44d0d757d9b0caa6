"""Interoperability of gradlab's first-order transformations with JAX, optax and Flax idioms.

Each test pins a defect found by probing gradlab inside the usual training-loop machinery
(``jax.jit`` with donation, ``optax.inject_hyperparams``, optax wrappers and tree utilities,
Flax ``nnx.Optimizer`` / linen ``TrainState``), with optax as the numerical oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradlab as gl

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5, -0.5])}
GRADS = {"w": jnp.array([0.1, -0.2, 0.3]), "b": jnp.array([1.0, -1.0])}


def _fresh(tree):
    return jax.tree.map(jnp.array, tree)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# jax.jit with donated state (the usual `donate_argnums` training step)
# --------------------------------------------------------------------------------------------

DONATED = {
    "adadelta": lambda: gl.adadelta(),
    "scale_by_adadelta": lambda: gl.scale_by_adadelta(),
    "apply_if_finite": lambda: gl.apply_if_finite(gl.adam(0.1), 2),
    "params_ema": lambda: optax.chain(gl.sgd(0.1), gl.params_ema(0.9)),
    "adam": lambda: gl.adam(0.1),
}


@pytest.mark.parametrize("name", sorted(DONATED))
def test_init_state_can_be_donated_with_the_params(name):
    # init gave two state fields one buffer (adadelta's e_g/e_x, apply_if_finite's counters) or
    # stored the params' own buffers (params_ema): the first donated step raised "donate the
    # same buffer twice" / "use a buffer that was previously donated".
    tx = DONATED[name]()

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    plain = jax.jit(step)
    params = _fresh(PARAMS)
    state = tx.init(params)
    ref_params, ref_state = PARAMS, tx.init(PARAMS)
    for _ in range(3):
        params, state = donated(params, state, GRADS)
        ref_params, ref_state = plain(ref_params, ref_state, GRADS)
    # (the donated program may fuse differently: equal to float32 rounding, not bitwise)
    _assert_trees_close((params, state), (ref_params, ref_state))


def test_params_ema_init_does_not_hold_the_params_buffers():
    params = _fresh(PARAMS)
    state = gl.params_ema(0.9).init(params)
    jax.jit(lambda s: s, donate_argnums=0)(state)  # donating the state alone...
    np.testing.assert_array_equal(params["w"], PARAMS["w"])  # ...leaves the params alive
