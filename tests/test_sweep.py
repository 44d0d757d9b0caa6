"""Sweep engine: every run equals the same run done alone, isolation of diverged and invalid runs,
static groups, the tracing fallback, and the strategies agreeing with one another.

Tolerances (reliability.md M4): a vmapped/looped run vs the same run written as a plain Python
loop of jitted steps agrees to ``rtol=2e-5, atol=1e-6`` (float32, not bitwise: XLA fuses the
batched program differently). Isolation is checked *bitwise*: a lane's results do not change when
another lane of the same-sized program diverges or is invalid.
"""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab.status import Status
from gradlab.sweep import choice, engine, sweep, tasks

STEPS, EVERY = 24, 6
RTOL, ATOL = 2e-5, 1e-6


def _init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (3, 8)) * 0.5,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(k2, (8,)) * 0.5,
    }


def _loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def _task():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]).astype(np.float32)
    return tasks.custom(_init, _loss, (x[:32], y[:32]), val_data=(x[32:], y[32:]), batch_size=8)


TASK = _task()


def sgd(lr, momentum):
    return optax.sgd(lr, momentum=momentum)


_REFS = {}


def _reference(task, tx, seed, steps=STEPS, every=EVERY, cache_key=None):
    if cache_key is not None and cache_key in _REFS:
        return _REFS[cache_key]
    out = _reference_run(task, tx, seed, steps, every)
    if cache_key is not None:
        _REFS[cache_key] = out
    return out


def _reference_run(task, tx, seed, steps, every, losses=None):
    """The run written out by hand: documented keys, plan, plain loop of jitted steps (the
    mini-batch losses are appended to ``losses`` when given)."""
    k_init, _, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, model_state = task.init(k_init)
    plan = task.batch_plan(seed, steps)
    state = tx.init(params)

    @jax.jit
    def step(params, state, idx):
        batch = task.get_batch(task.data, idx)
        loss, grads = jax.value_and_grad(lambda p: task.loss(p, model_state, batch, None)[0])(
            params
        )
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    evaluate = jax.jit(lambda p: task.evaluate(p, model_state, task.data))
    curves = [evaluate(params)]
    for t in range(steps):
        params, state, loss = step(params, state, plan[t])
        if losses is not None:
            losses.append(float(loss))
        if (t + 1) % every == 0:
            curves.append(evaluate(params))
    return {k: np.array([float(c[k]) for c in curves]) for k in curves[0]}


SPACE = {"lr": [0.01, 0.03, 0.1, 0.3, 0.05], "momentum": [0.0, 0.9]}
SEEDS = [0, 3]


