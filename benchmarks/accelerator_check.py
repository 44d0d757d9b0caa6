"""Checks of gradlab's accelerator-only paths, for a machine with a GPU or TPU.

The test suite runs on the CPU (CI has no accelerator) and reaches the accelerator branches
with stand-in devices. This script runs them for real on ``jax.devices()[0]`` and prints one
line per check (``ok`` or ``FAIL`` with the numbers), then exits 1 if any check failed:

* ``memory_stats``: the keys the device reports and the sweep's default memory budget (half
  of ``bytes_limit``);
* ``compiler_options``: the backend gets its own options (on a GPU the command buffers that
  record loops and conditionals; no CPU options), and a program with a ``while`` loop and a
  ``lax.cond`` compiled with them by ``gradlab.compilation.jit`` returns exactly what the plain
  ``jax.jit`` returns;
* ``chunk estimate``: a chunked sweep of a task with a large data set (its full-data
  evaluation dominates memory) stays under an explicit memory budget: the device's peak
  memory against the budget and against the engine's per-run estimate;
* ``auto, large data``: ``strategy="auto"`` with the default budget on a data set whose
  evaluation activations for all runs exceed the device memory: it must chunk, not fail;
* ``sweep agrees with the CPU``: one digits sweep on this device and on the CPU (``devices=``);
* ``minimize batch``: a vmapped batch of Rosenbrock starts on this device against the CPU.

Usage: ``python benchmarks/accelerator_check.py [--chunk-n 200000] [--large-n 1000000]``.
Run it in a fresh process: the peak-memory check reads the device's ``peak_bytes_in_use``,
which never resets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import gradlab  # noqa: E402
from gradlab import compilation  # noqa: E402
from gradlab.sweep import engine, strategies, sweep, tasks  # noqa: E402
from gradlab.sweep.program import make_program, seed_inputs  # noqa: E402

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def wide_task(n: int, d: int, h: int, seed: int = 0) -> tasks.Task:
    """A one-hidden-layer regression whose full-data evaluation holds (n, h) activations."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w": jax.random.normal(k1, (d, h)) * 0.1, "v": jax.random.normal(k2, (h,)) * 0.1}

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((jnp.tanh(xb @ p["w"]) @ p["v"] - yb) ** 2)

    return tasks.custom(init, loss, (x, y), batch_size=64)


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def check_memory_stats(device) -> None:
    stats = device.memory_stats()
    keys = sorted(stats or {})
    budget = engine._default_budget([device])
    limit = int((stats or {}).get("bytes_limit", 0))
    report(
        "memory_stats",
        bool(limit) and budget == limit // 2,
        f"keys {keys}; bytes_limit {mib(limit)}; default sweep budget {mib(budget)}",
    )


def check_xla_analyses(device) -> None:
    """What XLA's cost and memory analyses report here (informational: the sweep no longer
    uses them to size chunks)."""
    x = jax.device_put(jnp.ones((4096, 256)), device)
    lowered = jax.jit(lambda a: jnp.tanh(a @ a.T).sum()).lower(x)
    try:
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        bytes_accessed = None if cost is None else cost.get("bytes accessed")
    except Exception as err:
        bytes_accessed = f"{type(err).__name__}: {err}"[:200]
    try:
        temp = lowered.compile().memory_analysis().temp_size_in_bytes
    except Exception as err:
        temp = f"{type(err).__name__}: {err}"[:200]
    report(
        "xla analyses",
        True,
        f"tanh(a @ a.T) for a (4096, 256): cost_analysis bytes accessed {bytes_accessed}; "
        f"memory_analysis temp bytes {temp} (the (4096, 4096) product is 67108864 bytes)",
    )


def check_compiler_options(device) -> None:
    options = compilation.compiler_options(device.platform)
    gpu = {**compilation.GPU_COMPILER_OPTIONS, **compilation.GPU_DEVICE_LOOP_OPTIONS}
    own = {"gpu": gpu, "cpu": compilation.CPU_COMPILER_OPTIONS}
    expected = own.get(device.platform)

    def program(x):
        def body(c):
            x, k = c
            x = jax.lax.cond(k % 3 == 0, lambda v: jnp.sin(v) @ v.T, lambda v: v * 0.5, x)
            return x / jnp.linalg.norm(x), k + 1

        return jax.lax.while_loop(lambda c: c[1] < 20, body, (x, 0))[0]

    x = jnp.arange(64.0 * 64.0).reshape(64, 64) / 4096.0
    y, plain = compilation.jit(program)(x), jax.jit(program)(x)
    same = bool(jnp.array_equal(y, plain))
    ok = options == expected and same and y.devices() == {device}
    report(
        "compiler_options",
        ok,
        f"options for {device.platform!r}: {options}; while/cond program identical to the "
        f"plain jit's: {same}",
    )


