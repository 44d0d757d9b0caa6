"""The learning-rate atom: the last link of every named first-order optimizer."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.


def scale_by_learning_rate(
    learning_rate: base.ScalarOrSchedule, *, flip_sign: bool = True
) -> base.GradientTransformation:
    r"""Multiply updates by :math:`-\eta_t` (or :math:`+\eta_t` when ``flip_sign=False``).

    .. math:: u_t = -\eta_t\, g_t

    ``learning_rate`` is a number, a (traceable) array or a schedule ``count -> value``; the
    schedule is evaluated at the number of updates already taken (0 on the first update). The
    scale is computed in float32, or the leaf's dtype when wider (float64), and the update
    returned in each leaf's own dtype. The state is :class:`ScaleByLearningRateState` (a step
    count) for a schedule and ``optax.EmptyState()`` otherwise, as for ``optax.scale``.

    Args:
      learning_rate: :math:`\eta \ge 0`.
      flip_sign: descend (the default). ``False`` returns :math:`+\eta g` (for velocity forms
        that subtract later).
    """
    learning_rate = base.hyperparameter(
        learning_rate, "learning_rate", base.NONNEGATIVE, owner="scale_by_learning_rate"
    )
    sign = -1.0 if flip_sign else 1.0

    def apply(updates, count, params):
        del params
        lr = sign * base.resolve(learning_rate, count, base.leaf_compute_dtype(updates))
        return jax.tree.map(
            lambda g: (lr.astype(base.leaf_compute_dtype(g)) * g).astype(jnp.result_type(g)),
            updates,
        )

    return base.counted_transformation(
        ScaleByLearningRateState, "scale_by_learning_rate", apply, (learning_rate,)
    )
