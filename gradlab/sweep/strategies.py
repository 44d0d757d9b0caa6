"""Execution strategies: one vmapped program, vmapped chunks under a memory budget, or a loop.

All three run the same pure per-run :class:`~gradlab.sweep.program.Program`; they differ only in
how runs are batched:

* ``"vmap"``: every run of a group in one ``jit(vmap(...))`` program, the run axis sharded over
  the devices (padded to a multiple of the device count).
* ``"chunked"``: the same program on chunks of at most ``chunk_size`` runs, one after the other
  (one compilation: every chunk is padded to the same size).
* ``"loop"``: one compiled single-run program called once per run (round-robin over the
  local devices, several runs in flight at once: one per CPU core, one per accelerator).

The first call initialises and trains (one program); when a chunk is split into several calls
(for the progress bar), the training state is donated from call to call. The steps run inside
``lax.scan`` and the evaluations are taken inside the scan too. Only the metrics and the
per-run outcome come back to the host, in one transfer per chunk (per run in the loop).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradlab import compilation
from gradlab.sweep.program import Program, memoise, new_cache, unpack
from gradlab.sweep.program import outcome as program_outcome

__all__ = [
    "STRATEGIES",
    "Job",
    "Output",
    "run_batched",
    "run_loop",
    "loop_workers",
    "to_host",
    "per_run_bytes",
]

STRATEGIES = ("auto", "vmap", "chunked", "loop")


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host, sharded) array as a full numpy array on this host."""
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


_JIT_CACHE: dict[tuple, Any] = new_cache()
_BYTES_CACHE: dict[tuple, Any] = new_cache()  # per_run_bytes (apart: it must not evict executables)


def _fetch(tree: Any) -> Any:
    """A pytree of (possibly sharded) device arrays as numpy arrays, in one transfer."""
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        return jax.tree.map(to_host, tree)
    if isinstance(tree, jax.Array):
        return np.asarray(tree)
    return jax.device_get(tree)


def _put(tree: Any, sharding: Any) -> Any:
    """Place host arrays on a (possibly multi-host) sharding. Every host holds the same full
    arrays (settings, seeds and plans are computed identically everywhere), so each device's
    shard is cut from the local copy: this works with one process or many."""

    def leaf(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(leaf, tree)


_PLACED: dict[tuple, Any] = new_cache()


def _replicated(tree: Any, sharding: Any) -> Any:
    """``tree`` replicated on ``sharding``: a device array already placed that way is used as
    it is, and other placements are memoised on the arrays' identity, so repeated sweeps on
    the same task do not copy the data again."""
    leaves, treedef = jax.tree.flatten(tree)

    def placed(x):
        return isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim)

    if all(placed(x) for x in leaves):
        return tree
    key = (tuple(sharding.mesh.devices.flat), treedef)
    return memoise(_PLACED, tuple(leaves), key, lambda: _put(tree, sharding), 8)


def _take(tree: Any, idx: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[idx], tree)


@dataclasses.dataclass(frozen=True)
class Job:
    """The runs of one group of settings, as every strategy receives them.

    Attributes:
      program: ``evals_per_call -> Program`` (memoised by the engine).
      hp: ``{name: (R,) array}`` traced hyperparameters per run.
      runs: ``{"seed_index": (R,) int32}``.
      data: the programs' replicated ``data`` argument.
      n_evals: evaluation intervals per run; ``steps_per_eval``: steps per interval.
      devices: the devices to run on.
      progress: a tqdm-like bar (``update(steps)``) or ``None``.
      metric_names: the names of the task's metrics (``task.evaluate``'s keys); found by
        tracing the program when empty.
    """

    program: Callable[[int], Program]
    hp: dict[str, np.ndarray]
    runs: dict[str, np.ndarray]
    data: Any
    n_evals: int
    steps_per_eval: int
    devices: Sequence[Any]
    progress: Any = None
    metric_names: tuple[str, ...] = ()

    @property
    def n_runs(self) -> int:
        return int(np.shape(self.runs["seed_index"])[0])

    def tick(self, runs: int, evals: int) -> None:
        if self.progress is not None:
            self.progress.update(runs * evals * self.steps_per_eval)


