"""Quasi-Newton and CG solvers beside scipy, optax, jaxopt and optimistix, in one process.

For each problem (Rosenbrock in 2, 10 and 100 dimensions, Beale, an ill-conditioned quadratic
in two scalings) and method (BFGS, L-BFGS, nonlinear CG; Newton-CG when importable) the script
reports iterations, objective and gradient evaluations, the final gradient norm, the compile
time (first call minus a steady call) and the steady-state wall time (best of ``--repeats``
calls, and of as many as fit in 0.25 s for fast solves),
for gradlab next to every library that has the method. All runs are float64 and stop at
``|g| <= 1e-5`` (2-norm for gradlab/optax/jaxopt; scipy's ``gtol`` uses the max-norm, and
optimistix stops on its own Cauchy test with ``rtol = atol = 1e-8``, so its counts are
indicative; scipy is also counted to the 2-norm test, column ``@2-norm``). Ratios are gradlab /
other: below 1 means gradlab needed fewer evaluations or less time. Every JAX solver is timed
as one jitted function returning the same things: the solution, its counters and the final
gradient norm (each returned array costs the caller ~2 us to receive, comparable against
comparable). gradlab's function is compiled with gradlab's compiler options for the backend
(:mod:`gradlab.compilation`: what ``minimize`` uses when called directly, and what its docs tell
you to pass to a ``jax.jit`` of your own around it); the other libraries with XLA's defaults,
as their users get them, or with the same options under ``--same-xla-options``. It finishes
with a vmapped batch of 64 Rosenbrock starts beside a Python loop.

``--single-kernel-loops`` raises XLA:CPU's small-while-loop threshold for the whole process
(every library alike), so each solver loop runs as one compiled kernel instead of one runtime
task per operation.

``--no-one-kernel`` runs gradlab's solves as XLA's ordinary program (one runtime task per fused
operation) instead of one kernel (:mod:`gradlab.kernels`, ``minimize``'s default on the CPU).

Run: ``python benchmarks/solvers.py [--quick] [--repeats N] [--same-xla-options]
[--no-gradlab-options] [--no-one-kernel] [--single-kernel-loops]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.optimize as so  # noqa: E402

from gradlab import compilation  # noqa: E402
from gradlab.minimize import minimize  # noqa: E402

GTOL = 1e-5
MAXIT = 5000


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def beale(x):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


_EIG = np.logspace(0.0, 3.0, 20)


def ill_quadratic(x):
    """Eigenvalues 1..1e3 (kappa = 1e3), minimiser at 1."""
    return 0.5 * jnp.sum(_EIG * (x - 1.0) ** 2)


def ill_quadratic_small(x):
    """The same quadratic divided by 1e3 (eigenvalues 1e-3..1)."""
    return 0.5e-3 * jnp.sum(_EIG * (x - 1.0) ** 2)


PROBLEMS = {
    "rosenbrock-2": (rosenbrock, np.array([-1.2, 1.0])),
    "rosenbrock-10": (rosenbrock, np.zeros(10)),
    "rosenbrock-100": (rosenbrock, np.zeros(100)),
    "beale": (beale, np.array([1.0, 1.0])),
    "quadratic k=1e3": (ill_quadratic, np.zeros(20)),
    "quadratic/1e3": (ill_quadratic_small, np.zeros(20)),
}


#: Compiler options for the other libraries' functions (``--same-xla-options`` sets gradlab's).
OTHERS_OPTIONS: dict | None = None
#: Compile gradlab's functions with its compiler options (``--no-gradlab-options``: False).
WITH_GRADLAB_OPTIONS = True
#: gradlab's solves as one XLA:CPU kernel when small (``--no-one-kernel``: False).
ONE_KERNEL = True


def _jit(fn, ours: bool = False):
    """``fn`` jitted with gradlab's compiler options (``ours``: what the minimize page tells
    users who wrap :func:`gradlab.minimize` in their own ``jax.jit``) or
    :data:`OTHERS_OPTIONS`."""
    if ours:
        return jax.jit(fn, compiler_options=_gradlab_options())
    return jax.jit(fn, compiler_options=OTHERS_OPTIONS)


def _gradlab_options() -> dict | None:
    return compilation.compiler_options() if WITH_GRADLAB_OPTIONS else None


def _outputs(params, steps, nfev, ngev, gnorm):
    """What every library's timed function returns: the solution and one vector of its counts,
    so that each hands back the same two buffers (every extra output costs ~1.3 us here)."""
    counts = jnp.stack([jnp.asarray(v, jnp.float64) for v in (steps, nfev, ngev, gnorm)])
    return params, counts


def _result(out, compile_s, wall_s):
    steps, nfev, ngev, gnorm = np.asarray(out[1])
    return dict(
        iters=int(steps),
        nfev=int(nfev),
        ngev=int(ngev),
        gnorm=float(gnorm),
        compile=compile_s,
        wall=wall_s,
    )


def _timed(fn, x0, repeats, min_seconds=0.25, max_calls=2000):
    """(output, compile seconds, best steady seconds): the best of at least ``repeats`` calls
    and, for fast solves, of as many more as fit in ``min_seconds`` (at most ``max_calls``):
    a 20 us solve timed 5 times varies by 2x here, timed for 0.25 s by a few percent."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(x0))
    first = time.perf_counter() - t0
    best, spent, calls = np.inf, 0.0, 0
    while calls < repeats or (spent < min_seconds and calls < max_calls):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(x0))
        elapsed = time.perf_counter() - t0
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return out, max(first - best, 0.0), best


