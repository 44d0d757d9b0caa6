"""Catalogue groups M (determinism), N (checkpoint / resume / safe loading) and B16 (a bad lane in
a sweep): regression tests for the defects found by the persistence review.

Each test here failed on the code before its fix.
"""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from gradlab.lab import data as lab_data
from gradlab.lab.models import MLP
from gradlab.lab.train import train
from gradlab.status import Status
from gradlab.sweep import SweepResult

# ------------------------------------------------------------------------ SweepResult.load


def _small_result() -> SweepResult:
    n_settings, seeds, evals = 2, [0, 1], 3
    runs = n_settings * len(seeds)
    curve = np.arange(runs * evals, dtype=np.float32).reshape(runs, evals)
    return SweepResult(
        names=["lr"],
        settings=[{"lr": 0.1}, {"lr": 0.3}],
        seeds=seeds,
        steps=np.array([0, 5, 10]),
        curves={"train_loss": curve, "val_loss": curve + 1},
        status=np.array([int(Status.OK)] * 3 + [int(Status.DIVERGED)], np.int32),
        diverged_at=np.array([-1, -1, -1, 7], np.int32),
        messages=["", "", "", "non-finite training loss (nan) at step 7"],
        primary="val_loss",
    )


def _rewrite(path, tmp_path, name, *, manifest=None, **arrays):
    """A copy of the file at ``path`` with some members replaced (``None`` deletes one)."""
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    if manifest is not None:
        m = json.loads(files["manifest"].tobytes().decode("utf-8"))
        manifest(m)
        files["manifest"] = np.frombuffer(json.dumps(m).encode("utf-8"), np.uint8)
    for k, v in arrays.items():
        if v is None:
            del files[k]
        else:
            files[k] = v
    out = tmp_path / f"{name}.npz"
    np.savez(out, **files)
    return out


