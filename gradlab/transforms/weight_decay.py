r"""Decoupled weight decay: :func:`add_decayed_weights` (optax's name and semantics)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
        not biases and norm scales). Uses ``optax.masked``; a mapping of another type with the
        params' keys (a ``dict`` for ``FrozenDict`` params) is rebuilt in the params' type.

    Raises:
      ValueError: a concrete negative/NaN ``weight_decay``, or ``update`` called without
        ``params``.
      TreeMismatchError: ``updates`` and ``params`` differ in structure or leaf shape, or the
        mask does not fit the params (naming the key path and the container types).

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


def _children(tree: Any) -> tuple[list, Any] | None:
    """One level of ``tree``: ``([(key, child), ...], treedef)``, or ``None`` for a leaf."""
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)) and tree is not None:
        return None
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    return [(path[0], child) for path, child in flat], treedef


def _conform(mask: Any, params: Any) -> Any:
    """``mask`` with each mapping rebuilt in the params' mapping type where the keys agree (a
    ``dict`` mask for ``FrozenDict`` params and the reverse: optax #160); otherwise unchanged.
    The params' pytree children are followed (a ``FrozenDict`` holds plain dicts inside)."""
    if isinstance(mask, Mapping) and isinstance(params, Mapping):
        level = _children(params)
        if level is not None and all(isinstance(k, jax.tree_util.DictKey) for k, _ in level[0]):
            children, treedef = level
            if {k.key for k, _ in children} == set(mask):
                fixed = [_conform(mask[k.key], child) for k, child in children]
                return jax.tree_util.tree_unflatten(treedef, fixed)
    return mask


def _difference(mask: Any, params: Any, path: tuple = ()) -> tuple[str, str]:
    """``(key path, description)`` of where ``mask`` stops being a prefix of ``params``."""
    m, p = _children(mask), _children(params)
    where = jax.tree_util.keystr(path) or "<root>"
    if m is None:
        return "", ""  # a mask leaf covers any subtree
    if p is None or type(mask) is not type(params) or [k for k, _ in m[0]] != [k for k, _ in p[0]]:
        mk = ", ".join(jax.tree_util.keystr((k,)) for k, _ in m[0][:6])
        if p is None:
            got = f"a leaf ({type(params).__name__})"
        else:
            pk = ", ".join(jax.tree_util.keystr((k,)) for k, _ in p[0][:6])
            got = f"a {type(params).__name__} with children {pk}"
        return (
            where,
            f"at {where} the mask is a {type(mask).__name__} with children {mk} but the "
            f"params are {got}",
        )
    for (k, mc), (_, pc) in zip(m[0], p[0], strict=True):
        found = _difference(mc, pc, (*path, k))
        if found[0]:
            return found
    return where, f"at {where} the mask does not fit the params"


def _masked(tx: base.GradientTransformation, mask: Any, owner: str) -> base.GradientTransformation:
    """``optax.masked(tx, mask)`` whose ``init`` and ``update`` first check that the mask (or
    what a callable mask returns) is the params' tree or a prefix of it, naming ``mask``, the key
    path and the container types where they differ (optax's own error names neither). A mapping
    of another type with the same keys (a ``dict`` mask for Flax ``FrozenDict`` params) is
    rebuilt in the params' type instead of refused."""

    def tree_for(params):
        tree = _conform(mask(params) if callable(mask) else mask, params)
        try:
            jax.tree.map(lambda *_: None, tree, params)  # fails unless a prefix
        except ValueError:
            paths = [
                [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
                for t in (tree, params)
            ]
            path, where = _difference(tree, params)
            raise base.TreeMismatchError(
                f"{owner}: mask must be a tree of booleans with the params' structure (or a "
                f"prefix of it); {where}; mask leaves {', '.join(paths[0][:6])}; params leaves "
                f"{', '.join(paths[1][:6])}",
                path=path,
            ) from None
        return tree

    def init_fn(params):
        return optax.masked(tx, tree_for(params)).init(params)

    def update_fn(updates, state, params=None):
        # like optax.masked, a callable mask is applied to the updates (params may be None)
        return optax.masked(tx, tree_for(updates)).update(updates, state, params)

    return base.GradientTransformation(init_fn, update_fn)
