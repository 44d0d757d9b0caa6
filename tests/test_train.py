"""Tests for gradlab.lab.train and gradlab.lab.checkpoint (resume is bit-identical)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gradlab.lab import checkpoint as ckpt
from gradlab.lab import data as lab_data
from gradlab.lab.models import MLP, split_model
from gradlab.lab.train import TrainState, train

try:
    from gradlab.optimizers.adaptive import adam as gl_adam
except ImportError:  # pragma: no cover - written by another helper
    gl_adam = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared between this process and the resume subprocess: identical model, optimizer and data.
# One optimizer object for every run of this setup, so they share one compiled epoch.
SETUP = textwrap.dedent(
    """
    import optax
    from flax import nnx
    from gradlab.lab import data as lab_data
    from gradlab.lab.models import MLP

    DATA = lab_data.make_moons(96, seed=0)
    OPT = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

    def model(widths=(8,)):
        return MLP(2, list(widths), 2, batch_norm=True, dropout=0.1, rngs=nnx.Rngs(0))
    """
)
_ns: dict = {}
exec(SETUP, _ns)
DATA, OPT, model = _ns["DATA"], _ns["OPT"], _ns["model"]
RUN = dict(batch_size=16, progress=False)


def _bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def straight():
    """Four uninterrupted epochs of the shared setup, with the progress bar."""
    m = model()
    before = np.asarray(m.out.kernel[...]).copy()
    return train(m, OPT, DATA, epochs=4, batch_size=16, progress=True), before


def test_train_reduces_loss_and_reports_metrics(straight):
    r, before = straight
    h = r.history
    assert len(h) == 5 and list(h.epoch) == [0, 1, 2, 3, 4]
    assert h.train_loss[-1] < 0.6 * h.train_loss[0]
    assert h.val_acc[-1] > 0.8 and 0 <= h.train_acc.min() <= h.train_acc.max() <= 1
    assert np.isnan(h.batch_loss[0]) and np.all(np.isfinite(h.batch_loss[1:]))
    steps = len(DATA.x_train) // 16
    np.testing.assert_array_equal(h.step, np.arange(5) * steps)
    np.testing.assert_array_equal(h.examples, h.step * 16)
    assert r.status == "completed" and not r.stopped_early
    # The model passed in was updated in place.
    assert not np.allclose(before, np.asarray(r.model.out.kernel[...]))
    ax = h.plot()
    assert len(ax.lines) == 2


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """Two epochs of the shared setup, checkpointed."""
    ck = str(tmp_path_factory.mktemp("half") / "ck")
    return ck, train(model(), OPT, DATA, epochs=2, checkpoint_dir=ck, **RUN)


def test_resume_is_bit_identical_across_processes(half_run, straight, tmp_path):
    src, half = half_run
    straight = straight[0]
    assert int(half.state.epoch) == 2
    ck = str(tmp_path / "ck")
    shutil.copytree(src, ck)
    # Resume in a fresh Python process: nothing shared but the checkpoint directory.
    script = SETUP + textwrap.dedent(
        f"""
        from gradlab.lab.train import train
        r = train(model(), OPT, DATA, epochs=4, batch_size=16, checkpoint_dir={ck!r},
                  resume=True, progress=False)
        assert int(r.state.epoch) == 4 and list(r.history.epoch) == [0, 1, 2, 3, 4]
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)  # the same JAX platform as this process
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, meta = ckpt.restore_checkpoint(ck, straight.state)
    _bitwise_equal(resumed.params, straight.state.params)
    _bitwise_equal(resumed.model_state, straight.state.model_state)  # BatchNorm statistics
    _bitwise_equal(resumed.opt_state, straight.state.opt_state)
    _bitwise_equal(resumed, straight.state)  # RNG key, counters, early-stopping state
    hist = meta["history"]
    assert [row["epoch"] for row in hist] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal([row["val_loss"] for row in hist], straight.history.val_loss)
    manifest = json.load(open(os.path.join(ck, "manifest.json")))
    assert manifest["format"] == "gradlab-checkpoint"
    assert manifest["state_file"] == f"state-{manifest['sha256']}.msgpack"
    # one state file: each save deleted the one its manifest replaced
    assert sorted(os.listdir(ck)) == ["manifest.json", manifest["state_file"]]