def test_sweep_load_refuses_truncated_corrupt_and_inconsistent_files(tmp_path):
    res = _small_result()
    path = res.save(tmp_path / "ok.npz")
    raw = open(path, "rb").read()

    # truncated archives raised zipfile.BadZipFile, a .npy file TypeError (not ValueError)
    for i, cut in enumerate((len(raw) // 2, 10)):
        bad = tmp_path / f"cut{i}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="cut"):
            SweepResult.load(bad)
    npy = io.BytesIO()
    np.save(npy, np.arange(3))
    (tmp_path / "plain.npz").write_bytes(npy.getvalue())
    with pytest.raises(ValueError, match="not an .npz archive"):
        SweepResult.load(tmp_path / "plain.npz")

    # arrays that do not match the manifest loaded silently (a table of runs that do not exist)
    short = _rewrite(path, tmp_path, "short", status=res.status[:3])
    with pytest.raises(ValueError, match="'status' has shape"):
        SweepResult.load(short)
    narrow = _rewrite(path, tmp_path, "narrow", curve__val_loss=res.curves["val_loss"][:, :2])
    with pytest.raises(ValueError, match="curve__val_loss"):
        SweepResult.load(narrow)
    one_setting = lambda m: m.update(settings=m["settings"][:1])  # noqa: E731
    fewer = _rewrite(path, tmp_path, "fewer", manifest=one_setting)
    with pytest.raises(ValueError, match="corrupt"):
        SweepResult.load(fewer)
    code = _rewrite(path, tmp_path, "code", status=np.full(4, 77, np.int32))
    with pytest.raises(ValueError, match="unknown status codes"):
        SweepResult.load(code)
    # missing members raised KeyError, a manifest that is not an object AttributeError
    with pytest.raises(ValueError, match="no array 'status'"):
        SweepResult.load(_rewrite(path, tmp_path, "nostatus", status=None))
    with pytest.raises(ValueError, match="no 'names'"):
        SweepResult.load(_rewrite(path, tmp_path, "nonames", manifest=lambda m: m.pop("names")))
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files if k != "manifest"}
    listy = tmp_path / "listy.npz"
    np.savez(listy, manifest=np.frombuffer(b"[1, 2]", np.uint8), **files)
    with pytest.raises(ValueError, match="not a gradlab sweep file"):
        SweepResult.load(listy)

    # the file itself still loads, also by the name given to save (which appended .npz)
    back = SweepResult.load(tmp_path / "ok")
    assert str(back.table()) == str(res.table())
    assert back.best["index"] == res.best["index"] == 0


# ------------------------------------------------------------------------ train(..., resume=True)


_OPT = optax.adam(1e-2)  # one object: the runs share one compiled epoch


def _tiny_run(directory, data, epochs, **kw):
    model = MLP(2, [4], 2, rngs=nnx.Rngs(0))
    args = dict(epochs=epochs, batch_size=16, progress=False, checkpoint_dir=directory)
    return train(model, _OPT, data, **{**args, **kw})


def test_resume_refuses_other_options_data_or_fewer_epochs(tmp_path):
    """Resuming with another min_delta / value_from / restore_best, other data of the same size,
    or ``epochs`` below the checkpoint's, silently gave a run that no uninterrupted run gives
    (or, for restore_best, a message about 'best_model_state' containers)."""
    data = lab_data.make_moons(64, seed=0)
    other = lab_data.make_moons(64, seed=1)  # same sizes, other examples
    ck = tmp_path / "ck"
    _tiny_run(ck, data, 2)
    manifest = (ck / "manifest.json").read_bytes()
    refused = [
        (dict(min_delta=0.5), data, 3, "min_delta=0.0, this call has min_delta=0.5"),
        (dict(value_from=None), data, 3, "value_from='batch', this call has value_from=None"),
        (dict(restore_best=True), data, 3, "restore_best=False"),
        ({}, other, 3, "other training or validation data"),
        ({}, data, 1, "holds 2 epochs, more than epochs=1"),
    ]
    for kw, d, epochs, message in refused:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            _tiny_run(ck, d, epochs, resume=True, **kw)
    assert (ck / "manifest.json").read_bytes() == manifest  # nothing was overwritten

    # the same arguments resume, bit for bit as the uninterrupted run
    resumed = _tiny_run(ck, data, 3, resume=True)
    straight = _tiny_run(tmp_path / "straight", data, 3)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_a_malformed_manifest_is_a_checkpoint_error(tmp_path):
    """Hand-edited or crafted manifests raised AttributeError/TypeError from the leaf comparison,
    and a checkpoint without train's metadata a TypeError in train(resume=True)."""
    from gradlab.lab import checkpoint as ckpt

    tree = {"w": np.ones(3, np.float32), "s": optax.adam(1e-3).init({"w": np.ones(3, np.float32)})}
    good = tmp_path / "good"
    ckpt.save_checkpoint(good, tree)
    edits = {
        "entry": lambda m: m["leaves"].__setitem__("w", "x"),
        "shape": lambda m: m["leaves"]["w"].__setitem__("shape", 3),
        "table": lambda m: m.__setitem__("leaves", [1, 2]),
    }
    for name, edit in edits.items():
        d = tmp_path / name
        d.mkdir()
        manifest = json.loads((good / "manifest.json").read_text())
        state = manifest["state_file"]
        (d / state).write_bytes((good / state).read_bytes())
        edit(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ckpt.CheckpointError, match="malformed manifest"):
            ckpt.restore_checkpoint(d, tree)

    # a generic checkpoint (no history, no run configuration) is not a training checkpoint
    plain = tmp_path / "plain"
    model = MLP(2, [4], 2, rngs=nnx.Rngs(0))
    ckpt.save_checkpoint(plain, {"w": np.ones(2, np.float32)})
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint written by"):
        train(model, _OPT, lab_data.make_moons(64), epochs=1, checkpoint_dir=plain, resume=True)


def test_an_interrupted_sweep_save_keeps_the_previous_file(tmp_path, monkeypatch):
    """SweepResult.save opened the target with 'wb' first: a save interrupted while writing
    (Ctrl-C, a full disk) destroyed the previous results and left a truncated file."""
    res = _small_result()
    path = res.save(tmp_path / "sweep.npz")
    before = open(path, "rb").read()

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        res.save(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.npz"]  # no temporary left
    assert str(SweepResult.load(path).table()) == str(res.table())


def test_a_mismatch_from_another_gradlab_version_names_both_versions(tmp_path, monkeypatch):
    """N3: optimizer states may change structure between gradlab versions (0.2.0 dropped the
    learning-rate atom's step count without a schedule); a restore that fails on structure
    says which gradlab wrote the checkpoint. The same mismatch within one version does not."""
    from gradlab.lab import checkpoint as ckpt

    d = str(tmp_path / "c")
    ckpt.save_checkpoint(d, {"mu": np.zeros(3, np.float32), "count": np.int32(4)})
    template = {"mu": np.zeros(3, np.float32)}
    with pytest.raises(ckpt.CheckpointMismatchError) as same:
        ckpt.restore_checkpoint(d, template)
    assert "written by gradlab" not in str(same.value)
    monkeypatch.setattr(ckpt, "_gradlab_version", lambda: "9.9.9")
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"written by gradlab .*9\.9\.9"):
        ckpt.restore_checkpoint(d, template)


def test_checkpoint_and_sweep_files_get_the_usual_permissions(tmp_path):
    """Both writers share gradlab.files.atomic_write; the checkpoint's used tempfile.mkstemp,
    whose 0600 mode the replace kept (a checkpoint another user of a shared run directory
    could not read)."""
    import os

    from gradlab.lab import checkpoint as ckpt

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    usual = plain.stat().st_mode & 0o777
    d = tmp_path / "c"
    ckpt.save_checkpoint(str(d), {"w": np.zeros(3, np.float32)})
    for name in os.listdir(d):
        assert (d / name).stat().st_mode & 0o777 == usual, name
