r"""Decoupled weight decay: :func:`add_decayed_weights` (optax's name and semantics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import base

__all__ = ["AddDecayedWeightsState", "add_decayed_weights"]


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights`."""

    count: jax.Array  # int32 scalar: updates taken so far (evaluates a schedule).


def add_decayed_weights(
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[base.Params], Any] | None = None,
) -> base.GradientTransformation:
    r"""Add :math:`\lambda\theta` to the updates (decoupled weight decay).

    .. math:: u = g + \lambda_t\, \theta

    Placed after the momentum/adaptive atoms and before the learning-rate atom, the decay is
    *decoupled* from the gradient statistics (AdamW, SGDW): the final step is
    :math:`-\eta_t(\hat u + \lambda_t \theta)`. Placed first in a chain it is plain L2
    regularisation of the loss instead. Computed in float32, returned in the update's dtype.

    Args:
      weight_decay: :math:`\lambda \ge 0`; number, array or schedule.
      mask: a pytree of booleans with the params' structure (or a prefix of it), or a
        callable ``params -> such a tree``; only leaves marked ``True`` are decayed (typically
        not biases and norm scales). Uses ``optax.masked``.

    Raises:
      ValueError: a concrete negative/NaN ``weight_decay``, or ``update`` called without
        ``params``.
      TreeMismatchError: ``updates`` and ``params`` differ in structure or leaf shape.

    References:
      Loshchilov & Hutter, `Decoupled weight decay regularization
      <https://arxiv.org/abs/1711.05101>`_, 2019.
    """
    owner = "add_decayed_weights"
    weight_decay = base.hyperparameter(weight_decay, "weight_decay", owner=owner)

    def apply(updates, count, params):
        base.require_params(params, updates, owner)
        wd = base.resolve(weight_decay, count, base.leaf_compute_dtype(updates, params))

        def leaf(u, p):
            u, p = jnp.asarray(u), jnp.asarray(p)
            cdt = base.compute_dtype(u.dtype, p.dtype)
            return (u.astype(cdt) + wd.astype(cdt) * p.astype(cdt)).astype(u.dtype)

        return jax.tree.map(leaf, updates, params)

    tx = base.counted_transformation(AddDecayedWeightsState, owner, apply, (weight_decay,))
    if mask is not None:
        return _masked(tx, mask, owner)
    return tx


def _masked(tx: base.GradientTransformation, mask: Any, owner: str) -> base.GradientTransformation:
    """``optax.masked(tx, mask)`` whose ``init`` first checks that the mask (or what a callable
    mask returns) is the params' tree or a prefix of it, naming ``mask`` and the first key path
    where they differ (optax's own error names neither)."""
    masked = optax.masked(tx, mask)

    def init_fn(params):
        tree = mask(params) if callable(mask) else mask
        try:
            jax.tree.map(lambda *_: None, tree, params)  # fails unless a prefix
        except ValueError:
            paths = [
                [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
                for t in (tree, params)
            ]
            raise base.TreeMismatchError(
                f"{owner}: mask must be a tree of booleans with the params' structure (or a "
                f"prefix of it); mask leaves {', '.join(paths[0][:6])}; params leaves "
                f"{', '.join(paths[1][:6])}"
            ) from None
        return masked.init(params)

    return base.GradientTransformation(init_fn, masked.update)