def test_resume_refuses_a_different_model_or_batch_size(half_run):
    ck, _ = half_run
    with pytest.raises(ckpt.CheckpointMismatchError) as e:
        train(model((9,)), OPT, DATA, epochs=3, checkpoint_dir=ck, resume=True, **RUN)
    assert "hidden/0/kernel" in e.value.path or "norms/0" in e.value.path
    with pytest.raises(ValueError):
        train(model(), OPT, DATA, epochs=3, batch_size=8, checkpoint_dir=ck, resume=True)


def test_resume_refuses_other_optimizer_hyperparameters(half_run, tmp_path):
    """The same optimizer structure with another learning rate or moment decay rates: the state
    restores, but the run would silently differ, so the probe refuses it (and keeps the
    checkpoint); the same optimizer rebuilt, or a checkpoint without a probe, resumes."""
    src, _ = half_run
    ck = str(tmp_path / "ck")
    shutil.copytree(src, ck)
    before = {f: open(os.path.join(ck, f), "rb").read() for f in os.listdir(ck)}
    for other in (
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-2)),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2, b1=0.8)),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2, b2=0.99)),
    ):
        with pytest.raises(ValueError, match="other optimizer hyperparameters"):
            train(model(), other, DATA, epochs=3, checkpoint_dir=ck, resume=True, **RUN)
    assert {f: open(os.path.join(ck, f), "rb").read() for f in os.listdir(ck)} == before
    rebuilt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))  # equal, not OPT
    r = train(model(), rebuilt, DATA, epochs=3, checkpoint_dir=ck, resume=True, **RUN)
    assert int(r.state.epoch) == 3
    # A checkpoint written before the probe existed (no "optimizer_probe" in its config).
    old = str(tmp_path / "old")
    shutil.copytree(src, old)
    path = os.path.join(old, "manifest.json")
    manifest = json.load(open(path))
    assert len(manifest["metadata"]["config"].pop("optimizer_probe")) == 4
    json.dump(manifest, open(path, "w"))
    other = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-2))
    r = train(model(), other, DATA, epochs=3, checkpoint_dir=old, resume=True, **RUN)
    assert int(r.state.epoch) == 3


def test_optimizer_probe_tolerance_and_unavailable_probe():
    """Round-off between platforms passes (1e-6 of each update's size; 8 eps for 16-bit
    parameters), a 1e-4 difference does not; no probe on either side skips the check."""
    from gradlab.lab.train import _check_optimizer_probe, _optimizer_probe

    params = split_model(model())[1]
    probe = _optimizer_probe(OPT, params)
    assert probe is not None and len(probe) == 4 and probe == _optimizer_probe(OPT, params)
    size = np.repeat(np.asarray(probe)[1::2], 2)
    _check_optimizer_probe("ck", probe, list(np.asarray(probe) + 3e-7 * size), params)
    with pytest.raises(ValueError, match="two probe updates differ"):
        _check_optimizer_probe("ck", probe, list(np.asarray(probe) + 1e-4 * size), params)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)  # 8 eps = 6e-2
    _check_optimizer_probe("ck", probe, list(np.asarray(probe) + 1e-2 * size), half)
    _check_optimizer_probe("ck", None, probe, params)
    _check_optimizer_probe("ck", probe, None, params)

    def refuses(updates, state, params=None):
        raise RuntimeError("needs inputs train does not give")

    assert _optimizer_probe(optax.GradientTransformation(lambda p: (), refuses), params) is None


