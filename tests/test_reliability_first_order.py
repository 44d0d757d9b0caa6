"""The first-order cases (groups A-G, plus O1/O2/O4) of the bad-input catalogue.

Catalogue: ``shared/reference/reliability.md`` section 3. Each test name starts with the case
IDs it pins; most run over a few representative transformations (:data:`REPS`): sgd with
momentum, adam, rmsprop, adagrad, rprop, clip_by_global_norm and apply_if_finite. Errors are
asserted by type and key path, never by message wording.

Cases pinned in other modules (not repeated here):

* A8/A12 (masks): ``add_decayed_weights(mask=...)`` is ``optax.masked`` (optax's errors).
* B6 (eps = 0 with zero gradients): ``test_adaptive.py::test_eps_zero_with_zero_gradients...``;
  B12: ``test_common_atoms.py::test_clip_by_global_norm_zero_grads_and_zero_max_norm...``.
* B15 (schedule steps): ``test_schedules.py`` (errors quote the user's argument names).
* C3 (give-up rule): ``test_common_atoms.py::test_apply_if_finite_give_up_rule_is_exact``.
* D1 (zero gradients in f32/bf16/f16, 3 jitted steps): every adaptive optimizer in
  ``test_adaptive.py::test_zero_gradients_never_nan_and_dtypes_kept``, every momentum atom in
  ``test_momentum.py::test_dtypes_and_zero_gradients``, Rprop in ``test_rprop.py``.
* D2 (meta-gradient at zero gradient): ``test_adaptive.py::test_derivative_through_update...``.
* E1 (bf16 params and grads) and E6 (state dtypes stable, no recompilation): every registry
  entry in ``test_conformance.py``; E2 (``state_dtype``/``mu_dtype``):
  ``test_adaptive.py::test_state_dtype_and_mu_dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradlab as gl
from gradlab import base

REPS = {
    "sgd_momentum": lambda: gl.sgd(0.1, 0.9),
    "adam": lambda: gl.adam(0.1),
    "rmsprop": lambda: gl.rmsprop(0.1),
    "adagrad": lambda: gl.adagrad(0.1),
    "rprop": lambda: gl.rprop(0.1),
    "clip_by_global_norm": lambda: gl.clip_by_global_norm(1.0),
    "apply_if_finite": lambda: gl.apply_if_finite(gl.adam(0.1), 3),
}
#: Those whose state has one entry per parameter leaf (they check the gradient tree).
PER_LEAF = [n for n in REPS if n != "clip_by_global_norm"]

P = {"enc": {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.3, -0.1])}, "out": jnp.array(2.0)}
G = jax.tree.map(lambda x: 0.5 * x, P)


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _with(tree, path, leaf):
    """A copy of the two-level dict ``tree`` with ``tree[path]`` replaced (or removed: None)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    node = out
    for key in path[:-1]:
        node = node[key]
    if leaf is None:
        del node[path[-1]]
    else:
        node[path[-1]] = leaf
    return out


# --------------------------------------------------------------------------------------------
# A. Pytree structure and shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PER_LEAF)
def test_A1_A2_A3_A6_gradient_tree_mismatch_names_the_path(name):
    opt = REPS[name]()
    state = opt.init(P)
    bad = {
        "['enc']['b']": _with(G, ("enc", "b"), None),  # A1: a nested key is missing
        "['enc']['w']": _with(G, ("enc", "w"), jnp.ones((3, 1))),  # A6: (3, 1) for (3,)
        "['out']": _with(G, ("out",), jnp.ones((1,))),  # A6: (1,) for () would broadcast
    }
    for path, grads in bad.items():
        with pytest.raises(base.TreeMismatchError) as info:
            opt.update(grads, state, P)
        assert info.value.path == path, (name, path)
    # A6 under jit: shapes are static, so the same error is raised while tracing.
    with pytest.raises(base.TreeMismatchError):
        jax.jit(opt.update)(bad["['enc']['w']"], state, P)
    # A2: another container type, or no gradients at all.
    for grads in ([G["enc"], G["out"]], None):
        with pytest.raises(base.TreeMismatchError):
            opt.update(grads, state, P)
    # A3: a state built for other params; the path names what the state has and updates lack.
    with pytest.raises(base.TreeMismatchError) as info:
        opt.update(G, opt.init({"x": jnp.ones(3)}), P)
    assert info.value.path == "['x']"


