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
``lax.scan`` and the evaluations are taken inside the scan too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradlab.sweep.program import Program

__all__ = ["STRATEGIES", "run_batched", "run_loop", "loop_workers", "to_host", "per_run_bytes"]

STRATEGIES = ("auto", "vmap", "chunked", "loop")


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host, sharded) array as a full numpy array on this host."""
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


_JIT_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """Jitted functions per (program, strategy, devices), so that repeating a sweep with the same
    task and optimizer objects reuses the compiled executables (a few entries, oldest dropped)."""
    ident = tuple(id(k) if isinstance(k, Program) else k for k in key)
    hit = _JIT_CACHE.get(ident)
    if hit is not None and hit[0] is key[0]:
        return hit[1]
    value = build()
    _JIT_CACHE[ident] = (key[0], value)
    while len(_JIT_CACHE) > 32:
        _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    return value


def _put(tree: Any, sharding: Any) -> Any:
    """Place host arrays on a (possibly multi-host) sharding. Every host holds the same full
    arrays (settings, seeds and plans are computed identically everywhere), so each device's
    shard is cut from the local copy: this works with one process or many."""

    def leaf(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(leaf, tree)


def _take(tree: Any, idx: np.ndarray) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[idx], tree)


class _Output:
    """Collects per-run metrics of a group into ``{metric: (R, E)}`` host arrays."""

    def __init__(self, n_runs: int):
        self.n = n_runs
        self.curves: dict[str, np.ndarray] = {}
        self.diverged = np.zeros(n_runs, bool)
        self.diverged_at = np.full(n_runs, -1, np.int32)

    def put(self, runs: np.ndarray, metrics: dict, diverged, diverged_at) -> None:
        for k, v in metrics.items():
            v = to_host(v)
            if k not in self.curves:
                self.curves[k] = np.full((self.n, v.shape[-1]), np.nan, np.float32)
            self.curves[k][runs] = v[: len(runs)]
        self.diverged[runs] = to_host(diverged)[: len(runs)]
        self.diverged_at[runs] = to_host(diverged_at)[: len(runs)]


def _concat_metrics(first: dict, rest: Sequence[dict], axis: int) -> dict:
    """Stack the initial evaluation before the later ones, on the host."""
    return {
        k: np.concatenate(
            [np.expand_dims(to_host(first[k]), axis)] + [to_host(m[k]) for m in rest], axis=axis
        )
        for k in first
    }


def run_batched(
    make_program: Callable[[int], Program],
    hp: dict[str, np.ndarray],
    runs: dict[str, np.ndarray],
    data: Any,
    *,
    n_evals: int,
    steps_per_eval: int,
    chunk_size: int,
    devices: Sequence[Any],
    progress: Any = None,
) -> _Output:
    """Run ``R`` runs in vmapped chunks of ``chunk_size`` (a multiple of ``len(devices)``)."""
    n_runs = int(runs["seed_index"].shape[0])
    d = len(devices)
    chunk_size = max(d, int(math.ceil(chunk_size / d)) * d)
    n_chunks = int(math.ceil(n_runs / chunk_size))
    # balance the chunks (less padding), keeping a multiple of the device count
    chunk_size = int(math.ceil(n_runs / n_chunks / d)) * d
    evals_per_call = _evals_per_call(n_evals, steps_per_eval, chunk_size)
    n_calls = n_evals // evals_per_call
    prog = make_program(evals_per_call)

    mesh = Mesh(np.asarray(devices), ("runs",))
    run_sh = NamedSharding(mesh, PartitionSpec("runs"))
    rep = NamedSharding(mesh, PartitionSpec())
    start, advance = _cached(
        (prog, "batched", tuple(devices)),
        lambda: (
            jax.jit(
                jax.vmap(prog.start, in_axes=(0, 0, None)),
                in_shardings=(run_sh, run_sh, rep),
                out_shardings=run_sh,
            ),
            jax.jit(
                jax.vmap(prog.advance, in_axes=(0, 0, None)),
                in_shardings=(run_sh, run_sh, rep),
                out_shardings=run_sh,
                donate_argnums=0,
            ),
        ),
    )
    data = _put(data, rep)
    out = _Output(n_runs)
    for c in range(n_chunks):
        which = np.arange(c * chunk_size, min((c + 1) * chunk_size, n_runs))
        lanes = np.concatenate([which, np.full(chunk_size - len(which), which[0])])
        hp_c = _put(_take(hp, lanes), run_sh)
        runs_c = _put(_take(runs, lanes), run_sh)
        rest = []
        for call in range(n_calls):
            if call == 0:
                state, m0, m = start(hp_c, runs_c, data)
            else:
                state, m = advance(state, hp_c, data)
            rest.append(m)
            if progress is not None:
                jax.block_until_ready(state.step)
                progress.update(len(which) * evals_per_call * steps_per_eval)
        out.put(which, _concat_metrics(m0, rest, axis=1), state.diverged, state.diverged_at)
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


def run_loop(
    make_program: Callable[[int], Program],
    hp: dict[str, np.ndarray],
    runs: dict[str, np.ndarray],
    data: Any,
    *,
    n_evals: int,
    steps_per_eval: int,
    devices: Sequence[Any],
    progress: Any = None,
    workers: int | None = None,
) -> _Output:
    """Run each run alone with one compiled single-run program.

    Runs go round-robin over ``devices``, ``workers`` at a time (threads that dispatch the
    compiled program and wait for it; default :func:`loop_workers`). Every run is the same
    executable on its own inputs, so the results do not depend on the scheduling.
    """
    n_runs = int(runs["seed_index"].shape[0])
    prog = make_program(n_evals)
    start = _cached((prog, "loop"), lambda: jax.jit(prog.start))
    # on the default device alone, jit places the inputs itself (no per-call transfers)
    default = len(devices) == 1 and devices[0] == jax.devices()[0]
    datas = [data] if default else [jax.device_put(data, dev) for dev in devices]
    out = _Output(n_runs)
    workers = loop_workers(devices) if workers is None else max(1, int(workers))

    def one(r: int):
        i = r % len(devices)
        hp_r = {k: v[r] for k, v in hp.items()}
        run_r = {k: np.asarray(v)[r] for k, v in runs.items()}
        if not default:
            hp_r, run_r = jax.device_put((hp_r, run_r), devices[i])
        state, m0, m = start(hp_r, run_r, datas[i])
        metrics = _concat_metrics(m0, [m], axis=0)
        return r, metrics, to_host(state.diverged), to_host(state.diverged_at)

    def finish(item):
        r, metrics, diverged, diverged_at = item
        out.put(
            np.asarray([r]),
            {k: v[None] for k, v in metrics.items()},
            diverged[None],
            diverged_at[None],
        )
        if progress is not None:
            progress.update(n_evals * steps_per_eval)

    if n_runs == 0:
        return out
    finish(one(0))  # compiles once, before any concurrency
    if workers == 1 or n_runs == 1:
        for r in range(1, n_runs):
            finish(one(r))
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, r) for r in range(1, n_runs)]
        for fut in as_completed(futures):
            finish(fut.result())
    return out


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


def per_run_bytes(
    prog: Program, hp: dict, runs: dict, data: Any, *, temporaries: bool = True
) -> int:
    """Bytes one run needs in a vmapped program: its state (current, interval snapshot, update,
    donated copy: x4)
    plus, with ``temporaries``, the scratch space of one training step from XLA's memory
    analysis (this compiles the single-run step once)."""
    hp0 = {k: jnp.asarray(v[0]) for k, v in hp.items()}
    run0 = {k: jnp.asarray(v[0]) for k, v in runs.items()}
    state, _ = jax.eval_shape(prog.init, hp0, run0, data)
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    temp = 0
    if not temporaries:
        return int(4 * state_bytes)
    try:
        compiled = jax.jit(prog.step).lower(state, hp0, data).compile()
        analysis = compiled.memory_analysis()
        temp = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    except Exception:  # pragma: no cover - memory analysis is backend-dependent
        temp = 0
    return int(4 * state_bytes + temp)