def test_checkpoint_dtype_shape_structure_and_corruption(tmp_path):
    tree = {"w": jnp.ones((3, 2)), "s": optax.adam(1e-3).init({"w": jnp.ones((3, 2))})}
    d = str(tmp_path / "c")
    ckpt.save_checkpoint(d, tree, metadata={"note": "x"})
    back, meta = ckpt.restore_checkpoint(d, tree)
    assert meta == {"note": "x"} and type(back["s"][0]).__name__ == "ScaleByAdamState"
    _bitwise_equal(back, tree)
    bf16 = {"w": jnp.ones((3, 2), jnp.bfloat16), "s": tree["s"]}
    with pytest.raises(ckpt.CheckpointMismatchError) as e:
        ckpt.restore_checkpoint(d, bf16)
    assert e.value.path == "w"
    with pytest.raises(ckpt.CheckpointMismatchError) as e:
        ckpt.restore_checkpoint(d, {"w": jnp.ones((2, 3)), "s": tree["s"]})
    assert e.value.path == "w"
    with pytest.raises(ckpt.CheckpointMismatchError) as e:
        ckpt.restore_checkpoint(d, {"w": tree["w"], "s": optax.sgd(0.1).init(tree)})
    assert e.value.path.startswith("s/")
    # A pickle payload in place of the data is refused (checksum), never unpickled.
    import pickle

    manifest_path = os.path.join(d, "manifest.json")
    manifest = json.load(open(manifest_path))
    with open(os.path.join(d, manifest["state_file"]), "wb") as f:
        f.write(pickle.dumps({"w": 1}))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore_checkpoint(d, tree)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore_checkpoint(str(tmp_path / "missing"), tree)
    # A manifest naming a file elsewhere is refused before anything is opened.
    for name in ("../state.msgpack", "/etc/passwd", "state-x.msgpack", None):
        with open(manifest_path, "w") as f:
            json.dump(dict(manifest, state_file=name), f)
        with pytest.raises(ckpt.CheckpointError, match="no valid state file"):
            ckpt.restore_checkpoint(d, tree)


class _Interrupt(BaseException):
    """A simulated interruption (a ``KeyboardInterrupt`` or a kill) in the middle of a save."""


def _adam_tree(shift):
    tree = {"w": jnp.arange(6.0).reshape(3, 2), "s": optax.adam(1e-3).init({"w": jnp.ones((3, 2))})}
    return jax.tree.map(lambda x: x + jnp.asarray(shift, x.dtype), tree)


def test_an_interrupted_save_leaves_the_old_or_the_new_checkpoint_whole(tmp_path, monkeypatch):
    """Interrupt a save over an existing checkpoint before each of its file-system operations in
    turn (``os.replace``, ``os.unlink``, ``os.fsync``: the directory changes only at the first
    two). Every time, the directory loads bit for bit as the old checkpoint (until the manifest
    is replaced) or the new one (from then on), never as a mixture; saving again afterwards
    leaves a clean directory."""
    old, new = _adam_tree(0), _adam_tree(10)
    d = str(tmp_path / "c")
    armed = {"on": False, "left": 0}

    def interrupting(name):
        real = getattr(os, name)

        def op(*args, **kwargs):
            if armed["on"]:
                if armed["left"] == 0:
                    armed["on"] = False
                    raise _Interrupt(name)
                armed["left"] -= 1
            return real(*args, **kwargs)

        return op

    for name in ("replace", "unlink", "fsync"):
        monkeypatch.setattr(os, name, interrupting(name))
    seen = []
    for k in range(50):
        ckpt.save_checkpoint(d, old, metadata={"which": "old"})
        armed.update(on=True, left=k)
        try:
            ckpt.save_checkpoint(d, new, metadata={"which": "new"})
            interrupted = False
        except _Interrupt:
            interrupted = True
        armed["on"] = False
        assert ckpt.checkpoint_exists(d)
        back, meta = ckpt.restore_checkpoint(d, old)
        _bitwise_equal(back, old if meta["which"] == "old" else new)
        seen.append(meta["which"])
        if not interrupted:
            break
    assert seen[0] == "old" and seen[-1] == "new"  # the save completed at the last k
    assert seen == sorted(seen, key=["old", "new"].index)  # old ... old, new ... new
    # A save killed outright (no exception handler ran) leaves its temporary files behind.
    open(os.path.join(d, ".tmp-k1llmanifest.json"), "w").close()
    open(os.path.join(d, ".tmp-k1llstate-" + "0" * 64 + ".msgpack"), "w").close()
    open(os.path.join(d, "notes.txt"), "w").close()  # not the checkpoint's: kept
    ckpt.save_checkpoint(d, old, metadata={"which": "old"})
    manifest = ckpt.read_manifest(d)
    assert sorted(os.listdir(d)) == sorted(["manifest.json", manifest["state_file"], "notes.txt"])