class Output:
    """A group's results on the host: ``curves[metric]`` is ``(R, n_evals)`` (the evaluations
    after each interval) and ``outcome[name]`` is ``(R,)`` for every name of
    :data:`~gradlab.sweep.program.OUTCOME`.

    A strategy may return before its last program has finished: the transfer of its results
    is then *deferred* (:meth:`defer`), so the caller can do its own bookkeeping while the
    program runs, and :meth:`wait` completes the output (call it before reading).
    """

    def __init__(self, n_runs: int, n_evals: int):
        self.shape = (n_runs, n_evals)
        self.rows = np.arange(n_runs)  # where run r is stored: row rows[r]
        self.curves: dict[str, np.ndarray] = {}
        self.outcome: dict[str, np.ndarray] = {}
        self._pending: list[Callable[[], None]] = []

    def defer(self, fetch: Callable[[], None]) -> None:
        """Register ``fetch()``, which stores the results of a program still running."""
        self._pending.append(fetch)

    def wait(self) -> Output:
        """Wait for the deferred programs and store their results; returns ``self``."""
        while self._pending:
            self._pending.pop(0)()
        return self

    def redirect(self, rows: np.ndarray, curves: dict, outcome: dict) -> None:
        """Store run ``r`` in row ``rows[r]`` of the caller's arrays from now on (``curves[name]``
        with ``n_evals`` columns, ``outcome[name]`` for every outcome name), copying what is
        already stored: the results of a deferred program land there without a merge."""
        rows = np.asarray(rows)
        for k, v in self.curves.items():
            curves[k][rows] = v[self.rows]
        for k, v in self.outcome.items():
            outcome[k][rows] = v[self.rows]
        self.rows, self.curves, self.outcome = rows, curves, outcome

    def _array(self, store: dict, k: str, fill: float, dtype: Any, columns: bool) -> np.ndarray:
        if k not in store:
            shape = self.shape if columns else self.shape[:1]
            store[k] = np.full(shape, fill, dtype)
        return store[k]

    def put_packed(self, r: int, flat: np.ndarray, names: Sequence[str]) -> None:
        """Store run ``r`` from its packed vector (:func:`~gradlab.sweep.program.pack`)."""
        metrics, outcome = unpack(flat, names, self.shape[1])
        row = self.rows[r]
        for k, v in metrics.items():
            self._array(self.curves, k, np.nan, np.float32, True)[row] = v
        for k, v in outcome.items():
            self._array(self.outcome, k, 0, v.dtype, False)[row] = v

    def put(self, runs: np.ndarray, metrics: dict, outcome: dict) -> None:
        """Store rows ``runs`` (``metrics``/``outcome`` may carry padded lanes after them)."""
        n, rows = len(runs), self.rows[runs]
        for k, v in metrics.items():
            self._array(self.curves, k, np.nan, np.float32, True)[rows] = v[:n]
        for k, v in outcome.items():
            self._array(self.outcome, k, 0, np.asarray(v).dtype, False)[rows] = v[:n]


