r"""Adaptive per-parameter optimizers: AdaGrad, RMSProp, AdaDelta, Adam, AdamW, AdaMax, Nadam.

Each is a chain of gradlab atoms ending in :func:`~gradlab.scale_by_learning_rate`, with optax's
names, argument names and defaults (so ``import gradlab as optax``-style switching works), plus
gradlab's variant switches (epsilon placement, bias correction, initialisation) and a
``state_dtype`` argument: every accumulator is float32 by default, whatever the parameter dtype,
and updates come back in the gradient's dtype.

Two deliberate differences from optax, both fixes:

* ``adadelta(learning_rate=None)`` descends with rate 1 (Zeiler's method). optax's
  ``adadelta()`` applies the step *without* flipping its sign, i.e. it ascends.
* A float16 zero gradient gives a zero update (optax gives NaN for adam, adamw, nadam, adamax
  and rmsprop, optax #1754): denominators are computed in float32.
"""

from __future__ import annotations

from typing import Any

from gradlab import base
from gradlab.transforms.adadelta import scale_by_adadelta
from gradlab.transforms.adagrad import scale_by_rss
from gradlab.transforms.adam import scale_by_adam, scale_by_adamax
from gradlab.transforms.learning_rate import scale_by_learning_rate
from gradlab.transforms.momentum import trace
from gradlab.transforms.rms import scale_by_rms
from gradlab.transforms.weight_decay import add_decayed_weights

__all__ = ["adadelta", "adagrad", "adam", "adamax", "adamw", "nadam", "nadamw", "rmsprop"]


def _named(name: str, learning_rate: Any, *parts: base.GradientTransformation):
    """``named_chain(name, *parts, scale_by_learning_rate(learning_rate))``, the learning rate
    validated under the optimizer's own name (clearer messages)."""
    lr = base.hyperparameter(learning_rate, "learning_rate", base.NONNEGATIVE, owner=name)
    return base.named_chain(name, *parts, scale_by_learning_rate(lr))


def _adam(name: str, learning_rate: Any, decay: tuple | None, betas: tuple, variant: tuple):
    """The Adam family: ``scale_by_adam`` [-> ``add_decayed_weights(*decay)``] -> lr.

    ``betas = (b1, b2, eps, eps_root, mu_dtype)`` and ``variant = (nesterov, bias_correction,
    eps_in_sqrt, state_dtype)``, as in :func:`gradlab.transforms.adam.scale_by_adam`.
    """
    nesterov, bias_correction, eps_in_sqrt, state_dtype = variant
    scale = scale_by_adam(
        *betas,
        nesterov=nesterov,
        bias_correction=bias_correction,
        eps_in_sqrt=eps_in_sqrt,
        state_dtype=state_dtype,
    )
    if decay is None:
        return _named(name, learning_rate, scale)
    return _named(name, learning_rate, scale, add_decayed_weights(decay[0], mask=decay[1]))


# --------------------------------------------------------------------------------------------
# Named optimizers
# --------------------------------------------------------------------------------------------


