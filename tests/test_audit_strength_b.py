"""Audit (part b): the sweep engine, the lab and the remaining transforms checked against
references written out here, for behaviour the other tests left unpinned.

Each test names the break it catches (found by mutating a copy of the library):

* ``steps_to_target`` and the table's median / standard-deviation / ``best`` columns against
  the definitions in the docstrings, computed by hand on synthetic curves;
* the sweep's per-step dropout key, model-state update and mini-batch plan against a
  hand-written loop (keys, plan and state written out from the documented rules, not taken
  from the library);
* the ``non-finite parameters`` divergence cause and its step;
* ``train``: the loop against a hand-written SGD loop (per-epoch permutation, seed, per-batch
  dropout key, BatchNorm state), ``min_delta`` replayed from the history, ``checkpoint_every``;
* k-means++: the D^2 sampling distribution against its exact value.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradlab.status import Status
from gradlab.sweep import SweepResult, sweep, tasks

OK, DIV = int(Status.OK), int(Status.DIVERGED)


# ------------------------------------------------------------------ results: the statistics
def _synthetic(primary="val_accuracy", target=("val_accuracy", 0.5)):
    """3 settings x 3 seeds, 6 evaluations every 10 steps, curves chosen by hand."""
    steps = np.arange(6) * 10
    nan = np.nan
    acc = np.array(
        [
            [0.1, 0.5, 0.6, 0.7, 0.8, 0.9],  # reaches 0.5 exactly at step 10
            [0.1, 0.2, 0.3, 0.6, 0.4, 0.8],  # first at 30 (not the later 50)
            [0.1, 0.2, 0.3, 0.4, 0.45, 0.49],  # never
            [0.6, 0.7, 0.7, 0.7, 0.7, 0.7],  # already at step 0
            [0.1, 0.1, 0.2, 0.2, 0.5, 0.55],  # 40
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.6],  # 50
            [0.1, 0.3, 0.99, nan, nan, nan],  # diverged after reaching it at 20
            [0.1, 0.2, nan, nan, nan, nan],  # diverged before
            [0.2, 0.3, 0.4, 0.4, 0.4, 0.4],  # never
        ],
        np.float32,
    )
    loss = (1.0 - acc).astype(np.float32)
    status = np.full(9, OK, np.int32)
    status[6:8] = DIV
    return SweepResult(
        names=["lr"],
        settings=[{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}],
        seeds=[0, 1, 2],
        steps=steps,
        curves={"val_loss": loss, "val_accuracy": acc},
        status=status,
        diverged_at=np.where(status == DIV, 15, -1).astype(np.int32),
        messages=[""] * 9,
        primary=primary,
        target=target,
    )


def _first_hit(curve, steps, threshold, larger_is_better):
    for s, v in zip(steps, curve, strict=True):
        if not np.isnan(v) and (v >= threshold if larger_is_better else v <= threshold):
            return int(s)
    return -1


def test_steps_to_target_is_the_first_evaluated_step_at_the_threshold():
    """Catches an off-by-one in ``steps_to_target`` (the next evaluation's step), a strict
    comparison at the threshold, or a loss target compared the accuracy way."""
    res = _synthetic()
    acc, loss = res.curves["val_accuracy"], res.curves["val_loss"]
    want = [_first_hit(c, res.steps, 0.5, True) for c in acc]
    assert want == [10, 30, -1, 0, 40, 50, 20, -1, -1]  # the hand-chosen curves
    np.testing.assert_array_equal(res.steps_to_target(), want)
    np.testing.assert_array_equal(res.steps_to_target("val_accuracy", 0.5), want)
    # a loss is reached from above: <= threshold
    want_loss = [_first_hit(c, res.steps, 0.35, False) for c in loss]
    assert want_loss != [-1] * 9
    np.testing.assert_array_equal(res.steps_to_target("val_loss", 0.35), want_loss)


def test_table_steps_to_target_median_std_and_best_follow_their_definitions():
    """Catches the median over seeds replaced by the min (or a mean), the ``_std`` column taken
    over another quantity, and ``best`` ranking an accuracy as a loss."""
    res = _synthetic()
    rows = res.table().rows
    stt = np.asarray(res.steps_to_target(), float)
    for i, row in enumerate(rows):
        runs = stt[3 * i : 3 * i + 3]
        med = float(np.median(np.where(runs < 0, np.inf, runs)))
        assert row["steps_to_target"] == (None if math.isinf(med) else int(med)), i
    # by hand: [10, 30, never] -> 30; [0, 40, 50] -> 40; [20, never, never] -> None
    assert [r["steps_to_target"] for r in rows] == [30, 40, None]
    final = res.curves["val_accuracy"][:, -1]
    for i, row in enumerate(rows):
        f = final[3 * i : 3 * i + 3]
        f = f[~np.isnan(f)]
        np.testing.assert_allclose(row["val_accuracy_std"], np.sqrt(np.mean((f - f.mean()) ** 2)))
    # best: highest mean final accuracy among settings whose every run is ok
    assert res.best["index"] == 0  # mean 0.73 vs 0.6167; setting 2 has diverged runs
    by_loss = _synthetic(primary="val_loss")
    assert by_loss.best["index"] == 0  # the lowest mean final loss is the same setting
    flipped = _synthetic()
    flipped.curves["val_accuracy"][3:6, -1] = 0.95  # setting 1 now has the best accuracy
    assert flipped.best["index"] == 1


# ------------------------------------------------------------------ sweep: keys, state, plan
_RNG = np.random.default_rng(1)
_X = _RNG.standard_normal((24, 3)).astype(np.float32)
_Y = (_X @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
_KEEP = 0.7


def _init(key):
    return {"w": jax.random.normal(key, (3,)) * 0.1}, {"avg": jnp.zeros(())}


def _loss(params, model_state, batch, key):
    """Dropout on the inputs (needs a fresh key every step) and a running average kept in the
    model state (needs the state carried from step to step)."""
    x, y = batch
    mask = jax.random.bernoulli(key, _KEEP, x.shape)
    pred = (x * mask / _KEEP) @ params["w"]
    new_state = {"avg": 0.8 * model_state["avg"] + 0.2 * jnp.mean(pred)}
    return jnp.mean((pred - y) ** 2), new_state


def _metrics(params, model_state, examples):
    x, y = examples
    return {"loss": jnp.mean((x @ params["w"] - y) ** 2), "avg": model_state["avg"]}


def _stateful_task(batch_size):
    return tasks.supervised(
        name="stateful",
        init=_init,
        loss=_loss,
        metrics=_metrics,
        train=(_X, _Y),
        batch_size=batch_size,
    )


def _hand_plan(n, b, seed, steps):
    """The documented plan: ``default_rng(seed)``, a fresh permutation per epoch, ``n // b``
    batches per epoch (the rest of the permutation dropped)."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < steps:
        perm = rng.permutation(n)
        rows += [perm[i * b : (i + 1) * b] for i in range(n // b)]
    return np.asarray(rows[:steps])


def test_epoch_plan_is_a_fresh_seeded_permutation_per_epoch():
    """Catches one permutation reused for every epoch, the seed ignored, or the remainder kept."""
    plan = tasks.epoch_plan(10, 3)
    for seed in (0, 5):
        np.testing.assert_array_equal(plan(seed, 7), _hand_plan(10, 3, seed, 7))
    assert not np.array_equal(plan(0, 7), plan(5, 7))
    assert tasks.epoch_plan(10, 10) is None and tasks.epoch_plan(10, None) is None


def _hand_sweep_run(lr, seed, steps, every, batch_size):
    """One run written out: ``PRNGKey(seed)`` split in three (init, -, run), dropout key
    ``fold_in(run key, step)``, the model state carried, SGD, metrics every ``every`` steps."""
    k_init, _, k_run = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, state = _init(k_init)
    plan = None if batch_size is None else _hand_plan(len(_X), batch_size, seed, steps)
    grad = jax.jit(jax.value_and_grad(_loss, has_aux=True))
    curves = [_metrics(params, state, (_X, _Y))]
    for t in range(steps):
        batch = (_X, _Y) if plan is None else (_X[plan[t]], _Y[plan[t]])
        (_, state), g = grad(params, state, batch, jax.random.fold_in(k_run, t))
        params = jax.tree.map(lambda p, d: p - lr * d, params, g)
        if (t + 1) % every == 0:
            curves.append(_metrics(params, state, (_X, _Y)))
    return {f"train_{k}": np.array([float(c[k]) for c in curves]) for k in curves[0]}


@pytest.mark.parametrize("batch_size", [None, 5])
def test_sweep_runs_use_the_documented_keys_state_and_batches(batch_size):
    """Catches a dropout key that is not folded with the step, BatchNorm-like model state not
    carried between steps, and a mini-batch plan that ignores the seed or repeats an epoch's
    permutation (the reference does not use the library's plan)."""
    steps, every = 12, 4  # 24 examples in batches of 5: 4 per epoch, 3 epochs
    res = sweep(
        lambda lr: optax.sgd(lr), {"lr": [0.01, 0.05]}, seeds=[0, 2],
        task=_stateful_task(batch_size), steps=steps, eval_every=every, strategy="vmap",
        progress=False,
    )  # fmt: skip
    assert set(res.curves) == {"train_loss", "train_avg"} and res.labels() == ["ok"] * 4
    for r in range(res.num_runs):
        lr = res.settings[res.run_setting(r)]["lr"]
        ref = _hand_sweep_run(lr, res.run_seed(r), steps, every, batch_size)
        for k, v in ref.items():
            np.testing.assert_allclose(res.curves[k][r], v, rtol=2e-5, atol=1e-6, err_msg=k)
    assert np.all(res.curves["train_avg"][:, -1] != 0.0)  # the state did move


def test_non_finite_parameters_diverge_at_the_last_step_of_their_interval():
    """A run whose parameters overflow on the last step of an evaluation interval (every
    training loss it saw was finite) is ``diverged`` with cause "non-finite parameters" at
    that step. Catches the parameter test dropped, or its step off by one."""

    def init_fn(key):
        del key
        return {"w": jnp.ones(())}

    def loss_fn(params, batch):
        return jnp.mean(batch) * params["w"] ** 2

    data = np.ones((4, 1), np.float32)
    task = tasks.custom(init_fn, loss_fn, data)

    def factory(big):  # lr 0.01 for steps 0..2, then `big` from step 3 on
        return optax.sgd(lambda t: jnp.where(t < 3, 0.01, big))

    res = sweep(
        factory, {"big": [0.01, 3e38]}, task=task, steps=8, eval_every=4, strategy="vmap",
        divergence_threshold=None, progress=False,
    )  # fmt: skip
    assert res.labels() == ["ok", "diverged"]
    # the healthy lane: w_t = 0.98^t, loss w^2 (written out)
    np.testing.assert_allclose(res.curves["train_loss"][0], 0.98 ** (2 * res.steps), rtol=1e-5)
    # the overflow: w_3 = 0.98^3 finite, w_4 = w_3 - 3e38 * 2 w_3 = -inf; losses 0..3 finite
    assert res.diverged_at[1] == 3
    assert res.messages[1] == "non-finite parameters after step 3"
    np.testing.assert_allclose(res.curves["train_loss"][1][0], 1.0)
    assert np.all(np.isnan(res.curves["train_loss"][1][1:]))


# ------------------------------------------------------------------ lab: train
def _data():
    from gradlab.lab import data as lab_data

    return lab_data.make_moons(60, seed=3)


def _mlp():
    from gradlab.lab.models import MLP

    return MLP(2, [6], 2, batch_norm=True, dropout=0.2, rngs=nnx.Rngs(1))


def _hand_train(data, epochs, b, seed, lr):
    """The documented loop: key ``key(seed)``; epoch ``e`` permutes with ``fold_in(key, e)``
    (``epoch_indices``: ``n // b`` batches); batch ``i`` drops out with ``fold_in(epoch key,
    i)``; the BatchNorm state carried; plain SGD."""
    from gradlab.lab.data import epoch_indices
    from gradlab.lab.models import apply_model, split_model

    graphdef, params, state = split_model(_mlp())
    x, y = jnp.asarray(data.x_train, jnp.float32), jnp.asarray(data.y_train)
    key = jax.random.key_data(jax.random.key(seed))

    @jax.jit
    def step(params, state, xb, yb, k):
        def objective(p):
            out, new = apply_model(graphdef, p, state, xb, train=True, key=k)
            return optax.softmax_cross_entropy_with_integer_labels(out, yb).mean(), new

        (_, new), g = jax.value_and_grad(objective, has_aux=True)(params)
        return jax.tree.map(lambda p, d: p - lr * d, params, g), new

    for e in range(epochs):
        ekey = jax.random.fold_in(key, e)
        idx = np.asarray(epoch_indices(ekey, len(x), b))
        assert idx.shape == (len(x) // b, b) and len(set(idx.ravel())) == idx.size
        for i, rows in enumerate(idx):
            params, state = step(params, state, x[rows], y[rows], jax.random.fold_in(ekey, i))
    return params, state


@pytest.mark.parametrize("seed", [0, 7])
def test_train_equals_the_hand_written_loop(seed):
    """Catches the epoch key not folded with the epoch (one permutation for every epoch), the
    ``seed`` ignored, one dropout mask for every batch of an epoch, the BatchNorm state dropped."""
    from gradlab.lab.train import train

    data = _data()
    n_train = len(data.x_train)
    b = 7  # n_train is not a multiple: the remainder is dropped
    assert n_train % b
    r = train(_mlp(), optax.sgd(0.2), data, epochs=3, batch_size=b, seed=seed, progress=False)
    params, state = _hand_train(data, 3, b, seed, 0.2)
    got = jax.tree.leaves((r.state.params, r.state.model_state))
    want = jax.tree.leaves((params, state))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-6)
    assert list(r.history.step) == [0, 1 * (n_train // b), 2 * (n_train // b), 3 * (n_train // b)]


def _replay_early_stopping(val, min_delta, patience):
    """The rule of ``train``'s docstring replayed on a validation-loss history: returns
    (best epoch, last epoch run, whether early stopping ended the run)."""
    best, best_epoch, bad = math.inf, -1, 0
    for e in range(1, len(val)):
        if val[e] < best - min_delta:
            best, best_epoch, bad = val[e], e, 0
        else:
            bad += 1
        if bad >= patience:
            return best_epoch, e, True
    return best_epoch, len(val) - 1, False


def test_min_delta_is_the_improvement_that_counts():
    """Catches ``min_delta`` ignored: the stopping epoch and the best epoch follow the rule with
    the given ``min_delta``, and this history stops elsewhere without it."""
    from gradlab.lab import data as lab_data
    from gradlab.lab.models import MLP
    from gradlab.lab.train import train

    d = lab_data.make_blobs(120, seed=1, spread=3.0)
    free = train(
        MLP(2, [8], 3, rngs=nnx.Rngs(0)), optax.sgd(0.05), d, epochs=10, batch_size=8,
        progress=False,
    )  # fmt: skip
    val = free.history.val_loss
    md, patience = 0.01, 2  # about the typical gain of an epoch here
    want_best, want_stop, stopped = _replay_early_stopping(val, md, patience)
    assert stopped and _replay_early_stopping(val, 0.0, patience)[1:] == (10, False)
    r = train(
        MLP(2, [8], 3, rngs=nnx.Rngs(0)), optax.sgd(0.05), d, epochs=10, batch_size=8,
        patience=patience, min_delta=md, progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(r.history.val_loss, val[: want_stop + 1], rtol=1e-6)
    assert int(r.state.best_epoch) == want_best and r.status == "early_stopped"


def test_checkpoint_every_saves_at_its_multiples_and_the_end(tmp_path, monkeypatch):
    """Catches ``checkpoint_every`` ignored (a save after every epoch)."""
    from gradlab.lab import checkpoint as ckpt
    from gradlab.lab import data as lab_data
    from gradlab.lab.models import MLP
    from gradlab.lab.train import train

    saved = []
    real = ckpt.save_checkpoint

    def spy(directory, tree, **kw):
        saved.append(int(tree.epoch))
        return real(directory, tree, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    d = lab_data.make_moons(40, seed=0)
    train(
        MLP(2, [4], 2, rngs=nnx.Rngs(0)), optax.sgd(0.1), d, epochs=5, batch_size="all",
        checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, progress=False,
    )  # fmt: skip
    assert saved == [2, 4, 5]


# ------------------------------------------------------------------ lab: k-means++
def test_kmeanspp_draws_each_centre_with_probability_proportional_to_d2():
    """The exact k-means++ distribution of ordered centre triples (first uniform, then each
    point with probability D(x)^2 / sum D^2, D the distance to the nearest chosen centre),
    against 40000 draws. Catches a uniform draw, or D not updated after the second centre."""
    from gradlab.lab import kmeans as km

    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [8.0, 1.0]], np.float32)
    n, k, draws = len(x), 3, 40000
    sq = ((x[:, None] - x[None]) ** 2).sum(-1).astype(np.float64)
    exact = {}
    for a, b, c in itertools.permutations(range(n), 3):
        d_a = sq[a]
        p_b = d_a[b] / d_a.sum()
        d_ab = np.minimum(d_a, sq[b])
        exact[(a, b, c)] = p_b * d_ab[c] / d_ab.sum() / n
    assert abs(sum(exact.values()) - 1.0) < 1e-12
    keys = jax.random.split(jax.random.key(0), draws)
    centres = np.asarray(jax.jit(jax.vmap(lambda kk: km.init_centers(kk, x, k, "kmeans++")))(keys))
    index = {tuple(r): i for i, r in enumerate(x.tolist())}
    counts: dict = {}
    for triple in centres.tolist():
        t = tuple(index[tuple(r)] for r in triple)
        counts[t] = counts.get(t, 0) + 1
    assert set(counts) <= set(exact)  # distinct data points only
    tv = 0.5 * sum(abs(counts.get(t, 0) / draws - p) for t, p in exact.items())
    assert tv < 0.03, tv  # sampling noise gives ~0.015 here; a uniform draw ~0.3


# ------------------------------------------------------------------ the command line
def test_parse_space_ranges_are_the_documented_grids():
    """Catches LOW/HIGH/N parsed in another order or N dropped (only the keys were checked)."""
    from gradlab.sweep.command import parse_space

    sp = parse_space(["lr=loguniform:1e-3:1:4", "b=uniform:0.5:0.9:5", "n=1,2", "x=1,2.5"])
    np.testing.assert_allclose(sp["learning_rate"].grid(), [1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    np.testing.assert_allclose(sp["b"].grid(), [0.5, 0.6, 0.7, 0.8, 0.9], rtol=1e-12)
    assert sp["n"].values == [1, 2] and not sp["n"].traced  # ints stay static
    assert sp["x"].values == [1.0, 2.5] and sp["x"].traced  # a mix is all floats


def test_cli_sweep_passes_every_option_to_the_engine(tmp_path, capsys):
    """The command's result equals the library call with the same arguments, and records them.
    Catches an option (--seeds, --steps, --eval-every, --dataset, --widths, --batch-size,
    --strategy, --divergence-threshold, a --space axis) not reaching the sweep."""
    import gradlab
    from gradlab.cli import main

    out = tmp_path / "out"
    argv = ["sweep", "--dataset", "moons", "--widths", "4,3", "--batch-size", "32"]
    argv += ["--steps", "12", "--eval-every", "4", "--seeds", "3", "--strategy", "chunked"]
    argv += ["--space", "lr=loguniform:0.01:0.1:2", "--space", "mu=0.5"]
    argv += ["--divergence-threshold", "50", "--out", str(out), "--no-plot", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = SweepResult.load(out / "sweep.npz")
    assert res.seeds == [0, 1, 2] and list(res.steps) == [0, 4, 8, 12]
    assert res.settings == [
        {"learning_rate": 0.01, "momentum": 0.5},
        {"learning_rate": pytest.approx(0.1), "momentum": 0.5},
    ]
    assert res.info["divergence_threshold"] == 50.0
    assert [g["strategy"] for g in res.info["groups"]] == ["chunked"]
    cfg = res.info["task_config"]
    assert (cfg["dataset"], cfg["widths"], cfg["batch_size"]) == ("moons", [4, 3], 32)
    api = gradlab.sweep(
        gradlab.sgd, {"learning_rate": [0.01, 0.1], "momentum": [0.5]}, seeds=3,
        task=tasks.mlp_classifier("moons", widths=(4, 3), batch_size=32), steps=12,
        eval_every=4, strategy="vmap", progress=False,
    )  # fmt: skip
    for k in api.curves:
        np.testing.assert_allclose(res.curves[k], api.curves[k], rtol=2e-5, atol=1e-6, err_msg=k)
    assert (out / "table.txt").read_text() == str(res.table()) + "\n"
    assert str(res.table()) in printed
    # 0 turns the ratio test off (None), keeping the non-finite one
    argv = ["sweep", "--dataset", "moons", "--widths", "2", "--steps", "2", "--eval-every", "2"]
    argv += ["--seeds", "1", "--space", "lr=0.1", "--divergence-threshold", "0"]
    argv += ["--out", str(tmp_path / "off"), "--no-plot", "--no-progress"]
    assert main(argv) == 0
    assert SweepResult.load(tmp_path / "off" / "sweep.npz").info["divergence_threshold"] is None


# ------------------------------------------------------------------ transforms: params_ema
@pytest.mark.parametrize("debias", [True, False])
def test_params_ema_decay_schedule_is_read_at_the_updates_taken(debias):
    """A decay schedule is evaluated at the number of updates already taken (0 at the first),
    like every other schedule argument. Catches it read one step late (only constant decays
    were checked)."""
    from gradlab.transforms.averaging import get_params_ema, params_ema

    def decay(count):
        return 0.5 + 0.04 * jnp.minimum(count, 10)  # 0.5, 0.54, ... 0.9

    grads = np.asarray(jax.random.normal(jax.random.key(3), (12, 2)), np.float32) * 0.1
    params = jnp.array([1.0, -2.0])
    tx = optax.chain(optax.sgd(1.0), params_ema(decay, debias=debias))
    state = tx.init(params)
    theta = np.asarray(params, np.float64)
    m, w = (np.zeros(2) if debias else theta.copy()), 0.0
    for t, g in enumerate(grads):
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        theta = theta - g
        beta = 0.5 + 0.04 * min(t, 10)  # schedule(t): t updates taken before this one
        m = beta * m + (1 - beta) * theta
        w = beta * w + (1 - beta)
        want = m / w if debias else m
        np.testing.assert_allclose(get_params_ema(state), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ transforms: AdaGrad's eps
@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_scale_by_rss_eps_placement_is_the_formula_it_names(eps_in_sqrt):
    """``eps_in_sqrt`` puts eps inside or outside the root: with eps comparable to G the two
    differ by 40%. Catches the switch ignored (the defaults' eps = 1e-7 hid it)."""
    from gradlab.transforms.adagrad import scale_by_rss

    tx = scale_by_rss(0.5, 1.0, eps_in_sqrt=eps_in_sqrt)
    g_seq = np.array([[1.0, -0.5], [0.25, 2.0], [-1.0, 0.0]], np.float32)
    state = tx.init(jnp.zeros(2))
    big_g = np.full(2, 0.5)
    for g in g_seq:
        u, state = tx.update(jnp.asarray(g), state)
        big_g = big_g + g.astype(np.float64) ** 2
        want = g / np.sqrt(big_g + 1.0) if eps_in_sqrt else g / (np.sqrt(big_g) + 1.0)
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6)
