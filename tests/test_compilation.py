"""gradlab's compiler options: valid for this jaxlib, used at top level, skipped when nested."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import compilation
from gradlab.minimize import minimize
from gradlab.status import Status


def test_options_per_backend_and_valid_for_this_xla():
    assert compilation.compiler_options("cpu") == compilation.CPU_COMPILER_OPTIONS
    gpu_options = compilation.GPU_COMPILER_OPTIONS
    for gpu in ("gpu", "cuda", "rocm"):
        loops = compilation.compiler_options(gpu)
        assert loops == {**gpu_options, **compilation.GPU_DEVICE_LOOP_OPTIONS}
        assert compilation.compiler_options(gpu, device_loops=False) == gpu_options
    assert compilation.compiler_options("cpu", device_loops=False) == (
        compilation.CPU_COMPILER_OPTIONS
    )
    assert compilation.compiler_options("tpu") is None
    commands = compilation.GPU_DEVICE_LOOP_OPTIONS["xla_gpu_enable_command_buffer"].split(",")
    assert {"FUSION", "WHILE", "CONDITIONAL"} <= set(commands)
    # This XLA accepts both sets: a renamed or removed flag raises "No such compile option", an
    # unknown command-buffer kind "... is not a valid ... value" (the CPU backend parses the
    # GPU fields too, and ignores them).
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    for backend in ("cpu", "gpu"):
        options = compilation.compiler_options(backend)
        compiled = f.lower(jnp.ones(3)).compile(compiler_options=options)
        np.testing.assert_allclose(np.asarray(compiled(jnp.ones(3))), 2.0 * np.sin(np.ones(3)))
    with pytest.raises(Exception, match="not a valid"):
        bad = {"xla_gpu_enable_command_buffer": "FUSION,NOT_A_COMMAND"}
        f.lower(jnp.ones(3)).compile(compiler_options=bad)


def _loop(x, n):
    def body(c):
        x, prev, k = c
        return jnp.tanh(x + 0.1 * prev), x, k + 1

    return jax.lax.while_loop(lambda c: c[2] < n, body, (x, jnp.zeros_like(x), 0))[0]


def test_jit_top_level_nested_and_vmapped_agree_with_plain_jit():
    tuned = compilation.jit(_loop, static_argnames="n")
    plain = jax.jit(_loop, static_argnames="n")
    x = jnp.linspace(-1.0, 1.0, 5)
    expected = np.asarray(plain(x, n=7))
    np.testing.assert_array_equal(np.asarray(tuned(x, n=7)), expected)
    # Inside a jit of the caller's (JAX refuses options on a nested jit): the plain path.
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda y: tuned(y, n=7))(x)), expected)
    # Traced without traced arguments (a constant inside the caller's jit).
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda: tuned(x, n=7))()), expected)
    out = jax.vmap(lambda y: tuned(y, n=7))(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(plain(2 * x, n=7)), rtol=1e-6)


def test_minimize_inside_a_user_jit_equals_the_direct_call():
    def rosen(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    x0 = jnp.zeros(6)
    direct = minimize(rosen, x0, "bfgs")
    wrapped = jax.jit(lambda x: minimize(rosen, x, "bfgs"))(x0)
    # Two compilations of the same float32 solve: equal up to the last bits, which on an
    # ill-conditioned problem may move the stop by an evaluation (jax 0.8: 51 vs 52).
    assert int(direct.status) == int(wrapped.status) == 0
    assert abs(int(direct.num_fun_evals) - int(wrapped.num_fun_evals)) <= 2
    np.testing.assert_allclose(np.asarray(direct.params), np.asarray(wrapped.params), rtol=1e-5)


def test_jit_nested_traces_once_and_passes_the_functions_own_errors_through():
    traces = []

    def f(x):
        traces.append(1)
        if x.shape[0] > 3:
            raise ValueError("x is too long")
        return x + 1.0

    tuned = compilation.jit(f)
    jax.jit(lambda y: tuned(y))(jnp.ones(2))
    assert len(traces) == 1  # JAX refuses the options before tracing: no second trace
    with pytest.raises(ValueError, match="^x is too long"):
        tuned(jnp.ones(5))


_SINGLE_KERNEL_CHECK = """
import jax, jax.numpy as jnp
from gradlab.minimize import minimize
def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
solve = jax.jit(lambda x: minimize(rosenbrock, x, "bfgs", tol=1e-6))
text = solve.lower(jnp.zeros(2)).compile().as_text()
result = solve(jnp.zeros(2))
print(text.count("xla_cpu_small_call"), int(result.num_steps), int(result.status))
"""


def test_single_kernel_loops_flag_makes_the_solver_loop_one_kernel():
    """The documented XLA_FLAGS entry still reaches this XLA (an unknown key in
    xla_backend_extra_options would be silently ignored): the loop becomes a "small call"."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]  # gradlab importable from a checkout

    def run(xla_flags):
        env = dict(os.environ, XLA_FLAGS=xla_flags, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, "-c", _SINGLE_KERNEL_CHECK],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        return [int(v) for v in out.stdout.split()]

    calls, steps, status = run(compilation.SINGLE_KERNEL_LOOPS_XLA_FLAG)
    default_calls, default_steps, default_status = run("")
    assert calls > default_calls
    # The same algorithm; the single kernel rounds differently (19 steps here against 20).
    assert status == default_status == int(Status.CONVERGED)
    assert abs(steps - default_steps) <= 2


