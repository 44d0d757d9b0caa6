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


# --------------------------------------------------------------------------------------------
# optax.inject_hyperparams
# --------------------------------------------------------------------------------------------


def test_bfloat16_array_hyperparameters_are_numbers():
    # np.issubdtype does not count bfloat16 as a number: a bf16 learning rate was a TypeError
    # ("must be numeric, got dtype bfloat16"), and so was every optimizer inside
    # optax.inject_hyperparams with bf16 params (its hyperparameters take the params' dtype).
    lr = jnp.asarray(0.5, jnp.bfloat16)
    u, _ = gl.sgd(lr).update(GRADS, gl.sgd(lr).init(PARAMS), PARAMS)
    np.testing.assert_allclose(u["w"], -0.5 * GRADS["w"], rtol=1e-6)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), GRADS)
    for factory, ref in ((gl.sgd, optax.sgd), (gl.adam, optax.adam)):
        kwargs = {"learning_rate": 0.1, "b1": 0.5, "b2": 0.75} if factory is gl.adam else {}
        if not kwargs:
            kwargs = {"learning_rate": 0.1, "momentum": 0.5}
        outs = []
        for f in (factory, ref):
            tx = optax.inject_hyperparams(f)(**kwargs)
            state = tx.init(params)
            assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
            u, state = jax.jit(tx.update)(grads, state, params)
            outs.append(u)
        _assert_trees_close(
            *[jax.tree.map(lambda x: x.astype(jnp.float32), o) for o in outs], rtol=1e-2, atol=0
        )


