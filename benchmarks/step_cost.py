"""Cost of one optimizer step, gradlab vs optax, as a fraction of the machine's memory bandwidth.

One step is ``update`` + ``apply_updates`` in a single jitted function whose parameters and
optimizer state are donated (updated in place), timed in steady state: a few warm-up calls,
then the median of many repeats, gradlab and optax interleaved round by round so that both see
the same machine load. These updates are elementwise, so their physical limit is memory
bandwidth: the script counts the bytes each step must read and write and divides by the
bandwidth it measures itself with large STREAM-style kernels (scale, add, triad).

Usage::

    python benchmarks/step_cost.py            # 16M-parameter tree (~200 leaves) + small MLP
    python benchmarks/step_cost.py --quick    # 2M-parameter tree, fewer repeats
    python benchmarks/step_cost.py --markdown # print the table as Markdown

Target: gradlab/optax <= 1.05 in every case.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import gradlab.optimizers.adaptive as gla  # noqa: E402
from gradlab.transforms.clipping import clip_by_global_norm  # noqa: E402

try:  # written by another module owner; benchmarked when present
    from gradlab.optimizers.sgd import sgd as gl_sgd  # noqa: E402
except ImportError:  # pragma: no cover
    gl_sgd = None

F32 = 4  # bytes


def big_tree(total: int, leaves: int = 200, seed: int = 0) -> dict:
    """~``total`` float32 parameters in ``leaves`` leaves: 4/5 matrices, 1/5 bias vectors."""
    rng = np.random.default_rng(seed)
    n_mat = leaves * 4 // 5
    n_vec = leaves - n_mat
    vec = 1024
    per_mat = (total - n_vec * vec) // n_mat
    side = int(np.sqrt(per_mat))
    tree = {}
    for i in range(n_mat):
        tree[f"w{i:03d}"] = jnp.asarray(rng.standard_normal((side, per_mat // side)), jnp.float32)
    for i in range(n_vec):
        tree[f"b{i:03d}"] = jnp.asarray(rng.standard_normal((vec,)), jnp.float32)
    return tree


def mlp_tree(sizes=(784, 256, 256, 10), seed: int = 0) -> dict:
    """The parameters of a small MLP (MNIST-sized): weights and biases of each layer."""
    rng = np.random.default_rng(seed)
    return {
        f"layer{i}": {
            "kernel": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
            "bias": jnp.zeros((b,), jnp.float32),
        }
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    }


def n_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


# optimizer name -> (gradlab factory, optax factory, arrays read+written per parameter)
#   adam:     read p, g, m, v; write p, m, v              -> 7
#   rmsprop:  read p, g, nu;   write p, nu                -> 5
#   sgd+mom:  read p, g, m;    write p, m                 -> 5
#   adam+clip: adam, plus one read of g for the global norm  -> 8
CASES = {
    "adam": (lambda: gla.adam(1e-3), lambda: optax.adam(1e-3), 7),
    "rmsprop": (lambda: gla.rmsprop(1e-3), lambda: optax.rmsprop(1e-3), 5),
    "adam+clip": (
        lambda: optax.chain(clip_by_global_norm(1.0), gla.adam(1e-3)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        8,
    ),
}
if gl_sgd is not None:
    CASES["sgd_momentum"] = (
        lambda: gl_sgd(1e-3, momentum=0.9),
        lambda: optax.sgd(1e-3, momentum=0.9),
        5,
    )


def make_step(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


class Runner:
    """Holds one optimizer's donated (params, state) and times single steps."""

    def __init__(self, opt, params, grads):
        self.step = make_step(opt)
        self.params = jax.tree.map(jnp.copy, params)
        self.state = opt.init(self.params)
        self.grads = grads

    def once(self) -> float:
        t0 = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - t0


def time_pair(make_gl, make_ox, params, grads, repeats: int, warmup: int = 3):
    """Median seconds per step of gradlab and optax, measured interleaved.

    Also returns ``"ratio"``: the median over rounds of the paired ratio gradlab/optax (each
    round times one gradlab step and one optax step back to back, alternating which goes
    first), which is robust to the machine's load drifting during the measurement.
    """
    runners = {
        "gradlab": Runner(make_gl(), params, grads),
        "optax": Runner(make_ox(), params, grads),
    }
    for r in runners.values():
        for _ in range(warmup):
            r.once()
    times = {k: [] for k in runners}
    for i in range(repeats):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]
        for k in order:
            times[k].append(runners[k].once())
    out = {k: statistics.median(v) for k, v in times.items()}
    out["ratio"] = statistics.median(
        a / b for a, b in zip(times["gradlab"], times["optax"], strict=True)
    )
    return out


