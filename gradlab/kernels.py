"""Run a small program as one XLA:CPU kernel: :func:`call`.

XLA:CPU runs a compiled program as a sequence of *thunks*, one per fused kernel, and each
costs 15-50 ns to launch even when it adds two scalars. A quasi-Newton iteration on a
2-D problem is 40-60 such kernels, so its wall time is launch overhead: a Rosenbrock-2 BFGS
solve spends ~1.2 us per iteration where the arithmetic needs a few nanoseconds.

XLA:CPU also has a second code path: a ``call`` whose frontend attribute
``xla_cpu_small_call`` is ``"true"`` is compiled into a *single* kernel, loops and branches
included (XLA's own ``SmallWhileLoopHoistingPass`` uses it for while loops that read under
1 kB per iteration). :func:`call` puts a function in such a call, kept from being inlined
by the attribute ``inlineable = "false"`` (set with ``jax.experimental.xla_metadata``).
Measured in ``docs/benchmarks.md``: gradlab's BFGS, L-BFGS, CG and Newton-CG solves
1.6-6x faster on 2- to 100-dimensional problems.

That code path is narrower than XLA's thunks, so :func:`call` uses it only for a program
that :func:`why_not_one_kernel` accepts:

* every primitive is in :data:`SUPPORTED_PRIMITIVES` (elementwise arithmetic, reductions,
  slicing and reshaping, ``while``/``cond``/``scan``, matrix-vector products). Not there:
  sorting, FFTs, scatters, LAPACK-backed linear algebra (Cholesky, ``solve``...), random
  numbers, and matrix-matrix products: the single kernel cannot express them (XLA refuses
  to compile it).
* no operation is costly enough for XLA:CPU to split it into parallel tasks, which a single
  kernel cannot hold either: :func:`program_cost` bounds every operation's cost with XLA's
  own cost model, and the program is one kernel below :data:`SPLIT_COST` and
  :data:`SPLIT_BYTES` divided by :data:`SAFETY_FACTOR`. That also keeps the single-threaded
  kernel to problems whose iterations take microseconds, where launch overhead dominates.

Otherwise, and on every backend but the CPU (``lax.platform_dependent``), the function is
ordinary code that XLA inlines: the program XLA would have compiled anyway. Under
``jax.vmap`` the decision is taken again for the batched program (a ``custom_vmap`` rule),
so a batch too large for one kernel gets the ordinary program.

The single kernel changes no arithmetic rule: results agree to round-off. It vectorises
some reductions (dot products) in a different order, so float64 results move in the last
bits and an ill-conditioned solve can take a few steps more or fewer (measured in
``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, jaxpr_as_fun

__all__ = [
    "SAFETY_FACTOR",
    "SPLIT_BYTES",
    "SPLIT_COST",
    "SUPPORTED_PRIMITIVES",
    "call",
    "is_one_kernel_failure",
    "program_cost",
    "why_not_one_kernel",
]

#: Frontend attributes of the call XLA:CPU compiles as one kernel.
_ATTRIBUTES = {"inlineable": "false", "xla_cpu_small_call": "true"}

_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj cos cosh
    digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma igammac imag integer_pow
    is_finite lgamma le log log1p logistic lt max min mul ne neg nextafter not or pow real
    rem round rsqrt select_n shift_left shift_right_arithmetic shift_right_logical sign sin
    sinh sqrt square sub tan tanh xor population_count clz convert_element_type
    bitcast_convert_type copy copy_p reduce_precision add_any stop_gradient""".split()
)
_REDUCTIONS = frozenset(
    """reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax
    argmin cumsum cumprod cummax cummin cumlogsumexp""".split()
)
_STRUCTURAL = frozenset(
    """broadcast_in_dim reshape squeeze expand_dims slice dynamic_slice dynamic_update_slice
    concatenate pad rev transpose iota gather optimization_barrier split stack unstack""".split()
)
_CONTROL = frozenset(
    """while cond scan jit pjit closed_call core_call custom_jvp_call custom_vjp_call
    custom_vjp_call_jaxpr checkpoint remat custom_vmap_call platform_index""".split()
)

#: Primitives a one-kernel program may contain (``dot_general`` only as a matrix-vector or
#: vector-vector product, checked separately).
SUPPORTED_PRIMITIVES: frozenset[str] = (
    _ELEMENTWISE | _REDUCTIONS | _STRUCTURAL | _CONTROL | frozenset({"dot_general"})
)

#: Calls whose body XLA inlines into the caller's computation (its fusions can span both).
_INLINED = frozenset(
    """jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
    checkpoint remat custom_vmap_call""".split()
)

