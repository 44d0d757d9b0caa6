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
  whatever the parameter dtype; arithmetic runs in :func:`compute_dtype` (at least float32) and
  updates come back in the gradient's dtype. Denominators are floored (:func:`safe_divide`,
  :data:`TINY`), so a zero gradient never gives ``0 / 0`` in any dtype.
* **Structure.** :func:`check_tree_match` compares two pytrees' structure and leaf shapes (static
  information, free under ``jit``) and raises :class:`TreeMismatchError` naming the offending key
  path, so a ``(3, 1)`` gradient is never silently broadcast onto a ``(3,)`` parameter;
  :func:`check_update` is the one entry check of every ``update`` (state type, tree, float
  leaves), and :func:`named_chain` gives named optimizers the same state check.

Every gradlab atom uses these helpers and no others, so the policies hold library-wide.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from optax import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    MaskedNode,
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
    "named_chain",
    "counted_transformation",
    "is_schedule",
    "identity",
    "safe_increment",
    "zero_count",
    "hyperparameter",
    "resolve",
    "resolve_decay",
    "is_concrete",
    "check_bool",
    "check_choice",
    "check_order",
    "check_positive_int",
    "check_tree_match",
    "check_state",
    "check_float_leaves",
    "check_update",
    "require_params",
    "state_dtype_of",
    "compute_dtype",
    "to_dtype",
    "abs_sq",
    "safe_divide",
    "debias_factor",
    "zeros_like",
    "full_like",
    "cast_like",
    "map_leaves",
    "find_states",
    "global_norm",
    "tree_all_finite",
    "small_sum",
    "small_max",
    "small_all",
    "small_any",
    "UNROLLED_REDUCTION_SIZE",
    "DEFAULT_STATE_DTYPE",
    "TINY",
]

Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = float | int | jax.Array | np.ndarray | Schedule

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
    """A range of valid values: ``lower``/``upper`` (``None`` = unbounded) with closedness.

    Infinite values are outside unless ``allow_inf`` (for limits where ``inf`` means "no
    limit": a clipping norm, a largest step); NaN is always outside.
    """

    lower: float | None = None
    upper: float | None = None
    lower_closed: bool = True
    upper_closed: bool = True
    allow_inf: bool = False

    def contains(self, x):
        """Elementwise membership; works on numpy and JAX values."""
        xp = jnp if isinstance(x, jax.Array) else np
        ok = ~xp.isnan(x) if self.allow_inf else xp.isfinite(x)
        if self.lower is not None:
            ok = ok & ((x >= self.lower) if self.lower_closed else (x > self.lower))
        if self.upper is not None:
            ok = ok & ((x <= self.upper) if self.upper_closed else (x < self.upper))
        return ok

    def __str__(self) -> str:
        lo = "-inf" if self.lower is None else _fmt(self.lower)
        hi = "inf" if self.upper is None else _fmt(self.upper)
        left = "[" if (self.lower_closed and self.lower is not None) else "("
        closed_hi = self.allow_inf if self.upper is None else self.upper_closed
        right = "]" if closed_hi else ")"
        return f"{left}{lo}, {hi}{right}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


