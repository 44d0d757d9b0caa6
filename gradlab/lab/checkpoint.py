"""Safe, template-checked checkpoints of arbitrary pytrees (no pickle).

A checkpoint is a directory with two files:

* ``state-<sha256>.msgpack`` -- the pytree's arrays, written by
  :func:`flax.serialization.msgpack_serialize` (msgpack holds only data: loading it cannot run
  code), named after the SHA-256 of its bytes;
* ``manifest.json`` -- format version, gradlab version, the name and SHA-256 of the state file,
  every leaf's key path, shape and dtype, and free-form JSON ``metadata`` (training history,
  config).

Restoring needs a **template** -- a pytree of the expected structure (for example a freshly
initialised ``TrainState``) -- which restores the exact container types (optax ``NamedTuple``
states, dicts, lists). Before anything is loaded, the stored leaves are compared with the
template's: a missing or extra entry, a different shape or a different dtype raises
:class:`CheckpointMismatchError` naming the key path, instead of silently restoring the
checkpoint's shapes or dtypes (what ``flax.serialization.from_bytes`` alone would do).

Saves are atomic as a pair: the new state file is written under its own name next to the old
one (temporary file, ``fsync``, ``os.replace``), then ``manifest.json`` is replaced in one
``os.replace``, which is the commit; only then is the old state file deleted. Interrupted at
any point, the directory holds either the previous checkpoint or the new one, each complete,
and values restore bit for bit. Format 1 checkpoints (a fixed ``state.msgpack`` name, replaced
before the manifest, so an interrupted save could pair the new data with the old manifest)
are still read, and saving over one upgrades it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import jax
import numpy as np
from flax import serialization

from gradlab.files import TMP_PREFIX, atomic_write

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FORMAT_VERSION",
    "save_checkpoint",
    "restore_checkpoint",
    "read_manifest",
    "checkpoint_exists",
]

#: Version 2 names the state file after its SHA-256 (``manifest["state_file"]``); version 1
#: used the fixed name :data:`STATE_FILE`. Both are read; saves write version 2.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: The state file of a format-1 checkpoint.
STATE_FILE = "state.msgpack"
MANIFEST_FILE = "manifest.json"
_STATE_NAME = re.compile(r"state-[0-9a-f]{64}\.msgpack")


def state_file_name(sha256: str) -> str:
    """The state file's name in a format-2 checkpoint: ``state-<sha256>.msgpack``."""
    return f"state-{sha256}.msgpack"


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