#: Elementwise primitives that XLA expands into many operations (special functions), counted
#: as this many flops per element; every other one as one (``integer_pow`` as its exponent).
_EXPANDED_WEIGHT = 50
_EXPANDED = frozenset(
    """lgamma digamma igamma igammac igamma_grad_a random_gamma_grad erf_inv polygamma zeta
    bessel_i0e bessel_i1e erf erfc nextafter logistic""".split()
)

#: XLA:CPU splits an operation into parallel tasks (which one kernel cannot hold) when
#: ``flops + 10 * bytes >= 2e5`` for a compute-bound one (more flops than bytes) and when
#: ``bytes >= 512 KiB`` for the others (its ``ParallelTaskAssignment`` cost model; checked
#: against this XLA in ``tests/test_kernels.py``). :func:`program_cost` bounds both; a
#: program is one kernel while both bounds stay below these limits divided by
#: :data:`SAFETY_FACTOR`.
SPLIT_COST = 200_000
SPLIT_BYTES = 512 * 1024
SAFETY_FACTOR = 2


class _Level:
    """Flops and bytes of one computation XLA compiles as a unit (the program, a loop body or
    condition, a branch), nested calls that XLA inlines included."""

    def __init__(self, inputs) -> None:
        self.flops = 0
        self.nbytes = sum(_nbytes(v.aval) for v in inputs)

    def cost(self) -> int:
        # A fused operation reads and writes a subset of the level's values and does a subset
        # of its flops; it is compute-bound only when its flops exceed its bytes.
        return self.flops + 10 * min(self.flops, self.nbytes)


def _sub_jaxprs(params: dict[str, Any]) -> list[Jaxpr]:
    """The jaxprs an equation calls (loop bodies, branches, nested calls)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, Jaxpr):
                found.append(item)
    return found


def _size(aval: Any) -> int:
    return int(np.prod(getattr(aval, "shape", ()), dtype=np.int64))


def _nbytes(aval: Any) -> int:
    dtype = getattr(aval, "dtype", None)
    return _size(aval) * (np.dtype(dtype).itemsize if dtype is not None else 0)


def _is_matrix_product(eqn: Any) -> bool:
    """Whether a ``dot_general`` multiplies two matrices (both sides keep a free dimension
    longer than 1), which one kernel cannot hold."""
    (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)

    def free(shape, used):
        return int(np.prod([d for i, d in enumerate(shape) if i not in used], dtype=np.int64))

    return free(lhs, (*contract_l, *batch_l)) > 1 and free(rhs, (*contract_r, *batch_r)) > 1


def _eqn_flops(eqn: Any) -> int:
    name = eqn.primitive.name
    if name in _ELEMENTWISE:
        weight = _EXPANDED_WEIGHT if name in _EXPANDED else 1
        if name == "integer_pow":
            weight = max(1, abs(int(eqn.params["y"])))
        return weight * sum(_size(v.aval) for v in eqn.outvars)
    if name in _REDUCTIONS:
        return sum(_size(v.aval) for v in eqn.invars)
    if name == "dot_general":
        (contract_l, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        inner = int(np.prod([lhs[i] for i in contract_l], dtype=np.int64))
        return 2 * _size(eqn.outvars[0].aval) * inner
    return 0


def _unsupported(jaxpr: Any) -> str | None:
    """Why the program can never be one kernel (a primitive one kernel cannot hold), if so."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name not in SUPPORTED_PRIMITIVES:
            return f"it uses {name!r}"
        if name == "dot_general" and _is_matrix_product(eqn):
            return "it multiplies two matrices"
        for sub in _sub_jaxprs(eqn.params):
            reason = _unsupported(sub)
            if reason is not None:
                return reason
    return None


def _walk(jaxpr: Any, level: _Level, levels: list[_Level]) -> None:
    """Adds ``jaxpr``'s equations to ``level``, and its loops' and branches' to new levels in
    ``levels``."""
    for eqn in jaxpr.eqns:
        level.flops += _eqn_flops(eqn)
        level.nbytes += sum(_nbytes(v.aval) for v in eqn.outvars)
        for sub in _sub_jaxprs(eqn.params):
            if eqn.primitive.name in _INLINED:
                _walk(sub, level, levels)
            else:
                levels.append(_Level(sub.invars + sub.constvars))
                _walk(sub, levels[-1], levels)


def _levels(closed_jaxpr: ClosedJaxpr) -> list[_Level]:
    jaxpr = closed_jaxpr.jaxpr
    levels = [_Level(jaxpr.invars + jaxpr.constvars)]
    _walk(jaxpr, levels[0], levels)
    return levels