# Common ranges, named so that messages and docs agree.
NONNEGATIVE = Interval(0.0, None)
POSITIVE = Interval(0.0, None, lower_closed=False)
UNIT_INTERVAL_OPEN_RIGHT = Interval(0.0, 1.0, upper_closed=False)  # decay rates, betas
UNIT_INTERVAL = Interval(0.0, 1.0)
NONNEGATIVE_OR_INF = Interval(0.0, None, allow_inf=True)  # limits: inf = no limit
POSITIVE_OR_INF = Interval(0.0, None, lower_closed=False, allow_inf=True)


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
    scalar: bool = True,
) -> ScalarOrSchedule:
    """Validate one numeric hyperparameter at construction time.

    Args:
      value: a Python number, a (possibly traced) JAX array or, when ``allow_schedule``, a
        callable ``count -> value``.
      name: the argument's name as the user spelled it (used in error messages).
      valid: the valid range.
      owner: the function the argument belongs to, for the message (``"adam"``).
      allow_schedule: whether a callable is accepted.
      scalar: whether an array must have shape ``()`` (a schedule's value is checked when it is
        called); one value per run is a ``jax.vmap`` over the optimizer, never a vector here.

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
        try:
            inspect.signature(value).bind(0)
        except TypeError:
            raise TypeError(
                f"{where}{name} is callable, so it must be a schedule taking one argument, the "
                f"step count (count -> value); {value!r} does not take one"
            ) from None
        except ValueError:  # no signature to read (a builtin): checked when called
            pass
        return _poisoned_schedule(value, valid, name, where)
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
    if scalar:
        _check_scalar(value, name, where)
    if is_concrete(value):
        arr = np.asarray(value)
        # jnp.issubdtype knows bfloat16 (np.issubdtype does not count it as a number).
        if not jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.bool_):
            raise TypeError(f"{where}{name} must be numeric, got dtype {arr.dtype}")
        if not np.all(valid.contains(arr.astype(np.float64))):
            bad = arr[~valid.contains(arr.astype(np.float64))].ravel()[0]
            hint = ""
            if jnp.issubdtype(arr.dtype, jnp.floating) and jnp.finfo(arr.dtype).bits < 32:
                hint = (
                    f" (a {arr.dtype} value: rounded before gradlab saw it, e.g. 0.999 is 1 in "
                    "bfloat16; optax.inject_hyperparams gives hyperparameters the params' dtype "
                    "unless passed hyperparam_dtype=jnp.float32)"
                )
            raise ValueError(f"{where}{name} must be in {valid}, got {bad!r}{hint}")
        return value
    return poison(value, valid)


def _check_scalar(value: Any, name: str, where: str) -> None:
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"{where}{name} must be a scalar (shape ()), got shape {jnp.shape(value)}; for one "
            "value per run, jax.vmap over the optimizer's construction and use"
        )


def poison(value: jax.Array, valid: Interval) -> jax.Array:
    """Replace out-of-range entries of a traced value by NaN (no Python control flow)."""
    value = jnp.asarray(value, dtype=jnp.result_type(value, jnp.float32))
    return jnp.where(valid.contains(value), value, jnp.nan)


def _poisoned_schedule(fn: Schedule, valid: Interval, name: str, where: str) -> Schedule:
    def schedule(count):
        out = fn(count)
        if not isinstance(out, (int, float, np.generic, np.ndarray, jax.Array)):
            raise TypeError(
                f"{where}{name}: the schedule must return a number or an array, got "
                f"{type(out).__name__}"
            )
        if jnp.ndim(out) != jnp.ndim(count):  # a vector of counts gives a vector of values
            _check_scalar(out, f"{name} (the schedule's value)", where)
        if is_concrete(out) and not isinstance(out, jax.Array):
            if np.all(valid.contains(np.asarray(out, np.float64))):
                return out  # a Python/numpy number in range stays one (exact complements)
        return poison(jnp.asarray(out), valid)

    schedule.__wrapped__ = fn  # type: ignore[attr-defined]
    return schedule


def check_order(
    small: Any,
    large: Any,
    small_name: str,
    large_name: str,
    *,
    owner: str = "",
    strict: bool = False,
):
    """``ValueError`` when two concrete hyperparameters are out of order (``small > large``,
    or ``small >= large`` when ``strict``)."""
    if not callable(small) and not callable(large) and is_concrete(small) and is_concrete(large):
        a, b = np.asarray(small), np.asarray(large)
        out_of_order = (a >= b) if strict else (a > b)
        if np.any(out_of_order):
            where = f"{owner}: " if owner else ""
            relation, opposite = ("<", ">=") if strict else ("<=", ">")
            raise ValueError(
                f"{where}{small_name} must be {relation} {large_name}, got {small_name}={small!r}"
                f" {opposite} {large_name}={large!r}"
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


def check_bool(value: Any, name: str, owner: str) -> bool:
    """A static boolean switch: ``TypeError`` for anything but ``True``/``False``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a Python bool (it is static), got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...], owner: str) -> str:
    """A static variant name: ``TypeError`` if not a string, ``ValueError`` if unknown."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value


def resolve_decay(value: ScalarOrSchedule, count: jax.Array, dtype=DEFAULT_STATE_DTYPE):
    r"""A decay rate $\rho$ and its complement $1-\rho$ at ``count``, as ``dtype`` scalars.

    For a Python number the complement is computed in double precision before rounding
    (``1 - 0.999`` is then exact to float32 precision, unlike ``1 - float32(0.999)``).
    """
    if isinstance(value, float):
        return jnp.asarray(value, dtype), jnp.asarray(1.0 - value, dtype)
    v = resolve(value, count, dtype)
    return v, 1 - v


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------

#: Smallest normal float32: a floor for denominators, so that 0 / 0 becomes 0 (not NaN).
TINY = float(np.finfo(np.float32).tiny)


def state_dtype_of(state_dtype: Any, owner: str = "", name: str = "state_dtype") -> Any:
    """Normalise a ``state_dtype`` argument: ``None`` means float32; must be a floating dtype."""
    if state_dtype is None:
        return jnp.dtype(DEFAULT_STATE_DTYPE)
    where = f"{owner}: " if owner else ""
    try:
        dt = jnp.dtype(state_dtype)
    except TypeError as e:
        raise TypeError(f"{where}{name} must be a floating dtype, got {state_dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{where}{name} must be a floating dtype, got {dt}")
    return dt


def compute_dtype(*dtypes: Any) -> Any:
    """Arithmetic dtype: the given (state) dtypes promoted to at least float32."""
    out = jnp.dtype(jnp.float32)
    for dt in dtypes:
        out = jnp.promote_types(out, dt)
    return out


def leaf_compute_dtype(*trees: Any) -> Any:
    """The real arithmetic dtype for hyperparameters applied to ``trees``: their floating
    leaves' dtypes (complex ones by their real part) promoted to at least float32, so a
    learning rate meets float64 parameters in float64."""
    dtypes = []
    for x in (x for t in trees for x in jax.tree.leaves(t)):
        dt = jnp.result_type(x)
        if jnp.issubdtype(dt, jnp.inexact):
            dtypes.append(jnp.finfo(dt).dtype)
    return compute_dtype(*dtypes)


def to_dtype(x: jax.Array, dtype: Any) -> jax.Array:
    """Cast a leaf to ``dtype``, keeping complex leaves complex (no-op when it already matches)."""
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.result_type(dtype, jnp.complex64)
    return x if x.dtype == dtype else x.astype(dtype)


def abs_sq(x: jax.Array) -> jax.Array:
    r"""$|x|^2$, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2
    return x * x


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, except ``num`` where ``den == 0`` (so ``0 / 0`` is 0 when ``eps = 0``). A
    NaN denominator (a NaN gradient's second moment, a poisoned traced setting) stays NaN."""
    return num / jnp.where(den == 0, jnp.ones_like(den), den)


def debias_factor(complement: jax.Array, count: jax.Array) -> jax.Array:
    r"""$1 - \beta^t$ from the complement $c = 1 - \beta$, as $-\operatorname{expm1}(t
    \log(1 - c))$, in the (float32 or wider) dtype of ``complement`` (optax #328).

    The complement is the one the moment update uses (see :func:`resolve_decay`), so the two
    agree: at $t = 1$ the correction is $c$ itself and $\hat\nu_1 = g_1^2$ exactly, for a
    Python-number $\beta$ (complement computed in double precision) as for a traced float32
    one. ``1 - float32(beta) ** t`` loses the digits of $c$ in the rounding of $\beta$
    ($\beta = 0.99999$: 0.14% at $t = 1$).
    """
    return -jnp.expm1(count.astype(complement.dtype) * jnp.log1p(-complement))


def cast_like(tree: Any, like: Any) -> Any:
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(jnp.asarray(y).dtype), tree, like)


