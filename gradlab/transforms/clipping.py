r"""Gradient clipping: elementwise (:func:`clip`) and by global norm (:func:`clip_by_global_norm`).

Both take their threshold as a number, an array or a schedule (under a schedule their state
carries a step count; otherwise it is ``optax.EmptyState()``). Non-finite input is never turned
into *new* NaNs:

* :func:`clip` maps :math:`\pm\infty` to :math:`\pm\delta` (finite) and leaves NaN as NaN.
* :func:`clip_by_global_norm` leaves updates whose global norm is not finite (an inf or NaN
  entry) **unchanged**, so the inf stays an inf that :func:`gradlab.transforms.finite_guard.
  apply_if_finite` (anywhere in the chain) rejects; ``optax.clip_by_global_norm`` instead
  turns one inf coordinate into NaN and zeroes all others. A *finite* tree whose sum of
  squares overflows float32 is still clipped correctly (the norm is then recomputed with
  rescaling).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["ClipState", "clip", "clip_by_global_norm", "robust_global_norm"]


class ClipState(NamedTuple):
    """State of :func:`clip` and :func:`clip_by_global_norm`."""

    count: jax.Array  # int32 scalar: updates taken so far (evaluates a threshold schedule).


def clip(max_delta: base.ScalarOrSchedule) -> base.GradientTransformation:
    r"""Clip every update entry to :math:`[-\delta, \delta]`.

    .. math:: u_i = \min(\max(g_i, -\delta), \delta)

    Args:
      max_delta: :math:`\delta \ge 0`; number, array or schedule.
    """
    max_delta = base.hyperparameter(max_delta, "max_delta", base.NONNEGATIVE_OR_INF, owner="clip")

    def apply(updates, count, params):
        del params
        delta = base.resolve(max_delta, count, base.leaf_compute_dtype(updates))

        def leaf(g):
            g = jnp.asarray(g)
            d = delta.astype(base.compute_dtype(g.dtype))
            return jnp.clip(g.astype(d.dtype), -d, d).astype(g.dtype)

        return jax.tree.map(leaf, updates)

    return base.counted_transformation(ClipState, "clip", apply, (max_delta,))


def _times_power_of_two(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x * 2**k`` for an int32 scalar ``k``, exactly: two multiplications by powers of two of
    the same sign (each ``|k/2| <= 126``, so both factors are normal floats), with the rounding
    of ``jnp.ldexp`` when the result under- or overflows. Elementwise it is two multiplies that
    fuse into the consumer; ``jnp.ldexp`` lowers to a power and selects per element, which XLA
    does not duplicate into the optimizer's kernels (one more pass over the tree)."""
    k1 = k // 2
    dtype = jnp.real(x).dtype
    one = jnp.ones([], dtype)
    return x * jnp.ldexp(one, k1) * jnp.ldexp(one, k - k1)


def _norm_parts(tree) -> tuple[jax.Array, jax.Array]:
    r"""``(s, e)`` with the global norm :math:`\lVert g \rVert_2 = s \cdot 2^e`, in float32
    (float64 when a leaf is); ``s`` is finite for every finite tree, even when the norm itself
    is not representable.

    Computes :math:`\sqrt{\sum g_i^2}` directly (``e = 0``) when that sum is finite and far
    from underflow; otherwise :math:`2^e \sqrt{\sum (g_i/2^e)^2}` with :math:`2^e` the power of
    two of :math:`m = \max |g_i|` (exact ``ldexp`` scalings, no subnormal reciprocal), so
    ``s`` is in :math:`[1/2, \sqrt n)`. A tree with an inf or NaN entry gives ``(m, 0)``
    (non-finite); an all-zero tree gives ``(0, 0)``.
    """
    dtype = base.leaf_compute_dtype(tree)
    leaves = jax.tree.leaves(tree)
    zero = jnp.zeros([], jnp.int32)
    if not leaves:
        return jnp.zeros([], dtype), zero

    def magnitude(x):  # computed where it is used: |g| is never a tree-sized temporary
        return jnp.abs(x).astype(dtype)

    sumsq = sum(jnp.sum(jnp.square(magnitude(x))) for x in leaves)
    # Below this the squares of small entries may have been flushed to 0 (they would be lost
    # in a direct sum: the norm of [1e-20] is 0 in float32); above it they weigh < n 2^-50.
    floor = float(jnp.finfo(dtype).tiny) * 2.0**50

    def direct(_):
        return jnp.sqrt(sumsq), zero

    def rescaled(_):  # double-wheres: finite gradients at an all-zero tree
        m = jnp.max(jnp.stack([jnp.max(magnitude(x), initial=0.0) for x in leaves]))
        ok = jnp.isfinite(m) & (m > 0)
        # Divide by m's power of two 2^e with ldexp (exact, no reciprocal): 1/m is subnormal for
        # m > 2^126, and XLA:CPU flushes subnormals to zero, so x / m came out 0.
        e = jnp.where(ok, jnp.frexp(jnp.where(ok, m, 1.0))[1], 0).astype(jnp.int32)
        sq = sum(jnp.sum(jnp.square(_times_power_of_two(magnitude(x), -e))) for x in leaves)
        return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), m), e

    return jax.lax.cond(jnp.isfinite(sumsq) & (sumsq >= floor), direct, rescaled, None)