def program_cost(closed_jaxpr: ClosedJaxpr) -> tuple[int, int]:
    """``(cost, bytes)``: upper bounds on XLA:CPU's cost (``flops + 10 * bytes`` of a
    compute-bound operation) and on the bytes of any one operation of the program. Per
    computation XLA compiles as a unit (the program, each loop body and branch), a fused
    operation does at most all of its flops and touches at most all of its values."""
    levels = _levels(closed_jaxpr)
    return max(lv.cost() for lv in levels), max(lv.nbytes for lv in levels)


def why_not_one_kernel(closed_jaxpr: ClosedJaxpr) -> str | None:
    """``None`` when XLA:CPU can compile the program as one kernel (see the module
    docstring), else the reason it cannot."""
    reason = _unsupported(closed_jaxpr.jaxpr)
    if reason is not None:
        return reason
    cost, nbytes = program_cost(closed_jaxpr)
    if cost * SAFETY_FACTOR >= SPLIT_COST:
        limit = SPLIT_COST // SAFETY_FACTOR
        return f"an operation may cost up to {cost} (one kernel: below {limit})"
    if nbytes * SAFETY_FACTOR >= SPLIT_BYTES:
        limit = SPLIT_BYTES // SAFETY_FACTOR
        return f"an operation may touch up to {nbytes} bytes (one kernel: below {limit})"
    return None


def call(fun: Callable[..., Any], *args: Any) -> Any:
    """``fun(*args)`` (pytrees of arrays in and out), compiled on the CPU as one kernel when
    :func:`why_not_one_kernel` accepts it, and as ordinary inlined code otherwise. Call it
    while tracing (inside ``jax.jit``): the decision is taken from the traced program, and
    again under ``jax.vmap`` for the batched one. Derivatives are the ordinary program's
    (computed with it, outside the kernel)."""
    flat_args, in_tree = jax.tree.flatten(args)
    closed, out_shape = jax.make_jaxpr(
        lambda *flat: fun(*jax.tree.unflatten(in_tree, flat)), return_shape=True
    )(*flat_args)
    out_tree = jax.tree.structure(out_shape)
    if _unsupported(closed.jaxpr) is not None:  # at any batch size
        return jax.tree.unflatten(out_tree, jaxpr_as_fun(closed)(*flat_args))
    # Values ``fun`` closes over (a traced hyperparameter, batched under an outer vmap) become
    # explicit operands: a custom_vmap rule needs to see which of its inputs are batched.
    n_args = len(flat_args)

    def explicit(*operands):
        with_consts = ClosedJaxpr(closed.jaxpr, list(operands[n_args:]))
        return jaxpr_as_fun(with_consts)(*operands[:n_args])

    # Derivatives are those of the ordinary program (a custom_vmap has none of its own), so
    # reverse mode through a while loop fails with JAX's usual message.
    on_cpu = jax.custom_jvp(_on_cpu(explicit))
    on_cpu.defjvp(lambda primals, tangents: jax.jvp(explicit, primals, tangents))
    operands = [*flat_args, *closed.consts]
    outs = jax.lax.platform_dependent(*operands, cpu=on_cpu, default=explicit)
    return jax.tree.unflatten(out_tree, outs)


def _on_cpu(flat_fun: Callable[..., Any]) -> Callable[..., Any]:
    """``flat_fun`` as one kernel if it fits; decided again for the batched function under
    ``vmap`` (a batch can outgrow one kernel)."""
    # XLA aborts the process when one kernel has a parameter it does not use (a CHECK in its
    # IrEmitter); returning every input as well uses them all, whatever XLA simplifies away.
    # (Elsewhere the extra outputs cost nothing: the call is inlined and they are dropped.)
    with_inputs = jax.jit(lambda *flat: (flat_fun(*flat), flat))

    @jax.custom_batching.custom_vmap
    def decided(*flat):
        if why_not_one_kernel(with_inputs.trace(*flat).jaxpr) is not None:
            return with_inputs(*flat)[0]
        from jax.experimental.xla_metadata import set_xla_metadata

        with set_xla_metadata(**_ATTRIBUTES):
            return with_inputs(*flat)[0]

    @decided.def_vmap
    def decided_batched(axis_size, in_batched, *flat):
        del axis_size
        batched = jax.vmap(flat_fun, in_axes=[0 if b else None for b in in_batched])
        out = _on_cpu(batched)(*flat)
        return out, jax.tree.map(lambda _: True, out)

    return decided


#: How XLA words its refusal of a program it cannot compile as one kernel.
_ONE_KERNEL_FAILURES = (
    "legacy emitter",
    "Fusion kind not implemented",
    "Invalid LLVM IR",
    "Failed to materialize symbols",
    "Unhandled opcode",
)


def is_one_kernel_failure(err: Exception) -> bool:
    """Whether a compilation error is XLA refusing a one-kernel call (see :func:`call`)."""
    return any(marker in str(err) for marker in _ONE_KERNEL_FAILURES)