def test_A1_stateless_atoms_accept_any_tree():
    """clip_by_global_norm keeps no per-leaf state, so it has no tree to compare with: it clips
    whatever it is given (a stateful atom later in the chain checks the tree)."""
    tx = gl.clip_by_global_norm(1.0)
    u, _ = tx.update({"other": jnp.array([3.0, 4.0])}, tx.init(P))
    np.testing.assert_allclose(u["other"], [0.6, 0.8], rtol=1e-6)
    chained = optax.chain(gl.clip_by_global_norm(1.0), gl.adam(0.1))
    with pytest.raises(base.TreeMismatchError):
        chained.update(_with(G, ("enc", "b"), None), chained.init(P), P)


@pytest.mark.parametrize("name", REPS)
def test_A4_A5_a_state_not_from_init_is_a_state_mismatch_error(name):
    opt = REPS[name]()
    other = gl.adagrad(0.1) if name != "adagrad" else gl.adam(0.1)
    wrong_states = {
        "swapped (params as state)": P,  # A4: update(params, params) / forgot the state
        "None": None,
        "another gradlab optimizer's state": other.init(P),  # A5
        "optax's adam state": optax.adam(0.1).init(P),  # A5: same length as a 2-link chain
        "a bare atom state": gl.scale_by_rms().init(P),
    }
    for what, state in wrong_states.items():
        with pytest.raises(base.StateMismatchError):
            opt.update(G, state, P)
            pytest.fail(f"{name}: {what} accepted")


def test_A4_named_optimizers_name_themselves_whatever_the_params_tree():
    """optax.chain compares only lengths: a 2-key params dict passed as the state of a 2-link
    chain was iterated as if it were a state. Named gradlab optimizers check the type first."""
    for n_keys in (1, 2, 3):
        params = {f"p{i}": jnp.ones(2) for i in range(n_keys)}
        for opt, name in ((gl.adam(0.1), "adam"), (gl.sgd(0.1), "sgd"), (gl.rprop(0.1), "rprop")):
            with pytest.raises(base.StateMismatchError, match=name):
                opt.update(params, params, params)


def test_A9_A11_params_required_and_extra_arguments_ignored():
    opt = gl.adamw(0.1)
    with pytest.raises(ValueError, match="params"):  # A9: decoupled weight decay reads them
        opt.update(G, opt.init(P))
    # A11: named optimizers, chains and the guard forward extra arguments to the links that
    # take them and ignore them elsewhere (optax's chain semantics). A bare atom is a plain
    # optax GradientTransformation and takes none (optax.with_extra_args_support adds them).
    for name, make in REPS.items():
        tx = make() if name != "clip_by_global_norm" else optax.chain(make())
        u, _ = tx.update(G, tx.init(P), P, value=1.0, unused=2)
        assert _all_finite(u), name
    clip = gl.clip_by_global_norm(1.0)
    with pytest.raises(TypeError):
        clip.update(G, clip.init(P), P, value=1.0)


def test_A7_apply_updates_is_optax_and_gradlab_updates_keep_param_shapes():
    assert gl.apply_updates is optax.apply_updates
    with pytest.raises(ValueError):  # a structure mismatch: JAX's pytree error (not gradlab's)
        gl.apply_updates(P, _with(G, ("enc", "b"), None))
    # Pinned (optax): apply_updates itself does not compare shapes, so a hand-made (3, 1) update
    # would broadcast a (3,) param to (3, 3). An update produced by gradlab always has the
    # params' shapes (A6 is refused upstream), so this cannot happen after opt.update; check
    # hand-made updates with base.check_tree_match(params, updates, "params", "updates").
    assert gl.apply_updates({"w": jnp.ones(3)}, {"w": jnp.ones((3, 1))})["w"].shape == (3, 3)
    with pytest.raises(base.TreeMismatchError):
        base.check_tree_match({"w": jnp.ones(3)}, {"w": jnp.ones((3, 1))}, "params", "updates")


