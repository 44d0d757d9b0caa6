r"""Gradient descent with momentum: :func:`sgd` (every classic momentum form) and
:func:`nesterov_lookahead` (true-lookahead Nesterov, algorithm 8.3)."""

from __future__ import annotations

from typing import Any

from gradlab import base
from gradlab.transforms import momentum as _m
from gradlab.transforms.learning_rate import scale_by_learning_rate

__all__ = ["sgd", "nesterov_lookahead"]


def sgd(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule | None = None,
    nesterov: bool = False,
    *,
    momentum_form: str = "trace",
    state_dtype: Any = None,
    accumulator_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Stochastic gradient descent, optionally with momentum in a chosen textbook form.

    Without momentum: :math:`\Delta\theta_t = -\eta_t g_t`. With momentum :math:`\mu`, the
    ``momentum_form`` picks the formulation (see :mod:`gradlab.transforms.momentum`):

    ================  =======================================================================
    form              chain
    ================  =======================================================================
    ``"trace"``       ``trace(mu, nesterov)`` → ``scale_by_learning_rate(eta)`` (optax.sgd)
    ``"ema"``         ``ema(mu, debias=False, nesterov)`` → ``scale_by_learning_rate(eta)``
    ``"heavy_ball"``  ``heavy_ball_momentum(eta, mu, nesterov)`` (lr inside the velocity)
    ``"sutskever"``   ``sutskever_momentum(eta, mu, nesterov)`` (Keras SGD)
    ``"damped"``      ``damped_momentum(eta, mu, nesterov)`` (textbook damped form)
    ================  =======================================================================

    The default (``"trace"``) computes exactly what ``optax.sgd`` computes, with the state in
    float32 (``state_dtype``). For a constant learning rate ``trace``/``heavy_ball``/
    ``sutskever`` coincide, as do ``ema``/``damped``; under a schedule they differ.
    ``nesterov=True`` is the reformulated Nesterov step; for the lookahead form use
    :func:`nesterov_lookahead`.

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule ``count -> value``.
      momentum: :math:`\mu \in [0, 1)`; ``None`` for none (``0.0`` is a valid traced
        "no momentum" that keeps the state's shape).
      nesterov: reformulated Nesterov momentum (requires ``momentum``).
      momentum_form: one of ``"trace"``, ``"ema"``, ``"heavy_ball"``, ``"sutskever"``,
        ``"damped"``.
      state_dtype: dtype of the momentum buffer (default float32).
      accumulator_dtype: optax's spelling of ``state_dtype``.

    Returns:
      A chain of atoms (a ``GradientTransformation``).

    Raises:
      ValueError: a concrete hyperparameter out of range, an unknown ``momentum_form``, or
        ``nesterov=True`` without momentum.

    References:
      Robbins & Monro, `A stochastic approximation method
      <https://doi.org/10.1214/aoms/1177729586>`_, 1951. Sutskever et al., `On the importance
      of initialization and momentum in deep learning
      <http://proceedings.mlr.press/v28/sutskever13.pdf>`_, 2013.
    """
    momentum_form = base.check_choice(momentum_form, "momentum_form", _m.MOMENTUM_FORMS, "sgd")
    nesterov = base.check_bool(nesterov, "nesterov", "sgd")
    if state_dtype is not None and accumulator_dtype is not None:
        raise ValueError("sgd: pass state_dtype or its optax spelling accumulator_dtype")
    state_dtype = state_dtype if state_dtype is not None else accumulator_dtype
    # Validate under the user's argument names (the atoms call momentum "decay").
    learning_rate = base.hyperparameter(learning_rate, "learning_rate", owner="sgd")
    if momentum is None:
        if nesterov:
            raise ValueError("sgd: nesterov=True needs a momentum (got momentum=None)")
        return base.named_chain("sgd", scale_by_learning_rate(learning_rate))
    momentum = base.hyperparameter(momentum, "momentum", base.UNIT_INTERVAL_OPEN_RIGHT, owner="sgd")
    if momentum_form == "trace":
        velocity = _m.trace(momentum, nesterov, state_dtype=state_dtype)
    elif momentum_form == "ema":
        velocity = _m.ema(momentum, debias=False, nesterov=nesterov, state_dtype=state_dtype)
    else:  # the learning rate sits inside the velocity: the atom is the whole step
        atom = getattr(_m, f"{momentum_form}_momentum")
        step = atom(learning_rate, momentum, nesterov, state_dtype=state_dtype)
        return base.named_chain("sgd", step)
    return base.named_chain("sgd", velocity, scale_by_learning_rate(learning_rate))


def nesterov_lookahead(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule = 0.9,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""True-lookahead Nesterov momentum (Sutskever et al. 2013; Goodfellow et al. alg. 8.3).

    The training loop holds the lookahead point :math:`\phi_t = \theta_t + \mu_t v_t` as its
    params, so the one gradient it computes per step is the textbook
    :math:`\nabla f(\theta_t + \mu_t v_t)`; see
    :func:`gradlab.transforms.momentum.scale_by_nesterov_lookahead`. Read the textbook iterate
    :math:`\theta_t` with :func:`gradlab.transforms.momentum.nesterov_base_params`.

    For constant hyperparameters the params follow exactly the trajectory of
    ``sgd(eta, mu, nesterov=True)``; with schedules they follow algorithm 8.3 instead.

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule.
      momentum: :math:`\mu \in [0, 1)`; number, array or schedule.
      state_dtype: dtype of the velocity (default float32).
    """
    step = _m.scale_by_nesterov_lookahead(learning_rate, momentum, state_dtype=state_dtype)
    return base.named_chain("nesterov_lookahead", step)
