r"""Momentum atoms: the classic formulations as named, separately testable transformations.

The literature writes "momentum" in five ways that differ in *where the learning rate sits*
(outside or inside the velocity) and in *whether the gradient is damped*. With
:math:`g_t` the gradient, :math:`\mu` the momentum and :math:`\eta_t` the learning rate:

=================  ========================================================  ================
form               recursion and step                                        lr sits
=================  ========================================================  ================
``trace``          :math:`m_t = g_t + \mu m_{t-1},\ \Delta\theta = -\eta_t m_t`        outside
``ema``            :math:`m_t = \mu m_{t-1} + (1-\mu) g_t,\ \Delta\theta = -\eta_t m_t`  outside
``heavy_ball``     :math:`u_t = \mu u_{t-1} + \eta_t g_t,\ \Delta\theta = -u_t`        inside
``sutskever``      :math:`v_t = \mu v_{t-1} - \eta_t g_t,\ \Delta\theta = v_t`         inside
``damped``         :math:`\Delta w_t = \mu \Delta w_{t-1} - \eta_t (1-\mu) g_t`        inside
=================  ========================================================  ================

**Which coincide.** ``heavy_ball`` and ``sutskever`` are the same method (:math:`v = -u`,
bit-for-bit, even under schedules). For a *constant* learning rate :math:`u_t = \eta m_t`, so
``trace`` = ``heavy_ball`` = ``sutskever``, and ``ema`` = ``damped``; also ``ema`` with
:math:`(\mu, \eta)` = ``trace`` with :math:`(\mu, (1-\mu)\eta)`. Under a learning-rate
*schedule* the outside forms rescale the whole history by today's :math:`\eta_t`
(:math:`\Delta\theta_t = -\eta_t \sum_k \mu^{t-k} g_k`) while the inside forms weight each
gradient by the rate of its own step (:math:`\Delta\theta_t = -\sum_k \mu^{t-k}\eta_k g_k`);
the trajectories then differ.

The inside forms take the learning rate themselves (with their own step count) and produce the
final update; the outside forms are followed by
:func:`gradlab.transforms.learning_rate.scale_by_learning_rate`.

**Nesterov.** Every form takes ``nesterov=True``, the *reformulated* Nesterov step that optax,
torch and Keras ship: the step adds :math:`\mu` times the *new* velocity to the current
gradient term (``trace``: :math:`g_t + \mu m_t`). :func:`scale_by_nesterov_lookahead` is the
*true lookahead* form (gradient evaluated at :math:`\theta + \mu v`), usable with one gradient
per step; see its docstring.

State lives in float32 (``state_dtype``) whatever the parameter dtype; updates come back in the
gradient's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradlab import base

__all__ = [
    "MOMENTUM_FORMS",
    "TraceState",
    "EmaState",
    "HeavyBallState",
    "SutskeverState",
    "DampedMomentumState",
    "NesterovLookaheadState",
    "trace",
    "ema",
    "heavy_ball_momentum",
    "sutskever_momentum",
    "damped_momentum",
    "scale_by_nesterov_lookahead",
    "nesterov_base_params",
]

MOMENTUM_FORMS = ("trace", "heavy_ball", "sutskever", "damped", "ema")


class TraceState(NamedTuple):
    """State of :func:`trace` under a ``decay`` schedule (with a constant ``decay`` the state is
    ``optax.TraceState(trace)``, as for ``optax.trace``)."""

    count: jax.Array  # int32 scalar: updates taken so far (evaluates a `decay` schedule).
    trace: base.Updates  # m_{t}, in state_dtype.


class EmaState(NamedTuple):
    """State of :func:`ema`."""

    count: jax.Array  # int32 scalar.
    ema: base.Updates  # m_{t}, in state_dtype.
    weight: jax.Array  # float32 scalar: 1 - prod_k decay_k (the debiasing denominator).


class HeavyBallState(NamedTuple):
    """State of :func:`heavy_ball_momentum`."""

    count: jax.Array
    velocity: base.Updates  # u_t = mu u_{t-1} + eta_t g_t (a step to subtract).


class SutskeverState(NamedTuple):
    """State of :func:`sutskever_momentum`."""

    count: jax.Array
    velocity: base.Updates  # v_t = mu v_{t-1} - eta_t g_t (a step to add).


class DampedMomentumState(NamedTuple):
    """State of :func:`damped_momentum`."""

    count: jax.Array
    delta: base.Updates  # the atom's previous step Delta w_{t-1}.


class NesterovLookaheadState(NamedTuple):
    """State of :func:`scale_by_nesterov_lookahead`."""

    count: jax.Array
    velocity: base.Updates  # v_t (Sutskever sign convention: theta_{t} = theta_{t-1} + v_t).
    momentum: jax.Array  # float32 scalar: mu at the current lookahead point (0 after init).


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


def _momentum(value: Any, name: str, owner: str) -> Any:
    return base.hyperparameter(value, name, base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner)


def _lr(value: Any, owner: str) -> Any:
    return base.hyperparameter(value, "learning_rate", base.NONNEGATIVE, owner=owner)


def _accumulate(updates, velocity, mu, coef, nesterov: bool, scale=None) -> tuple:
    r"""The one momentum recursion behind every form, leaf by leaf in the compute dtype.

    :math:`v_t = \mu v_{t-1} + c\, g_t`; returns ``scale`` times :math:`v_t` (or
    :math:`\mu v_t + c\, g_t` with ``nesterov``) in the gradient's dtype, and the new velocity
    in the state's dtype.
    """

    def leaf(g, v):
        cdt = base.compute_dtype(v.dtype)
        gc = g.astype(cdt)
        v_new = mu * v.astype(cdt) + coef * gc
        out = mu * v_new + coef * gc if nesterov else v_new
        out = out if scale is None else scale * out
        return out.astype(g.dtype), v_new.astype(v.dtype)

    return base.map_leaves(leaf, updates, velocity)


def _lr_inside(
    owner: str, learning_rate: Any, momentum: Any, nesterov: bool, state_dtype: Any
) -> base.GradientTransformation:
    """A momentum form with the learning rate inside the velocity (see :data:`_INSIDE`)."""
    state_cls, coef, scale = _INSIDE[owner]
    learning_rate = _lr(learning_rate, owner)
    momentum = _momentum(momentum, "momentum", owner)
    nesterov = base.check_bool(nesterov, "nesterov", owner)
    dtype = base.state_dtype_of(state_dtype, owner)
    cdt = base.compute_dtype(dtype)
    field = state_cls._fields[1]

    def init_fn(params):
        return state_cls(base.zero_count(), base.zeros_like(params, dtype))

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, state_cls, updates, field)
        lr = base.resolve(learning_rate, state.count, cdt)
        mu = base.resolve(momentum, state.count, cdt)
        out, new = _accumulate(updates, state[1], mu, coef(lr, mu), nesterov, scale)
        return out, state_cls(base.safe_increment(state.count), new)

    return base.GradientTransformation(init_fn, update_fn)


def _outside_dtype(state_dtype: Any, accumulator_dtype: Any, owner: str) -> Any:
    if state_dtype is not None and accumulator_dtype is not None:
        raise ValueError(f"{owner}: pass state_dtype or its optax spelling accumulator_dtype")
    chosen = state_dtype if state_dtype is not None else accumulator_dtype
    return base.state_dtype_of(chosen, owner)


# --------------------------------------------------------------------------------------------
# Learning rate outside the velocity
# --------------------------------------------------------------------------------------------


def trace(
    decay: base.ScalarOrSchedule,
    nesterov: bool = False,
    *,
    state_dtype: Any = None,
    accumulator_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Momentum with the learning rate *outside* the velocity (optax/torch default).

    .. math::
        m_t = g_t + \mu\, m_{t-1}, \qquad
        u_t = \begin{cases} m_t & \text{classic} \\ g_t + \mu\, m_t & \text{nesterov}
        \end{cases}

    followed by :math:`\Delta\theta = -\eta_t u_t` (the learning-rate atom). ``optax.trace``
    and ``torch.optim.SGD(momentum=mu)`` compute the same thing.

    Args:
      decay: :math:`\mu \in [0, 1)`; a number, array or schedule ``count -> value``.
      nesterov: reformulated Nesterov step (``optax.trace(nesterov=True)``).
      state_dtype: dtype of :math:`m` (default float32).
      accumulator_dtype: optax's spelling of ``state_dtype``.

    References:
      Polyak, `Some methods of speeding up the convergence of iteration methods
      <https://doi.org/10.1016/0041-5553(64)90137-5>`_, 1964.
      Sutskever et al., `On the importance of initialization and momentum in deep learning
      <http://proceedings.mlr.press/v28/sutskever13.pdf>`_, 2013.
    """
    owner = "trace"
    decay = _momentum(decay, "decay", owner)
    nesterov = base.check_bool(nesterov, "nesterov", owner)
    dtype = _outside_dtype(state_dtype, accumulator_dtype, owner)
    # A step count only when a schedule reads it: with a constant decay the state is optax's
    # (so a named optimizer's state holds one count, and sgd's is optax.sgd's).
    counted = base.is_schedule(decay)
    expected = TraceState if counted else optax.TraceState

    def init_fn(params):
        m = base.zeros_like(params, dtype)
        return TraceState(count=base.zero_count(), trace=m) if counted else optax.TraceState(m)

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, expected, updates, "trace")
        count = state.count if counted else base.zero_count()
        mu = base.resolve(decay, count, base.compute_dtype(dtype))
        updates, new = _accumulate(updates, state.trace, mu, 1.0, nesterov)
        if not counted:
            return updates, optax.TraceState(trace=new)
        return updates, TraceState(count=base.safe_increment(state.count), trace=new)

    return base.GradientTransformation(init_fn, update_fn)