# --------------------------------------------------------------------------------------------
# B. Hyperparameters
# --------------------------------------------------------------------------------------------

NAMED = {"sgd": gl.sgd, "adam": gl.adam, "rmsprop": gl.rmsprop, "adagrad": gl.adagrad}
NAMED["rprop"] = gl.rprop
BAD = [
    *[("B1", f, dict(learning_rate=-1.0), ValueError, "learning_rate") for f in NAMED.values()],
    *[("B2", f, dict(learning_rate=np.nan), ValueError, "learning_rate") for f in NAMED.values()],
    ("B3", gl.adam, dict(b1=1.0), ValueError, "b1"),
    ("B3", gl.adam, dict(b2=1.0), ValueError, "b2"),
    ("B3", gl.rmsprop, dict(decay=1.0), ValueError, "decay"),
    ("B4", gl.adam, dict(b1=1.5), ValueError, "b1"),
    ("B4", gl.adam, dict(b1=-0.5), ValueError, "b1"),
    ("B5", gl.adam, dict(eps=-1e-8), ValueError, "eps"),
    ("B5", gl.rmsprop, dict(eps=-1e-8), ValueError, "eps"),
    ("B5", gl.adagrad, dict(eps=-1e-7), ValueError, "eps"),
    ("B7", gl.sgd, dict(momentum=-0.5), ValueError, "momentum"),
    ("B7", gl.sgd, dict(momentum=1.5), ValueError, "momentum"),
    ("B7", gl.rmsprop, dict(momentum=1.0), ValueError, "momentum"),
    *[("B8", f, dict(learning_rate="0.1"), TypeError, "learning_rate") for f in NAMED.values()],
    *[("B9", f, dict(learning_rate=None), TypeError, "learning_rate") for f in NAMED.values()],
    ("B11", gl.clip_by_global_norm, dict(max_norm=-1.0), ValueError, "max_norm"),
    ("B11", gl.clip_by_global_norm, dict(max_norm=np.nan), ValueError, "max_norm"),
    ("B11", gl.clip_by_global_norm, dict(max_norm="1"), TypeError, "max_norm"),
]


@pytest.mark.parametrize(
    "case,factory,kwargs,exc,name",
    BAD,
    ids=[f"{c}-{f.__name__}-{'-'.join(k)}" for c, f, k, _, _ in BAD],
)
def test_B1_to_B11_concrete_bad_hyperparameters_raise_naming_the_argument(
    case, factory, kwargs, exc, name
):
    if "learning_rate" not in kwargs and factory is not gl.clip_by_global_norm:
        kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(exc, match=name):
        factory(**kwargs)


def test_B9_adadelta_without_learning_rate_descends():
    """``adadelta(learning_rate=None)`` is Zeiler's rate 1, with the sign flipped (optax's
    ``adadelta()`` ascends)."""
    tx = gl.adadelta()
    u, _ = tx.update(G, tx.init(P), P)
    for g, step in zip(jax.tree.leaves(G), jax.tree.leaves(u), strict=True):
        assert np.all(np.sign(step) == -np.sign(g))