@pytest.fixture(scope="module")
def by_strategy():
    out = {}
    for strategy, kw in [("vmap", {}), ("chunked", {"chunk_size": 8}), ("loop", {})]:
        out[strategy] = sweep(
            sgd, SPACE, seeds=SEEDS, task=TASK, steps=STEPS, eval_every=EVERY,
            strategy=strategy, progress=False, **kw,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("strategy", ["vmap", "chunked", "loop"])
def test_every_run_equals_the_run_alone(by_strategy, strategy):
    res = by_strategy[strategy]
    assert res.info["groups"][0]["strategy"] == strategy
    assert res.num_runs == 20 and list(res.steps) == list(range(0, STEPS + 1, EVERY))
    assert np.all(res.status == int(Status.OK))
    for r in (0, 7, 19):  # first, a middle one, the last (padded lane's neighbour)
        s = res.settings[res.run_setting(r)]
        tx = optax.sgd(s["lr"], momentum=s["momentum"])
        ref = _reference(TASK, tx, res.run_seed(r), cache_key=r)
        for k, v in ref.items():
            np.testing.assert_allclose(res.curves[k][r], v, rtol=RTOL, atol=ATOL, err_msg=k)


def test_strategies_agree(by_strategy):
    base = by_strategy["vmap"]
    for other in ("chunked", "loop"):
        for k in base.curves:
            np.testing.assert_allclose(
                by_strategy[other].curves[k], base.curves[k], rtol=RTOL, atol=ATOL
            )
    improved = base.curves["train_loss"][:, -1] < base.curves["train_loss"][:, 0]
    assert improved.mean() > 0.8


def test_diverged_runs_are_frozen_marked_and_isolated_bitwise():
    # lr = 1 drives this MLP's loss up ~1e28-fold in 24 steps without overflowing; 1e4 overflows
    kw = dict(seeds=2, task=TASK, steps=STEPS, eval_every=EVERY, strategy="vmap", progress=False)
    space = {"lr": [0.05, 1.0, 1e4], "momentum": [0.9]}
    res = sweep(sgd, space, **kw)  # default rule: non-finite, or > 100 x the first loss
    off = sweep(sgd, space, divergence_threshold=None, **kw)  # the non-finite test alone
    good = sweep(
        sgd, {"lr": [0.05, 0.02, 0.03], "momentum": [0.9]}, divergence_threshold=None, **kw
    )
    ok, bad = int(Status.OK), int(Status.DIVERGED)
    assert res.info["divergence_threshold"] == 100.0
    assert list(res.status) == [ok] * 2 + [bad] * 4 and list(off.status) == [ok] * 4 + [bad] * 2
    assert [row["status"] for row in res.table().rows] == ["ok", "diverged", "diverged"]
    assert res.best["lr"] == 0.05 and off.best["lr"] == 0.05
    for k in res.curves:  # healthy lanes: bit-for-bit what they are beside healthy runs
        np.testing.assert_array_equal(res.curves[k][:2], good.curves[k][:2])
        np.testing.assert_array_equal(off.curves[k][:2], good.curves[k][:2])
    # without the ratio test lr = 1 reads "ok" although its loss exploded (finitely)
    blown = off.curves["train_loss"][2]
    assert np.all(np.isfinite(blown)) and blown[-1] > 1e6 * blown[0]
    # the rule, written out: the first step whose mini-batch loss exceeds 100 x the first one
    losses = []
    _reference_run(TASK, optax.sgd(1.0, momentum=0.9), 0, STEPS, EVERY, losses)
    losses = np.asarray(losses)
    first = int(np.argmax(losses > 100.0 * losses[0]))
    assert 0 < first < STEPS and np.all(np.isfinite(losses))
    assert res.diverged_at[2] == first and "100 x its first value" in res.messages[2]
    assert "non-finite training loss" in off.messages[4] and res.messages[0] == ""
    for r, result in [(2, res), (3, res), (4, off), (5, off)]:
        at = result.diverged_at[r]
        assert 0 <= at < STEPS
        frozen = result.steps > at  # NaN from the first evaluation after it
        assert np.all(np.isnan(result.curves["train_loss"][r][frozen]))
        assert np.all(np.isfinite(result.curves["train_loss"][r][~frozen]))
    np.testing.assert_array_equal(  # before the divergence, the run is the run
        res.curves["train_loss"][2][res.steps <= first],
        off.curves["train_loss"][2][res.steps <= first],
    )
    with pytest.raises(ValueError):
        sweep(sgd, {"lr": [0.1], "momentum": [0.0]}, divergence_threshold=0.5, **kw)
    with pytest.raises(TypeError):
        sweep(sgd, {"lr": [0.1], "momentum": [0.0]}, divergence_threshold="big", **kw)


def test_invalid_hyperparameter_marks_only_its_run():
    from gradlab.optimizers.sgd import sgd as gl_sgd

    kw = dict(seeds=1, task=TASK, steps=STEPS, eval_every=EVERY, strategy="vmap", progress=False)
    res = sweep(lambda lr: gl_sgd(lr), {"lr": [0.05, -1.0, 0.1]}, **kw)
    ref = sweep(lambda lr: gl_sgd(lr), {"lr": [0.05, 0.05, 0.1]}, **kw)
    assert res.labels() == ["ok", "invalid_hyperparameter", "ok"]
    assert "ValueError" in res.messages[1] and "learning_rate" in res.messages[1]
    assert np.all(np.isnan(res.curves["train_loss"][1]))
    for k in res.curves:
        np.testing.assert_array_equal(res.curves[k][[0, 2]], ref.curves[k][[0, 2]])
    assert res.table().rows[1]["status"] == "invalid_hyperparameter"


def test_static_axes_are_grouped_and_compiled_per_group():
    def make(name, lr):
        return {"sgd": optax.sgd, "adam": optax.adam}[name](lr)

    kw = dict(seeds=1, task=TASK, steps=STEPS, eval_every=EVERY, progress=False)
    res = sweep(make, {"name": ["sgd", "adam"], "lr": [0.01, 0.1]}, strategy="vmap", **kw)
    assert res.info["static"] == ["name"] and res.info["traced"] == ["lr"]
    assert len(res.info["groups"]) == 2
    adam = sweep(lambda lr: optax.adam(lr), {"lr": [0.01, 0.1]}, strategy="loop", **kw)
    np.testing.assert_allclose(
        res.curves["val_loss"][2:], adam.curves["val_loss"], rtol=RTOL, atol=ATOL
    )


def test_untraceable_factory_falls_back_to_one_program_per_setting():
    def opt(lr, decay):  # optax's schedule checks decay_rate with Python control flow
        return optax.sgd(optax.exponential_decay(lr, 4, decay))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = sweep(
            opt, {"lr": [0.1], "decay": [0.5, 0.9]}, task=TASK, steps=STEPS,
            eval_every=EVERY, progress=False,
        )  # fmt: skip
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert res.labels() == ["ok", "ok"] and len(res.info["groups"]) == 2
    ref = _reference(TASK, opt(0.1, 0.9), 0)
    np.testing.assert_allclose(res.curves["val_loss"][1], ref["val_loss"], rtol=RTOL, atol=ATOL)


def test_random_search_and_traced_int_axis():
    from gradlab.optimizers.sgd import sgd as gl_sgd
    from gradlab.schedules import exponential_decay
    from gradlab.sweep import loguniform

    def opt(lr, every):
        return gl_sgd(exponential_decay(lr, every, 0.5))

    space = {"lr": loguniform(1e-3, 1e-1), "every": choice([4, 8], traced=True)}
    a = sweep(opt, space, samples=3, sample_seed=1, task=TASK, steps=STEPS, progress=False)
    b = sweep(opt, space, samples=3, sample_seed=1, task=TASK, steps=STEPS, progress=False)
    assert a.settings == b.settings and len(a.settings) == 3
    assert all(1e-3 <= s["lr"] <= 1e-1 and s["every"] in (4, 8) for s in a.settings)
    assert a.info["traced"] == ["lr", "every"] and len(a.info["groups"]) == 1
    np.testing.assert_array_equal(a.curves["val_loss"], b.curves["val_loss"])  # M1: bitwise


def test_mlp_classifier_task_with_batch_norm_and_dropout():
    task = tasks.mlp_classifier(
        "moons", widths=(8,), batch_size=32, batch_norm=True, dropout=0.1, target_accuracy=0.8
    )
    res = sweep(
        lambda lr: optax.sgd(lr, momentum=0.9), {"lr": [0.03, 0.1]}, task=task, steps=40,
        eval_every=20, strategy="vmap", progress=False,
    )  # fmt: skip
    assert res.labels() == ["ok", "ok"]
    assert set(res.curves) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert np.all(res.curves["train_loss"][:, -1] < res.curves["train_loss"][:, 0])
    assert res.target == ("val_accuracy", 0.8)


def test_no_validation_split_ranks_by_training_loss():
    """A dataset with ``val_fraction=0`` has no ``val_`` metrics (they used to be NaN columns,
    with ``best`` None because the primary metric was a NaN ``val_loss``)."""
    from gradlab.lab import data as lab_data

    ds = lab_data.make_moons(64, seed=0, val_fraction=0.0)
    task = tasks.mlp_classifier(ds, widths=(4,), batch_size=16, target_accuracy=0.8)
    assert task.primary == "train_loss" and task.target == ("train_accuracy", 0.8)
    res = sweep(
        lambda lr: optax.sgd(lr), {"lr": [0.01, 0.1]}, task=task, steps=8, eval_every=4,
        progress=False,
    )  # fmt: skip
    assert set(res.curves) == {"train_loss", "train_accuracy"} and res.primary == "train_loss"
    assert np.isfinite(res.curves["train_loss"]).all()
    columns = res.table().columns
    assert "best_train_loss" in columns and not any("val" in c for c in columns)
    assert res.best is not None and res.best["lr"] in (0.01, 0.1)
    # custom(): validation data with no examples is no validation data
    x = np.zeros((0, 3), np.float32)
    empty = tasks.custom(_init, _loss, TASK.data["train"], val_data=(x, x[:, 0]), batch_size=8)
    assert "val" not in empty.data and empty.primary == "train_loss"


def test_auto_rule_and_bad_arguments():
    assert engine.choose_strategy("gpu", 64, 1e3) == "vmap"
    assert engine.choose_strategy("cpu", 1, 1e9) == "loop"
    assert engine.choose_strategy("cpu", 8, 1e9, n_devices=4) == "vmap"
    assert engine.choose_strategy("cpu", 8, 2e3) == "vmap"  # overhead-bound: batch the runs
    assert engine.choose_strategy("cpu", 8, 2e7) == "loop"
    assert engine.choose_strategy("cpu", 8, None) == "vmap"
    kw = dict(task=TASK, steps=STEPS, progress=False)
    with pytest.raises(ValueError):
        sweep(sgd, SPACE, strategy="fast", **kw)
    with pytest.raises(ValueError):
        sweep(sgd, SPACE, task=TASK, steps=10, eval_every=3)
    with pytest.raises(TypeError):  # the factory cannot take the space's names
        sweep(lambda learning_rate: optax.sgd(learning_rate), {"lr": [0.1]}, **kw)
    with pytest.raises(ValueError):
        sweep(sgd, SPACE, seeds=0, **kw)
    with pytest.raises(ValueError):
        sweep(sgd, SPACE, steps=STEPS)  # no task
    with pytest.raises(ValueError):  # a target on a metric the task does not report
        sweep(sgd, SPACE, target=("val_accuracy", 0.9), **kw)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (dict(seeds=[-1]), ValueError, "seeds must be ints >= 0, got -1"),
        (dict(seeds=[0, -3]), ValueError, "seeds must be ints >= 0"),
        (dict(seeds=[0.5]), TypeError, "seeds must be ints >= 0"),
        (dict(devices=[]), ValueError, "devices must hold at least one device"),
        (dict(devices=["cpu"]), TypeError, "devices must be jax devices"),
        (dict(strategy="chunked", chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
        (dict(strategy="chunked", chunk_size=-3), ValueError, "chunk_size must be an int >= 1"),
        (dict(chunk_size=2.5), TypeError, "chunk_size must be an int >= 1"),
        (dict(memory_budget=0), ValueError, "memory_budget must be an int >= 1 (bytes)"),
        (dict(memory_budget=-1), ValueError, "memory_budget must be an int >= 1 (bytes)"),
        (dict(strategy="vmap", chunk_size=4), ValueError, "chunk_size applies to strategy"),
        (dict(strategy="loop", chunk_size=4), ValueError, "chunk_size applies to strategy"),
    ],
)
def test_out_of_range_arguments_are_refused_naming_them(bad, error, message):
    """These were accepted: negative seeds failed deep in numpy without naming the argument,
    ``devices=[]`` with an IndexError, and a chunk size or memory budget <= 0 ran anyway."""
    kw = dict(task=TASK, steps=STEPS, eval_every=EVERY, progress=False)
    with pytest.raises(error, match=re.escape(message)):
        sweep(sgd, {"lr": [0.1], "momentum": [0.0]}, **{**kw, **bad})


def test_single_run_loop_is_the_run_alone_and_diverges_like_vmap():
    """N = 1 takes the ``loop`` strategy with a deferred transfer (the result is built while
    the program runs): the healthy run equals the hand-written run, and a diverged run alone
    reports the same status, step and message as in a vmapped program."""
    kw = dict(seeds=[3], task=TASK, steps=STEPS, eval_every=EVERY, progress=False)
    one = sweep(sgd, {"lr": [0.05], "momentum": [0.9]}, **kw)
    group = one.info["groups"][0]
    assert group["strategy"] == "loop" and group["runs"] == 1 and group["seconds"] > 0
    assert list(one.status) == [int(Status.OK)] and list(one.diverged_at) == [-1]
    ref = _reference_run(TASK, optax.sgd(0.05, momentum=0.9), 3, STEPS, EVERY)
    for k, v in ref.items():
        np.testing.assert_allclose(one.curves[k][0], v, rtol=RTOL, atol=ATOL, err_msg=k)
    assert 0 < one.info["wall_time_s"] < 600
    for lr in (1.0, 1e4):  # the ratio test, and an overflow
        alone = sweep(sgd, {"lr": [lr], "momentum": [0.9]}, strategy="loop", **kw)
        batched = sweep(sgd, {"lr": [0.05, lr], "momentum": [0.9]}, strategy="vmap", **kw)
        assert alone.labels() == ["diverged"] and batched.labels() == ["ok", "diverged"]
        assert int(alone.status[0]) == int(Status.DIVERGED) == 9
        assert alone.diverged_at[0] == batched.diverged_at[1] >= 0
        assert alone.messages[0] == batched.messages[1] != ""
        np.testing.assert_allclose(
            alone.curves["train_loss"][0], batched.curves["train_loss"][1], rtol=RTOL, atol=ATOL
        )


def test_repeated_sweeps_reuse_their_preparation_and_agree_bitwise():
    from gradlab.optimizers.sgd import sgd as gl_sgd

    def opt(lr):
        return gl_sgd(lr)

    kw = dict(task=TASK, steps=STEPS, eval_every=EVERY, strategy="loop", progress=False)
    space = {"lr": [0.05, -1.0]}
    a, b = sweep(opt, space, **kw), sweep(opt, dict(space), **kw)
    assert a.labels() == b.labels() == ["ok", "invalid_hyperparameter"]
    assert a.messages == b.messages and "learning_rate" in a.messages[1]
    for k in a.curves:
        np.testing.assert_array_equal(a.curves[k], b.curves[k])
    # the memo key is type-exact: an int axis is static, a float axis traced
    key = engine._space_key
    assert key({"n": [1]}, None, 0) != key({"n": [1.0]}, None, 0) != key({"n": [True]}, None, 0)
    assert key({"f": [abs]}, None, 0) is None  # callables are never memoised
    ints = sweep(lambda lr, n: gl_sgd(lr), {"lr": [0.05], "n": [1, 2]}, **kw)
    assert ints.info["static"] == ["n"] and len(ints.info["groups"]) == 2
    floats = sweep(lambda lr, n: gl_sgd(lr), {"lr": [0.05], "n": [1.0, 2.0]}, **kw)
    assert floats.info["traced"] == ["lr", "n"] and len(floats.info["groups"]) == 1


def test_pack_unpack_round_trip_is_exact():
    from gradlab.sweep.program import OUTCOME, pack, unpack

    metrics = {"b_loss": jnp.arange(3.0), "a_acc": jnp.asarray([0.5, np.nan, np.inf])}
    for cause, at in [(0, -1), (3, 2**31 - 1), (2, -(2**31)), (1, 65535), (1, 65536)]:
        out = {
            "cause": jnp.int32(cause),
            "diverged_at": jnp.int32(at),
            "bad_loss": jnp.float32(np.nan if cause else 0.0),
            "loss0": jnp.float32(2.5),
        }
        flat = np.asarray(jax.jit(pack)(metrics, out))
        assert flat.dtype == np.float32 and flat.shape == (2 * 3 + 6,)
        m, o = unpack(flat, ["b_loss", "a_acc"], 3)
        for k, v in metrics.items():
            np.testing.assert_array_equal(m[k], np.asarray(v))
        assert set(o) == set(OUTCOME) and int(o["cause"]) == cause and int(o["diverged_at"]) == at
        assert o["diverged_at"].dtype == np.int32 and float(o["loss0"]) == 2.5
    with pytest.raises(ValueError):
        unpack(flat, ["b_loss"], 3)


def test_static_arrays_that_print_alike_are_separate_groups():
    # Unhashable static values were grouped by repr, which rounds arrays to 8 digits: both
    # settings ran the first one's program.
    a, b = np.array([0.1]), np.array([0.1000000001])
    assert repr(a) == repr(b)

    def factory(lr, mult):
        return optax.sgd(lr * (1.0 + 1e9 * (float(mult[0]) - 0.1)))  # x1 for a, x1.1 for b

    both = sweep(factory, {"lr": [0.05], "mult": [a, b]}, task=TASK, steps=STEPS, eval_every=EVERY)
    alone = sweep(factory, {"lr": [0.05], "mult": [b]}, task=_task(), steps=STEPS, eval_every=EVERY)
    assert len(both.info["groups"]) == 2
    np.testing.assert_allclose(both.final("train_loss")[1], alone.final("train_loss")[0], rtol=1e-6)
    assert both.final("train_loss")[0] != both.final("train_loss")[1]


def test_info_reports_the_chunk_size_used():
    # chunk_size=10 over 18 runs runs two balanced chunks of 9; info said 10.
    res = sweep(
        sgd,
        {"lr": [0.01, 0.02, 0.03], "momentum": [0.0, 0.5, 0.9]},
        seeds=[0, 1],
        task=TASK,
        steps=STEPS,
        eval_every=EVERY,
        strategy="chunked",
        chunk_size=10,
        progress=False,
    )
    assert [g["chunk_size"] for g in res.info["groups"]] == [9]
