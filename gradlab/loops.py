"""``while`` loops whose small carried values travel packed in one vector.

A solver loop carries many scalars: step and evaluation counters, status codes, the current
value, a line search's interval ends. On XLA:CPU every kernel of a loop body is a separate
runtime task (a *thunk*, 15-50 ns even for a scalar), and XLA:CPU fuses neither several outputs
into one kernel nor a ``concatenate`` of more than 8 operands. So a loop that carries :math:`k`
scalars runs at least :math:`k` kernels per iteration just to produce them, and packing them
into one vector with a flat ``concatenate`` does not help: each piece stays its own kernel.

:func:`packed_while_loop` carries every small leaf packed into one vector per kind (floats of
the loop's dtype, integers and booleans) and :func:`concatenate` builds the vector in groups of
at most 8 pieces, each group one fused kernel. Packing is a lossless copy, so the results are
the plain loop's; XLA may fuse the arithmetic around it differently, which can move float32
round-off (every float64 solve in the benchmarks took the same steps). Measured on a 2-core
CPU (``docs/benchmarks.md``): a Moré–Thuente trial 43 → 20 kernels, Rosenbrock-2 BFGS
75 → 55 µs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["concatenate", "packed_while_loop", "MAX_PACKED_SIZE"]

#: Leaves with at most this many entries are packed; larger ones are carried as they are.
MAX_PACKED_SIZE = 8

# XLA:CPU fuses a concatenate of at most 8 operands (``kMaxConcatenateArguments``).
_MAX_FUSED_CONCATENATE = 8


def _grouped_concatenate(*parts: jax.Array) -> jax.Array:
    parts = list(parts)
    while len(parts) > _MAX_FUSED_CONCATENATE:
        groups = [
            jnp.concatenate(parts[i : i + _MAX_FUSED_CONCATENATE])
            for i in range(0, len(parts), _MAX_FUSED_CONCATENATE)
        ]
        # The barrier keeps XLA's simplifier from merging the groups back into one concatenate.
        parts = list(jax.lax.optimization_barrier(tuple(groups)))
    return jnp.concatenate(parts)


def _flat_concatenate(*parts: jax.Array) -> jax.Array:
    return jnp.concatenate(parts)


def _kernel_concatenate(*parts: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(*parts, cpu=_grouped_concatenate, default=_flat_concatenate)


@jax.custom_batching.custom_vmap
def _packing_concatenate(*parts: jax.Array) -> jax.Array:
    return _kernel_concatenate(*parts)


@_packing_concatenate.def_vmap
def _packing_concatenate_batched(axis_size, in_batched, *parts):
    # Batched, each piece is a vector over the batch: XLA:CPU computes it in a vectorised
    # kernel of its own, while a fused concatenate would compute every element of the batch
    # through a branch per piece (a vmapped 64-start BFGS solve 1.4 -> 2.4 ms): flat.
    if not any(in_batched):
        return _kernel_concatenate(*parts), False
    parts = [
        p if batched else jnp.broadcast_to(p, (axis_size, *jnp.shape(p)))
        for p, batched in zip(parts, in_batched, strict=True)
    ]
    return jnp.concatenate(parts, axis=1), True


# Its derivative is the plain concatenate's (a custom_vmap has no transpose of its own), so
# reverse mode through a packed loop reaches the loop and fails with JAX's while-loop message.
_differentiable_packing_concatenate = jax.custom_jvp(_packing_concatenate)
_differentiable_packing_concatenate.defjvp(
    lambda parts, tangents: (_packing_concatenate(*parts), jnp.concatenate(tangents))
)


def concatenate(parts: Sequence[jax.Array]) -> jax.Array:
    """``jnp.concatenate(parts)`` of 1-D arrays, built on the CPU in groups of at most 8 so that
    each group is one fused kernel. Other backends fuse a flat concatenate whole, and under
    ``vmap`` the pieces stay separate vectorised kernels (a flat concatenate)."""
    parts = list(parts)
    if len(parts) <= _MAX_FUSED_CONCATENATE:
        return jnp.concatenate(parts)
    return _differentiable_packing_concatenate(*parts)


def _is_integer_like(kind) -> bool:
    return kind == jnp.bool_ or (
        jnp.issubdtype(kind, jnp.integer) and jnp.iinfo(kind).bits <= 32 and kind != jnp.uint32
    )


class _Layout:
    """Where each leaf of a carry travels: in the float vector, the int32 vector, or as is."""

    def __init__(self, init: Any, dtype, small_ints: bool):
        leaves, self.treedef = jax.tree.flatten(init)
        self.dtype = jnp.dtype(dtype)
        # int32 values are exact in float64; below 2**24 also in float32.
        ints_as_floats = small_ints or self.dtype == jnp.float64
        self.slots = []  # per leaf: (vector index, offset, size, shape, kind) or None
        sizes = [0, 0]
        for leaf in leaves:
            kind, shape = jnp.result_type(leaf), jnp.shape(leaf)
            size = int(jnp.size(leaf))
            slot = None
            if len(shape) <= 1 and size <= MAX_PACKED_SIZE:
                if kind == self.dtype:
                    slot = 0
                elif _is_integer_like(kind) and shape == ():
                    slot = 0 if ints_as_floats else 1
            if slot is None:
                self.slots.append(None)
            else:
                self.slots.append((slot, sizes[slot], size, shape, kind))
                sizes[slot] += size
        self.vector_dtypes = (self.dtype, jnp.dtype(jnp.int32))

    def pack(self, carry: Any) -> tuple:
        leaves = self.treedef.flatten_up_to(carry)
        parts: tuple[list, list] = ([], [])
        rest = []
        for leaf, slot in zip(leaves, self.slots, strict=True):
            if slot is None:
                rest.append(leaf)
            else:
                index = slot[0]
                parts[index].append(jnp.ravel(jnp.asarray(leaf).astype(self.vector_dtypes[index])))
        vectors = tuple(concatenate(p) if p else None for p in parts)
        return vectors, rest

    def unpack(self, packed: tuple) -> Any:
        vectors, rest = packed
        rest = iter(rest)
        leaves = []
        for slot in self.slots:
            if slot is None:
                leaves.append(next(rest))
                continue
            index, offset, size, shape, kind = slot
            part = vectors[index][offset : offset + size].reshape(shape)
            leaves.append(part != 0 if kind == jnp.bool_ else part.astype(kind))
        return self.treedef.unflatten(leaves)


def packed_while_loop(
    cond_fun: Callable[[Any], jax.Array],
    body_fun: Callable[[Any], Any],
    init: Any,
    dtype,
    *,
    small_ints: bool = False,
) -> Any:
    """``lax.while_loop(cond_fun, body_fun, init)`` with the small leaves of the carry packed.

    Leaves of ``init`` with at most :data:`MAX_PACKED_SIZE` entries travel in one ``dtype``
    vector when they have that dtype, and scalar integers (at most 32 bits, not ``uint32``) and
    booleans in one int32 vector, or in the ``dtype`` vector when that is exact (``float64``,
    or ``small_ints=True``: the caller guarantees magnitudes below :math:`2^{24}`). Other
    leaves are carried as they are. Same results as the plain loop up to XLA's fusion choices
    (see the module docstring).
    """
    layout = _Layout(init, dtype, small_ints)

    def cond(packed):
        return cond_fun(layout.unpack(packed))

    def body(packed):
        return layout.pack(body_fun(layout.unpack(packed)))

    return layout.unpack(jax.lax.while_loop(cond, body, layout.pack(init)))