def test_B10_int_hyperparameters_equal_float_ones():
    pairs = [
        (gl.sgd(1, 0), gl.sgd(1.0, 0.0)),
        (gl.adam(1, 0, 0, 1), gl.adam(1.0, 0.0, 0.0, 1.0)),
        (gl.rmsprop(1, 0, 1), gl.rmsprop(1.0, 0.0, 1.0)),
        (gl.adagrad(1, 1, 1), gl.adagrad(1.0, 1.0, 1.0)),
        (gl.rprop(1, max_step_size=2), gl.rprop(1.0, max_step_size=2.0)),
        (gl.clip_by_global_norm(1), gl.clip_by_global_norm(1.0)),
    ]

    @jax.jit
    def two_steps():
        out = []
        for pair in pairs:
            for tx in pair:
                s = tx.init(P)
                u1, s = tx.update(G, s, P)
                out.append((u1, tx.update(G, s, P)[0]))
        return out

    outs = two_steps()
    for i in range(0, len(outs), 2):
        jax.tree.map(np.testing.assert_array_equal, outs[i], outs[i + 1])


#: (factory of one traced hyperparameter, lane values with an invalid middle one, a valid
#: replacement for it). Each family of hyperparameter (lr, beta, decay, eps, eta, norm) once.
LANES = {
    "sgd_momentum": (lambda h: gl.sgd(0.1, h), (0.9, 1.5, 0.5), 0.7),
    "adam": (lambda h: gl.adam(0.1, b1=h), (0.9, 1.0, 0.5), 0.8),
    "rmsprop": (lambda h: gl.rmsprop(0.1, decay=h), (0.9, -0.2, 0.5), 0.8),
    "adagrad": (lambda h: gl.adagrad(0.1, eps=h), (1e-7, -1.0, 1e-2), 1e-3),
    "rprop": (lambda h: gl.rprop(0.1, eta_plus=h), (1.2, 0.5, 1.5), 1.3),
    "clip_by_global_norm": (lambda h: gl.clip_by_global_norm(h), (1.0, -1.0, 0.5), 2.0),
    "apply_if_finite": (lambda h: gl.apply_if_finite(gl.adam(h), 3), (0.1, -0.1, 0.05), 0.2),
}


@pytest.mark.parametrize("name", LANES)
def test_B16_a_traced_bad_lane_is_poisoned_and_the_others_are_bit_identical(name):
    make, values, fix = LANES[name]

    def run(h):  # three steps on f = |x|^2 / 2 (the gradient is the params)
        tx = make(h)

        def step(carry, _):
            p, s = carry
            u, s = tx.update(p, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (P, tx.init(P)), None, length=3)[0]

    batched = jax.jit(jax.vmap(run))
    params, state = batched(jnp.asarray(values, jnp.float32))
    fixed, _ = batched(jnp.asarray([values[0], fix, values[2]], jnp.float32))
    params, fixed = jax.tree.map(np.asarray, (params, fixed))
    for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(fixed), strict=True):
        np.testing.assert_array_equal(got[0], ref[0])  # bit-identical to a run with no bad lane
        np.testing.assert_array_equal(got[2], ref[2])
        assert np.all(np.isfinite(got[[0, 2]]))
    bad = [x[1] for x in jax.tree.leaves(params)]
    if name == "apply_if_finite":  # the guard rejects the poisoned steps and counts them
        assert int(state.total_notfinite[1]) == 3 and int(state.total_notfinite[0]) == 0
        for got, p0 in zip(bad, jax.tree.leaves(P), strict=True):
            np.testing.assert_array_equal(got, p0)
    else:
        assert all(np.all(np.isnan(x)) for x in bad), name


# --------------------------------------------------------------------------------------------
# C. Non-finite values
# --------------------------------------------------------------------------------------------

G_NAN = _with(G, ("enc", "w"), jnp.array([0.5, jnp.nan, 0.25]))
G_INF = _with(G, ("enc", "w"), jnp.array([0.5, jnp.inf, 0.25]))


@jax.jit
def _nan_then_finite():
    out = {}
    for name, make in REPS.items():
        tx = make()
        s = tx.init(P)
        u1, s = tx.update(G_NAN, s, P)
        u2, s = tx.update(G, s, P)
        out[name] = (u1, u2)
    return out