def test_sweeps_compile_without_device_loops(monkeypatch):
    """Sweep programs ask for the options without GPU command-buffer loops (measured slower
    for their step loops), on every strategy."""
    from gradlab.sweep import sweep, tasks

    calls = []
    real = compilation.compiler_options

    def spy(backend=None, **kw):
        calls.append(kw)
        return real(backend, **kw)

    monkeypatch.setattr(compilation, "compiler_options", spy)
    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
    task = tasks.custom(
        lambda key: jnp.zeros(()), lambda w, batch: jnp.mean((w * batch - 2.0 * batch) ** 2), x
    )
    for strategy in ("vmap", "loop"):
        calls.clear()
        grid = {"learning_rate": [0.1, 0.2]}
        sweep(optax.sgd, grid, task=task, steps=3, strategy=strategy, progress=False)
        assert calls and all(kw == {"device_loops": False} for kw in calls), (strategy, calls)


def test_jit_falls_back_once_when_xla_rejects_an_option(monkeypatch):
    """A newer XLA that renamed an option (or a command-buffer kind) must not break gradlab's
    loops: the function compiles without the options, with one warning."""
    backend = jax.default_backend()
    bad = {"xla_no_such_option_in_any_xla": True}
    real = compilation.compiler_options
    monkeypatch.setattr(
        compilation, "compiler_options", lambda b=None, **kw: bad if b == backend else real(b)
    )
    f = compilation.jit(lambda x: jnp.tanh(x) * 3.0)
    with pytest.warns(RuntimeWarning, match="rejects gradlab's compiler options"):
        y = f(jnp.ones(3))
    np.testing.assert_allclose(np.asarray(y), 3.0 * np.tanh(np.ones(3)), rtol=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(np.asarray(f(jnp.ones(3))), np.asarray(y))
    # other runtime errors are not swallowed
    g = compilation.jit(lambda x: jax.debug.callback(_raise, x))
    monkeypatch.setattr(compilation, "compiler_options", real)
    with pytest.raises(Exception, match="boom"):
        jax.block_until_ready(g(jnp.ones(3)))


def _raise(x):
    raise RuntimeError("boom")


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_sweeps_fall_back_too_when_xla_rejects_an_option(monkeypatch, strategy):
    """Sweep programs compile through the same fallback: a rejected option warns, the sweep
    completes with the same losses as with gradlab's options."""
    from gradlab.sweep import sweep, tasks

    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32)

    def run():
        task = tasks.custom(  # a new task each time: a new program, compiled anew
            lambda key: jnp.zeros(()), lambda w, b: jnp.mean((w * b - 2.0 * b) ** 2), x
        )
        grid = {"learning_rate": [0.1, 0.2]}
        return sweep(optax.sgd, grid, task=task, steps=3, strategy=strategy, progress=False)

    good = run()
    bad = {"xla_no_such_option_in_any_xla": True}
    monkeypatch.setattr(compilation, "compiler_options", lambda b=None, **kw: bad)
    with pytest.warns(RuntimeWarning, match="rejects gradlab's compiler options"):
        fallback = run()
    np.testing.assert_array_equal(fallback.curves["train_loss"], good.curves["train_loss"])
