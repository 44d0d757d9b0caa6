r"""A finite guard: skip non-finite updates, count them, and give up by an exact rule.

:func:`apply_if_finite` wraps any transformation (optax's name and arguments). A step is
*non-finite* when the incoming updates (gradients) **or** the wrapped transformation's output
contain a NaN or an infinity. For a non-finite step the guard returns zero updates and keeps
the inner state **bit-for-bit** unchanged; it counts the streak of consecutive non-finite steps
and their total.

**Give-up rule** (with :math:`M` = ``max_consecutive_errors``). Let :math:`s` be the length of
the current streak *including* this step. If :math:`s \le M` the step is rejected. The
:math:`(M+1)`-th consecutive non-finite step is *accepted* (passed through, and the inner state
advances) so that a persistent failure becomes visible instead of silently freezing training;
accepting it **ends the streak** (``notfinite_count`` resets to 0) and increments
``total_gave_up``. The guard then protects again: with :math:`M = 2` and four non-finite steps
in a row the updates are ``0, 0, <non-finite>, 0`` and ``notfinite_count`` goes ``1, 2, 0, 1``
(``optax.apply_if_finite`` 0.2.8 keeps counting ``1, 2, 3, 4`` and lets every later non-finite
step through: optax PR #1746). A finite step resets the streak. :math:`M = 0` never rejects.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import base

__all__ = ["ApplyIfFiniteState", "apply_if_finite"]


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`."""

    notfinite_count: jax.Array  # int32: length of the current streak of non-finite steps.
    last_finite: jax.Array  # bool: whether the last step was finite.
    total_notfinite: jax.Array  # int32: non-finite steps so far (rejected or accepted).
    total_gave_up: jax.Array  # int32: non-finite steps let through by the give-up rule.
    inner_state: Any  # the wrapped transformation's state.


def _check_max(value: Any) -> Any:
    where = "apply_if_finite: max_consecutive_errors"
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        raise TypeError(f"{where} must be an int or an int array, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"{where} must be >= 0, got {value}")
        return int(value)
    if base.is_concrete(value):
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 0):
            raise ValueError(f"{where} must be integers >= 0, got {arr!r}")
    return value


def apply_if_finite(
    inner: base.GradientTransformation, max_consecutive_errors: int
) -> base.GradientTransformationExtraArgs:
    r"""Reject non-finite steps of ``inner`` (zero update, inner state unchanged), with give-up.

    See the module docstring for the exact rule. The inner update always runs (so that its
    output can be checked too); its results are selected with ``jnp.where``, which keeps the
    rejected state bit-identical and works under ``vmap`` (each lane has its own counters).
    ``value`` and other extra arguments are forwarded to ``inner`` but not checked.

    Args:
      inner: the transformation to guard (put it around the *whole* chain, so that clipping or
        schedules inside cannot hide a non-finite gradient).
      max_consecutive_errors: :math:`M \ge 0`, a Python int or an int array (traceable; a
        traced negative value makes every update of its run NaN).

    Returns:
      A ``GradientTransformationExtraArgs`` whose state is :class:`ApplyIfFiniteState`.
    """
    max_errors = _check_max(max_consecutive_errors)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        # One buffer per field: a shared zero could not be donated to a jitted step.
        return ApplyIfFiniteState(
            notfinite_count=base.zero_count(),
            last_finite=jnp.array(True),
            total_notfinite=base.zero_count(),
            total_gave_up=base.zero_count(),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra):
        base.check_state(state, ApplyIfFiniteState, "apply_if_finite")
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        finite = base.tree_all_finite(updates) & base.tree_all_finite(new_updates)
        streak = jnp.where(finite, 0, base.safe_increment(state.notfinite_count))
        give_up = jnp.logical_not(finite) & (streak > max_errors)
        accept = finite | give_up
        out = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), new_updates)
        if not isinstance(max_errors, int):  # a traced negative M poisons its own run
            out = jax.tree.map(lambda u: jnp.where(max_errors >= 0, u, jnp.nan), out)
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old), new_inner, state.inner_state
        )
        return out, ApplyIfFiniteState(
            notfinite_count=jnp.where(give_up, 0, streak).astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, base.safe_increment(state.total_notfinite)
            ),
            total_gave_up=jnp.where(
                give_up, base.safe_increment(state.total_gave_up), state.total_gave_up
            ),
            inner_state=inner_state,
        )

    return base.GradientTransformationExtraArgs(init_fn, update_fn)
