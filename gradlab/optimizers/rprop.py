r"""Rprop (resilient backpropagation) as a named optimizer, in the four textbook variants."""

from __future__ import annotations

from typing import Any

from gradlab import base
from gradlab.transforms.learning_rate import scale_by_learning_rate
from gradlab.transforms.rprop import scale_by_rprop

__all__ = ["rprop"]


def rprop(
    learning_rate: base.ScalarOrSchedule,
    eta_minus: base.ScalarOrSchedule = 0.5,
    eta_plus: base.ScalarOrSchedule = 1.2,
    min_step_size: base.ScalarOrSchedule = 1e-6,
    max_step_size: base.ScalarOrSchedule = 50.0,
    *,
    variant: str = "irprop-",
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Rprop: per-weight step sizes adapted from gradient signs (full-batch training).

    ``chain(scale_by_rprop(...), scale_by_learning_rate(1.0))``: Rprop's step sizes are absolute
    weight changes, so the final atom only turns the direction into a descent step
    (:math:`\Delta w = -\operatorname{sign}(g)\,\Delta`). ``learning_rate`` is the *initial*
    step size :math:`\Delta^{(0)}`. Arguments match ``optax.rprop``; ``variant`` picks
    ``"rprop+"``, ``"rprop-"``, ``"irprop+"`` or ``"irprop-"`` (the default, as torch and
    optax). ``"irprop+"`` needs the loss: ``update(grads, state, params, value=loss)``.

    Unlike ``optax.rprop``, the first update already moves (optax PR #1725).

    Args:
      learning_rate: initial step size :math:`\Delta^{(0)} \ge 0`.
      eta_minus: decrease factor in :math:`(0, 1)`.
      eta_plus: increase factor :math:`> 1`.
      min_step_size: smallest step size :math:`\Delta_{\min} \ge 0`.
      max_step_size: largest step size :math:`\Delta_{\max} \ge \Delta_{\min}`.
      variant: the Rprop variant (see :mod:`gradlab.transforms.rprop`).
      state_dtype: dtype of the step sizes (default float32).

    References:
      Riedmiller & Braun, 1993; Igel & Hüsken, 2000 (see
      :func:`gradlab.transforms.rprop.scale_by_rprop`).
    """
    return base.named_chain(
        "rprop",
        scale_by_rprop(
            learning_rate,
            eta_minus,
            eta_plus,
            min_step_size,
            max_step_size,
            variant=variant,
            state_dtype=state_dtype,
        ),
        scale_by_learning_rate(1.0),
    )