# --------------------------------------------------------------------------------------------
# Trees: structure checks, state construction, leafwise maps
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
        for (path, a), (_, b) in zip(ref_leaves, oth_leaves, strict=True):
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
        types = (expected,) if isinstance(expected, type) else tuple(expected)
        got = type(state)
        same_name = any(t.__name__ == got.__name__ for t in types)

        def spell(t: type) -> str:  # qualified when the short names would read "X, got X"
            return f"{t.__module__}.{t.__qualname__}" if same_name else t.__name__

        hint = (
            " (another library's state class of the same name: build the state with this "
            "transformation's init)"
            if same_name
            else ". Did you pass the arguments in the order (updates, state, params)?"
        )
        raise StateMismatchError(
            f"{owner}.update expected the state produced by {owner}.init "
            f"({' or '.join(spell(t) for t in types)}), got {spell(got)}{hint}"
        )


def check_float_leaves(tree: Any, name: str, owner: str) -> None:
    """``TypeError`` naming the path of the first leaf that is not floating point or complex.

    Integer (and ``float0``) leaves have no gradient step: freeze them with ``None`` leaves or
    ``optax.masked``/``optax.set_to_zero`` instead of passing them to an optimizer.
    """
    for path, g in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dt = jnp.result_type(g)
        if not jnp.issubdtype(dt, jnp.inexact):
            raise TypeError(
                f"{owner}: {name}{_path_str(path)} has dtype {dt}; gradients must be floating "
                "point or complex (freeze integer leaves with None or optax.masked)"
            )


