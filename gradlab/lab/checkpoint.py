"""Safe, template-checked checkpoints of arbitrary pytrees (no pickle).

A checkpoint is a directory with two files:

* ``state.msgpack`` -- the pytree's arrays, written by :func:`flax.serialization.msgpack_serialize`
  (msgpack holds only data: loading it cannot run code);
* ``manifest.json`` -- format version, gradlab version, a SHA-256 of ``state.msgpack``, every
  leaf's key path, shape and dtype, and free-form JSON ``metadata`` (training history, config).

Restoring needs a **template** -- a pytree of the expected structure (for example a freshly
initialised ``TrainState``) -- which restores the exact container types (optax ``NamedTuple``
states, dicts, lists). Before anything is loaded, the stored leaves are compared with the
template's: a missing or extra entry, a different shape or a different dtype raises
:class:`CheckpointMismatchError` naming the key path, instead of silently restoring the
checkpoint's shapes or dtypes (what ``flax.serialization.from_bytes`` alone would do).

Writes are atomic (temporary files then ``os.replace``), so a crash mid-save leaves the previous
checkpoint intact. Values restore bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FORMAT_VERSION",
    "save_checkpoint",
    "restore_checkpoint",
    "read_manifest",
    "checkpoint_exists",
]

FORMAT_VERSION = 1
STATE_FILE = "state.msgpack"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or not a gradlab checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not match the template (structure, shape or dtype).

    Attributes:
      path: the key path of the first mismatching entry (``"params/hidden/0/kernel"``).
    """

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


