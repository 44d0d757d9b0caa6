"""The XLA options gradlab compiles its own loops with.

gradlab's solver loops (:func:`gradlab.minimize`) and sweep programs carry many small buffers
from one iteration to the next: parameters, the previous point and gradient a quasi-Newton
direction needs, the value and gradient a line search hands back, counters. On the CPU
backend XLA's default copy insertion copies several of them in every iteration (and orders
the copies, which lengthens the iteration's critical path); its *region analysis* proves most
of those copies unnecessary. It changes no arithmetic that matters (the same steps and
evaluation counts on every benchmark problem; the last bits of a few 2-D iterates) and is
measured in ``docs/benchmarks.md``: Rosenbrock-100 BFGS 0.70x and CG 0.51x the time,
the 20-dimensional quadratic BFGS 0.75x, Rosenbrock-10 0.79-0.91x, 2-D problems unchanged;
a sweep's single-run program 12 -> 8 copies per step, 1-2% faster, bit-identical. On a GPU
the same analysis (:data:`GPU_COMPILER_OPTIONS`) removes 1-2 copies per solver program
(Rosenbrock-2 BFGS 7% faster on an H200, the other solves within 3%; sweeps unchanged), with
bit-identical results.

On a GPU every iteration of a ``while`` loop (and every ``lax.cond``) copies its predicate to
the host and waits for it before launching the next kernels, and each kernel is a separate
launch: a small solver iteration is bound by those round trips, not by arithmetic. XLA can
record the loops and conditionals themselves into CUDA graphs (*command buffers* with
conditional nodes, CUDA 12.3 or newer; XLA drops them on older drivers), so that a whole
solve is launched once and loops on the device. :data:`GPU_DEVICE_LOOP_OPTIONS` turns that
on for gradlab's solver loops; measured on an H200 (``docs/benchmarks.md``, Rosenbrock-2 and -10)
BFGS solves 1.4x faster, L-BFGS 1.3-1.5x and CG 1.6-1.8x, with bit-identical results (it
changes how kernels are launched, not what they compute). Sweep programs leave it out
(``device_loops=False``): their step loop's body is a few large kernels, and there it made a
sweep up to 15% slower (N <= 8 runs) and gained nothing at N = 32-128.

JAX fixes compiler options per ``jax.jit`` object, and a jitted function called inside
another ``jax.jit`` is compiled with the *outer* function's options. So the options reach
gradlab's loops when they are called directly; when you wrap :func:`gradlab.minimize` in a
``jax.jit`` of your own, pass ``compiler_options=gradlab.compilation.compiler_options()`` to it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "GPU_COMPILER_OPTIONS",
    "GPU_DEVICE_LOOP_OPTIONS",
    "SINGLE_KERNEL_LOOPS_XLA_FLAG",
    "compiler_options",
    "jit",
]

#: Options for the CPU backend.
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_copy_insertion_use_region_analysis": True}

#: Options for every gradlab program on GPU backends.
GPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_gpu_copy_insertion_use_region_analysis": True}

#: Added for the solver loops on GPU backends: XLA's default command-buffer kinds plus
#: ``WHILE`` and ``CONDITIONAL`` (a per-compilation list replaces XLA's default list, it cannot
#: extend it).
GPU_DEVICE_LOOP_OPTIONS: dict[str, Any] = {
    "xla_gpu_enable_command_buffer": (
        "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL"
    ),
}

#: An ``XLA_FLAGS`` entry for programs that solve small problems on the CPU: XLA:CPU compiles a
#: while loop into a single kernel when one iteration reads less than a byte threshold (1 kB
#: by default), and otherwise runs each fused operation of the loop body as a separate runtime
#: task (jax-ml/jax#26145). This raises the threshold so every loop qualifies. It is
#: process-wide and read when the CPU backend starts, so set it before the first computation::
#:
#:     flags = os.environ.get("XLA_FLAGS", "")
#:     os.environ["XLA_FLAGS"] = f"{flags} {gradlab.compilation.SINGLE_KERNEL_LOOPS_XLA_FLAG}"
#:
#: Measured in ``docs/benchmarks.md`` (2- to 100-dimensional problems): gradlab's solves
#: 1.7-9x faster, optax's, optimistix's and jaxopt's 1.4-18x, the same evaluation counts up to
#: round-off; but jaxopt's BFGS on Rosenbrock-100 10x slower. Measure your own programs.
#: gradlab's own small solves no longer need it: :func:`gradlab.minimize` compiles each one
#: into a single kernel per program (:mod:`gradlab.kernels`), leaving other programs alone.
SINGLE_KERNEL_LOOPS_XLA_FLAG = (
    "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1000000000"
)


def compiler_options(
    backend: str | None = None, *, device_loops: bool = True
) -> dict[str, Any] | None:
    """The compiler options gradlab uses on ``backend`` (default: JAX's default backend):
    :data:`CPU_COMPILER_OPTIONS` on ``"cpu"``; on ``"gpu"`` (``"cuda"``, ``"rocm"``)
    :data:`GPU_COMPILER_OPTIONS`, with :data:`GPU_DEVICE_LOOP_OPTIONS` when ``device_loops``
    (solver loops: the default; sweeps pass ``False``); ``None`` (XLA's defaults) elsewhere."""
    backend = jax.default_backend() if backend is None else backend
    if backend == "cpu":
        return dict(CPU_COMPILER_OPTIONS)
    if backend in ("gpu", "cuda", "rocm"):
        return {**GPU_COMPILER_OPTIONS, **(GPU_DEVICE_LOOP_OPTIONS if device_loops else {})}
    return None


def jit(
    fun: Callable[..., Any],
    *,
    platform: str | None = None,
    device_loops: bool = True,
    **jit_kwargs: Any,
) -> Callable[..., Any]:
    """``jax.jit(fun, **jit_kwargs)``, compiled with :func:`compiler_options` for ``platform``
    (default: JAX's default backend at each call; ``device_loops`` as there) when called at
    top level; inside another transformation's trace (your own
    ``jax.jit`` or ``jax.grad``, where JAX refuses options on a nested jit and says so when
    the call is traced) it is the plain ``jax.jit``. If this XLA rejects an option (a newer
    release renamed or dropped it), the function is compiled without them, with one
    ``RuntimeWarning``. One pair of ``jax.jit`` objects per backend, each with its own cache;
    a top-level call costs one dictionary lookup more than ``jax.jit``'s."""
    by_backend: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}

    def pair_for(backend: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        options = compiler_options(backend, device_loops=device_loops)
        plain = jax.jit(fun, **jit_kwargs)
        tuned = plain if options is None else jax.jit(fun, compiler_options=options, **jit_kwargs)
        return by_backend.setdefault(backend, (tuned, plain))

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        backend = platform or jax.default_backend()
        tuned, plain = by_backend.get(backend) or pair_for(backend)
        try:
            return tuned(*args, **kwargs)
        except ValueError as err:  # nested in a trace of the caller's: options not allowed
            if tuned is plain or "compiler_options" not in str(err):
                raise
            return plain(*args, **kwargs)
        except RuntimeError as err:  # this XLA does not know an option: compile without them
            if tuned is plain or not any(m in str(err) for m in _REJECTED_OPTION):
                raise
            warnings.warn(
                f"gradlab.compilation: this XLA rejects gradlab's compiler options for "
                f"{backend!r} ({err}); compiling {getattr(fun, '__name__', 'the function')} "
                "without them (same results, possibly slower loops)",
                RuntimeWarning,
                stacklevel=2,
            )
            by_backend[backend] = (plain, plain)
            return plain(*args, **kwargs)

    return call


#: How XLA words the rejection of an unknown option or option value.
_REJECTED_OPTION = ("No such compile option", "While setting option")