# --- runners: each returns dict(iters, nfev, ngev, gnorm, compile, wall) ----------------------


def run_gradlab(fun, x0, method, repeats, options=None):
    def solve(x):
        r = minimize(
            fun,
            x,
            method,
            tol=0.0,
            atol=GTOL,
            max_steps=MAXIT,
            options=options,
            one_kernel=ONE_KERNEL,
        )
        return _outputs(r.params, r.num_steps, r.num_fun_evals, r.num_grad_evals, r.grad_norm)

    return _result(*_timed(_jit(solve, True), jnp.asarray(x0), repeats))


def run_scipy(fun, x0, method, repeats):
    name = {"bfgs": "BFGS", "lbfgs": "L-BFGS-B", "cg": "CG", "newton_cg": "Newton-CG"}[method]
    f = jax.jit(fun)
    g = jax.jit(jax.grad(fun))
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(fun), (x,), (v,))[1])
    kw = dict(jac=lambda x: np.asarray(g(x)), method=name)
    if method == "newton_cg":
        kw["hessp"] = lambda x, v: np.asarray(hvp(x, v))
    opts = {"gtol": GTOL, "maxiter": MAXIT} if method != "newton_cg" else {"maxiter": MAXIT}
    if method == "lbfgs":
        opts = {"gtol": GTOL, "maxiter": MAXIT, "ftol": 1e-15}
    call = lambda x: so.minimize(lambda z: float(f(z)), x, options=opts, **kw)
    r = call(x0)  # warm the jitted f/g
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = call(x0)
        best = min(best, time.perf_counter() - t0)
    return dict(
        iters=int(r.nit),
        nfev=int(r.nfev),
        nfev_2norm=_scipy_evals_to_2norm(f, g, x0, kw, opts),
        ngev=int(getattr(r, "njev", r.nfev)),
        gnorm=float(np.linalg.norm(np.asarray(g(r.x)))),
        compile=0.0,
        wall=best,
    )


def _scipy_evals_to_2norm(f, g, x0, kw, opts):
    """scipy's evaluations until its iterate first has ``|g|_2 <= GTOL`` (gradlab's test;
    scipy's own ``gtol`` is a max-norm test, up to sqrt(n) looser): a tighter run, counted
    through the callback. ``None`` for Newton-CG (no gradient tolerance)."""
    if "gtol" not in opts:
        return None
    calls, hit = [0], [None]

    def counted(z):
        calls[0] += 1
        return float(f(z))

    def callback(xk, *_):
        if hit[0] is None and np.linalg.norm(np.asarray(g(xk))) <= GTOL:
            hit[0] = calls[0]

    tight = dict(opts, gtol=GTOL / np.sqrt(np.size(x0)))
    so.minimize(counted, x0, callback=callback, options=tight, **kw)
    return hit[0]


