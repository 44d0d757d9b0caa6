r"""Exponential moving average of the *parameters* (Polyak–Ruppert style averaging).

:func:`params_ema` is a pass-through link (it returns the updates unchanged) that keeps a
float32 average of the iterates in its state; :func:`get_params_ema` reads it. It must be the
**last** link of the chain, so that ``params + updates`` is the next iterate. optax's ``ema``
averages *updates* (a gradient momentum), not parameters; Flax and Keras keep parameter EMAs
outside the optimizer. Here it is part of the optimizer state, so it checkpoints, vmaps and
sweeps with it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["ParamsEmaState", "params_ema", "get_params_ema"]


class ParamsEmaState(NamedTuple):
    """State of :func:`params_ema`."""

    count: jax.Array  # int32 scalar: updates taken so far.
    ema: base.Params  # the (debiased, when requested) average, in state_dtype.
    weight: jax.Array  # float32 scalar: 1 - prod_k decay_k (total weight of the iterates).


def params_ema(
    decay: base.ScalarOrSchedule = 0.999,
    *,
    debias: bool = True,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Keep an exponential moving average of the iterates :math:`\theta_t` (last link only).

    With :math:`\theta_{t} = \theta_{t-1} + u_t` (the params after this step's updates):

    * ``debias=True`` (default): the bias-corrected average of the iterates visited so far,
      the same estimate as :math:`m_t / (1-\prod_k\beta_k)` with :math:`m_0 = 0`,

      .. math::
          w_t = \beta_t w_{t-1} + (1-\beta_t),\ w_0 = 0, \qquad
          a_t = a_{t-1} + \frac{1-\beta_t}{w_t}\,(\theta_t - a_{t-1}),

      so :math:`a_1 = \theta_1` and :math:`a_t = \sum_k \omega_k \theta_k` with weights that
      sum to one. Before the first update it reads :math:`\theta_0`.
    * ``debias=False``: the classic warm-started average (TensorFlow/Flax style)
      :math:`a_0 = \theta_0,\ a_t = \beta_t a_{t-1} + (1-\beta_t)\theta_t`, biased towards
      :math:`\theta_0` for the first :math:`\sim 1/(1-\beta)` steps.

    The average is stored in float32 (``state_dtype``) and averages the iterates exactly as
    ``optax.apply_updates`` produces them (in the parameter dtype).

    Args:
      decay: :math:`\beta \in [0, 1)`; number, array or schedule.
      debias: see above.
      state_dtype: dtype of the average (default float32).

    Raises:
      ValueError: concrete ``decay`` outside :math:`[0, 1)`; ``update`` without ``params``.

    References:
      Polyak & Juditsky, `Acceleration of stochastic approximation by averaging
      <https://doi.org/10.1137/0330046>`_, 1992.
    """
    owner = "params_ema"
    decay = base.hyperparameter(decay, "decay", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner)
    debias = base.check_bool(debias, "debias", owner)
    dtype = base.state_dtype_of(state_dtype, owner)

    def init_fn(params):
        # A copy, never the params' own buffers (to_dtype is a no-op when the dtype matches):
        # donating the state to a jitted step would otherwise delete the params.
        return ParamsEmaState(
            count=base.zero_count(),
            ema=jax.tree.map(lambda p: jnp.array(base.to_dtype(p, dtype), copy=True), params),
            weight=jnp.zeros([], base.compute_dtype(dtype)),
        )

    def update_fn(updates, state, params=None):
        base.check_update(owner, state, ParamsEmaState, updates, "ema")
        base.require_params(params, updates, owner)
        beta = base.resolve(decay, state.count, base.compute_dtype(dtype))
        weight = beta * state.weight + (1.0 - beta)
        rate = (1.0 - beta) / weight if debias else 1.0 - beta

        def leaf(a, p, u):
            new = (jnp.asarray(p) + u).astype(jnp.asarray(p).dtype)
            cdt = base.compute_dtype(a.dtype)
            a32 = a.astype(cdt)
            return (a32 + rate.astype(cdt) * (new.astype(cdt) - a32)).astype(a.dtype)

        ema = jax.tree.map(leaf, state.ema, params, updates)
        return updates, ParamsEmaState(base.safe_increment(state.count), ema, weight)

    return base.GradientTransformation(init_fn, update_fn)


def get_params_ema(opt_state: base.OptState, like: base.Params | None = None) -> base.Params:
    """The parameter average held by the (single) :func:`params_ema` link in ``opt_state``.

    Args:
      opt_state: an optimizer state containing exactly one ``ParamsEmaState``.
      like: optional params; the average is returned in their dtypes (else ``state_dtype``).

    Raises:
      ValueError: no (or more than one) ``ParamsEmaState`` in ``opt_state``.
    """
    found = base.find_states(opt_state, ParamsEmaState)
    if len(found) != 1:
        raise ValueError(
            f"get_params_ema: opt_state must contain exactly one ParamsEmaState, found {len(found)}"
        )
    ema = found[0].ema
    if like is None:
        return ema
    base.check_tree_match(ema, like, "state", "like", owner="get_params_ema")
    return base.cast_like(ema, like)