def check_update(
    owner: str,
    state: Any,
    expected: type | tuple[type, ...],
    updates: Any,
    field: str | None = None,
) -> None:
    """The entry check of every ``update``: state type, then tree structure and leaf shapes
    against the per-leaf state field ``field`` (when given), then floating-point leaves.

    Raises:
      StateMismatchError: ``state`` is not what ``init`` produced (e.g. swapped arguments).
      TreeMismatchError: ``updates`` does not match the tree ``init`` saw (names the path).
      TypeError: a gradient leaf is an integer (names the path).
    """
    check_state(state, expected, owner)
    if field is not None:
        check_tree_match(getattr(state, field), updates, "state", "updates", owner=owner)
    check_float_leaves(updates, "updates", owner)


def check_unmasked(params: Any, owner: str) -> None:
    """``ValueError`` naming the first ``optax.MaskedNode`` in ``params``: a link that evaluates
    the objective (or residuals) at ``params`` cannot run inside ``optax.masked`` or
    ``optax.multi_transform``, which hand it only the unmasked part of the parameters."""
    is_masked = lambda x: isinstance(x, MaskedNode)  # noqa: E731
    for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[0]:
        if is_masked(leaf):
            raise ValueError(
                f"{owner}: params{_path_str(path)} is masked out (optax.masked or "
                "multi_transform): this link evaluates the objective at params and needs all of "
                "them. Keep it outside the mask; to freeze leaves, zero their updates after it "
                "(optax.masked(optax.set_to_zero(), frozen), before any line search)"
            )


def require_params(params: Any, updates: Any, owner: str) -> None:
    """``ValueError`` when an atom that reads the parameters is called without them; else a
    :class:`TreeMismatchError` unless ``updates`` matches ``params``."""
    if params is None:
        raise ValueError(f"{owner} needs the current params: call update(updates, state, params)")
    check_tree_match(params, updates, "params", "updates", owner=owner)