def run_optax(fun, x0, method, repeats):
    if method != "lbfgs":
        return None
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def solve(x0):
        def cond(c):
            _, st, k, _ = c
            g = optax.tree.get(st, "grad")
            return (k == 0) | ((k < MAXIT) & (optax.tree.norm(g) > GTOL))

        def body(c):
            x, st, k, nev = c
            v, g = value_and_grad(x, state=st)
            u, st = opt.update(g, st, x, value=v, grad=g, value_fn=fun)
            nev = nev + optax.tree.get(st, "num_linesearch_steps")
            return optax.apply_updates(x, u), st, k + 1, nev

        x, st, k, nev = jax.lax.while_loop(cond, body, (x0, opt.init(x0), 0, 1))
        return _outputs(x, k, nev, nev, optax.tree.norm(optax.tree.get(st, "grad")))

    return _result(*_timed(_jit(solve), jnp.asarray(x0), repeats))


def run_jaxopt(fun, x0, method, repeats):
    import warnings

    warnings.filterwarnings("ignore")
    import jaxopt

    kw = dict(fun=fun, tol=GTOL, maxiter=MAXIT)
    solver = {
        "bfgs": lambda: jaxopt.BFGS(**kw),
        "lbfgs": lambda: jaxopt.LBFGS(**kw),
        "cg": lambda: jaxopt.NonlinearCG(method="polak-ribiere", **kw),
    }.get(method)
    if solver is None:
        return None
    s = solver()

    def solve(x):
        params, st = s.run(x)
        return _outputs(
            params, st.iter_num, st.num_fun_eval, st.num_grad_eval, jnp.linalg.norm(st.grad)
        )

    return _result(*_timed(_jit(solve), jnp.asarray(x0), repeats))


def run_optimistix(fun, x0, method, repeats):
    import optimistix as optx

    solver = {
        "bfgs": lambda: optx.BFGS(rtol=1e-8, atol=1e-8),
        "lbfgs": lambda: optx.LBFGS(rtol=1e-8, atol=1e-8),
        "cg": lambda: optx.NonlinearCG(rtol=1e-8, atol=1e-8),
    }.get(method)
    if solver is None:
        return None
    s = solver()

    def solve(x):
        sol = optx.minimise(lambda y, _: fun(y), s, x, max_steps=MAXIT, throw=False)
        k = sol.stats["num_steps"]
        # One f-and-gradient evaluation per step (accepted or rejected) plus the start.
        return _outputs(sol.value, k, k + 1, k + 1, jnp.linalg.norm(jax.grad(fun)(sol.value)))

    return _result(*_timed(_jit(solve), jnp.asarray(x0), repeats))


# The scale-invariant BFGS variant (H0 = gamma I, unit first step), shown beside the default.
BFGS_GAMMA = {"initial_inverse_hessian": "gamma"}

