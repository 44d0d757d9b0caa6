"""The contracts every transformation relies on: hyperparameter policy and tree checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradlab
from gradlab import base


@pytest.mark.parametrize("bad", [-1.0, float("nan"), -1e-12])
def test_concrete_negative_learning_rate_raises_naming_argument(bad):
    with pytest.raises(ValueError, match=r"learning_rate must be in \[0, inf\)"):
        gradlab.scale_by_learning_rate(bad)


def test_interval_formatting_and_open_ends():
    beta = base.UNIT_INTERVAL_OPEN_RIGHT
    assert str(beta) == "[0, 1)"
    assert beta.contains(0.0) and beta.contains(0.999) and not beta.contains(1.0)
    assert not beta.contains(float("nan"))
    assert str(base.POSITIVE) == "(0, inf)"


@pytest.mark.parametrize("value", ["0.1", None, True, b"1"])
def test_wrong_type_raises_type_error(value):
    with pytest.raises(TypeError, match="learning_rate"):
        gradlab.scale_by_learning_rate(value)


def test_concrete_array_checked_elementwise():
    with pytest.raises(ValueError, match="b1"):
        base.hyperparameter(np.array([0.5, 1.0]), "b1", base.UNIT_INTERVAL_OPEN_RIGHT, scalar=False)
    ok = jnp.array([0.0, 0.5])
    assert base.hyperparameter(ok, "b1", base.UNIT_INTERVAL_OPEN_RIGHT, scalar=False) is ok


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradlab.sgd(jnp.array([0.1])),
        lambda: gradlab.adam(0.1, b1=jnp.array([0.9, 0.5, 0.1])),
        lambda: gradlab.adam(np.array([[0.1]])),
    ],
)
def test_a_vector_hyperparameter_is_refused_not_broadcast_into_the_params(make):
    # It used to broadcast: sgd(array([0.1])) turned a () parameter into shape (1,).
    with pytest.raises(ValueError, match=r"must be a scalar \(shape \(\)\), got shape"):
        make()


def test_a_schedule_returning_a_vector_is_refused():
    tx = gradlab.sgd(lambda count: jnp.array([0.1, 0.2]))
    with pytest.raises(
        ValueError, match=r"learning_rate \(the schedule's value\) must be a scalar"
    ):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_traced_invalid_value_poisons_only_its_lane():
    def check(b):
        return base.hyperparameter(b, "b1", base.UNIT_INTERVAL_OPEN_RIGHT) + 0.0

    out = jax.jit(jax.vmap(check))(jnp.array([0.5, 1.0, -0.1, 0.0]))
    np.testing.assert_array_equal(np.isnan(out), [False, True, True, False])
    assert out[0] == 0.5 and out[3] == 0.0


def test_schedule_outputs_are_poisoned_when_out_of_range():
    lr = base.hyperparameter(lambda c: 1.0 - 0.5 * c, "learning_rate", base.NONNEGATIVE)
    assert float(lr(jnp.asarray(1))) == 0.5
    assert np.isnan(float(lr(jnp.asarray(3))))


def test_schedules_returning_python_or_numpy_numbers_are_checked_too():
    for out in (-0.5, np.float32(-0.5), np.array(-0.5)):
        lr = base.hyperparameter(lambda c, out=out: out, "learning_rate", base.NONNEGATIVE)
        assert np.isnan(np.asarray(lr(jnp.asarray(0)))).any()
    lr = base.hyperparameter(lambda c: 0.25, "learning_rate", base.NONNEGATIVE)
    assert lr(jnp.asarray(0)) == 0.25 and isinstance(lr(jnp.asarray(0)), float)  # kept exact
    tx = gradlab.sgd(lambda c: -0.5)
    u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    assert np.isnan(np.asarray(u)).all()  # never a silent ascent step


@pytest.mark.parametrize("inf", [float("inf"), -float("inf"), np.inf])
def test_infinite_values_are_outside_unless_the_argument_is_a_limit(inf):
    with pytest.raises(ValueError, match=r"learning_rate must be in \[0, inf\), got"):
        gradlab.sgd(inf)
    with pytest.raises(ValueError, match="weight_decay"):
        gradlab.adamw(0.1, weight_decay=inf)
    assert not base.NONNEGATIVE.contains(inf)
    assert str(base.NONNEGATIVE_OR_INF) == "[0, inf]"
    if inf > 0:  # a limit of inf means no limit: clipping by an infinite norm is the identity
        g = jnp.array([3.0, -4.0])
        u, _ = gradlab.clip_by_global_norm(inf).update(g, gradlab.clip_by_global_norm(inf).init(g))
        np.testing.assert_array_equal(u, g)
    traced = jax.jit(lambda v: base.hyperparameter(v, "lr", base.NONNEGATIVE) + 0.0)
    assert jnp.isnan(traced(jnp.asarray(inf)))


def test_python_int_becomes_float():
    assert isinstance(base.hyperparameter(0, "b1", base.UNIT_INTERVAL_OPEN_RIGHT), float)


def test_check_order():
    with pytest.raises(ValueError, match="min_step_size must be <= max_step_size"):
        base.check_order(2.0, 1.0, "min_step_size", "max_step_size")
    with pytest.raises(ValueError, match="a must be <= b"):
        base.check_order(jnp.asarray(2.0), 1.0, "a", "b")  # concrete arrays are checked too
    # traced values cannot be checked eagerly and must not raise
    jax.jit(lambda a: base.check_order(a, 1.0, "a", "b") or a)(jnp.asarray(2.0))


def test_check_positive_int_is_static():
    assert base.check_positive_int(3, "memory_size") == 3
    with pytest.raises(ValueError, match="memory_size"):
        base.check_positive_int(0, "memory_size")
    with pytest.raises(TypeError, match="memory_size"):
        base.check_positive_int(3.0, "memory_size")


def test_tree_mismatch_names_path_for_shape():
    with pytest.raises(base.TreeMismatchError) as info:
        base.check_tree_match(
            {"w": jnp.ones(3)}, {"w": jnp.ones((3, 1))}, "state", "grads", owner="adam"
        )
    assert info.value.path == "['w']"
    assert "grads" in str(info.value) and "(3, 1)" in str(info.value)


def test_tree_mismatch_names_missing_key():
    params = {"enc": {"layer0": {"w": 1.0, "b": 2.0}}}
    grads = {"enc": {"layer0": {"w": 1.0}}}
    with pytest.raises(base.TreeMismatchError) as info:
        base.check_tree_match(params, grads, "params", "grads")
    assert info.value.path == "['enc']['layer0']['b']"


def test_tree_mismatch_other_container_type():
    with pytest.raises(base.TreeMismatchError):
        base.check_tree_match({"a": 1.0}, [1.0], "params", "grads")


def test_none_leaves_match_none():
    base.check_tree_match({"a": None, "b": jnp.ones(2)}, {"a": None, "b": jnp.ones(2)}, "p", "g")


def test_check_state_rejects_foreign_state():
    tx = gradlab.scale_by_learning_rate(0.1)
    with pytest.raises(gradlab.StateMismatchError, match="scale_by_learning_rate"):
        tx.update({"a": jnp.ones(2)}, {"a": jnp.ones(2)})


def test_learning_rate_atom_schedule_count_starts_at_zero_and_keeps_dtype():
    tx = gradlab.scale_by_learning_rate(lambda count: 0.1 / (1.0 + count))
    params = {"a": jnp.ones(3, jnp.bfloat16)}
    state = tx.init(params)
    u1, state = tx.update(params, state)
    u2, state = tx.update(params, state)
    assert u1["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(u1["a"], np.float32), -0.1, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(u2["a"], np.float32), -0.05, rtol=1e-2)
    assert int(state.count) == 2


def test_zeros_like_is_float32_for_low_precision_params():
    z = base.zeros_like({"a": jnp.ones(2, jnp.bfloat16), "c": jnp.ones(2, jnp.complex64)})
    assert z["a"].dtype == jnp.float32 and z["c"].dtype == jnp.complex64


def test_global_norm_finite_and_zero_safe():
    assert float(base.global_norm({})) == 0.0
    assert float(base.global_norm({"a": jnp.zeros(3, jnp.float16)})) == 0.0
    g = jax.grad(lambda x: base.global_norm({"a": x}))(jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)


def test_static_switch_and_dtype_validation():
    assert base.check_bool(True, "centered", "rmsprop") is True
    with pytest.raises(TypeError, match="centered"):
        base.check_bool(1, "centered", "rmsprop")
    assert base.check_choice("both", "bias_correction", ("both", "none"), "adam") == "both"
    with pytest.raises(ValueError, match="bias_correction"):
        base.check_choice("all", "bias_correction", ("both", "none"), "adam")
    with pytest.raises(TypeError, match="bias_correction"):
        base.check_choice(None, "bias_correction", ("both", "none"), "adam")
    assert base.state_dtype_of(None) == jnp.float32
    assert base.state_dtype_of(jnp.bfloat16) == jnp.bfloat16
    for bad in (jnp.int32, jnp.complex64, "not a dtype"):
        with pytest.raises(TypeError, match="state_dtype"):
            base.state_dtype_of(bad, "adam")
    assert base.compute_dtype(jnp.bfloat16) == jnp.float32
    assert base.compute_dtype(jnp.bfloat16, jnp.float16) == jnp.float32


def test_map_leaves_keeps_structure_none_and_empty_trees():
    updates = {"a": jnp.ones(2), "frozen": None, "n": [jnp.zeros(())]}
    state = jax.tree.map(lambda x: 2.0 * x, updates)
    out, new = base.map_leaves(lambda g, s: (g + s, s - g), updates, state)
    assert out["frozen"] is None and new["frozen"] is None
    np.testing.assert_array_equal(out["a"], [3.0, 3.0])
    np.testing.assert_array_equal(new["a"], [1.0, 1.0])
    assert base.map_leaves(lambda g, s: (g, s), {}, {}) == ({}, {})


def test_find_states_and_integer_leaves():
    tx = gradlab.chain(gradlab.sgd(0.1, optax.constant_schedule(0.9)), gradlab.params_ema(0.9))
    state = tx.init({"a": jnp.ones(2)})
    assert len(base.find_states(state, gradlab.transforms.momentum.TraceState)) == 1
    assert base.find_states(state, base.TreeMismatchError) == []
    with pytest.raises(TypeError, match=r"\['n'\]"):
        base.check_float_leaves({"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)}, "updates", "x")


def test_named_chain_checks_its_state_and_forwards_extra_args():
    tx = base.named_chain("mine", gradlab.scale_by_rprop(0.1, variant="irprop+"))
    params = {"a": jnp.ones(2)}
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 1
    u, _ = tx.update(params, state, params, value=1.0)
    np.testing.assert_allclose(u["a"], 0.1)
    for bad in (params, None, (), state + state, state[0]):
        with pytest.raises(gradlab.StateMismatchError, match="mine"):
            tx.update(params, bad, params, value=1.0)


def test_plain_sgd_and_stateless_atoms_refuse_gradients_that_do_not_match_the_params():
    # Plain SGD keeps no per-leaf state; a (3, 1) gradient for a (3,) parameter was broadcast.
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    for tx in (gradlab.sgd(0.1), gradlab.clip(1.0), gradlab.clip_by_global_norm(1.0)):
        state = tx.init(params)
        with pytest.raises(base.TreeMismatchError, match=r"updates\['w'\] has shape \(3, 1\)"):
            jax.jit(tx.update)({"w": jnp.ones((3, 1)), "b": jnp.ones(())}, state, params)
        with pytest.raises(base.TreeMismatchError, match="missing from updates: \\['b'\\]"):
            tx.update({"w": jnp.ones(3)}, state, params)
    tx = gradlab.sgd(0.1)
    with pytest.raises(base.TreeMismatchError):
        tx.update(None, tx.init(params), params)


def test_float64_state_updates_in_double_precision():
    # Hyperparameters were resolved in float32 whatever the state dtype: sgd(0.1) moved float64
    # parameters by -0.10000000149.
    with jax.enable_x64(True):
        p = jnp.zeros(2, jnp.float64)
        g = jnp.ones(2, jnp.float64)
        cases = [
            (gradlab.sgd(0.1), optax.sgd(0.1)),
            (gradlab.sgd(1.0, 0.9, state_dtype=jnp.float64), optax.sgd(1.0, 0.9)),
            (gradlab.adam(0.1, state_dtype=jnp.float64), optax.adam(0.1)),
            (gradlab.clip_by_global_norm(0.1), optax.clip_by_global_norm(0.1)),
        ]
        for tx, reference in cases:
            s, rs = tx.init(p), reference.init(p)
            for _ in range(3):
                u, s = tx.update(g, s, p)
                ru, rs = reference.update(g, rs, p)
                assert u.dtype == jnp.float64
                np.testing.assert_allclose(u, ru, rtol=1e-12)
        tx = gradlab.rprop(0.1, state_dtype=jnp.float64)
        s, steps = tx.init(p), []
        for _ in range(3):
            u, s = tx.update(g, s, p)
            steps.append(float(u[0]))
        np.testing.assert_allclose(steps, [-0.1, -0.12, -0.144], rtol=1e-14)


def test_another_librarys_state_of_the_same_name_is_named_by_module():
    p = jnp.ones(3)
    with pytest.raises(base.StateMismatchError) as err:
        gradlab.scale_by_adam().update(p, optax.scale_by_adam().init(p), p)
    message = str(err.value)
    assert "gradlab.transforms.adam.ScaleByAdamState" in message
    assert "optax" in message and "order (updates, state, params)" not in message


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: gradlab.adam(lambda: 0.1), TypeError, "schedule taking one argument"),
        (lambda: gradlab.adam(optax.adam), TypeError, "must return a number or an array, got"),
        (lambda: gradlab.adam(lambda c: "x"), TypeError, "return a number or an array, got str"),
        (lambda: gradlab.join_schedules(gradlab.constant_schedule(1.0), 5), TypeError,
         "schedules must be a sequence of schedules"),
    ],
)  # fmt: skip
def test_a_callable_that_is_not_a_schedule_is_named(make, error, message):
    with pytest.raises(error, match=message):
        tx = make()
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