def test_format_1_checkpoints_load_and_a_save_upgrades_them(tmp_path):
    """Format 1 kept the data in ``state.msgpack``; such checkpoints still restore, and saving
    over one writes format 2 and removes the old file."""
    tree = _adam_tree(1)
    d = str(tmp_path / "v1")
    ckpt.save_checkpoint(d, tree, metadata={"n": 1})
    manifest_path = os.path.join(d, "manifest.json")
    manifest = json.load(open(manifest_path))
    os.rename(os.path.join(d, manifest.pop("state_file")), os.path.join(d, "state.msgpack"))
    with open(manifest_path, "w") as f:
        json.dump(dict(manifest, format_version=1), f)
    assert ckpt.checkpoint_exists(d)
    back, meta = ckpt.restore_checkpoint(d, tree)
    _bitwise_equal(back, tree)
    assert meta == {"n": 1}
    ckpt.save_checkpoint(d, _adam_tree(2), metadata={"n": 2})
    manifest = ckpt.read_manifest(d)
    assert manifest["format_version"] == ckpt.FORMAT_VERSION == 2
    assert sorted(os.listdir(d)) == ["manifest.json", manifest["state_file"]]
    _bitwise_equal(ckpt.restore_checkpoint(d, tree)[0], _adam_tree(2))


