"""Device- and backend-dependent paths of the sweep engine, exercised on the CPU.

Accelerator-only branches are reached with stand-in device objects (``memory_stats()`` as a
GPU reports it) and several devices with ``--xla_force_host_platform_device_count`` in a
subprocess (it must be set before JAX starts).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from host_devices import ROOT, run_with_host_devices

from gradlab.sweep import engine, strategies, sweep, tasks
from gradlab.sweep.program import make_program


class _FakeDevice:
    """What ``_default_budget`` reads from a device."""

    def __init__(self, process_index: int, stats: dict | None, platform: str = "gpu"):
        self.process_index = process_index
        self.platform = platform
        self._stats = stats

    def memory_stats(self):
        if self._stats is None:
            raise RuntimeError("memory_stats() of a device this process cannot address")
        return self._stats


def test_default_budget_is_half_the_gpu_memory():
    gpu = _FakeDevice(0, {"bytes_limit": 16 << 30, "bytes_in_use": 1 << 20})
    assert engine._default_budget([gpu]) == 8 << 30
    cpu = jax.devices("cpu")[0]  # memory_stats() is None on the CPU
    assert engine._default_budget([cpu]) == 2 << 30


def test_default_budget_reads_a_device_of_this_process():
    # With several processes devices[0] may belong to another host: its memory_stats() fails
    # there, and the budget fell back to 2 GiB on every process but the first, so the
    # processes chose different chunk sizes (different programs: a multi-host sweep hangs).
    remote = _FakeDevice(jax.process_index() + 1, None)
    local = _FakeDevice(jax.process_index(), {"bytes_limit": 16 << 30})
    assert engine._default_budget([remote, local]) == 8 << 30


def _wide_task() -> tasks.Task:
    """benchmarks/accelerator_check.py's task, smaller: its full-data evaluation dominates."""
    path = os.path.join(ROOT, "benchmarks", "accelerator_check.py")
    spec = importlib.util.spec_from_file_location("accelerator_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.wide_task(4000, 64, 256)


def _vmapped_bytes_per_run(task: tasks.Task, lanes: int = 4) -> float:
    """Scratch space per run of the vmapped program itself, from XLA."""
    from gradlab.sweep.program import seed_inputs

    inputs, _ = seed_inputs(task, [0], 2)
    data = {"task": task.data, **inputs}
    prog = make_program(task, lambda lr: optax.sgd(lr), {}, eval_every=1, evals_per_call=1)
    hp = {"lr": np.full(lanes, 0.1, np.float32)}
    runs = {"seed_index": np.zeros(lanes, np.int32)}
    start = jax.jit(jax.vmap(prog.start, in_axes=(0, 0, None)))
    return start.lower(hp, runs, data).compile().memory_analysis().temp_size_in_bytes / lanes


@pytest.mark.parametrize("analyses", ["available", "unavailable"])
def test_chunk_size_counts_the_full_data_evaluation(analyses, monkeypatch):
    # Every interval ends with the task's metrics on its full data, vmapped over the chunk's
    # runs: (runs, examples, width) activations. The estimate looked at one mini-batch step
    # only, so a large data set got chunks far over the memory budget (a GPU out of memory).
    task = _wide_task()
    need = _vmapped_bytes_per_run(task)
    budget = 40 << 20
    assert 64 * need > 2 * budget  # one 64-run chunk would not fit
    if analyses == "unavailable":
        # On a GPU, XLA's cost analysis reports no "bytes accessed" and its memory analysis
        # gave half a chunk's measured need: `auto` vmapped 64 runs of a 10^6-example task in
        # one program needing 122 GiB. The estimate now counts the jaxprs' intermediates.
        def unavailable(*args, **kwargs):
            raise NotImplementedError("no analysis on this backend")

        monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", unavailable)
        monkeypatch.setattr(jax.stages.Compiled, "memory_analysis", unavailable)
    for strategy in ("auto", "chunked"):
        res = sweep(
            lambda lr: optax.sgd(lr),
            {"lr": list(np.linspace(0.01, 0.1, 64))},
            task=task,
            steps=2,
            eval_every=2,
            strategy=strategy,
            memory_budget=budget,
            progress=False,
        )
        size = res.info["groups"][0]["chunk_size"]
        assert size * need <= budget, (strategy, size, need)
        assert np.isfinite(res.curves["train_loss"]).all()


LOOP_PLACEMENT = """
import json
import jax, numpy as np, optax
from gradlab.sweep import sweep, strategies, tasks

devs = jax.devices()
seen = []
fetch = strategies._fetch

def spy(tree):
    seen.extend(sorted(d.id for d in x.devices()) for x in jax.tree.leaves(tree)
                if isinstance(x, jax.Array))
    return fetch(tree)

strategies._fetch = spy
task = tasks.mlp_classifier("moons", (8,), batch_size=32)
kw = dict(task=task, steps=4, eval_every=2, strategy="loop", progress=False)
space = {"lr": [0.05, 0.1, 0.2, 0.3]}
out = {}
with jax.default_device(devs[2]):
    ref = sweep(lambda lr: optax.sgd(lr), space, devices=[devs[0]], **kw)
out["default_device_ctx"] = seen[:]
seen.clear()
res = sweep(lambda lr: optax.sgd(lr), space, devices=devs[1:], **kw)
out["two_devices"] = seen[:]
out["same"] = bool(np.allclose(ref.curves["val_loss"], res.curves["val_loss"], rtol=1e-5))
print("RESULT" + json.dumps(out))
"""


def test_loop_runs_on_the_devices_asked_for():
    # On one device equal to jax.devices()[0] the loop passed uncommitted inputs, which run on
    # JAX's *default* device: under `with jax.default_device(...)` the first run went there
    # and the worker threads' runs (which do not see the context manager) to devices[0].
    out = run_with_host_devices(LOOP_PLACEMENT, 3)
    assert out["default_device_ctx"] == [[0]] * 4, out
    assert sorted(out["two_devices"]) == [[1], [1], [2], [2]], out
    assert out["same"]


def test_clear_caches_frees_what_earlier_sweeps_kept():
    """The sweep memoises programs, executables, placed data and seed inputs (they hold device
    memory between sweeps); gradlab.sweep.clear_caches() empties every one of those caches and
    a later sweep still runs (compiling again)."""
    import gradlab
    from gradlab.sweep import program as sweep_program

    def run():
        return gradlab.sweep(
            optimizer=lambda lr: gradlab.sgd(lr),
            space={"lr": [0.1, 0.3]},
            seeds=1,
            task=gradlab.sweep.tasks.mlp_classifier(dataset="moons", widths=(8,), batch_size=32),
            steps=4,
            progress=False,
        )

    first = run()
    assert any(sweep_program._CACHES), "a sweep fills its caches"
    gradlab.sweep.clear_caches()
    assert not any(sweep_program._CACHES)
    second = run()
    np.testing.assert_array_equal(second.status, first.status)


def test_intermediate_bytes_counts_nested_jaxprs():
    def f(x):
        y = jnp.tanh(x @ x.T)  # (8, 8) twice: the product and its tanh

        def body(c):
            return c + jnp.sin(c)  # (8, 8) twice per iteration, counted once

        return jax.lax.while_loop(lambda c: jnp.sum(c) < 0, body, y)

    closed = jax.make_jaxpr(f)(jnp.ones((8, 4)))
    got = strategies.intermediate_bytes(closed.jaxpr)
    assert got >= 4 * 8 * 8 * 4 + 8 * 8 * 4  # products, tanh, body's sin and add, loop output
    assert got < 50 * 8 * 8 * 4


def _dot_precisions(jaxpr) -> list:
    """The ``precision`` of every matrix product in ``jaxpr``, nested jaxprs included."""
    eqns = strategies.iter_equations(jaxpr)
    return [e.params["precision"] for e in eqns if e.primitive.name == "dot_general"]


def _all_highest(precisions) -> bool:
    highest = jax.lax.Precision.HIGHEST
    return all(
        p is not None and all(q == highest for q in (p if isinstance(p, tuple) else (p,)))
        for p in precisions
    )


def test_solvers_own_products_run_in_full_precision():
    # On GPUs/TPUs XLA runs float32 matrix products with reduced-precision passes by default
    # (TF32 keeps 10 mantissa bits): on an H200 a vmapped float32 BFGS batch ended differently
    # from the CPU's. Every product a solver computes itself (the objective and residuals here
    # have none) must ask for full precision; on the CPU the compiled program is unchanged.
    from gradlab.minimize import METHODS, minimize

    f = lambda x: jnp.sum((x - 3.0) ** 2) + jnp.sum(x**4)  # noqa: E731
    r = lambda x: jnp.concatenate([x - 3.0, x**2])  # noqa: E731
    counted = {}
    for method in METHODS:
        extra = {"residual_fn": r} if method in ("gauss_newton", "levenberg_marquardt") else None
        closed = jax.make_jaxpr(lambda x0, m=method, e=extra: minimize(f, x0, m, extra_args=e))(
            jnp.zeros(4)
        )
        precisions = _dot_precisions(closed.jaxpr)
        assert _all_highest(precisions), (method, precisions)
        counted[method] = len(precisions)
    assert counted["bfgs"] and counted["lbfgs"] and counted["newton"]
    assert counted["levenberg_marquardt"] and counted["gauss_newton"]


def test_kmeans_products_run_in_full_precision():
    # TF32 distances gave an H200 an inertia 3.7e-4 off numpy's and centres 4e-5 off sklearn's.
    from gradlab.lab import kmeans

    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 2)), jnp.float32)
    for fn in (
        lambda x: kmeans.inertia(x, x[:3]),
        lambda x: kmeans.kmeans(x, 3, key=jax.random.key(0), method="minibatch", steps=4).centers,
    ):
        precisions = _dot_precisions(jax.make_jaxpr(fn)(x).jaxpr)
        assert precisions and _all_highest(precisions), precisions


def test_chunk_size_stays_at_most_what_was_asked_on_several_devices():
    # chunk_size 5 on 4 devices ran chunks of 8 (rounded up to the device count), over a
    # size the user chose to bound memory; the docstrings promise at most chunk_size.
    from types import SimpleNamespace

    def size(n_runs, chunk, d=4):
        job = SimpleNamespace(n_runs=n_runs, devices=[0] * d)
        return strategies.balanced_chunk_size(chunk, job)

    assert size(12, 5) == 4  # three chunks of 4 (was 8)
    assert size(12, 8) == 8
    assert size(10, 7) == 4  # three chunks of 4, balanced
    assert size(6, 3) == 4  # at least one run per device
    assert size(6, 20) == 8  # every run fits: one chunk, padded to the device count
    for n_runs in range(1, 30):
        for chunk in range(1, n_runs):
            got = size(n_runs, chunk)
            assert got % 4 == 0 and got <= max(chunk, 4), (n_runs, chunk, got)