def ema(
    decay: base.ScalarOrSchedule,
    debias: bool = True,
    *,
    nesterov: bool = False,
    state_dtype: Any = None,
    accumulator_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Exponential moving average of the updates (the "dampened" momentum, lr outside).

    .. math::
        m_t = \mu\, m_{t-1} + (1-\mu)\, g_t, \qquad
        w_t = \mu\, w_{t-1} + (1-\mu) = 1 - \textstyle\prod_{k\le t}\mu_k,

    returning :math:`m_t / w_t` when ``debias`` (optax's default) and :math:`m_t` otherwise.
    With ``nesterov`` the returned quantity is :math:`\mu m_t + (1-\mu) g_t` (then debiased
    the same way). Followed by :math:`\Delta\theta = -\eta_t u_t` this is ``torch.optim.SGD``
    with ``dampening=momentum``, except that torch does not damp its first step
    (:math:`m_1 = g_1`), so torch's buffer carries an extra, geometrically decaying
    :math:`\mu^t g_1`. With a schedule for ``decay`` the debiasing uses the product of the
    decays actually applied.

    Args:
      decay: :math:`\mu \in [0, 1)`; number, array or schedule.
      debias: divide by :math:`1 - \prod \mu_k` (``optax.ema`` default ``True``).
      nesterov: reformulated Nesterov step.
      state_dtype: dtype of :math:`m` (default float32).
      accumulator_dtype: optax's spelling of ``state_dtype``.
    """
    owner = "ema"
    decay = _momentum(decay, "decay", owner)
    debias = base.check_bool(debias, "debias", owner)
    nesterov = base.check_bool(nesterov, "nesterov", owner)
    dtype = _outside_dtype(state_dtype, accumulator_dtype, owner)

    def init_fn(params):
        zeros = base.zeros_like(params, dtype)
        weight = jnp.zeros([], base.compute_dtype(dtype))
        return EmaState(count=base.zero_count(), ema=zeros, weight=weight)

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, EmaState, updates, "ema")
        mu = base.resolve(decay, state.count, base.compute_dtype(dtype))
        weight = mu * state.weight + (1.0 - mu)
        scale = 1.0 / weight if debias else None
        updates, new = _accumulate(updates, state.ema, mu, 1.0 - mu, nesterov, scale)
        return updates, EmaState(base.safe_increment(state.count), new, weight)

    return base.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Learning rate inside the velocity
# --------------------------------------------------------------------------------------------


def heavy_ball_momentum(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Polyak's heavy ball with the learning rate *inside* the velocity (the textbook form).

    .. math::
        u_t = \mu\, u_{t-1} + \eta_t\, g_t, \qquad
        \Delta\theta_t = \begin{cases} -u_t & \text{classic} \\
        -(\mu\, u_t + \eta_t g_t) & \text{nesterov} \end{cases}

    This is the final update (no learning-rate atom after it). It equals :func:`trace`
    followed by ``scale_by_learning_rate`` for a constant :math:`\eta` and differs under a
    schedule (each gradient keeps the rate of its own step).

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule (evaluated at this
        atom's own count, 0 on the first update).
      momentum: :math:`\mu \in [0, 1)`; number, array or schedule.
      nesterov: reformulated Nesterov step.
      state_dtype: dtype of :math:`u` (default float32).

    References:
      Polyak, 1964 (see :func:`trace`); Rumelhart, Hinton & Williams, `Learning
      representations by back-propagating errors <https://doi.org/10.1038/323533a0>`_, 1986.
    """
    return _lr_inside("heavy_ball_momentum", learning_rate, momentum, nesterov, state_dtype)


def sutskever_momentum(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Momentum as in Goodfellow et al. algorithm 8.2 and ``keras.optimizers.SGD``.

    .. math::
        v_t = \mu\, v_{t-1} - \eta_t\, g_t, \qquad
        \Delta\theta_t = \begin{cases} v_t & \text{classic} \\
        \mu\, v_t - \eta_t g_t & \text{nesterov (Keras)} \end{cases}

    The same method as :func:`heavy_ball_momentum` with the velocity's sign flipped
    (:math:`v = -u`); the two produce bit-identical updates, schedules included.

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule (own count).
      momentum: :math:`\mu \in [0, 1)`; number, array or schedule.
      nesterov: reformulated Nesterov step (Keras ``SGD(nesterov=True)``).
      state_dtype: dtype of :math:`v` (default float32).

    References:
      Sutskever et al., 2013 (see :func:`trace`); Goodfellow, Bengio & Courville, *Deep
      Learning*, algorithm 8.2, 2016.
    """
    return _lr_inside("sutskever_momentum", learning_rate, momentum, nesterov, state_dtype)


def damped_momentum(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Damped momentum ("implementation 2" of the textbook), lr inside the velocity.

    .. math::
        \Delta w_t = \mu\, \Delta w_{t-1} - \eta_t (1-\mu)\, g_t, \qquad
        w_{t+1} = w_t + \Delta w_t

    (with ``nesterov`` the step is :math:`\mu \Delta w_t - \eta_t(1-\mu) g_t`). :math:`\mu = 0`
    is plain gradient descent and the steady-state step is :math:`-\eta g` on a constant
    gradient. For a constant :math:`\eta` it equals :func:`ema` (``debias=False``) followed by
    the learning-rate atom, i.e. ``torch.optim.SGD(momentum=mu, dampening=mu)`` up to torch's
    undamped first step (see :func:`ema`); under a schedule it differs.

    The state holds the atom's own previous step, which is :math:`\Delta w` when this atom is
    the last link of the chain.

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule (own count).
      momentum: :math:`\mu \in [0, 1)`; number, array or schedule.
      nesterov: reformulated Nesterov step.
      state_dtype: dtype of :math:`\Delta w` (default float32).
    """
    return _lr_inside("damped_momentum", learning_rate, momentum, nesterov, state_dtype)


# --------------------------------------------------------------------------------------------
# True-lookahead Nesterov
# --------------------------------------------------------------------------------------------


def scale_by_nesterov_lookahead(
    learning_rate: base.ScalarOrSchedule,
    momentum: base.ScalarOrSchedule = 0.9,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Nesterov momentum with the gradient taken at the lookahead point (algorithm 8.3).

    The textbook method keeps :math:`(\theta_t, v_t)` and evaluates the gradient at the
    interim point :math:`\tilde\theta_t = \theta_t + \mu_t v_t`:

    .. math::
        g_t = \nabla f(\theta_t + \mu_t v_t), \quad
        v_{t+1} = \mu_t v_t - \eta_t g_t, \quad
        \theta_{t+1} = \theta_t + v_{t+1}.

    To need only **one gradient per step in an ordinary training loop**, the parameters the
    loop holds are the lookahead point :math:`\phi_t = \theta_t + \mu_t v_t` itself, so the
    gradient the loop computes at its params *is* :math:`g_t`. This atom maps
    :math:`\phi_t \to \phi_{t+1}`:

    .. math::
        \Delta\phi_t = (1 + \mu_{t+1})\, v_{t+1} - \mu_t\, v_t .

    Since :math:`v_0 = 0`, :math:`\phi_0 = \theta_0`: initialise with the usual params. Recover
    :math:`\theta_t = \phi_t - \mu_t v_t` with :func:`nesterov_base_params` (evaluate or ship
    :math:`\theta`, not :math:`\phi`, if you want the textbook iterate).

    For constant :math:`\eta, \mu` the :math:`\phi` sequence equals the iterates of the
    reformulated Nesterov step (``optax.sgd(nesterov=True)``, :func:`trace` with
    ``nesterov=True``); with schedules it does not, and this form is the one that follows the
    textbook. Produces the final update (no learning-rate atom after it).

    Args:
      learning_rate: :math:`\eta \ge 0`; number, array or schedule (own count).
      momentum: :math:`\mu \in [0, 1)`; number, array or schedule (:math:`\mu_{t+1}` is the
        schedule at the next count).
      state_dtype: dtype of :math:`v` (default float32).

    References:
      Nesterov, `A method for solving the convex programming problem with convergence rate
      O(1/k^2)`, 1983. Sutskever et al., 2013, eq. (3)-(4). Goodfellow, Bengio & Courville,
      *Deep Learning*, algorithm 8.3, 2016.
    """
    owner = "scale_by_nesterov_lookahead"
    learning_rate = _lr(learning_rate, owner)
    momentum = _momentum(momentum, "momentum", owner)
    dtype = base.state_dtype_of(state_dtype, owner)

    def init_fn(params):
        return NesterovLookaheadState(
            count=base.zero_count(),
            velocity=base.zeros_like(params, dtype),
            momentum=jnp.zeros([], base.compute_dtype(dtype)),
        )

    def update_fn(updates, state, params=None):
        del params
        base.check_update(owner, state, NesterovLookaheadState, updates, "velocity")
        cdt = base.compute_dtype(dtype)
        lr = base.resolve(learning_rate, state.count, cdt)
        mu = base.resolve(momentum, state.count, cdt)
        count = base.safe_increment(state.count)
        mu_next = base.resolve(momentum, count, cdt)

        def leaf(g, v):
            cdt = base.compute_dtype(v.dtype)
            vc = v.astype(cdt)
            v_new = mu * vc - lr * g.astype(cdt)
            return ((1.0 + mu_next) * v_new - mu * vc).astype(g.dtype), v_new.astype(v.dtype)

        updates, new = base.map_leaves(leaf, updates, state.velocity)
        return updates, NesterovLookaheadState(count, new, mu_next)

    return base.GradientTransformation(init_fn, update_fn)


#: The inside forms as (state, c(lr, mu), scale) of :func:`_accumulate`. heavy ball keeps
#: u = -v and negates its output: the same bits as sutskever (IEEE negation is exact).
_INSIDE = {
    "heavy_ball_momentum": (HeavyBallState, lambda lr, mu: lr, -1.0),
    "sutskever_momentum": (SutskeverState, lambda lr, mu: -lr, None),
    "damped_momentum": (DampedMomentumState, lambda lr, mu: -(lr * (1.0 - mu)), None),
}


def nesterov_base_params(params: base.Params, opt_state: base.OptState) -> base.Params:
    r"""The textbook iterate :math:`\theta_t = \phi_t - \mu_t v_t` of lookahead Nesterov.

    Args:
      params: the parameters the training loop holds (the lookahead point :math:`\phi_t`).
      opt_state: the state of an optimizer containing exactly one
        :func:`scale_by_nesterov_lookahead` (anywhere inside a chain).

    Returns:
      :math:`\theta_t` in each parameter's dtype.

    Raises:
      ValueError: no (or more than one) lookahead state is found in ``opt_state``.
      TreeMismatchError: ``params`` does not match the state's tree.
    """
    states = base.find_states(opt_state, NesterovLookaheadState)
    if len(states) != 1:
        raise ValueError(
            "nesterov_base_params: opt_state must contain exactly one "
            f"NesterovLookaheadState, found {len(states)}"
        )
    (state,) = states
    base.check_tree_match(state.velocity, params, "state", "params", owner="nesterov_base_params")

    def leaf(p, v):
        cdt = base.compute_dtype(p.dtype, v.dtype)
        return (p.astype(cdt) - state.momentum * v.astype(cdt)).astype(p.dtype)

    return jax.tree.map(leaf, params, state.velocity)