def check_chunk_estimate(device, n: int) -> None:
    """Peak device memory of a chunked sweep under an explicit budget."""
    task = wide_task(n, 64, 256)
    budget = 1 << 30
    before = device.memory_stats() or {}
    t0 = time.perf_counter()
    res = sweep(
        lambda lr: optax.sgd(lr),
        {"lr": list(np.linspace(0.01, 0.1, 64))},
        task=task,
        steps=4,
        eval_every=2,
        strategy="chunked",
        memory_budget=budget,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    after = device.memory_stats() or {}
    peak = after.get("peak_bytes_in_use", 0) - before.get("bytes_in_use", 0)
    group = res.info["groups"][0]
    size = group["chunk_size"]
    prog = make_program(task, lambda lr: optax.sgd(lr), {}, eval_every=2, evals_per_call=1)
    hp = {"lr": np.full(2, 0.1, np.float32)}
    runs = {"seed_index": np.zeros(2, np.int32)}
    inputs, _ = seed_inputs(task, [0], 4)
    per_run = strategies.per_run_bytes(prog, hp, runs, {"task": task.data, **inputs})
    data_bytes = sum(x.nbytes for x in jax.tree.leaves(task.data))
    finite = bool(np.isfinite(res.curves["train_loss"]).all())
    report(
        "chunk estimate",
        finite and peak - data_bytes <= budget,
        f"n={n}: chunk {size} runs x estimate {mib(per_run)}/run = {mib(size * per_run)}; "
        f"budget {mib(budget)}; measured peak above the start {mib(peak)} "
        f"(data {mib(data_bytes)}); {seconds:.1f} s",
    )


def check_auto_large(device, n: int) -> None:
    """``auto`` with the default budget where all runs' evaluations exceed device memory."""
    h = 512
    limit = int((device.memory_stats() or {}).get("bytes_limit", 0))
    runs = 64
    activations = runs * n * h * 4
    task = wide_task(n, 64, h, seed=1)
    t0 = time.perf_counter()
    try:
        res = sweep(
            lambda lr: optax.sgd(lr),
            {"lr": list(np.geomspace(1e-3, 0.05, runs))},
            task=task,
            steps=4,
            eval_every=2,
            progress=False,
        )
    except Exception as err:  # the check reports whatever went wrong
        report("auto, large data", False, f"{type(err).__name__}: {str(err)[:300]}")
        return
    group = res.info["groups"][0]
    finite = bool(np.isfinite(res.curves["train_loss"]).all())
    report(
        "auto, large data",
        finite,
        f"n={n}, {runs} runs: activations of all runs {mib(activations)} vs device "
        f"{mib(limit)}; strategy {group['strategy']}, chunk {group['chunk_size']}; "
        f"{time.perf_counter() - t0:.1f} s",
    )


def check_sweep_matches_cpu(device) -> None:
    """The same sweep here (at full and at the default float32 matmul precision) and on the
    CPU: relative differences of every evaluated validation loss."""
    cpu = jax.devices("cpu")[0]
    space = {"lr": [0.03, 0.1, 0.3], "momentum": [0.0, 0.9]}

    def opt(lr, momentum):
        return gradlab.sgd(lr, momentum=momentum)

    def run(dev):  # a new task each time: nothing compiled is shared between the runs
        task = tasks.mlp_classifier("digits", (64,), batch_size=64)
        return sweep(opt, space, devices=[dev], task=task, steps=60, eval_every=20, seeds=2,
                     progress=False)  # fmt: skip

    def rel(a, b):
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))

    with jax.default_matmul_precision("highest"):
        full = run(device)
    default = run(device)
    ref = run(cpu)
    err_full = rel(full.curves["val_loss"], ref.curves["val_loss"])
    err_default = rel(default.curves["val_loss"], ref.curves["val_loss"])
    same_status = bool(np.array_equal(full.status, ref.status))
    report(
        "sweep agrees with the CPU",
        same_status and err_full < 1e-3,
        f"12 runs x 60 steps: largest relative val_loss difference {err_full:.1e} at full "
        f"matmul precision, {err_default:.1e} at the default one; statuses equal: {same_status}",
    )


def check_minimize_batch(device) -> None:
    cpu = jax.devices("cpu")[0]
    starts = np.random.default_rng(0).uniform(-2, 2, (64, 10)).astype(np.float32)

    fun = gradlab.problems.rosenbrock(10)

    def solve(x0):
        return gradlab.minimize(fun, x0, "bfgs", max_steps=500)

    out = {}
    for dev in (device, cpu):
        x = jax.device_put(starts, dev)
        res = jax.jit(jax.vmap(solve))(x)
        jax.block_until_ready(res.params)
        out[dev.platform] = res
    g, c = out[device.platform], out["cpu"]
    status_g, status_c = np.asarray(g.status), np.asarray(c.status)
    converged = int(gradlab.Status.CONVERGED)
    both = (status_g == converged) & (status_c == converged)
    gap = float(np.max(np.abs(np.asarray(g.params) - np.asarray(c.params))[both], initial=0.0))
    # float32 sums run in another order here: on this ill-conditioned problem the paths part
    # and end anywhere inside the tolerance (|g| <= 1e-5 |g0| allows |x - x*| ~ 1e-2), and a
    # start that ends at float32's noise floor may stop just short of it on one device.
    counts = {
        name: dict(zip(*map(list, np.unique(s, return_counts=True)), strict=True))
        for name, s in (("here", status_g), ("cpu", status_c))
    }
    report(
        "minimize batch",
        both.sum() >= 60 and gap < 2e-2,
        f"64 Rosenbrock-10 starts, float32 BFGS: status counts {counts}; largest "
        f"|x_device - x_cpu| where both converged {gap:.1e}; steps {int(np.max(g.num_steps))} "
        f"max (CPU {int(np.max(c.num_steps))})",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--large-n", type=int, default=1_000_000, help="examples of the large task")
    p.add_argument("--chunk-n", type=int, default=200_000, help="examples of the chunked task")
    args = p.parse_args()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, optax {optax.__version__}, device {device.device_kind!r}")
    if device.platform == "cpu":
        print("no accelerator: jax.devices()[0] is a CPU")
    checks = [
        (check_memory_stats, ()),
        (check_compiler_options, ()),
        (check_xla_analyses, ()),
        (check_chunk_estimate, (args.chunk_n,)),
        (check_auto_large, (args.large_n,)),
        (check_sweep_matches_cpu, ()),
        (check_minimize_batch, ()),
    ]
    for check, extra in checks:
        try:
            check(device, *extra)
        except Exception as err:  # report and go on with the other checks
            report(check.__name__, False, f"{type(err).__name__}: {str(err)[:500]}")
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all checks passed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