def adagrad(
    learning_rate: base.ScalarOrSchedule,
    initial_accumulator_value: base.ScalarOrSchedule = 0.1,
    eps: base.ScalarOrSchedule = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""AdaGrad: $\theta_t = \theta_{t-1} - \eta\, g_t / \sqrt{G_t + \epsilon}$,
    $G_t = G_{t-1} + g_t^2$.

    Same defaults as ``optax.adagrad`` ($G_0 = 0.1$, $\epsilon = 10^{-7}$ inside the root).
    ``eps_in_sqrt=False`` gives $\eta\, g_t / (\epsilon + \sqrt{G_t})$ (torch, Goodfellow et al.
    Alg. 8.4); torch's defaults are ``adagrad(1e-2, 0.0, 1e-10, eps_in_sqrt=False)``.

    Args:
      learning_rate: $\eta \ge 0$ (number, array or schedule).
      initial_accumulator_value: $G_0 \ge 0$.
      eps: $\epsilon \ge 0$.
      eps_in_sqrt: $\epsilon$ inside (default) or outside the square root.
      state_dtype: accumulator dtype (float32 by default).

    Returns:
      ``chain(scale_by_rss, scale_by_learning_rate)``.

    References:
      Duchi, Hazan & Singer, JMLR 12, 2011.
    """
    scale = scale_by_rss(
        initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt, state_dtype=state_dtype
    )
    return _named("adagrad", learning_rate, scale)


def rmsprop(
    learning_rate: base.ScalarOrSchedule,
    decay: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-8,
    initial_scale: base.ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: base.ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    init_with_first_gradient: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""RMSProp: $\theta_t = \theta_{t-1} - \eta\, g_t / \sqrt{\nu_t + \epsilon}$.

    $\nu_t = \rho\,\nu_{t-1} + (1-\rho) g_t^2$; see :func:`gradlab.transforms.rms.scale_by_rms`
    for the centered, bias-corrected, eps-outside and first-gradient-initialised variants.
    With ``momentum`` $\mu$, the scaled step is accumulated after the learning rate, as in
    optax: $t_k = -\eta_k s_k + \mu t_{k-1}$ (Nesterov: $-\eta_k s_k + \mu t_k$), so the chain
    then ends in the momentum atom. Defaults match ``optax.rmsprop``; torch's ``RMSprop`` is
    ``rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)``, Keras's has ``eps=1e-7``.

    Args:
      learning_rate: $\eta \ge 0$.
      decay: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      initial_scale: $\nu_0 \ge 0$.
      eps_in_sqrt: $\epsilon$ inside (default) or outside the square root.
      centered: divide by the running standard deviation instead of the RMS (Graves 2013).
      momentum: $\mu \in [0, 1)$ or ``None`` (no momentum).
      nesterov: Nesterov form of the momentum (requires ``momentum``).
      bias_correction: divide the averages by $1-\rho^t$.
      init_with_first_gradient: start $\nu$ at $g_1^2$ (textbook variant).
      state_dtype: accumulator dtype (float32 by default).

    References:
      Tieleman & Hinton, COURSERA lecture 6.5, 2012. Graves, arXiv:1308.0850, 2013.
    """
    nesterov = base.check_bool(nesterov, "nesterov", "rmsprop")
    scale = scale_by_rms(
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction,
        centered=centered,
        init_with_first_gradient=init_with_first_gradient,
        state_dtype=state_dtype,
    )
    if momentum is None:
        if nesterov:
            raise ValueError("rmsprop: nesterov=True needs a momentum (got momentum=None)")
        return _named("rmsprop", learning_rate, scale)
    lr = base.hyperparameter(learning_rate, "learning_rate", base.NONNEGATIVE, owner="rmsprop")
    mu = base.hyperparameter(momentum, "momentum", base.UNIT_INTERVAL_OPEN_RIGHT, owner="rmsprop")
    velocity = trace(mu, nesterov, state_dtype=state_dtype)
    return base.named_chain("rmsprop", scale, scale_by_learning_rate(lr), velocity)


def adadelta(
    learning_rate: base.ScalarOrSchedule | None = None,
    rho: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-6,
    weight_decay: base.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""AdaDelta: $\theta_t = \theta_{t-1} - \eta\,\frac{\sqrt{E[\Delta^2]_{t-1}+\epsilon}}
    {\sqrt{E[g^2]_t+\epsilon}}\, g_t$.

    ``learning_rate=None`` is Zeiler's method ($\eta = 1$) and *descends*; optax's
    ``adadelta()`` with ``learning_rate=None`` skips the sign flip and ascends. Optional
    (coupled, L2-style) ``weight_decay`` adds $\lambda\theta$ to the gradient first, as in
    optax; when it is the number 0 the atom is left out, so ``update`` needs no ``params``.

    Args:
      learning_rate: $\eta \ge 0$, or ``None`` for 1.
      rho: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      weight_decay: $\lambda \ge 0$.
      weight_decay_mask: mask (tree or callable) of the leaves to decay.
      state_dtype: accumulator dtype (float32 by default).

    References:
      Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012.
    """
    parts = []
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(add_decayed_weights(weight_decay, mask=weight_decay_mask))
    parts.append(scale_by_adadelta(rho, eps, state_dtype=state_dtype))
    return _named("adadelta", 1.0 if learning_rate is None else learning_rate, *parts)


def adam(
    learning_rate: base.ScalarOrSchedule,
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    eps_root: base.ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    bias_correction: str = "both",
    eps_in_sqrt: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Adam: $\theta_t = \theta_{t-1} - \eta\,\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} +
    \epsilon)$.

    Same defaults as ``optax.adam`` and torch. ``bias_correction`` (``"both"``, ``"first"``,
    ``"second"``, ``"none"``) and ``eps_in_sqrt`` select the textbook variants: the "simple
    Adam" slide is ``adam(lr, bias_correction="none", eps_in_sqrt=True)``, Goodfellow et al.
    Alg. 8.7 is ``adam(lr, eps_in_sqrt=True)``. Use ``eps_root > 0`` (e.g. 1e-8) to
    differentiate through the update. See :func:`gradlab.transforms.adam.scale_by_adam`.

    Args:
      learning_rate: $\eta \ge 0$.
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      eps_root: $\epsilon_{root} \ge 0$.
      mu_dtype: dtype of the first moment only (optax's argument).
      nesterov: Nadam's look-ahead (see :func:`nadam`).
      bias_correction: which moments to bias-correct.
      eps_in_sqrt: put $\epsilon$ inside the square root.
      state_dtype: dtype of every moment (float32 by default).

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    betas = (b1, b2, eps, eps_root, mu_dtype)
    variant = (nesterov, bias_correction, eps_in_sqrt, state_dtype)
    return _adam("nadam" if nesterov else "adam", learning_rate, None, betas, variant)


def adamw(
    learning_rate: base.ScalarOrSchedule,
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    eps_root: base.ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
    weight_decay: base.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    bias_correction: str = "both",
    eps_in_sqrt: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay,
    $\theta_t = \theta_{t-1} - \eta\,(\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda
    \theta_{t-1})$.

    The decay is added after the Adam scaling and before the learning rate (so it is scaled by
    $\eta$, as in optax and torch; the paper's schedule multiplier is the learning-rate
    schedule). Defaults match ``optax.adamw`` ($\lambda = 10^{-4}$; torch uses $10^{-2}$).

    Args:
      learning_rate: $\eta \ge 0$.
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      eps_root: $\epsilon_{root} \ge 0$.
      mu_dtype: dtype of the first moment only.
      weight_decay: $\lambda \ge 0$.
      mask: tree of booleans or callable ``params -> tree`` selecting the leaves to decay.
      nesterov: NadamW.
      bias_correction: which moments to bias-correct.
      eps_in_sqrt: put $\epsilon$ inside the square root.
      state_dtype: dtype of every moment (float32 by default).

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    betas = (b1, b2, eps, eps_root, mu_dtype)
    variant = (nesterov, bias_correction, eps_in_sqrt, state_dtype)
    decay = (weight_decay, mask)
    return _adam("nadamw" if nesterov else "adamw", learning_rate, decay, betas, variant)


def adamax(
    learning_rate: base.ScalarOrSchedule,
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    *,
    bias_correction: bool = True,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""AdaMax: $\theta_t = \theta_{t-1} - \eta\,\frac{m_t}{(1-\beta_1^t)\,u_t}$,
    $u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon)$.

    Same semantics and defaults as ``optax.adamax``; see
    :func:`gradlab.transforms.adam.scale_by_adamax`.

    Args:
      learning_rate: $\eta \ge 0$.
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      bias_correction: correct the first moment.
      state_dtype: dtype of both moments (float32 by default).

    References:
      Kingma & Ba, ICLR 2015, §7.1.
    """
    scale = scale_by_adamax(b1, b2, eps, bias_correction=bias_correction, state_dtype=state_dtype)
    return _named("adamax", learning_rate, scale)


def nadam(
    learning_rate: base.ScalarOrSchedule,
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    eps_root: base.ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
    *,
    bias_correction: str = "both",
    eps_in_sqrt: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Nadam: Adam with a Nesterov look-ahead first moment (``optax.nadam`` semantics).

    .. math::
        \tilde m_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t},
        \qquad \theta_t = \theta_{t-1} - \eta\,\frac{\tilde m_t}{\sqrt{\hat v_t +
        \epsilon_{root}} + \epsilon}

    (no momentum schedule and no extra $\beta_2$ factor, unlike torch's ``NAdam``).

    Args:
      learning_rate: $\eta \ge 0$.
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      eps_root: $\epsilon_{root} \ge 0$.
      mu_dtype: dtype of the first moment only.
      bias_correction: which moments to bias-correct.
      eps_in_sqrt: put $\epsilon$ inside the square root.
      state_dtype: dtype of every moment (float32 by default).

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    """
    betas = (b1, b2, eps, eps_root, mu_dtype)
    variant = (True, bias_correction, eps_in_sqrt, state_dtype)
    return _adam("nadam", learning_rate, None, betas, variant)


def nadamw(
    learning_rate: base.ScalarOrSchedule,
    b1: base.ScalarOrSchedule = 0.9,
    b2: base.ScalarOrSchedule = 0.999,
    eps: base.ScalarOrSchedule = 1e-8,
    eps_root: base.ScalarOrSchedule = 0.0,
    mu_dtype: Any = None,
    weight_decay: base.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    bias_correction: str = "both",
    eps_in_sqrt: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""NadamW: :func:`nadam` with decoupled weight decay (``optax.nadamw``).

    Args:
      learning_rate: $\eta \ge 0$.
      b1: $\beta_1 \in [0, 1)$.
      b2: $\beta_2 \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      eps_root: $\epsilon_{root} \ge 0$.
      mu_dtype: dtype of the first moment only.
      weight_decay: $\lambda \ge 0$.
      mask: leaves to decay.
      bias_correction: which moments to bias-correct.
      eps_in_sqrt: put $\epsilon$ inside the square root.
      state_dtype: dtype of every moment (float32 by default).

    References:
      Dozat 2016; Loshchilov & Hutter, ICLR 2019.
    """
    betas = (b1, b2, eps, eps_root, mu_dtype)
    variant = (True, bias_correction, eps_in_sqrt, state_dtype)
    return _adam("nadamw", learning_rate, (weight_decay, mask), betas, variant)