def _stored_leaves(d: str, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's leaf table, checked to be well formed (``CheckpointError`` otherwise: a
    hand-edited or crafted manifest must not end in an ``AttributeError``)."""
    leaves = manifest.get("leaves", {})
    if not isinstance(leaves, dict):
        raise CheckpointError(f"{d!r}: malformed manifest ('leaves' is not a mapping)")
    for path, entry in leaves.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("kind"), str)
        if ok and entry["kind"] == "array":
            shape = entry.get("shape")
            ok = (
                isinstance(shape, list)
                and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
                and isinstance(entry.get("dtype"), str)
            )
        if not ok:
            raise CheckpointError(f"{d!r}: malformed manifest entry {path!r}: {entry!r}")
    return leaves


def _fmt(d: dict) -> str:
    if d.get("kind") == "array":
        return f"an array of shape {tuple(d['shape'])} and dtype {d['dtype']}"
    return {"none": "None", "empty": "an empty container"}.get(d.get("kind"), str(d.get("kind")))


def _remove_stale_states(directory: str, keep: str) -> None:
    """Delete the state files that no manifest refers to any more (after the commit), and the
    temporary files of earlier saves that were killed before they could clean up (concurrent
    saves into one directory are not supported, so none can belong to a running save)."""
    for name in os.listdir(directory):
        stale_tmp = name.startswith(TMP_PREFIX) and name.endswith((".msgpack", MANIFEST_FILE))
        if stale_tmp or (name != keep and (name == STATE_FILE or _STATE_NAME.fullmatch(name))):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


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
      directory: created if needed; an existing checkpoint there is replaced atomically: until
        the new manifest is in place (one ``os.replace``), the old checkpoint is untouched and
        loads as before; from then on the new one does. Other files there are left alone.
      tree: the pytree to save (parameters, optimizer state, RNG keys, counters...).
      metadata: JSON-serialisable extras stored in the manifest (history, configuration).

    Returns:
      The directory path.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    host = _to_host(tree)
    data = serialization.to_bytes(host)
    sha = hashlib.sha256(data).hexdigest()
    state_file = state_file_name(sha)
    manifest = {
        "format": "gradlab-checkpoint",
        "format_version": FORMAT_VERSION,
        "gradlab_version": _gradlab_version(),
        "state_file": state_file,
        "sha256": sha,
        "leaves": _leaf_table(host),
        "metadata": metadata,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, default=_json_default)
    # 1. the new data under its own name: the old manifest still names the old data;
    atomic_write(os.path.join(directory, state_file), data)
    # 2. the commit: one atomic replace switches the manifest, hence the pair;
    atomic_write(os.path.join(directory, MANIFEST_FILE), text.encode())
    # 3. the old data, no longer referred to (an interruption here only leaves it behind).
    _remove_stale_states(directory, keep=state_file)
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
    """Whether ``directory`` holds a gradlab checkpoint, that is a ``manifest.json``.

    The manifest is the commit of a save, so its presence is what counts: a manifest that cannot
    be parsed (truncated, a newer format version) or whose state file is missing still counts,
    and :func:`restore_checkpoint` (or :func:`read_manifest`) then raises
    :class:`CheckpointError` saying what is wrong -- rather than a resumed training silently
    starting over and its first save deleting the old state file. A state file without a
    manifest (the first save, interrupted before its commit) is not a checkpoint.
    """
    return os.path.isfile(os.path.join(os.fspath(directory), MANIFEST_FILE))


def _parse_manifest(d: str) -> dict[str, Any]:
    """The checked ``manifest.json`` of directory ``d`` (``CheckpointError`` if it is not a
    readable gradlab manifest of a supported version)."""
    try:
        with open(os.path.join(d, MANIFEST_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d!r}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != "gradlab-checkpoint":
        raise CheckpointError(f"{d!r}: not a gradlab checkpoint manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{d!r}: checkpoint format version {manifest.get('format_version')!r} is not "
            f"supported (this gradlab reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    _state_file(d, manifest)
    return manifest


def _state_file(d: str, manifest: dict[str, Any]) -> str:
    """The name of the state file a checked manifest refers to (a plain name in ``d``: a
    manifest naming anything else is refused)."""
    if manifest.get("format_version") == 1:
        return STATE_FILE
    name = manifest.get("state_file")
    if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
        raise CheckpointError(f"{d!r}: the manifest names no valid state file ({name!r})")
    return name


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a checkpoint.

    Raises:
      CheckpointError: the directory holds no manifest, or the manifest is unreadable
        (truncated JSON), not gradlab's, of an unsupported format version, or names no valid
        state file (the message says which).
    """
    d = os.fspath(directory)
    if not checkpoint_exists(d):
        raise CheckpointError(f"no gradlab checkpoint in {d!r} (no {MANIFEST_FILE})")
    return _parse_manifest(d)


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
    manifest, name, data = _read_pair(d)
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise CheckpointError(f"{d!r}: {name} does not match the manifest checksum")
    host_template = _to_host(template)
    expected = _leaf_table(host_template)
    try:
        _compare(_stored_leaves(d, manifest), expected, f"restore_checkpoint({d!r})")
    except CheckpointMismatchError as e:
        written_by, this = manifest.get("gradlab_version"), _gradlab_version()
        if written_by is None or written_by == this:
            raise
        raise CheckpointMismatchError(
            f"{e} (the checkpoint was written by gradlab {written_by}, this is gradlab {this}: "
            "optimizer states can change structure between versions)"
        ) from e
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types on garbage
        raise CheckpointError(f"{d!r}: corrupt {name} ({type(e).__name__})") from e
    # Check the data itself as well as the manifest (the two files could be mismatched).
    _compare({k: _describe(v) for k, v in _flatten(raw).items()}, expected, f"{d!r} data")
    try:
        tree = serialization.from_state_dict(host_template, raw)
    except ValueError as e:
        raise CheckpointMismatchError(f"{d!r}: {e}") from e
    tree = _rewrap_keys(template, tree)
    return tree, manifest.get("metadata")


def _read_pair(d: str, attempts: int = 3) -> tuple[dict[str, Any], str, bytes]:
    """The manifest, the state file's name and its bytes. A save committing between reading
    the manifest and opening the state file it names (which that save then deletes) is
    retried with the new manifest."""
    for attempt in range(attempts):
        manifest = read_manifest(d)
        name = _state_file(d, manifest)
        try:
            with open(os.path.join(d, name), "rb") as f:
                return manifest, name, f.read()
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise CheckpointError(
                    f"broken checkpoint in {d!r}: the manifest names {name}, which is missing"
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _rewrap_keys(template: Any, tree: Any) -> Any:
    """Typed PRNG keys in the template come back as typed keys (saved as raw data)."""

    def leaf(t, x):
        if isinstance(t, jax.Array) and jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        return x

    return jax.tree.map(leaf, template, tree)