def measure_bandwidth(n: int = 1 << 25, repeats: int = 15) -> float:
    """Bytes per second moved by jitted elementwise kernels on ``n`` float32, best of three.

    The kernels are STREAM's scale (``2 * a``, 2 arrays moved), add (``a + b``, 3) and triad
    (``a + s * b``, 3), on 2-D arrays so that XLA splits them over the cores as it does the
    optimizer's (2-D) leaves. The median time of each is used; the fastest kernel defines the
    machine's bandwidth.
    """
    shape = (n // 4096, 4096)
    a = jnp.ones(shape, jnp.float32)
    b = jnp.full(shape, 2.0, jnp.float32)
    kernels = {
        "scale": (jax.jit(lambda a, b: 2.0 * a, donate_argnums=(0,)), 2),
        "add": (jax.jit(lambda a, b: a + b, donate_argnums=(0,)), 3),
        "triad": (jax.jit(lambda a, b: a + 0.5 * b, donate_argnums=(0,)), 3),
    }
    best = 0.0
    for fn, arrays in kernels.values():
        for _ in range(3):
            a = fn(a, b).block_until_ready()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = fn(a, b).block_until_ready()
            ts.append(time.perf_counter() - t0)
        best = max(best, arrays * a.size * F32 / statistics.median(ts))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2M-parameter tree, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    total = 2_000_000 if args.quick else 16_000_000
    repeats = args.repeats or (10 if args.quick else 50)

    bw = measure_bandwidth(1 << 23 if args.quick else 1 << 25)
    trees = {
        f"{total / 1e6:.0f}M params, 200 leaves": big_tree(total),
        "MLP 784-256-256-10": mlp_tree(),
    }
    rows = []
    for tree_name, params in trees.items():
        grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)
        n = n_params(params)
        for name, (make_gl, make_ox, arrays) in CASES.items():
            reps = repeats if n > 1_000_000 else repeats * 10
            t = time_pair(make_gl, make_ox, params, grads, reps)
            nbytes = arrays * n * F32
            rows.append(
                dict(
                    optimizer=name,
                    tree=f"{tree_name} ({n / 1e6:.2f}M)",
                    optax_ms=1e3 * t["optax"],
                    gradlab_ms=1e3 * t["gradlab"],
                    ratio=t["ratio"],
                    mb=nbytes / 1e6,
                    frac_gradlab=nbytes / t["gradlab"] / bw,
                    frac_optax=nbytes / t["optax"] / bw,
                )
            )

    header = (
        "| optimizer | parameters | optax ms | gradlab ms | gradlab/optax | MB moved/step "
        "| gradlab % of bandwidth | optax % of bandwidth |"
    )
    sep = "|---|---|---:|---:|---:|---:|---:|---:|"
    lines = [header, sep]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['tree']} | {r['optax_ms']:.3f} | {r['gradlab_ms']:.3f} | "
            f"{r['ratio']:.3f} | {r['mb']:.1f} | {100 * r['frac_gradlab']:.0f}% | "
            f"{100 * r['frac_optax']:.0f}% |"
        )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"jax {jax.__version__}, optax {optax.__version__}"
    )
    print(f"Machine: {machine}")
    if hasattr(os, "getloadavg"):
        print(f"Load average during the run (1/5/15 min): {os.getloadavg()}")
    print(f"Measured memory bandwidth (best of STREAM scale/add/triad): {bw / 1e9:.1f} GB/s")
    print(
        f"Median of {repeats} (big tree) / {repeats * 10} (MLP) steady-state steps, donated; "
        "gradlab/optax = median of paired per-round ratios."
    )
    print()
    if args.markdown:
        print("\n".join(lines))
    else:
        widths = [12, 34, 10, 11, 14, 14, 12, 12]
        names = ["optimizer", "parameters", "optax ms", "gradlab ms", "gradlab/optax", "MB/step",
                 "gradlab %bw", "optax %bw"]  # fmt: skip
        print("".join(f"{h:>{w}}" for h, w in zip(names, widths, strict=True)))
        for r in rows:
            vals = [r["optimizer"], r["tree"], f"{r['optax_ms']:.3f}", f"{r['gradlab_ms']:.3f}",
                    f"{r['ratio']:.3f}", f"{r['mb']:.1f}", f"{100 * r['frac_gradlab']:.0f}%",
                    f"{100 * r['frac_optax']:.0f}%"]  # fmt: skip
            print("".join(f"{v:>{w}}" for v, w in zip(vals, widths, strict=True)))
    worst = max(r["ratio"] for r in rows)
    print()
    print(f"worst gradlab/optax ratio: {worst:.3f} (target <= 1.05)")
    return rows


if __name__ == "__main__":
    main()