def balanced_chunk_size(chunk_size: int, job: Job) -> int:
    """The chunk size :func:`run_batched` uses for at most ``chunk_size`` runs per chunk: a
    multiple of the device count (rounded down, but at least one run per device; when every
    run fits in one chunk, up), balanced over the chunks (less padding)."""
    n_runs, d = job.n_runs, len(job.devices)
    if chunk_size >= n_runs:
        chunk_size = max(d, int(math.ceil(chunk_size / d)) * d)
    else:
        chunk_size = max(d, chunk_size // d * d)
    n_chunks = int(math.ceil(n_runs / chunk_size))
    return int(math.ceil(n_runs / n_chunks / d)) * d


def _compiled_for(devices: Sequence[Any]) -> dict[str, Any]:
    """:func:`gradlab.compilation.jit`'s arguments for a sweep program on ``devices``: their
    platform's options, without the GPU's device loops (measured slower for step loops)."""
    return {"platform": devices[0].platform, "device_loops": False}


def run_batched(job: Job, chunk_size: int) -> Output:
    """Run the job in vmapped chunks of ``chunk_size`` runs (rounded to a multiple of the
    device count and balanced: :func:`balanced_chunk_size`; every chunk is padded to the same
    size, so there is one compilation)."""
    n_runs = job.n_runs
    chunk_size = balanced_chunk_size(chunk_size, job)
    n_chunks = int(math.ceil(n_runs / chunk_size))
    evals_per_call = _evals_per_call(job.n_evals, job.steps_per_eval, chunk_size)
    n_calls = job.n_evals // evals_per_call
    prog = job.program(evals_per_call)

    mesh = Mesh(np.asarray(job.devices), ("runs",))
    run_sh = NamedSharding(mesh, PartitionSpec("runs"))
    rep = NamedSharding(mesh, PartitionSpec())

    def build():
        def jit(fn, **kw):
            vmapped = jax.vmap(fn, in_axes=(0, 0, None))
            kw.update(in_shardings=(run_sh, run_sh, rep), out_shardings=run_sh)
            return compilation.jit(vmapped, **_compiled_for(job.devices), **kw)

        return jit(prog.start), jit(prog.advance, donate_argnums=0)

    start, advance = memoise(_JIT_CACHE, (prog,), ("batched", tuple(job.devices)), build, 32)
    data = _replicated(job.data, rep)
    out = Output(n_runs, job.n_evals)

    def collect(which, pieces, outcome):
        metrics, outcome = _fetch((pieces, outcome))
        job.tick(len(which), evals_per_call)
        metrics = {k: np.concatenate([m[k] for m in metrics], axis=1) for k in metrics[0]}
        out.put(which, metrics, outcome)

    for c in range(n_chunks):
        which = np.arange(c * chunk_size, min((c + 1) * chunk_size, n_runs))
        lanes = np.concatenate([which, np.full(chunk_size - len(which), which[0])])
        hp, runs = _put(_take((job.hp, job.runs), lanes), run_sh)
        state, first = start(hp, runs, data)
        pieces = [first]
        for _ in range(1, n_calls):
            if job.progress is not None:
                jax.block_until_ready(state.step)
                job.tick(len(which), evals_per_call)
            state, m = advance(state, hp, data)
            pieces.append(m)
        if c + 1 < n_chunks:
            collect(which, pieces, program_outcome(state))
        else:  # the last chunk's transfer waits for the caller (see Output.wait); only the
            # metrics and the outcome are kept, not the training state
            out.defer(functools.partial(collect, which, pieces, program_outcome(state)))
    return out


def loop_workers(devices: Sequence[Any]) -> int:
    """Runs in flight at once in the ``loop`` strategy: one per device on accelerators (their
    queues overlap the dispatch), and on CPU one per core shared among the CPU devices, since
    XLA:CPU runs a small model's step on one core (measured: 2 concurrent runs on 2 cores are
    1.3x faster than one after another; see ``docs/sweeps.md``)."""
    d = len(devices)
    if devices[0].platform != "cpu":
        return d
    return min(8, max(d, os.cpu_count() or 1))


def run_loop(job: Job, workers: int | None = None) -> Output:
    """Run each run alone with one compiled single-run program.

    Runs go round-robin over the job's devices, ``workers`` at a time (threads that dispatch
    the compiled program and wait for it; default :func:`loop_workers`). Every run is the same
    executable on its own inputs, so the results do not depend on the scheduling. The program
    returns only the run's metrics and outcome (not its state), packed into one vector
    (:func:`~gradlab.sweep.program.pack`): one small transfer per run. The per-run arguments
    are numpy scalars cut from the job's columns; the shared data is placed once.
    """
    n_runs, devices = job.n_runs, list(job.devices)
    prog = job.program(job.n_evals)

    def build():
        return compilation.jit(prog.finish, **_compiled_for(devices))

    finish = memoise(_JIT_CACHE, (prog,), ("loop", devices[0].platform), build, 32)
    names = job.metric_names or _metric_names(prog, job)
    # The data is committed to the run's device, and the per-run numpy arguments follow it.
    # Uncommitted, the program would run on JAX's default device, which need not be
    # devices[0] (``jax.default_device``, task data committed elsewhere) and is thread-local:
    # the worker threads do not see a caller's ``with jax.default_device(...)``.
    datas = [jax.device_put(job.data, dev) for dev in devices]
    columns = {k: np.asarray(v) for k, v in job.hp.items()}
    runs = {k: np.asarray(v) for k, v in job.runs.items()}
    out = Output(n_runs, job.n_evals)

    def dispatch(r: int):
        hp = {k: v[r] for k, v in columns.items()}
        run = {k: v[r] for k, v in runs.items()}
        i = r % len(devices)
        return r, finish(hp, run, datas[i])

    def one(r: int):
        r, flat = dispatch(r)
        return r, _fetch(flat)

    def store(item):
        r, flat = item
        out.put_packed(r, flat, names)
        job.tick(1, job.n_evals)

    if n_runs == 0:
        return out
    if n_runs == 1:  # the transfer waits for the caller (see Output.wait)
        r, flat = dispatch(0)
        out.defer(lambda: store((r, _fetch(flat))))
        return out
    store(one(0))  # compiles once, before any concurrency
    workers = loop_workers(devices) if workers is None else max(1, int(workers))
    if workers == 1:
        for r in range(1, n_runs):
            store(one(r))
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in as_completed([pool.submit(one, r) for r in range(1, n_runs)]):
            store(fut.result())
    return out


def _metric_names(prog: Program, job: Job) -> tuple[str, ...]:
    """The metric names of a program, by tracing it (when the job does not carry them)."""
    hp0, run0 = _take((job.hp, job.runs), 0)
    metrics = jax.eval_shape(prog.start, hp0, run0, job.data)[1]
    return tuple(metrics)


def _evals_per_call(n_evals: int, steps_per_eval: int, runs: int) -> int:
    """Evaluation intervals per compiled call: ~10 calls per chunk (progress), never < 1k
    run-steps per call (dispatch overhead), and a divisor of ``n_evals`` (one compilation)."""
    want = max(1, n_evals // 10)
    while want < n_evals and want * steps_per_eval * runs < 1000:
        want += 1
    for k in range(want, n_evals + 1):
        if n_evals % k == 0:
            return k
    return n_evals


def _aval_bytes(aval: Any) -> int:
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    return 0 if shape is None or dtype is None else math.prod(shape) * dtype.itemsize


def iter_equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (calls, loop bodies,
    branches), depth first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from iter_equations(inner)


def intermediate_bytes(jaxpr: Any) -> int:
    """Bytes of every value ``jaxpr`` computes: its equations' outputs, those of nested jaxprs
    included, as if no buffer were reused. Backend-independent and computed without
    compiling; it covers the compiled program's own temporaries, though not the scratch
    space a backend adds while compiling or for its libraries."""
    return sum(_aval_bytes(v.aval) for eqn in iter_equations(jaxpr) for v in eqn.outvars)


def per_run_bytes(prog: Program, hp: dict, runs: dict, data: Any) -> int:
    """Bytes one run needs in a vmapped program: 4x its state (current, interval snapshot,
    update, donated copy) plus every intermediate value of one training step and of the
    evaluation that ends every interval (the task's metrics on its *full* data: with a large
    data set its activations dwarf a mini-batch step's), both vmapped over two runs and
    halved. The intermediates are counted in the jaxprs (:func:`intermediate_bytes`), not
    taken from XLA's analyses, which are backend-dependent: on an H200 the memory analysis
    gave half of what a chunk was measured to use, and the cost analysis reports no bytes.
    There the measured peak was 1.1x this estimate (``benchmarks/accelerator_check.py``),
    inside the headroom of the default budget (half the device memory)."""
    lanes = 2
    hp2, run2 = jax.tree.map(lambda v: np.asarray(v)[[0] * lanes], (hp, runs))  # no transfer
    leaves, treedef = jax.tree.flatten((hp2, data))
    shapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)
    key = ("per_run_bytes", treedef, shapes)

    def build():
        state = jax.eval_shape(jax.vmap(prog.init, in_axes=(0, 0, None)), hp2, run2, data)
        total = 4 * sum(_aval_bytes(x) for x in jax.tree.leaves(state))
        step = jax.make_jaxpr(jax.vmap(prog.step, in_axes=(0, 0, None)))(state, hp2, data)
        evaluate = jax.make_jaxpr(jax.vmap(prog.evaluate, in_axes=(0, None)))(state, data)
        total += intermediate_bytes(step.jaxpr) + intermediate_bytes(evaluate.jaxpr)
        return int(math.ceil(total / lanes))

    return memoise(_BYTES_CACHE, (prog,), key, build, 64)