def _flatten(state_dict: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a flax state dict into ``{"a/b/c": leaf}`` (``None`` leaves are kept)."""
    out: dict[str, Any] = {}
    if isinstance(state_dict, dict):
        if not state_dict and prefix:
            out[prefix] = _EMPTY
        for k, v in state_dict.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    else:
        out[prefix or "<root>"] = state_dict
    return out


class _Empty:
    def __repr__(self) -> str:
        return "{}"


_EMPTY = _Empty()


def _describe(leaf: Any) -> dict[str, Any]:
    if leaf is None:
        return {"kind": "none"}
    if leaf is _EMPTY:
        return {"kind": "empty"}
    if isinstance(leaf, (str, bytes)):
        return {"kind": type(leaf).__name__}
    arr = np.asarray(leaf)
    return {"kind": "array", "shape": list(arr.shape), "dtype": str(arr.dtype)}


def _leaf_table(tree: Any) -> dict[str, dict[str, Any]]:
    state = serialization.to_state_dict(tree)
    state = jax.tree.map(
        lambda x: (
            np.asarray(jax.random.key_data(x))
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
        ),
        state,
    )
    return {k: _describe(v) for k, v in _flatten(state).items()}


def _compare(stored: dict[str, dict], expected: dict[str, dict], where: str) -> None:
    for path, want in expected.items():
        if path not in stored:
            raise CheckpointMismatchError(
                f"{where}: the checkpoint has no entry {path!r} that the template expects "
                f"({_fmt(want)}); was it written by a different model or optimizer?",
                path=path,
            )
        got = stored[path]
        if got.get("kind") != want.get("kind"):
            raise CheckpointMismatchError(
                f"{where}: {path!r} is {_fmt(got)} in the checkpoint but {_fmt(want)} in the "
                "template",
                path=path,
            )
        if want.get("kind") == "array":
            if list(got["shape"]) != list(want["shape"]):
                raise CheckpointMismatchError(
                    f"{where}: {path!r} has shape {tuple(got['shape'])} in the checkpoint but "
                    f"{tuple(want['shape'])} in the template",
                    path=path,
                )
            if got["dtype"] != want["dtype"]:
                raise CheckpointMismatchError(
                    f"{where}: {path!r} has dtype {got['dtype']} in the checkpoint but "
                    f"{want['dtype']} in the template (gradlab never casts silently)",
                    path=path,
                )
    extra = [p for p in stored if p not in expected]
    if extra:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint has entries the template lacks: {', '.join(extra[:5])}",
            path=extra[0],
        )


def _fmt(d: dict) -> str:
    if d.get("kind") == "array":
        return f"an array of shape {tuple(d['shape'])} and dtype {d['dtype']}"
    return {"none": "None", "empty": "an empty container"}.get(d.get("kind"), str(d.get("kind")))


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_host(tree: Any) -> Any:
    """Device arrays to numpy; typed PRNG keys to their raw ``uint32`` data."""

    def leaf(x):
        if isinstance(x, jax.Array):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x = jax.random.key_data(x)
            return np.asarray(x)
        return x

    return jax.tree.map(leaf, tree)


def save_checkpoint(directory: str | os.PathLike, tree: Any, *, metadata: Any = None) -> str:
    """Write ``tree`` (any pytree of arrays, NamedTuples, dicts, lists) to ``directory``.

    Args:
      directory: created if needed; an existing checkpoint there is replaced atomically.
      tree: the pytree to save (parameters, optimizer state, RNG keys, counters...).
      metadata: JSON-serialisable extras stored in the manifest (history, configuration).

    Returns:
      The directory path.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    host = _to_host(tree)
    data = serialization.to_bytes(host)
    manifest = {
        "format": "gradlab-checkpoint",
        "format_version": FORMAT_VERSION,
        "gradlab_version": _gradlab_version(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "leaves": _leaf_table(host),
        "metadata": metadata,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default)
    _atomic_write(os.path.join(directory, STATE_FILE), data)
    _atomic_write(os.path.join(directory, MANIFEST_FILE), text.encode())
    return directory


def _json_default(x: Any):
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"metadata value of type {type(x).__name__} is not JSON-serialisable")


def _gradlab_version() -> str:
    try:
        import gradlab

        return str(getattr(gradlab, "__version__", "unknown"))
    except Exception:  # pragma: no cover
        return "unknown"


def checkpoint_exists(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a (complete) gradlab checkpoint."""
    d = os.fspath(directory)
    return os.path.isfile(os.path.join(d, STATE_FILE)) and os.path.isfile(
        os.path.join(d, MANIFEST_FILE)
    )


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a checkpoint.

    Raises:
      CheckpointError: the directory holds no checkpoint or the manifest is not gradlab's.
    """
    d = os.fspath(directory)
    if not checkpoint_exists(d):
        raise CheckpointError(f"no gradlab checkpoint in {d!r}")
    try:
        with open(os.path.join(d, MANIFEST_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d!r}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "gradlab-checkpoint":
        raise CheckpointError(f"{d!r}: not a gradlab checkpoint manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{d!r}: checkpoint format version {manifest.get('format_version')!r} is not "
            f"supported (this gradlab reads version {FORMAT_VERSION})"
        )
    return manifest


def restore_checkpoint(directory: str | os.PathLike, template: Any) -> tuple[Any, Any]:
    """Load a checkpoint into the structure of ``template``.

    Args:
      directory: a directory written by :func:`save_checkpoint`.
      template: a pytree with the expected structure, shapes and dtypes (its values are
        ignored); it fixes the container types of the result.

    Returns:
      ``(tree, metadata)``: the restored pytree (numpy leaves) and the manifest's metadata.

    Raises:
      CheckpointError: missing files, corrupt data (checksum) or an unknown format.
      CheckpointMismatchError: structure, shape or dtype differ from the template (names the
        key path).
    """
    d = os.fspath(directory)
    manifest = read_manifest(d)
    with open(os.path.join(d, STATE_FILE), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise CheckpointError(f"{d!r}: {STATE_FILE} does not match the manifest checksum")
    host_template = _to_host(template)
    expected = _leaf_table(host_template)
    _compare(manifest.get("leaves", {}), expected, f"restore_checkpoint({d!r})")
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types on garbage
        raise CheckpointError(f"{d!r}: corrupt {STATE_FILE} ({type(e).__name__})") from e
    # Check the data itself as well as the manifest (the two files could be mismatched).
    _compare({k: _describe(v) for k, v in _flatten(raw).items()}, expected, f"{d!r} data")
    try:
        tree = serialization.from_state_dict(host_template, raw)
    except ValueError as e:
        raise CheckpointMismatchError(f"{d!r}: {e}") from e
    tree = _rewrap_keys(template, tree)
    return tree, manifest.get("metadata")


def _rewrap_keys(template: Any, tree: Any) -> Any:
    """Typed PRNG keys in the template come back as typed keys (saved as raw data)."""

    def leaf(t, x):
        if isinstance(t, jax.Array) and jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        return x

    return jax.tree.map(leaf, template, tree)