def robust_global_norm(tree) -> jax.Array:
    r"""Global Euclidean norm in float32 (float64 when a leaf is), exact in range for finite
    inputs whose sum of squares overflows or underflows.

    Computes :math:`\sqrt{\sum g_i^2}` directly; only when that sum is not finite or is tiny
    it recomputes :math:`2^e \sqrt{\sum (g_i/2^e)^2}` with :math:`2^e` the power of two of
    :math:`m = \max |g_i|`. The result is NaN/inf when some entry is, and also ``inf`` for a
    finite tree whose norm exceeds the dtype's largest value (:func:`clip_by_global_norm` still
    clips such a tree). Zero trees give 0.
    """
    s, e = _norm_parts(tree)
    return jnp.ldexp(s, e)


def clip_by_global_norm(max_norm: base.ScalarOrSchedule) -> base.GradientTransformation:
    r"""Rescale the whole update tree so that its global norm is at most :math:`c`.

    .. math:: u = g \cdot \min\!\left(1, \frac{c}{\lVert g \rVert_2}\right)

    computed in float32 and returned in each leaf's dtype. Finite at zero gradients for every
    :math:`c \ge 0` (including :math:`c = 0`, optax PR #1752). When :math:`\lVert g\rVert` is
    not finite the updates pass through unchanged (see the module docstring): wrap the chain in
    :func:`gradlab.transforms.finite_guard.apply_if_finite` to reject such steps.

    Args:
      max_norm: :math:`c \ge 0`; number, array or schedule.

    Raises:
      ValueError: a concrete negative or NaN ``max_norm``.

    References:
      Pascanu, Mikolov & Bengio, `On the difficulty of training recurrent neural networks
      <https://arxiv.org/abs/1211.5063>`_, 2013.
    """
    max_norm = base.hyperparameter(
        max_norm, "max_norm", base.NONNEGATIVE_OR_INF, owner="clip_by_global_norm"
    )

    def apply(updates, count, params):
        del params
        c = base.resolve(max_norm, count, base.leaf_compute_dtype(updates))
        s, e = _norm_parts(updates)  # norm = s 2^e, s finite for a finite tree
        # norm > c, compared without forming 2^e (the norm of [3e38, 3e38] is not a float32)
        trigger = jnp.isfinite(s) & (s > jnp.ldexp(c, -e))
        # The update is ldexp(g, -e - k) * (c / ldexp(s, -k)): c / s is subnormal (flushed to 0
        # by XLA:CPU) when s is above ~2^126 c, so a direct norm above 2^100 is scaled by 2^-64
        # first. Every scaling is a power of two (exact); none when not clipping.
        k = jnp.where(trigger & (s > 2.0**100), 64, 0)
        scale = jnp.where(trigger, c / jnp.where(trigger, jnp.ldexp(s, -k), 1.0), 1.0)
        scale = jnp.where(jnp.isnan(c), jnp.nan, scale)  # a poisoned traced max_norm
        k = jnp.where(trigger, e + k, 0)

        def leaf(g):
            g = jnp.asarray(g)
            cdt = base.compute_dtype(g.dtype)
            scaled = _times_power_of_two(base.to_dtype(g, cdt), -k)
            return (scaled * scale.astype(cdt)).astype(g.dtype)

        return jax.tree.map(leaf, updates)

    return base.counted_transformation(ClipState, "clip_by_global_norm", apply, (max_norm,))