RUNNERS = {
    "scipy": run_scipy,
    "optax": run_optax,
    "jaxopt": run_jaxopt,
    "optimistix": run_optimistix,
}


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def batch_benchmark(repeats: int, n: int = 64):
    rng = np.random.default_rng(0)
    starts = jnp.asarray(rng.uniform(-2.0, 2.0, size=(n, 2)))

    def solve(x):
        return minimize(
            rosenbrock, x, "bfgs", tol=0.0, atol=GTOL, max_steps=MAXIT, one_kernel=ONE_KERNEL
        )

    one, batched = _jit(solve, True), _jit(jax.vmap(solve), True)
    res, comp_b, wall_b = _timed(batched, starts, repeats)
    jax.block_until_ready(one(starts[0]))

    starts_list = list(starts)  # split once: the loop times the solver calls only

    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready([one(x) for x in starts_list])
        best = min(best, time.perf_counter() - t0)
    statuses = np.bincount(np.asarray(res.status), minlength=4)
    print(
        f"\nBatch: {n} Rosenbrock starts in [-2, 2]^2, BFGS: vmap {wall_b * 1e3:.1f} ms "
        f"(compile {comp_b:.2f} s) vs Python loop of the compiled solver {best * 1e3:.1f} ms "
        f"-> ratio {wall_b / best:.2f}; statuses converged={statuses[0]}, "
        f"other={n - statuses[0]}; steps min/max {int(res.num_steps.min())}/"
        f"{int(res.num_steps.max())}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two problems, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 1)")
    parser.add_argument(
        "--same-xla-options",
        action="store_true",
        help="compile the other libraries with gradlab's compiler options too",
    )
    parser.add_argument(
        "--no-gradlab-options",
        action="store_true",
        help="compile gradlab's functions with XLA's defaults (the effect of its options)",
    )
    parser.add_argument(
        "--no-one-kernel",
        action="store_true",
        help="run gradlab's solves as XLA's ordinary program (minimize(one_kernel=False))",
    )
    parser.add_argument(
        "--single-kernel-loops",
        action="store_true",
        help="raise XLA:CPU's small-while-loop threshold (process-wide, every library): each "
        "solver loop becomes one compiled kernel instead of one task per operation",
    )
    args = parser.parse_args(argv)
    if args.single_kernel_loops:
        # Read when the CPU backend starts, so only effective before the first computation.
        flags = [os.environ.get("XLA_FLAGS", ""), compilation.SINGLE_KERNEL_LOOPS_XLA_FLAG]
        os.environ["XLA_FLAGS"] = " ".join(flags).strip()
    global OTHERS_OPTIONS, WITH_GRADLAB_OPTIONS, ONE_KERNEL
    OTHERS_OPTIONS = compilation.compiler_options() if args.same_xla_options else None
    WITH_GRADLAB_OPTIONS = not args.no_gradlab_options
    ONE_KERNEL = not args.no_one_kernel
    repeats = args.repeats or (1 if args.quick else 5)
    problems = dict(list(PROBLEMS.items())[:2]) if args.quick else PROBLEMS
    methods = ["bfgs", "lbfgs", "cg"]
    try:
        import gradlab.second_order.newton_cg  # noqa: F401

        methods.append("newton_cg")
    except ImportError:  # pragma: no cover
        pass

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, float64, stop at |g| <= {GTOL}, "
        f"load average at start {os.getloadavg()[0]:.1f}, other libraries compiled with "
        f"{OTHERS_OPTIONS or 'XLA defaults'}, gradlab with {_gradlab_options() or 'XLA defaults'}"
        f"{'' if ONE_KERNEL else ' and one_kernel=False'}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    header = (
        f"{'problem':<16} {'method':<9} {'library':<10} {'iters':>6} {'f-evals':>8} "
        f"{'@2-norm':>7} {'g-evals':>8} {'|g| end':>9} {'compile s':>9} {'wall ms':>9} "
        f"{'evals ratio':>11} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for pname, (fun, x0) in problems.items():
        for method in methods:
            mine = run_gradlab(fun, x0, method, repeats)
            rows = [("gradlab", mine)]
            if method == "bfgs":
                rows.append(("gl-gamma", run_gradlab(fun, x0, method, repeats, BFGS_GAMMA)))
            for lib, runner in RUNNERS.items():
                try:
                    r = runner(fun, x0, method, repeats)
                except Exception as err:  # a competitor failing is a result, not a crash
                    print(f"  ({lib} {method} on {pname} failed: {type(err).__name__})")
                    r = None
                if r is not None:
                    rows.append((lib, r))
            for lib, r in rows:
                other = r.get("nfev_2norm") or r["nfev"]
                ours = lib in ("gradlab", "gl-gamma")
                ev_ratio = None if ours else mine["nfev"] / other
                t_ratio = None if ours else mine["wall"] / r["wall"]
                at_2norm = r.get("nfev_2norm")
                print(
                    f"{pname:<16} {method:<9} {lib:<10} {r['iters']:>6} {r['nfev']:>8} "
                    f"{_fmt(at_2norm, '>7')} {r['ngev']:>8} {r['gnorm']:>9.1e} "
                    f"{r['compile']:>9.2f} {r['wall'] * 1e3:>9.3f} {_fmt(ev_ratio, '>11.2f')} "
                    f"{_fmt(t_ratio, '>10.2f')}"
                )
    batch_benchmark(repeats)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
