"""Flax NNX models for the lab, usable both as objects and as pure functions.

:class:`MLP` is a multilayer perceptron with configurable widths, activation, optional batch
normalisation (batch statistics in training, running averages in evaluation) and dropout
(active only in training). Mode is a call argument (``train=True``), not hidden state, so one
graph definition serves training and evaluation.

Functional use (pure, jittable, vmappable steps)::

    model = MLP(64, [128, 128], 10, batch_norm=True, dropout=0.1, rngs=nnx.Rngs(0))
    graphdef, params, state = split_model(model)      # params: pure dict of arrays
    logits, state = apply_model(graphdef, params, state, x, train=True, key=key)
    logits, _ = apply_model(graphdef, params, state, x)          # eval: running averages
    model = merge_model(graphdef, params, state)                 # back to an nnx.Module

``params`` holds the ``nnx.Param`` variables and ``state`` everything else (BatchNorm running
means/variances), both as plain nested dicts, so optax/gradlab transformations, ``jax.vmap``
and :mod:`flax.serialization` see ordinary pytrees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gradlab.lab import init as _init

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ModelParts",
    "split_model",
    "merge_model",
    "apply_model",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "logistic": jax.nn.sigmoid,
    "linear": lambda x: x,
    "identity": lambda x: x,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "leaky_relu": jax.nn.leaky_relu,
}


class MLP(nnx.Module):
    """Multilayer perceptron: ``[Linear -> (BatchNorm) -> activation -> (Dropout)] * L -> Linear``.

    Args:
      in_features: input dimension.
      widths: a sequence of hidden-layer widths (may be empty: a linear model).
      out_features: output dimension (logits for classification).
      activation: a name from :data:`ACTIVATIONS`.
      batch_norm: insert ``nnx.BatchNorm`` after each hidden linear layer (whose bias is then
        dropped, BatchNorm's shift replaces it).
      dropout: dropout rate after each hidden activation (0 disables it).
      kernel_init: initialiser (or a name for :func:`gradlab.lab.init.get`) for every kernel;
        default He normal for ReLU-like activations, Xavier normal with the activation's gain
        otherwise.
      bias_init: bias initialiser (default zeros; ``gradlab.lab.init.constant(0.01)`` is the
        textbook alternative).
      bn_momentum: running-average momentum of BatchNorm.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` used for initialisation only (dropout takes an explicit ``key``).
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        kernel_init: _init.Initializer | str | None = None,
        bias_init: _init.Initializer | None = None,
        bn_momentum: float = 0.9,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(widths, (str, bytes)) or not isinstance(widths, (Sequence, range)):
            raise TypeError(
                "MLP(in_features, widths, out_features): widths must be a sequence of hidden-"
                f"layer widths, e.g. [128] or [] for a linear model, got {widths!r}"
            )
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
                raise TypeError(f"MLP: {name} must be an int, got {size!r}")
        widths = tuple(int(w) for w in widths)
        if any(w < 1 for w in widths) or in_features < 1 or out_features < 1:
            raise ValueError(
                f"layer sizes must be >= 1, got in={in_features}, widths={widths}, "
                f"out={out_features}"
            )
        if kernel_init is None:
            kinit = _init.default_kernel_init(activation)
        else:
            kinit = _init.get(kernel_init, activation)
        binit = bias_init if bias_init is not None else _init.zeros

        self.activation = activation
        self.widths = widths
        self.batch_norm = bool(batch_norm)
        self.dropout_rate = float(dropout)
        sizes = (int(in_features), *widths)
        self.hidden = nnx.List(
            [
                nnx.Linear(
                    sizes[i],
                    sizes[i + 1],
                    use_bias=not batch_norm,
                    kernel_init=kinit,
                    bias_init=binit,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i in range(len(widths))
            ]
        )
        self.norms = (
            nnx.List(
                [
                    nnx.BatchNorm(w, momentum=bn_momentum, param_dtype=param_dtype, rngs=rngs)
                    for w in widths
                ]
            )
            if batch_norm
            else None
        )
        self.dropout = nnx.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        self.out = nnx.Linear(
            sizes[-1],
            int(out_features),
            kernel_init=kinit,
            bias_init=binit,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        key: jax.Array | None = None,
        taps: Sequence[jax.Array] | None = None,
        return_hidden: bool = False,
    ):
        r"""Forward pass.

        Args:
          x: ``(batch, in_features)`` inputs.
          train: training mode: BatchNorm normalises with batch statistics and updates its
            running averages; dropout is applied (needs ``key``). Static under ``jit``.
          key: PRNG key for dropout masks (required when ``train`` and ``dropout > 0``).
          taps: optional arrays added to each hidden pre-activation $h_l$; zeros change
            nothing, and the gradient of the loss with respect to them is
            $\partial L / \partial h_l$ (used to measure gradient flow per layer).
          return_hidden: also return the list of hidden pre-activations and activations.

        Returns:
          The outputs ``(batch, out_features)``; with ``return_hidden``, ``(outputs,
          pre_activations, activations)``.
        """
        act = ACTIVATIONS[self.activation]
        if train and self.dropout is not None and key is None:
            raise ValueError("MLP: train=True with dropout > 0 needs a PRNG `key`")
        keys = (
            jax.random.split(key, max(len(self.hidden), 1))
            if (train and self.dropout is not None)
            else [None] * len(self.hidden)
        )
        pre, post = [], []
        for i, layer in enumerate(self.hidden):
            h = layer(x)
            if self.norms is not None:
                h = self.norms[i](h, use_running_average=not train)
            if taps is not None:
                h = h + taps[i]
            pre.append(h)
            x = act(h)
            post.append(x)
            if self.dropout is not None:
                x = self.dropout(x, deterministic=not train, rngs=keys[i])
        out = self.out(x)
        if return_hidden:
            return out, pre, post
        return out


class ModelParts(NamedTuple):
    """A model taken apart: static graph definition, trainable params, other state."""

    graphdef: Any
    params: dict
    state: dict


def split_model(model: nnx.Module) -> ModelParts:
    """Split an NNX module into ``(graphdef, params, state)`` with plain-dict pytrees.

    ``params`` holds the ``nnx.Param`` variables; ``state`` every other variable (BatchNorm
    statistics, RNG counters of modules that own an ``nnx.Rngs``).
    """
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    return ModelParts(graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(state))


def merge_model(graphdef: Any, params: dict, state: dict) -> nnx.Module:
    """Rebuild the module from :func:`split_model`'s parts (no copy of the arrays)."""
    return nnx.merge(graphdef, params, state)


def _accepts(module: nnx.Module, name: str) -> bool:
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def apply_model(
    graphdef: Any,
    params: dict,
    state: dict,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
    **kwargs: Any,
) -> tuple[Any, dict]:
    """Pure forward pass: ``(outputs, new_state)``.

    ``train`` and ``key`` are forwarded to modules whose ``__call__`` accepts them (such as
    :class:`MLP`); other modules are called as ``module(x, **kwargs)``. In training mode
    ``new_state`` carries the updated BatchNorm running averages; in eval mode it equals
    ``state``.
    """
    module = nnx.merge(graphdef, params, state)
    call_kwargs = dict(kwargs)
    if _accepts(module, "train"):
        call_kwargs["train"] = train
    if key is not None and _accepts(module, "key"):
        call_kwargs["key"] = key
    out = module(x, **call_kwargs)
    _, _, new_state = nnx.split(module, nnx.Param, ...)
    return out, nnx.to_pure_dict(new_state)