def test_C1_nan_without_a_guard_stays_in_its_coordinate_and_poisons_moment_state():
    outs = _nan_then_finite()
    for name, (u1, u2) in outs.items():
        w1, w2 = np.asarray(u1["enc"]["w"]), np.asarray(u2["enc"]["w"])
        rest1 = [u1["enc"]["b"], u1["out"], w1[[0, 2]]]
        if name == "apply_if_finite":  # C2: rejected, then the next finite step is taken
            assert np.all(w1 == 0) and all(np.all(np.asarray(x) == 0) for x in rest1)
            assert _all_finite(u2)
            continue
        assert np.isnan(w1[1]) and all(np.all(np.isfinite(x)) for x in rest1), name
        if name == "clip_by_global_norm":  # non-finite norm: passed through, not NaN-ified
            np.testing.assert_array_equal(w1[[0, 2]], [0.5, 0.25])
        if name == "rprop":  # only signs are remembered, and a NaN's is not: no poisoning
            assert _all_finite(u2)
        elif name != "clip_by_global_norm":  # moments remember the NaN (documented)
            assert np.isnan(w2[1]) and np.all(np.isfinite(w2[[0, 2]])), name


@jax.jit
def _guarded_nan_step():
    out = {}
    for name in PER_LEAF[:-1]:  # every inner optimizer but the guard itself
        tx = gl.apply_if_finite(REPS[name](), 2)
        s = tx.init(P)
        u, s_new = tx.update(G_NAN, s, P)
        out[name] = (u, s.inner_state, s_new)
    return out


def test_C2_guard_rejects_nan_keeps_inner_state_bitwise_and_counts():
    for name, (u, inner_before, s) in _guarded_nan_step().items():
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u)), name
        jax.tree.map(np.testing.assert_array_equal, s.inner_state, inner_before)
        assert int(s.notfinite_count) == 1 and int(s.total_notfinite) == 1
        assert not bool(s.last_finite)


def test_C4_guard_around_clipping_rejects_an_inf_gradient():
    tx = gl.apply_if_finite(optax.chain(gl.clip_by_global_norm(1.0), gl.adam(0.1)), 3)
    state = tx.init(P)
    u, new = jax.jit(tx.update)(G_INF, state, P)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    jax.tree.map(np.testing.assert_array_equal, new.inner_state, state.inner_state)
    assert int(new.total_notfinite) == 1
    # Without the guard the clip leaves the inf an inf (optax turns it into NaN and zeroes the
    # other coordinates), so a guard anywhere outside still sees it.
    clip = gl.clip_by_global_norm(1.0)
    w = np.asarray(clip.update(G_INF, clip.init(P))[0]["enc"]["w"])
    np.testing.assert_array_equal(w, [0.5, np.inf, 0.25])


def test_C5_zero_nans_before_adam_keeps_the_state_finite():
    tx = optax.chain(optax.zero_nans(), gl.adam(0.1))
    s = tx.init(P)
    u1, s = tx.update(G_NAN, s, P)
    u2, s = tx.update(G, s, P)
    w1 = np.asarray(u1["enc"]["w"])
    assert w1[1] == 0.0 and np.allclose(w1[[0, 2]], -0.1, rtol=1e-5)
    assert _all_finite((u2, s))


# --------------------------------------------------------------------------------------------
# E. Dtypes and counters
# --------------------------------------------------------------------------------------------


def test_E3_bf16_params_with_f32_grads_update_in_grad_dtype_params_stay_bf16():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), P)

    @jax.jit
    def step():
        out = {}
        for name, make in REPS.items():
            tx = make()
            u, _ = tx.update(G, tx.init(params), params)
            out[name] = (u, optax.apply_updates(params, u))
        return out

    for name, (u, new) in step().items():
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u)), name
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(new)), name


