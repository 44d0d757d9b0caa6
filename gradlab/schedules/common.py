"""The argument policy shared by every schedule module (internal helpers).

Numeric arguments are validated with :func:`gradlab.base.hyperparameter` (numbers and arrays,
never schedules); a traced argument that is NaN (poisoned because invalid) makes the schedule
return NaN in that lane only (:func:`guarded`). Arithmetic runs in JAX's default float,
float32 (float64 when ``jax_enable_x64`` is on: no float32 rounding of a float64 run's learning
rate); counts are converted to it before any arithmetic (:func:`as_count`), so
``count - begin`` never overflows int32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base

NONNEG = base.NONNEGATIVE
POS = base.POSITIVE
UNIT = base.UNIT_INTERVAL


def arg(value: Any, name: str, valid: base.Interval, owner: str) -> Any:
    """Validate a numeric schedule argument (numbers and arrays only, never a schedule; arrays
    of any shape: boundaries are vectors, and a schedule's value is checked where it is used)."""
    return base.hyperparameter(value, name, valid, owner=owner, allow_schedule=False, scalar=False)


def real_dtype() -> Any:
    """JAX's default float: float32, or float64 when ``jax_enable_x64`` is on (read at trace
    time, as optax's schedules do)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def real(x: Any) -> jax.Array:
    """``x`` as a :func:`real_dtype` array."""
    return jnp.asarray(x, dtype=real_dtype())


def as_count(count: Any) -> jax.Array:
    """The step count as a :func:`real_dtype` float (no int32 overflow in ``count - begin``
    near ``2**31``; exact in float64, exact up to ``2**24`` in float32)."""
    return jnp.asarray(count).astype(real_dtype())


def strictly_greater(large: Any, small: Any, large_name: str, small_name: str, owner: str):
    """``ValueError`` when concrete ``large <= small``; a traced pair is checked per lane later."""
    if base.is_concrete(large) and base.is_concrete(small):
        if np.any(np.asarray(large, np.float64) <= np.asarray(small, np.float64)):
            raise ValueError(
                f"{owner}: {large_name} must be > {small_name}, got {large_name}={large!r} "
                f"and {small_name}={small!r}"
            )


def nan_unless(ok: jax.Array, value: jax.Array) -> jax.Array:
    return jnp.where(ok, value, jnp.nan)


def _poison_if_nan(value: jax.Array, *args: Any) -> jax.Array:
    """NaN wherever any argument is NaN (a poisoned traced lane), even where the formula would
    not depend on it (``nan ** 0 == 1``, a ``where`` branch not taken)."""
    bad = jnp.zeros((), bool)
    for a in args:
        if a is not None and not base.is_concrete(a):
            bad = bad | jnp.any(jnp.isnan(real(a)))
    return jnp.where(bad, jnp.nan, value)


def guarded(fn: base.Schedule, *args: Any) -> base.Schedule:
    """``fn`` with :func:`_poison_if_nan` applied over ``args`` (no-op for concrete args)."""
    traced = [a for a in args if a is not None and not base.is_concrete(a)]
    if not traced:
        return fn

    def schedule(count):
        return _poison_if_nan(fn(count), *traced)

    return schedule


def safe_positive(x: jax.Array) -> jax.Array:
    """``x`` where positive, else 1 (denominators of branches that ``where`` discards)."""
    return jnp.where(x > 0, x, 1.0)


def half_cosine(c: jax.Array, steps: jax.Array) -> jax.Array:
    r"""$\tfrac12 (1 + \cos(\pi c / T))$, clamped at 0 against rounding (cosine annealing)."""
    return jnp.maximum(0.5 * (1.0 + jnp.cos(jnp.pi * c / steps)), 0.0)