def full_like(
    tree: Any, value: Any, dtype: Any = DEFAULT_STATE_DTYPE, *, real: bool = False
) -> Any:
    """``value`` (possibly traced) broadcast to every leaf's shape, in ``dtype``.

    ``dtype=None`` keeps each leaf's own dtype. Complex leaves get a complex dtype unless
    ``real=True`` (second moments of complex gradients are real).
    """

    def leaf(x):
        x = jnp.asarray(x)
        dt = x.dtype if dtype is None else dtype
        if jnp.iscomplexobj(x) and not real and not jnp.issubdtype(dt, jnp.complexfloating):
            dt = jnp.result_type(dt, jnp.complex64)
        return jnp.full(x.shape, value, dt)

    return jax.tree.map(leaf, tree)


def zeros_like(tree: Any, dtype: Any = DEFAULT_STATE_DTYPE, *, real: bool = False) -> Any:
    """Zeros shaped like ``tree`` in ``dtype`` (float32 accumulators by default); see
    :func:`full_like` for ``dtype=None`` and complex leaves."""
    return full_like(tree, 0, dtype, real=real)


def zero_count() -> jax.Array:
    """The int32 step counter every state starts with."""
    return jnp.zeros([], jnp.int32)


def map_leaves(fn: Callable[..., tuple], updates: Any, *states: Any) -> tuple:
    """Apply ``fn(g, *state_leaves) -> (out, *new_state_leaves)`` leaf by leaf.

    Returns ``(out_tree, *new_state_trees)``, each with the structure of ``updates`` (``None``
    leaves stay ``None``; an empty tree gives empty trees).
    """
    g_leaves, treedef = jax.tree.flatten(updates)
    cols = [treedef.flatten_up_to(s) for s in states]
    results = [fn(jnp.asarray(g), *xs) for g, *xs in zip(g_leaves, *cols, strict=True)]
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(1 + len(states)))


def find_states(opt_state: Any, cls: type) -> list:
    """Every sub-state of type ``cls`` inside ``opt_state`` (a chain, a dict, a wrapper...)."""
    is_cls = lambda x: isinstance(x, cls)  # noqa: E731
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_cls) if is_cls(x)]


def global_norm(tree: Any) -> jax.Array:
    """Euclidean norm of all leaves together, computed in float32, finite at zero."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    sq = sum(jnp.sum(jnp.square(jnp.abs(x).astype(jnp.float32))) for x in leaves)
    return jnp.sqrt(sq)


#: Reductions over at most this many elements are written out as elementwise operations.
UNROLLED_REDUCTION_SIZE = 8


def _reduce(x: Any, op: Callable, reduction: Callable, initial: Any) -> jax.Array:
    x = jnp.ravel(jnp.asarray(x))
    if x.shape[0] > UNROLLED_REDUCTION_SIZE or (x.shape[0] == 0 and initial is None):
        return reduction(x) if initial is None else op(initial, reduction(x))
    out = initial
    for i in range(x.shape[0]):
        out = x[i] if out is None else op(out, x[i])
    return out


def small_sum(x: Any) -> jax.Array:
    """``jnp.sum(x)``, written out as ``x[0] + x[1] + ...`` for at most
    :data:`UNROLLED_REDUCTION_SIZE` elements (XLA's sequential order; XLA may contract a
    product into the sum as one fused multiply-add, so keep jnp's reduction for dot products
    whose terms can cancel exactly).

    Every ``reduce`` in a compiled program costs ~0.25 us of set-up per call on XLA:CPU, even
    inside a loop that never runs; a solver's norms, dot products and status checks on a
    2-parameter problem would otherwise spend 5-7 us per solve on it (``docs/benchmarks.md``).
    """
    x = jnp.asarray(x)
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    return _reduce(x, jnp.add, jnp.sum, None)


def small_max(x: Any, initial: Any = None) -> jax.Array:
    """``jnp.max(x, initial=initial)`` (NaN propagates), written out for small ``x`` like
    :func:`small_sum`."""
    return _reduce(x, jnp.maximum, jnp.max, initial)


def small_all(x: Any) -> jax.Array:
    """``jnp.all(x)``, written out for small ``x`` like :func:`small_sum`."""
    x = jnp.asarray(x, bool)
    return jnp.asarray(True) if x.size == 0 else _reduce(x, jnp.logical_and, jnp.all, None)


def small_any(x: Any) -> jax.Array:
    """``jnp.any(x)``, written out for small ``x`` like :func:`small_sum`."""
    x = jnp.asarray(x, bool)
    return jnp.asarray(False) if x.size == 0 else _reduce(x, jnp.logical_or, jnp.any, None)


def tree_all_finite(tree: Any) -> jax.Array:
    """A scalar boolean: every element of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return small_all(jnp.stack([small_all(jnp.isfinite(x)) for x in leaves]))