def test_E4_bf16_params_lose_small_updates_and_an_f32_master_copy_does_not():
    """bf16 spacing near 1 is 2**-7: 1000 SGD steps of 1e-4 leave a bf16 parameter at exactly
    1.0 (physics, not a bug). Keeping float32 master params (cast to bf16 for the model) and
    applying the updates to them reaches 0.9, as documented in docs/concepts.md."""
    tx = gl.sgd(1e-4)

    def run(p):
        def step(carry, _):
            p, s = carry
            u, s = tx.update(jnp.ones_like(p), s)  # d/dp of p: the gradient is 1
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, tx.init(p)), None, length=1000)[0][0]

    low, master = jax.jit(lambda: (run(jnp.ones(2, jnp.bfloat16)), run(jnp.ones(2))))()
    assert low.dtype == jnp.bfloat16 and np.all(np.asarray(low, np.float32) == 1.0)
    np.testing.assert_allclose(np.asarray(master.astype(jnp.bfloat16), np.float32), 0.9, rtol=4e-3)


def test_E5_counters_saturate_at_int32_max_and_schedules_stay_finite():
    lr = gl.cosine_decay_schedule(0.1, 1000)
    txs = {
        "sgd_momentum": gl.sgd(lr, 0.9),
        "adam": gl.adam(lr),
        "rmsprop": gl.rmsprop(lr, bias_correction=True),
        "adagrad": gl.adagrad(lr),
        "rprop": gl.rprop(0.1),
        "clip_by_global_norm": gl.clip_by_global_norm(gl.exponential_decay(1.0, 10, 0.5)),
        "apply_if_finite": gl.apply_if_finite(gl.adam(lr), 3),
    }
    top = jnp.iinfo(jnp.int32).max

    def at_max(state):
        return jax.tree.map(
            lambda x: jnp.full_like(x, top) if x.dtype == jnp.int32 and x.ndim == 0 else x, state
        )

    @jax.jit
    def two_steps():
        out = {}
        for name, tx in txs.items():
            s = at_max(tx.init(P))
            u1, s = tx.update(G, s, P)
            u2, s = tx.update(G, s, P)
            out[name] = (u1, u2, s)
        return out

    for name, (u1, u2, s) in two_steps().items():
        assert _all_finite((u1, u2)), name
        counts = [x for x in jax.tree.leaves(s) if x.dtype == jnp.int32 and x.ndim == 0]
        assert counts and all(int(c) in (0, top) for c in counts), name  # saturated (or reset)


# --------------------------------------------------------------------------------------------
# F. Degenerate leaves
# --------------------------------------------------------------------------------------------

DEGENERATE = (
    {},
    {"frozen": None, "b": jnp.ones(2)},
    {"e": jnp.zeros((0,)), "b": jnp.ones(2)},
    {"nested": {"frozen": None, "empty": {}}, "e": jnp.zeros((0, 3))},
)


def test_F1_F2_F3_none_leaves_empty_trees_and_zero_size_leaves():
    @jax.jit
    def run_all():
        out = []
        for params in DEGENERATE:
            for make in REPS.values():
                tx = make()
                s = tx.init(params)
                u, s = tx.update(params, s, params)
                out.append((u, tx.update(params, s, params)[0]))
        return out

    outs = run_all()
    for i, (u1, u2) in enumerate(outs):
        params = DEGENERATE[i // len(REPS)]
        for u in (u1, u2):
            assert jax.tree.structure(u) == jax.tree.structure(params)
            assert _all_finite(u)
            assert [x.shape for x in jax.tree.leaves(u)] == [
                x.shape for x in jax.tree.leaves(params)
            ]
    assert outs[len(REPS)][0]["frozen"] is None


@pytest.mark.parametrize("name", REPS)
def test_F4_integer_leaves_are_a_type_error_naming_the_path(name):
    params = {"w": jnp.ones(3), "n": {"step": jnp.array(7, jnp.int32)}}
    opt = REPS[name]()
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"\['n'\]\['step'\]"):
        opt.update({"w": jnp.ones(3), "n": {"step": jnp.array(1, jnp.int32)}}, state, params)
    # The same for the float0 gradient jax.grad(allow_int=True) gives an int leaf.
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(params)
    with pytest.raises(TypeError, match=r"\['n'\]\['step'\]"):
        opt.update(grads, state, params)