def test_a_bfloat16_hyperparameter_rounded_out_of_range_names_the_cause():
    # 0.999 is 1.0 in bfloat16: optax.inject_hyperparams(optax.adam) with bf16 params runs with
    # b2 = 1 (NaN updates); gradlab refuses it, naming b2 and the remedy.
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\).*hyperparam_dtype"):
        optax.inject_hyperparams(gl.adam)(1e-3).init(params)
    tx = optax.inject_hyperparams(gl.adam, hyperparam_dtype=jnp.float32)(1e-3)
    u, _ = tx.update(GRADS, tx.init(params), params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


# --------------------------------------------------------------------------------------------
# optax tree utilities on gradlab states
# --------------------------------------------------------------------------------------------

ONE_COUNT = {
    "adam": lambda: gl.adam(0.1),
    "adamw": lambda: gl.adamw(0.1),
    "nadam": lambda: gl.nadam(0.1),
    "adamax": lambda: gl.adamax(0.1),
    "rmsprop": lambda: gl.rmsprop(0.1),
    "adagrad": lambda: gl.adagrad(0.1),
    "adadelta": lambda: gl.adadelta(),
    "rmsprop_momentum": lambda: gl.rmsprop(0.1, momentum=0.9),
    "rmsprop_nesterov": lambda: gl.rmsprop(0.1, momentum=0.9, nesterov=True),
    "clip_then_adam": lambda: optax.chain(gl.clip_by_global_norm(1.0), gl.clip(1.0), gl.adam(0.1)),
}


@pytest.mark.parametrize("name", sorted(ONE_COUNT))
def test_tree_get_count_finds_the_one_step_count(name):
    # optax's own docstring idiom, optax.tree_utils.tree_get(adam_state, "count"), raised
    # KeyError("Found multiple values for 'count'"): the learning-rate, weight-decay and
    # clipping atoms each kept a step count even for a constant hyperparameter.
    tx = ONE_COUNT[name]()
    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = tx.update(GRADS, state, PARAMS)
    assert int(optax.tree_utils.tree_get(state, "count")) == 3


def test_constant_momentum_keeps_optax_traces_state():
    # The trace atom kept a step count for a constant decay too: rmsprop(momentum=...) held two
    # counts (tree_get raised), and sgd's state differed from optax.sgd's.
    for make_gl, make_ox in [
        (lambda: gl.sgd(0.1, 0.9), lambda: optax.sgd(0.1, 0.9)),
        (lambda: gl.sgd(0.1, 0.9, nesterov=True), lambda: optax.sgd(0.1, 0.9, nesterov=True)),
        (lambda: gl.trace(0.9), lambda: optax.trace(0.9)),
    ]:
        ours, theirs = make_gl().init(PARAMS), make_ox().init(PARAMS)
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    # a momentum schedule keeps its own count
    tx = gl.trace(lambda c: 0.9)
    state = tx.init(PARAMS)
    for _ in range(2):
        _, state = tx.update(GRADS, state)
    assert int(optax.tree_utils.tree_get(state, "count")) == 2


def test_constant_atoms_are_stateless_and_schedules_keep_their_count():
    params = jnp.ones(2)
    for tx in (gl.scale_by_learning_rate(0.1), gl.clip(1.0), gl.add_decayed_weights(0.1)):
        assert tx.init(params) == optax.EmptyState()
    # the state of a constant-lr adam has optax.adam's structure
    assert jax.tree.structure(gl.adam(0.1).init(PARAMS)) != jax.tree.structure(
        gl.adam(lambda c: 0.1).init(PARAMS)
    )
    tx = gl.sgd(lambda c: 0.1 / (1.0 + c))
    state = tx.init(params)
    u1, state = tx.update(params, state)
    u2, state = tx.update(params, state)
    np.testing.assert_allclose([u1[0], u2[0]], [-0.1, -0.05], rtol=1e-6)
    assert int(optax.tree_utils.tree_get(state, "count")) == 2
    with pytest.raises(gl.StateMismatchError, match="scale_by_learning_rate"):
        gl.scale_by_learning_rate(0.1).update(params, {"a": params})


# --------------------------------------------------------------------------------------------
# Weight-decay masks and Flax FrozenDict params
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["frozen_params", "frozen_mask", "mixed", "callable"])
def test_weight_decay_mask_accepts_frozendict_and_dict_alike(case):
    # A dict mask for FrozenDict params (linen's freeze, optax #160) or the reverse was a
    # TreeMismatchError whose message listed identical leaves for mask and params.
    from flax.core import freeze, unfreeze

    params = {"w": jnp.ones(3), "b": jnp.ones(2), "n": {"c": jnp.ones(2), "d": jnp.ones(1)}}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    mask = {"w": True, "b": False, "n": {"c": True, "d": False}}
    if case == "callable":
        mask = lambda p: jax.tree.map(lambda x: x.shape[0] > 1, p)  # noqa: E731
    oracle = optax.adamw(0.1, weight_decay=0.5, mask=mask)  # plain dicts throughout
    ref, _ = oracle.update(grads, oracle.init(params), params)
    if case == "frozen_mask":
        mask = freeze(mask)
    elif case == "mixed":
        mask = {**mask, "n": freeze(mask["n"])}
    if case != "frozen_mask":
        params, grads = freeze(params), freeze(grads)
    outs = []
    for tx in (
        gl.adamw(0.1, weight_decay=0.5, mask=mask),
        gl.adadelta(weight_decay=0.5, weight_decay_mask=mask),
    ):
        jax.eval_shape(tx.init, params)
        u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        assert type(u) is type(params)
        outs.append(u)
    # adamw against optax's on plain dicts (gradlab's bias correction is exact: rtol 1e-5)
    _assert_trees_close(unfreeze(outs[0]), ref, rtol=1e-5, atol=1e-6)


def test_weight_decay_mask_mismatch_names_the_path_and_types():
    params = {"w": jnp.ones(3), "n": {"c": jnp.ones(2), "d": jnp.ones(1)}}
    with pytest.raises(gl.TreeMismatchError, match=r"at \['n'\] the mask is a dict") as e:
        gl.adamw(0.1, mask={"w": True, "n": {"c": True}}).init(params)
    assert e.value.path == "['n']"
    with pytest.raises(gl.TreeMismatchError, match=r"params are a leaf") as e:
        gl.adamw(0.1, mask={"w": {"x": True}, "n": True}).init(params)
    assert e.value.path == "['w']"