# --------------------------------------------------------------------------------------------
# Building transformations
# --------------------------------------------------------------------------------------------


def is_schedule(value: Any) -> bool:
    """True for a schedule ``count -> value`` (a callable that is not an array)."""
    return callable(value) and not isinstance(value, (jax.Array, np.ndarray))


def counted_transformation(
    state_cls: type,
    owner: str,
    apply: Callable[[Any, jax.Array, Any], Any],
    hyperparameters: tuple | None = None,
) -> GradientTransformation:
    """A transformation whose state is only a step count (``state_cls(count=...)``).

    ``apply(updates, count, params) -> updates`` does the work; the count it sees is the number
    of updates already taken (0 on the first), for evaluating schedules.

    When ``hyperparameters`` is given and none of them is a schedule, the count would never be
    read: the state is then optax's ``EmptyState()`` (as for ``optax.scale``), so a named
    optimizer's state holds one step count, like optax's, and
    ``optax.tree_utils.tree_get(state, "count")`` finds it.
    """
    counted = hyperparameters is None or any(is_schedule(h) for h in hyperparameters)
    expected = state_cls if counted else EmptyState

    def init_fn(params):
        del params
        return state_cls(count=zero_count()) if counted else EmptyState()

    def update_fn(updates, state, params=None):
        check_update(owner, state, expected, updates)
        if params is not None:  # no per-leaf state to compare with: compare with the params
            check_tree_match(params, updates, "params", "updates", owner=owner)
        if not counted:
            return apply(updates, zero_count(), params), state
        return apply(updates, state.count, params), state_cls(count=safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def named_chain(name: str, *transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """``optax.chain(*transforms)`` whose ``update`` first checks that it got its own state.

    optax's chain only compares lengths (and raises a bare ``ValueError``, or iterates a
    params dict as if it were a state); a named optimizer raises :class:`StateMismatchError`
    naming itself when the state is not the tuple its ``init`` produced (forgotten or swapped
    arguments, another optimizer's state), and :class:`TreeMismatchError` naming the path when
    ``updates`` does not match ``params`` (plain SGD keeps no per-leaf state that would catch
    it). The state itself is optax's plain tuple.
    """
    inner = chain(*transforms)
    n = len(transforms)

    def update_fn(updates, state, params=None, **extra):
        if type(state) not in (tuple, list) or len(state) != n:
            got = type(state).__name__
            if type(state) in (tuple, list):
                got = f"a {got} of {len(state)} states"
            raise StateMismatchError(
                f"{name}.update expected the state produced by {name}.init (a tuple of {n} "
                f"states), got {got}. Did you pass the arguments in the order "
                "(updates, state, params)?"
            )
        if params is not None:  # before any link: a link without per-leaf state cannot tell
            check_tree_match(params, updates, "params", "updates", owner=name)
        return inner.update(updates, state, params, **extra)

    return GradientTransformationExtraArgs(inner.init, update_fn)