def test_F5_complex_params_are_supported_except_by_rprop():
    params = {"z": jnp.array([1 + 1j, -2j], jnp.complex64), "r": jnp.ones(2)}
    grads = {"z": jnp.array([0.5 - 1j, 2 + 0j], jnp.complex64), "r": jnp.ones(2)}
    names = [n for n in REPS if n != "rprop"]

    @jax.jit
    def step():
        return {n: REPS[n]().update(grads, REPS[n]().init(params), params)[0] for n in names}

    outs = step()
    for name, u in outs.items():
        assert u["z"].dtype == jnp.complex64 and _all_finite(u), name
    np.testing.assert_allclose(outs["sgd_momentum"]["z"], -0.1 * grads["z"], rtol=1e-6)
    # Adam's second moment uses |g|^2: the first step is -lr g / |g| elementwise.
    np.testing.assert_allclose(
        outs["adam"]["z"], -0.1 * grads["z"] / np.abs(grads["z"]), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(TypeError, match=r"\['z'\]"):
        gl.rprop(0.1).init(params)


@pytest.mark.parametrize("name", REPS)
def test_F6_O2_python_floats_and_numpy_inputs_are_accepted_and_never_mutated(name):
    params = {"a": np.array([1.0, -2.0], np.float32), "b": 1.5}
    grads = {"a": np.array([0.5, 0.5], np.float32), "b": 0.25}
    copies = jax.tree.map(np.copy, (params, grads))
    opt = REPS[name]()
    u, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, u)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves((u, new)))
    assert _all_finite(new)
    jax.tree.map(np.testing.assert_array_equal, (params, grads), copies)


# --------------------------------------------------------------------------------------------
# G. Scale extremes (float32)
# --------------------------------------------------------------------------------------------


def test_G1_G2_scale_extremes_are_pinned_with_their_remedies():
    """Adam's second moment is g^2 in float32: it overflows for |g| > ~1.8e19 (the update is
    then 0, finite: Adam stalls) and underflows for |g| < ~1e-19 (eps then dominates: the
    step is ~ lr |g| / eps). Remedies, documented in docs/first_order/adaptive.md: clip the
    global norm first (G1), rescale the loss or the gradients (G2)."""
    p = {"x": jnp.zeros(3)}
    big, tiny = {"x": jnp.full(3, 1e20)}, {"x": jnp.full(3, 1e-30)}
    adam = gl.adam(0.1)
    u_big = adam.update(big, adam.init(p), p)[0]["x"]
    u_tiny = adam.update(tiny, adam.init(p), p)[0]["x"]
    np.testing.assert_array_equal(u_big, 0.0)  # stalled, but finite
    np.testing.assert_allclose(u_tiny, -0.1 * 1e-30 / 1e-8, rtol=1e-3)  # eps dominates
    remedies = (
        (big, optax.chain(gl.clip_by_global_norm(1.0), gl.adam(0.1))),
        (tiny, optax.chain(optax.scale(1e28), gl.adam(0.1))),
    )
    for g, tx in remedies:
        np.testing.assert_allclose(tx.update(g, tx.init(p), p)[0]["x"], -0.1, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# O. Purity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPS)
def test_O1_O4_update_is_pure_and_init_works_on_abstract_inputs(name):
    opt = REPS[name]()
    state = opt.init(P)
    state = opt.update(G, state, P)[1]  # a non-trivial state
    snapshot = jax.tree.map(np.array, state)
    first = opt.update(G, state, P)
    second = opt.update(G, state, P)
    jax.tree.map(np.testing.assert_array_equal, first, second)
    jax.tree.map(np.testing.assert_array_equal, state, snapshot)  # the input is untouched
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), P)
    abstract = jax.eval_shape(opt.init, spec)
    concrete = opt.init(P)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert a.shape == c.shape and a.dtype == c.dtype
