"""Sweep results: per-run curves and status, a per-setting table, plots, safe save/load.

Runs are ordered setting-major: run ``r`` is setting ``r // n_seeds`` with seed
``seeds[r % n_seeds]``. Files are a single ``.npz`` holding the numeric arrays plus a JSON
manifest (stored as UTF-8 bytes); they are read with ``allow_pickle=False``, so a file can
never execute code when loaded.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradlab.files import atomic_write
from gradlab.status import Status

__all__ = ["SweepResult", "Table", "status_label", "FORMAT_VERSION"]

#: Version 2 marks diverged runs ``Status.DIVERGED`` (9); version 1 files stored them as
#: ``Status.NON_FINITE`` (2), which :meth:`SweepResult.load` reads back as ``DIVERGED``.
FORMAT_VERSION = 2


def status_label(code: int) -> str:
    """``ok``, ``diverged`` or ``invalid_hyperparameter`` for a run's status code (the
    :class:`~gradlab.status.Status` label)."""
    return Status(int(code)).label


def maximise(metric: str) -> bool:
    """Whether larger is better for ``metric`` (accuracies); losses are minimised."""
    return "acc" in metric


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


class Table:
    """Rows of a sweep table; ``str()`` renders aligned plain text, :meth:`to_pandas` a frame."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]):
        self.columns = list(columns)
        self.rows = [dict(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def render(self, max_rows: int | None = None) -> str:
        """Aligned text (numbers right-aligned), at most ``max_rows`` rows."""
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        cells = [[_fmt(r.get(c)) for c in self.columns] for r in rows]
        widths = [
            max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)
        ]
        numeric = [
            all(isinstance(r.get(c), (int, float, np.number)) or r.get(c) is None for r in rows)
            for c in self.columns
        ]

        def line(values):
            return "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(values, widths, numeric, strict=True)
            ).rstrip()

        out = [line(self.columns), line(["-" * w for w in widths])]
        out += [line(row) for row in cells]
        if max_rows is not None and len(self.rows) > max_rows:
            out.append(f"... {len(self.rows) - max_rows} more rows")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()

    __repr__ = __str__

    def to_pandas(self):
        """A ``pandas.DataFrame`` (needs pandas, an optional dependency)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("Table.to_pandas needs pandas: pip install pandas") from err
        return pd.DataFrame(self.rows, columns=self.columns)


class SweepResult:
    """Everything a sweep measured.

    Attributes:
      names: hyperparameter names (the space's keys).
      settings: one dict per setting (hyperparameter values).
      seeds: the seeds; each setting ran once per seed.
      steps: ``(E,)`` step numbers of the evaluations (0 = before training).
      curves: ``{metric: (R, E) array}`` per run; NaN after a run diverged and for invalid runs.
      status: ``(R,)`` int status codes (:class:`gradlab.status.Status`): ``OK``, ``DIVERGED``
        or ``INVALID_HYPERPARAMETER``.
      diverged_at: ``(R,)`` the step at which a run diverged (its training loss non-finite or
        above ``divergence_threshold`` x its first value, or its parameters non-finite at the
        end of that evaluation interval), ``-1`` if none.
      messages: ``(R,)`` strings: why a hyperparameter was invalid, or why a run diverged.
      primary: metric ranked by :attr:`best`; ``target``: ``(metric, threshold)`` or ``None``.
      info: run facts (task, optimizer, strategy, devices, wall time).
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        settings: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        steps: np.ndarray,
        curves: Mapping[str, np.ndarray],
        status: np.ndarray,
        diverged_at: np.ndarray,
        messages: Sequence[str],
        primary: str,
        target: tuple[str, float] | None = None,
        info: Mapping[str, Any] | None = None,
    ):
        self.names = list(names)
        self.settings = [dict(s) for s in settings]
        self.seeds = [int(s) for s in seeds]
        self.steps = np.asarray(steps)
        self.curves = {k: np.asarray(v) for k, v in curves.items()}
        self.status = np.asarray(status, np.int32)
        self.diverged_at = np.asarray(diverged_at, np.int32)
        self.messages = [str(m) for m in messages]
        self.primary = primary if primary in self.curves else next(iter(self.curves), primary)
        self.target = tuple(target) if target is not None else None
        self.info = dict(info or {})

    # ---------------------------------------------------------------- structure
    @property
    def num_runs(self) -> int:
        return len(self.settings) * len(self.seeds)

    def run_setting(self, r: int) -> int:
        return r // len(self.seeds)

    def run_seed(self, r: int) -> int:
        return self.seeds[r % len(self.seeds)]

    def runs_of(self, i: int) -> slice:
        """Run indices of setting ``i``."""
        n = len(self.seeds)
        return slice(i * n, (i + 1) * n)

    def labels(self) -> list[str]:
        """A run status label per run."""
        return [status_label(c) for c in self.status]

    # ---------------------------------------------------------------- statistics
    def final(self, metric: str) -> np.ndarray:
        """``(R,)`` last evaluation of ``metric`` (NaN for diverged or invalid runs)."""
        return self.curves[metric][:, -1]

    def best_value(self, metric: str) -> np.ndarray:
        """``(R,)`` best evaluation of ``metric`` over the run (before any divergence)."""
        c = self.curves[metric]
        with np.errstate(all="ignore"), _quiet():
            return np.nanmax(c, axis=1) if maximise(metric) else np.nanmin(c, axis=1)

    def steps_to_target(self, metric: str | None = None, threshold: float | None = None):
        """``(R,)`` first evaluated step where ``metric`` reached ``threshold`` (``-1`` never)."""
        if metric is None or threshold is None:
            if self.target is None:
                raise ValueError("no target: pass metric and threshold")
            metric, threshold = self.target
        c = self.curves[metric]
        with np.errstate(invalid="ignore"):
            hit = c >= threshold if maximise(metric) else c <= threshold
        first = np.argmax(hit, axis=1)
        return np.where(hit.any(axis=1), self.steps[first], -1).astype(np.int64)

    def _status_of(self, runs: slice) -> str:
        """``ok``, ``diverged``, ``diverged k/n`` or ``invalid_hyperparameter`` for some runs."""
        codes = self.status[runs]
        n = len(codes)
        if np.all(codes == int(Status.INVALID_HYPERPARAMETER)):
            return "invalid_hyperparameter"
        bad = int(np.sum(codes == int(Status.DIVERGED)))
        if bad:
            return "diverged" if bad == n else f"diverged {bad}/{n}"
        return "ok"

    def table(
        self, *, per_seed: bool = False, sort_by: str | None = None, full: bool = False
    ) -> Table:
        """One row per setting (seeds averaged), or per run with ``per_seed=True``.

        Columns: the hyperparameters; ``final_<loss>`` for every loss metric and
        ``best_<primary>`` (the best value during the run, before any divergence: the lowest
        loss, the highest accuracy); ``final_<accuracy>`` (validation accuracies only, when
        there are some);
        ``<primary>_std`` (standard deviation over seeds of the final primary metric);
        ``steps_to_target`` (first evaluated step reaching the target, median over seeds;
        ``None`` when at least half of them never reached it); ``status`` (``ok``,
        ``diverged``, ``diverged k/n`` for k of n seeds, ``invalid_hyperparameter``).
        Diverged runs count as NaN in the means: a setting's mean covers its finite runs.

        Args:
          per_seed: one row per run instead of per setting.
          sort_by: a column to sort by (ascending for losses, descending for accuracies;
            NaN last).
          full: final *and* best value of every metric: ``final_<m>``, ``best_<m>`` for every
            loss and every accuracy, training and validation.
        """
        metrics = list(self.curves)
        losses = [m for m in metrics if not maximise(m)]
        accs = [m for m in metrics if maximise(m)]
        if not full and any(m.startswith("val_") for m in accs):
            accs = [m for m in accs if m.startswith("val_")]
        best_of = metrics if full else [m for m in metrics if m == self.primary]
        finals = {m: self.final(m) for m in metrics}
        bests = {m: self.best_value(m) for m in best_of}
        stt = self.steps_to_target() if self.target is not None else None
        columns = list(self.names) + (["seed"] if per_seed else [])
        for m in losses:
            columns += [f"final_{m}"] + ([f"best_{m}"] if m in best_of else [])
        for m in accs:
            columns += [f"final_{m}"] + ([f"best_{m}"] if m in best_of else [])
        if not per_seed and len(self.seeds) > 1 and self.primary in finals:
            columns.append(f"{self.primary}_std")
        if stt is not None:
            columns.append("steps_to_target")
        columns.append("status")
        rows = []
        groups = [slice(r, r + 1) for r in range(self.num_runs)] if per_seed else None
        for sl in groups or [self.runs_of(i) for i in range(len(self.settings))]:
            row = dict(self.settings[self.run_setting(sl.start)])
            if per_seed:
                row["seed"] = self.run_seed(sl.start)
            with _quiet():  # the mean over a setting's seeds covers its finite runs
                for m in losses:
                    row[f"final_{m}"] = float(np.nanmean(finals[m][sl]))
                    if m in best_of:
                        row[f"best_{m}"] = float(np.nanmean(bests[m][sl]))
                for m in accs:
                    row[f"final_{m}"] = float(np.nanmean(finals[m][sl]))
                    if m in best_of:
                        row[f"best_{m}"] = float(np.nanmean(bests[m][sl]))
                if f"{self.primary}_std" in columns:
                    row[f"{self.primary}_std"] = float(np.nanstd(finals[self.primary][sl]))
            if stt is not None:
                med = float(np.median(np.where(stt[sl] < 0, np.inf, stt[sl]).astype(float)))
                row["steps_to_target"] = None if math.isinf(med) else int(round(med))
            row["status"] = self._status_of(sl)
            rows.append(row)
        if sort_by is not None:
            if sort_by not in columns:
                raise ValueError(f"sort_by must be one of {columns}, got {sort_by!r}")
            sign = -1.0 if maximise(sort_by) else 1.0

            def key(row):
                v = row.get(sort_by)
                if isinstance(v, (int, float)) and not math.isnan(float(v)):
                    return (0, sign * float(v))
                return (1, 0.0)

            rows.sort(key=key)
        return Table(columns, rows)

    def to_pandas(self, **kwargs):
        """The :meth:`table` as a ``pandas.DataFrame``."""
        return self.table(**kwargs).to_pandas()

    @property
    def best(self) -> dict[str, Any] | None:
        """The setting whose seeds' mean final primary metric is best, among settings where
        every run finished ``ok`` (``None`` if there is none): a table row, plus ``index``."""
        vals = self.final(self.primary)
        ok = self.status == int(Status.OK)
        best_i, best_v = None, None
        sign = -1.0 if maximise(self.primary) else 1.0
        for i in range(len(self.settings)):
            sl = self.runs_of(i)
            if not ok[sl].all():
                continue
            v = sign * float(np.mean(vals[sl]))
            if math.isnan(v):
                continue
            if best_v is None or v < best_v:
                best_i, best_v = i, v
        if best_i is None:
            return None
        row = self.table().rows[best_i]
        row["index"] = best_i
        return row

    def __repr__(self) -> str:
        counts = {}
        for label in self.labels():
            counts[label] = counts.get(label, 0) + 1
        return (
            f"SweepResult({len(self.settings)} settings x {len(self.seeds)} seeds, "
            f"{len(self.steps) - 1} evaluations, status {counts})"
        )

    # ---------------------------------------------------------------- plots
    def plot(self, path: str | os.PathLike | None = None, *, metric: str | None = None):
        """Curves of ``metric`` (seed mean per setting) and a heatmap of its final value.

        The heatmap's axes are the first two hyperparameters with more than one value (the
        best over the other axes); with one such axis it is a line of final value vs that
        hyperparameter. Returns the matplotlib figure (saved to ``path`` when given).
        """
        from gradlab.sweep.plots import plot_result

        return plot_result(self, path, metric=metric)

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> str:
        """Write one ``.npz`` file (arrays + JSON manifest; no pickle), atomically: an existing
        file at ``path`` is replaced only once the new one is complete. Returns the path."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        manifest = {
            "format": "gradlab.sweep",
            "version": FORMAT_VERSION,
            "names": self.names,
            "settings": [{k: _jsonable(v) for k, v in s.items()} for s in self.settings],
            "seeds": self.seeds,
            "messages": self.messages,
            "primary": self.primary,
            "target": list(self.target) if self.target is not None else None,
            "info": _jsonable(self.info),
            "metrics": list(self.curves),
        }
        arrays = {f"curve__{k}": v for k, v in self.curves.items()}
        arrays.update(steps=self.steps, status=self.status, diverged_at=self.diverged_at)
        blob = np.frombuffer(json.dumps(manifest).encode("utf-8"), dtype=np.uint8)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # atomic: an interrupted save (Ctrl-C, a full disk) leaves the previous file whole
        atomic_write(path, lambda f: np.savez(f, manifest=blob, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SweepResult:
        """Read a file written by :meth:`save` (``path`` may omit the ``.npz`` that
        :meth:`save` appends).

        Raises:
          ValueError: the file is not a gradlab sweep file (including any file that would need
            pickle to load: it is refused, never executed), or it is truncated, corrupt or
            inconsistent (arrays whose shapes do not match the settings, seeds and steps of
            its manifest, unknown status codes); the message names the file and what is wrong.
        """
        path = os.fspath(path)
        if not os.path.exists(path) and os.path.isfile(path + ".npz"):
            path += ".npz"
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy file: an array, no archive
                raise ValueError("not an .npz archive")
            with z:
                files = {k: z[k] for k in z.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as err:
            # KeyError/BadZipFile: a truncated or corrupted archive; ValueError: pickled data
            # (refused, never executed) or a malformed array header
            raise ValueError(f"{path}: not a readable gradlab sweep file ({err})") from err
        if "manifest" not in files or files["manifest"].dtype != np.uint8:
            raise ValueError(f"{path}: not a gradlab sweep file (no manifest)")
        try:
            manifest = json.loads(files["manifest"].tobytes().decode("utf-8"))
        except ValueError as err:  # UnicodeDecodeError, JSONDecodeError
            raise ValueError(f"{path}: corrupt manifest ({err})") from err
        if not isinstance(manifest, dict) or manifest.get("format") != "gradlab.sweep":
            raise ValueError(f"{path}: not a gradlab sweep file")
        version = manifest.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"{path}: corrupt manifest (version {version!r})")
        if version > FORMAT_VERSION:
            raise ValueError(f"{path}: written by a newer gradlab (format {version})")
        fields = _checked_fields(path, manifest, files)
        if version < 2:  # format 1 stored diverged runs as NON_FINITE
            status = fields["status"]
            diverged = np.where(status == int(Status.NON_FINITE), int(Status.DIVERGED), status)
            fields["status"] = diverged
        return cls(**fields)


def _checked_fields(path: str, manifest: dict, files: dict) -> dict[str, Any]:
    """The constructor arguments of a loaded file, checked for consistency (``ValueError``
    naming the file and the field otherwise)."""

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: corrupt gradlab sweep file ({what})")

    def entry(key: str, kind: type | tuple[type, ...]):
        if key not in manifest:
            raise bad(f"the manifest has no {key!r}")
        v = manifest[key]
        if not isinstance(v, kind):
            raise bad(f"the manifest's {key!r} is {type(v).__name__}")
        return v

    names = entry("names", list)
    settings = entry("settings", list)
    seeds = entry("seeds", list)
    messages = entry("messages", list)
    metrics = entry("metrics", list)
    primary = entry("primary", str)
    if not all(isinstance(n, str) for n in names + metrics):
        raise bad("names and metrics must be strings")
    if not all(isinstance(s, dict) for s in settings):
        raise bad("every setting must be a mapping of hyperparameter values")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise bad(f"seeds must be a non-empty list of ints, got {seeds!r}")
    if not settings or not metrics:
        raise bad("no settings or no metrics")
    n_runs = len(settings) * len(seeds)
    if len(messages) != n_runs or not all(isinstance(m, str) for m in messages):
        raise bad(f"{len(messages)} messages for {n_runs} runs")

    def array(key: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
        if key not in files:
            raise bad(f"no array {key!r}")
        a = files[key]
        if a.shape != shape or a.dtype.kind not in kind:
            raise bad(f"{key!r} has shape {a.shape} and dtype {a.dtype}, expected shape {shape}")
        return a

    steps = files.get("steps")
    if steps is None or steps.ndim != 1 or steps.dtype.kind not in "iuf" or steps.size < 1:
        raise bad("'steps' must be a non-empty 1-D array of step numbers")
    shape = (n_runs, steps.size)
    curves = {m: array(f"curve__{m}", shape, "f") for m in metrics}
    status = array("status", (n_runs,), "iu")
    known = {int(s) for s in Status}
    unknown = sorted({int(c) for c in status} - known)
    if unknown:
        raise bad(f"unknown status codes {unknown}")
    target = manifest.get("target")
    if target is not None:
        ok = isinstance(target, list) and len(target) == 2 and isinstance(target[0], str)
        if not ok or not isinstance(target[1], (int, float)) or isinstance(target[1], bool):
            raise bad(f"target must be [metric, threshold] or null, got {target!r}")
        target = (target[0], float(target[1]))
    info = manifest.get("info", {})
    if not isinstance(info, dict):
        raise bad("the manifest's 'info' is not a mapping")
    return dict(
        names=names,
        settings=_from_json(settings),
        seeds=seeds,
        steps=steps,
        curves=curves,
        status=status,
        diverged_at=array("diverged_at", (n_runs,), "iu"),
        messages=messages,
        primary=primary,
        target=target,
        info=_from_json(info),
    )


_TUPLE = "__tuple__"  # JSON has no tuples: a tuple is saved as {"__tuple__": [...]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return {_TUPLE: [_jsonable(x) for x in v]}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _from_json(v: Any) -> Any:
    """The inverse of :func:`_jsonable` for what JSON can carry (tuples come back as tuples)."""
    if isinstance(v, dict):
        if set(v) == {_TUPLE}:
            return tuple(_from_json(x) for x in v[_TUPLE])
        return {k: _from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


class _quiet:
    """Silence numpy's all-NaN slice warnings (diverged runs are expected)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