@pytest.mark.parametrize("damage", ["future_version", "truncated_manifest", "missing_state"])
def test_resume_from_a_broken_checkpoint_raises_and_keeps_it(tmp_path, damage):
    """A manifest that cannot be parsed (a newer format version, truncated JSON) or whose state
    file is missing is still a checkpoint: ``resume=True`` raises ``CheckpointError`` saying
    what is wrong instead of training from epoch 0 and deleting the old state file."""
    d = str(tmp_path / "c")
    data = lab_data.make_blobs(60, num_classes=3, num_features=4, seed=0)
    mk = lambda: MLP(4, [4], 3, rngs=nnx.Rngs(0))
    train(mk(), optax.sgd(0.1), data, epochs=1, progress=False, checkpoint_dir=d)
    manifest_path = os.path.join(d, "manifest.json")
    text = open(manifest_path).read()
    state_file = json.loads(text)["state_file"]
    if damage == "future_version":
        with open(manifest_path, "w") as f:
            json.dump(dict(json.loads(text), format_version=99), f)
        match = "format version 99 is not supported"
    elif damage == "truncated_manifest":
        with open(manifest_path, "w") as f:
            f.write(text[: len(text) // 2])
        match = "unreadable manifest"
    else:
        os.remove(os.path.join(d, state_file))
        match = "which is missing"
    before = sorted(os.listdir(d))
    assert ckpt.checkpoint_exists(d)
    if damage != "missing_state":
        with pytest.raises(ckpt.CheckpointError, match=match):
            ckpt.read_manifest(d)
    with pytest.raises(ckpt.CheckpointError, match=match):
        train(mk(), optax.sgd(0.1), data, epochs=2, progress=False, checkpoint_dir=d, resume=True)
    assert sorted(os.listdir(d)) == before  # nothing overwritten or deleted
    # A state file without a manifest (a first save interrupted before its commit) is not one.
    os.remove(manifest_path)
    assert not ckpt.checkpoint_exists(d)
    with pytest.raises(ckpt.CheckpointError, match="no gradlab checkpoint"):
        ckpt.read_manifest(d)


def test_early_stopping_and_restore_best():
    d = lab_data.make_blobs(120, seed=1, spread=3.0)
    m = MLP(2, [8], 3, rngs=nnx.Rngs(0))
    r = train(
        m, optax.sgd(1.0), d, epochs=12, batch_size=8, patience=2, restore_best=True, progress=False
    )
    val = r.history.val_loss
    best = int(np.argmin(val[1:])) + 1
    assert int(r.state.best_epoch) == best and 0 < best < len(val) - 1
    # Stopped exactly `patience` epochs after the last improvement.
    assert r.status == "early_stopped" and r.stopped_early and len(val) == best + 3
    assert np.all(val[best + 1 :] >= val[best])
    # The returned model is the best epoch's (restore_best).
    logits = r.model(jnp.asarray(d.x_val))
    got = optax.softmax_cross_entropy_with_integer_labels(logits, d.y_val).mean()
    np.testing.assert_allclose(float(got), val[best], rtol=1e-5)


def _recorder():
    """An extra-args transformation that stores the ``value`` it was given."""

    def init(params):
        return jnp.zeros((), jnp.float32)

    def update(updates, state, params=None, *, value=None, **extra):
        return updates, jnp.asarray(value, jnp.float32)

    return optax.GradientTransformationExtraArgs(init, update)


def test_batch_loss_forwarded_as_value():
    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    opt = optax.chain(optax.sgd(0.1), _recorder())
    r = train(m, opt, d, epochs=3, batch_size="all", progress=False)  # value_from="batch"
    # One full batch per epoch: the loss of the last step.
    assert float(r.state.opt_state[1]) == np.float32(r.history.batch_loss[-1])


def test_validation_loss_forwarded_to_reduce_on_plateau():
    from gradlab.transforms.plateau import reduce_on_plateau

    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    opt = optax.chain(optax.sgd(0.0), _recorder(), reduce_on_plateau(factor=0.5, patience=1))
    r = train(m, opt, d, epochs=4, batch_size="all", value_from="val", progress=False)
    # The validation loss at the end of the previous epoch...
    assert float(r.state.opt_state[1]) == np.float32(r.history.val_loss[-2])
    # ... is flat (lr 0), so the plateau rule reduced the scale.
    assert float(r.state.opt_state[2].scale) < 1.0


def test_gradlab_optimizer_and_regression():
    if gl_adam is None:
        pytest.skip("gradlab.optimizers.adaptive.adam not available")
    d = lab_data.make_regression(128, degree=2, seed=0)
    m = MLP(1, [16], 1, activation="tanh", rngs=nnx.Rngs(0))
    r = train(m, gl_adam(1e-2), d, epochs=5, batch_size=16, progress=False)
    assert np.isnan(r.history.train_acc).all()
    assert r.history.train_loss[-1] < 0.3 * r.history.train_loss[0]


def test_non_finite_stops_the_run():
    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    r = train(m, optax.sgd(1e30), d, epochs=5, batch_size="all", progress=False)
    assert r.status == "non_finite" and len(r.history) < 6


def test_non_finite_status_without_stopping():
    """With ``stop_on_nonfinite=False`` the run goes on, and a final NaN/inf training loss still
    gives ``status="non_finite"`` (it said "completed")."""
    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    r = train(
        m, optax.sgd(1e30), d, epochs=4, batch_size="all", stop_on_nonfinite=False, progress=False
    )
    assert len(r.history) == 5 and not np.isfinite(r.history.train_loss[-1])
    assert r.status == "non_finite" and not r.stopped_early


def test_resuming_a_non_finite_run_trains_no_further(tmp_path):
    """A run stopped as ``non_finite`` and resumed with the same arguments returns at once, the
    same as the uninterrupted run bit for bit (it trained another epoch)."""
    d = lab_data.make_moons(100, seed=0)
    mk = lambda: MLP(2, [8], 2, rngs=nnx.Rngs(0))
    opt = optax.sgd(1e30)
    run = dict(epochs=5, batch_size="all", progress=False, checkpoint_dir=str(tmp_path / "c"))
    a = train(mk(), opt, d, **run)
    assert a.status == "non_finite" and len(a.history) < 6
    b = train(mk(), opt, d, resume=True, **run)
    assert b.status == "non_finite" and not b.stopped_early
    _bitwise_equal(a.state, b.state)
    for name in ("epoch", "step", "train_loss", "val_loss", "batch_loss"):
        np.testing.assert_array_equal(a.history[name], b.history[name])


def test_bad_arguments():
    d = lab_data.make_moons(40, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError):
        train(m, optax.sgd(0.1), d, batch_size=1000)
    with pytest.raises(ValueError):
        train(m, optax.sgd(0.1), d, val=None, patience=2)
    with pytest.raises(ValueError):
        train(m, optax.sgd(0.1), d, resume=True)
    with pytest.raises(ValueError):
        train(m, optax.sgd(0.1), d, value_from="epoch")
    with pytest.raises(TypeError):
        train(m, "adam", d)
    with pytest.raises(TypeError, match=r"gradlab\.lab\.data\.Dataset"):  # a name that exists
        train(m, optax.sgd(0.1), d.x_train)


def test_a_model_that_does_not_fit_the_data_is_refused():
    """Input features, output width and labels are checked against the model's shapes (a
    2-output model on 3 classes, or out-of-range labels, reported ``non_finite``; a wrong
    ``in_features`` gave a raw ``dot_general`` error)."""
    blobs = lab_data.make_blobs(40, num_classes=3, num_features=4, seed=0)
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="num_classes=3"):
        train(MLP(4, [4], 2, rngs=nnx.Rngs(0)), opt, blobs, epochs=1, progress=False)
    with pytest.raises(ValueError, match="4 features.*in_features"):
        train(MLP(5, [4], 3, rngs=nnx.Rngs(0)), opt, blobs, epochs=1, progress=False)
    pair = (blobs.x_train, blobs.y_train + 1)  # labels 1..3 for 3 outputs
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        train(MLP(4, [4], 3, rngs=nnx.Rngs(0)), opt, pair, epochs=1, progress=False)
    reg = lab_data.make_regression(40, num_features=2, seed=0)
    with pytest.raises(ValueError, match="3 outputs per example"):
        train(MLP(2, [4], 3, rngs=nnx.Rngs(0)), opt, reg, epochs=1, progress=False)
    # More outputs than classes is allowed (the extra logits are never a label).
    r = train(MLP(4, [4], 5, rngs=nnx.Rngs(0)), opt, blobs, epochs=1, progress=False)
    assert r.status == "completed"


def _interop_tx():
    return gl_adam(1e-2) if gl_adam is not None else optax.adam(1e-2)


def test_nnx_optimizer_interop():
    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(m, _interop_tx(), wrt=nnx.Param)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)

    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    first = float(step(m, optimizer))
    for _ in range(30):
        last = float(step(m, optimizer))
    assert last < 0.7 * first


