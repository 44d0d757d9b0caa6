"""Protocol, hyperparameter policy and input validation shared by every gradlab transformation.

gradlab transformations *are* optax transformations: this module re-exports the optax protocol
(``GradientTransformation``, ``GradientTransformationExtraArgs``, ``chain``, ``apply_updates``)
and adds the three policies every gradlab atom follows:

* **Hyperparameters** (:func:`hyperparameter`, :func:`resolve`). A numeric hyperparameter is a
  Python number, a JAX array (possibly traced under ``jit``/``vmap``) or a schedule
  ``count -> value``. Concrete values are checked at construction and a bad one raises
  :class:`ValueError` naming the argument and its valid range. Traced values cannot be checked
  with Python control flow, so an invalid traced value is replaced by NaN *in its own lane only*:
  the run it belongs to is poisoned (and reported by sweeps), the others are untouched.
* **Precision.** Hyperparameters and accumulators live in float32 (or a chosen ``state_dtype``)
  whatever the parameter dtype; :func:`cast_like` returns updates in the gradient dtype.
* **Structure.** :func:`check_tree_match` compares two pytrees' structure and leaf shapes (static
  information, free under ``jit``) and raises :class:`TreeMismatchError` naming the offending key
  path, so a ``(3, 1)`` gradient is never silently broadcast onto a ``(3,)`` parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from optax import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    apply_updates,
    chain,
    identity,
    safe_increment,
)

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "Updates",
    "Schedule",
    "ScalarOrSchedule",
    "Interval",
    "TreeMismatchError",
    "StateMismatchError",
    "apply_updates",
    "chain",
    "identity",
    "safe_increment",
    "hyperparameter",
    "resolve",
    "is_concrete",
    "check_tree_match",
    "check_state",
    "zeros_like",
    "cast_like",
    "DEFAULT_STATE_DTYPE",
]

Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, int, jax.Array, np.ndarray, Schedule]

DEFAULT_STATE_DTYPE = jnp.float32


class TreeMismatchError(ValueError):
    """Two pytrees that must match (gradients vs state, updates vs params) do not.

    The message names both arguments and the key path of the first difference. Tests should
    assert on this type and on :attr:`path`, never on JAX's own error wording.
    """

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class StateMismatchError(TypeError):
    """``update`` was given a state that the transformation's ``init`` did not produce."""


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


class Interval(NamedTuple):
    """A range of valid values: ``lower``/``upper`` (``None`` = unbounded) with closedness."""

    lower: float | None = None
    upper: float | None = None
    lower_closed: bool = True
    upper_closed: bool = True

    def contains(self, x):
        """Elementwise membership; works on numpy and JAX values (NaN is never inside)."""
        xp = jnp if isinstance(x, jax.Array) else np
        ok = xp.isfinite(x) | xp.isinf(x)  # False only for NaN
        if self.lower is not None:
            ok = ok & ((x >= self.lower) if self.lower_closed else (x > self.lower))
        if self.upper is not None:
            ok = ok & ((x <= self.upper) if self.upper_closed else (x < self.upper))
        return ok

    def __str__(self) -> str:
        lo = "-inf" if self.lower is None else _fmt(self.lower)
        hi = "inf" if self.upper is None else _fmt(self.upper)
        left = "[" if (self.lower_closed and self.lower is not None) else "("
        right = "]" if (self.upper_closed and self.upper is not None) else ")"
        return f"{left}{lo}, {hi}{right}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


# Common ranges, named so that messages and docs agree.
NONNEGATIVE = Interval(0.0, None)
POSITIVE = Interval(0.0, None, lower_closed=False)
UNIT_INTERVAL_OPEN_RIGHT = Interval(0.0, 1.0, upper_closed=False)  # decay rates, betas
UNIT_INTERVAL = Interval(0.0, 1.0)