def test_linen_train_state_interop():
    import flax.linen as nn
    from flax.training import train_state

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.tanh(nn.Dense(16)(x)))

    d = lab_data.make_moons(100, seed=0)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    net = Net()
    params = net.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_interop_tx())

    @jax.jit
    def step(state):
        def loss_fn(p):
            logits = state.apply_fn({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first = step(state)
    for _ in range(30):
        state, last = step(state)
    assert float(last) < 0.7 * float(first)


def test_train_state_is_a_pytree_of_the_model_parts():
    parts = split_model(model())
    r = train(parts, OPT, DATA, epochs=1, **RUN)
    assert isinstance(r.state, TrainState)
    assert jax.tree.structure(r.state.params) == jax.tree.structure(parts.params)


def test_line_search_extras_for_lbfgs():
    d = lab_data.make_moons(100, seed=0)
    m = MLP(2, [8], 2, activation="tanh", rngs=nnx.Rngs(0))
    ls = optax.scale_by_backtracking_linesearch(max_backtracking_steps=15, store_grad=True)
    r = train(
        m,
        optax.lbfgs(linesearch=ls),
        d,
        epochs=6,
        batch_size="all",
        line_search=True,
        progress=False,
    )
    assert r.status == "completed"
    # Full batch, no dropout: the Armijo search on `value_fn` makes the training loss monotone.
    loss = r.history.train_loss
    assert np.all(np.diff(loss) <= 1e-6) and loss[-1] < 0.5 * loss[0]
    with pytest.raises(ValueError):
        train(m, optax.lbfgs(), d, line_search=True, value_from="val")


def test_make_step_vmaps_over_a_traced_learning_rate():
    """The pure step sweeps hyperparameters: vmap over lr == separate runs (allclose)."""
    if gl_adam is None:
        pytest.skip("gradlab.optimizers.adaptive.adam not available")
    from gradlab.lab.train import make_step

    d = lab_data.make_moons(64, seed=0)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    g, p, s = split_model(MLP(2, [8], 2, rngs=nnx.Rngs(0)))

    def run(lr):
        tx = gl_adam(lr)
        step = make_step(g, tx)

        def body(carry, _):
            params, ms, os_ = carry
            params, ms, os_, loss = step(params, ms, os_, x, y)
            return (params, ms, os_), loss

        _, losses = jax.lax.scan(body, (p, s, tx.init(p)), None, length=20)
        return losses

    lrs = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    swept = jax.jit(jax.vmap(run))(lrs)
    single = jax.jit(run)(lrs[2])
    np.testing.assert_allclose(swept[2], single, rtol=1e-5, atol=1e-6)
    assert float(swept[2, -1]) < float(swept[0, -1])  # larger lr, lower loss after 20 steps