def is_concrete(x: Any) -> bool:
    """True when ``x`` has a value now (not a tracer inside ``jit``/``vmap``/``grad``)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (int, float, np.ndarray, np.generic, jax.Array))


def hyperparameter(
    value: ScalarOrSchedule,
    name: str,
    valid: Interval = NONNEGATIVE,
    *,
    owner: str | None = None,
    allow_schedule: bool = True,
) -> ScalarOrSchedule:
    """Validate one numeric hyperparameter at construction time.

    Args:
      value: a Python number, a (possibly traced) JAX array or, when ``allow_schedule``, a
        callable ``count -> value``.
      name: the argument's name as the user spelled it (used in error messages).
      valid: the valid range.
      owner: the function the argument belongs to, for the message (``"adam"``).
      allow_schedule: whether a callable is accepted.

    Returns:
      ``value`` unchanged when concrete and valid (Python ints become floats); a traced value
      wrapped so that an out-of-range lane becomes NaN; a schedule wrapped the same way.

    Raises:
      ValueError: a concrete value (any element of a concrete array) is outside ``valid``.
      TypeError: ``value`` is not a number, array or callable.
    """
    where = f"{owner}: " if owner else ""
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        if not allow_schedule:
            raise TypeError(f"{where}{name} must be a number or an array, not a schedule")
        return _poisoned_schedule(value, valid)
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(
            f"{where}{name} must be a number, a JAX array"
            f"{' or a schedule' if allow_schedule else ''}; got {value!r}"
        )
    if isinstance(value, (int, float, np.generic)):
        value = float(value)
        if not valid.contains(value):
            raise ValueError(f"{where}{name} must be in {valid}, got {value!r}")
        return value
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{where}{name} must be a number, a JAX array"
            f"{' or a schedule' if allow_schedule else ''}; got {type(value).__name__}"
        )
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_):
            raise TypeError(f"{where}{name} must be numeric, got dtype {arr.dtype}")
        if not np.all(valid.contains(arr.astype(np.float64))):
            bad = arr[~valid.contains(arr.astype(np.float64))].ravel()[0]
            raise ValueError(f"{where}{name} must be in {valid}, got {bad!r}")
        return value
    return poison(value, valid)


def poison(value: jax.Array, valid: Interval) -> jax.Array:
    """Replace out-of-range entries of a traced value by NaN (no Python control flow)."""
    value = jnp.asarray(value, dtype=jnp.result_type(value, jnp.float32))
    return jnp.where(valid.contains(value), value, jnp.nan)


def _poisoned_schedule(fn: Schedule, valid: Interval) -> Schedule:
    def schedule(count):
        out = fn(count)
        if is_concrete(out) and not isinstance(out, jax.Array):
            return out
        return poison(jnp.asarray(out), valid)

    schedule.__wrapped__ = fn  # type: ignore[attr-defined]
    return schedule


def check_order(small: Any, large: Any, small_name: str, large_name: str, *, owner: str = ""):
    """``ValueError`` when two concrete hyperparameters are out of order (``small > large``)."""
    if (
        not callable(small)
        and not callable(large)
        and is_concrete(small)
        and is_concrete(large)
        and np.any(np.asarray(small) > np.asarray(large))
    ):
        where = f"{owner}: " if owner else ""
        raise ValueError(
            f"{where}{small_name} must be <= {large_name}, got {small_name}={small!r} "
            f"> {large_name}={large!r}"
        )


def resolve(value: ScalarOrSchedule, count: jax.Array, dtype=DEFAULT_STATE_DTYPE) -> jax.Array:
    """The value of a hyperparameter at step ``count``, as a ``dtype`` (float32) scalar/array."""
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        value = value(count)
    return jnp.asarray(value, dtype=dtype)


def check_positive_int(value: Any, name: str, *, owner: str = "", minimum: int = 1) -> int:
    """Validate a *structural* integer (a memory size, a period used as a shape): static."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}{name} must be a Python int (it is static), got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Trees: structure checks, dtypes
# --------------------------------------------------------------------------------------------


def _path_str(path) -> str:
    return jax.tree_util.keystr(tuple(path)) or "<root>"


def check_tree_match(
    reference: Any,
    other: Any,
    reference_name: str,
    other_name: str,
    *,
    owner: str = "",
    check_shapes: bool = True,
) -> None:
    """Raise :class:`TreeMismatchError` unless ``other`` has ``reference``'s structure and shapes.

    Structure and shapes are static under ``jit``, so this check costs nothing at run time.
    ``None`` leaves (frozen parameters) are treated as empty subtrees on both sides.
    """
    where = f"{owner}: " if owner else ""
    ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
    oth_leaves, oth_def = jax.tree_util.tree_flatten_with_path(other)
    if ref_def != oth_def:
        ref_paths = [_path_str(p) for p, _ in ref_leaves]
        oth_paths = [_path_str(p) for p, _ in oth_leaves]
        missing = [p for p in ref_paths if p not in set(oth_paths)]
        extra = [p for p in oth_paths if p not in set(ref_paths)]
        first = (missing or extra or ["<root>"])[0]
        detail = []
        if missing:
            detail.append(f"missing from {other_name}: {', '.join(missing[:5])}")
        if extra:
            detail.append(f"not in {reference_name}: {', '.join(extra[:5])}")
        if not detail:
            detail.append(f"{reference_name} is {ref_def}, {other_name} is {oth_def}")
        raise TreeMismatchError(
            f"{where}{other_name} does not match the structure of {reference_name} at {first} "
            f"({'; '.join(detail)})",
            path=first,
        )
    if check_shapes:
        for (path, a), (_, b) in zip(ref_leaves, oth_leaves):
            sa, sb = jnp.shape(a), jnp.shape(b)
            if sa != sb:
                p = _path_str(path)
                raise TreeMismatchError(
                    f"{where}{other_name}{p} has shape {sb} but {reference_name}{p} has shape "
                    f"{sa} (gradlab never broadcasts one onto the other)",
                    path=p,
                )


def check_state(state: Any, expected: type | tuple[type, ...], owner: str) -> None:
    """Raise :class:`StateMismatchError` when ``state`` is not of the ``init``-produced type."""
    if not isinstance(state, expected):
        names = (
            expected.__name__
            if isinstance(expected, type)
            else " or ".join(t.__name__ for t in expected)
        )
        raise StateMismatchError(
            f"{owner}.update expected the state produced by {owner}.init ({names}), got "
            f"{type(state).__name__}. Did you pass the arguments in the order "
            f"(updates, state, params)?"
        )


def zeros_like(tree: Any, dtype=DEFAULT_STATE_DTYPE) -> Any:
    """Zeros shaped like ``tree`` in ``dtype`` (float32 accumulators by default).

    ``dtype=None`` keeps each leaf's own dtype. Complex leaves keep a complex dtype.
    """

    def leaf(x):
        x = jnp.asarray(x)
        dt = x.dtype if dtype is None else dtype
        if jnp.iscomplexobj(x) and not jnp.issubdtype(dt, jnp.complexfloating):
            dt = jnp.result_type(dt, jnp.complex64)
        return jnp.zeros(x.shape, dt)

    return jax.tree.map(leaf, tree)


def full_like(tree: Any, value: Any, dtype=DEFAULT_STATE_DTYPE) -> Any:
    """``value`` broadcast to every leaf of ``tree``, in ``dtype``."""
    return jax.tree.map(lambda x: jnp.full(jnp.shape(x), value, dtype), tree)


def cast_like(tree: Any, like: Any) -> Any:
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.asarray(y).dtype), tree, like)


def state_dtype_of(state_dtype: Any) -> Any:
    """Normalise a ``state_dtype`` argument (``None`` means float32)."""
    return DEFAULT_STATE_DTYPE if state_dtype is None else jnp.dtype(state_dtype)


def global_norm(tree: Any) -> jax.Array:
    """Euclidean norm of all leaves together, computed in float32, finite at zero."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    sq = sum(jnp.sum(jnp.square(jnp.abs(x).astype(jnp.float32))) for x in leaves)
    return jnp.sqrt(sq)


def tree_all_finite(tree: Any) -> jax.Array:
    """A scalar boolean: every element of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))

