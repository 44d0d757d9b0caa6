r"""Resilient backpropagation (Rprop) in its four textbook variants.

Each weight :math:`w_j` has its own step size :math:`\Delta_j`, adapted from the *sign* of
consecutive partial derivatives only (:math:`\Delta_j^{(0)}` = ``learning_rate``):

.. math::
    \Delta_j^{(t)} = \begin{cases}
      \min(\eta^+ \Delta_j^{(t-1)}, \Delta_{\max}) & g_j^{(t-1)} g_j^{(t)} > 0 \\
      \max(\eta^- \Delta_j^{(t-1)}, \Delta_{\min}) & g_j^{(t-1)} g_j^{(t)} < 0 \\
      \Delta_j^{(t-1)} & \text{otherwise}
    \end{cases}

and, in every variant, :math:`\Delta w_j^{(t)} = -\operatorname{sign}(g_j^{(t)})\,\Delta_j^{(t)}`
when the sign did not flip. On a sign flip (:math:`g^{(t-1)} g^{(t)} < 0`) the variants differ:

==========  ==================================================================  ============
variant     on a sign flip                                                      remembers
==========  ==================================================================  ============
``rprop+``  undo the previous step (:math:`\Delta w^{(t)} = -\Delta w^{(t-1)}`)    :math:`g := 0`
``rprop-``  step as usual (:math:`-\operatorname{sign}(g)\Delta`)                  :math:`g`
``irprop+`` undo the previous step only if the loss went up
            (:math:`E^{(t)} > E^{(t-1)}`), otherwise no step                    :math:`g := 0`
``irprop-`` no step                                                            :math:`g := 0`
==========  ==================================================================  ============

"remembers :math:`g := 0`" means the stored previous gradient is zeroed, so the next step is
taken in the "otherwise" case. Only the previous gradient's *sign* is stored (an int8), so the
sign test never underflows for tiny gradients. A NaN gradient entry gives a NaN update for that
weight but is not remembered and leaves its step size unchanged: unlike the moment-based
optimizers, Rprop's state is never poisoned by a NaN (the next finite gradient is used as usual).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradlab import base

__all__ = ["RPROP_VARIANTS", "ScaleByRpropState", "scale_by_rprop"]

RPROP_VARIANTS = ("rprop+", "rprop-", "irprop+", "irprop-")

_ETA_MINUS = base.Interval(0.0, 1.0, lower_closed=False, upper_closed=False)
_ETA_PLUS = base.Interval(1.0, None, lower_closed=False)


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`."""

    count: jax.Array  # int32 scalar: updates taken so far.
    step_sizes: base.Updates  # Delta^{(t)} used by the last update (0 before the first one).
    prev_sign: base.Updates  # int8 sign of the remembered previous gradient (0 after a flip).
    prev_value: jax.Array  # scalar loss E^{(t-1)} (iRprop+ only; +inf at start), in float32
    # or the state dtype if wider (a float64 loss is compared in float64).


def scale_by_rprop(
    learning_rate: base.ScalarOrSchedule,
    eta_minus: base.ScalarOrSchedule = 0.5,
    eta_plus: base.ScalarOrSchedule = 1.2,
    min_step_size: base.ScalarOrSchedule = 1e-6,
    max_step_size: base.ScalarOrSchedule = 50.0,
    *,
    variant: str = "irprop-",
    state_dtype: Any = None,
) -> base.GradientTransformationExtraArgs:
    r"""Rprop step sizes, in optax's sign convention (the update is *minus* the weight change).

    Returns :math:`-\Delta w^{(t)}` (i.e. :math:`\operatorname{sign}(g)\Delta` on ordinary
    steps), like ``optax.scale_by_rprop``; :func:`gradlab.optimizers.rprop.rprop` follows it
    with a sign flip. The backtracking variants assume that the emitted update is applied
    unchanged (apart from that flip), as in ``rprop``.

    Unlike ``optax.scale_by_rprop`` (which emits the *previous* step's update, see optax
    PR #1725), the first update already moves every weight with a nonzero gradient by
    ``learning_rate``.

    ``learning_rate`` is the initial step :math:`\Delta^{(0)}`; as a schedule it is evaluated at
    count 0 (Rprop adapts its own steps afterwards). The other hyperparameters are resolved at
    every step. The step-size bounds are applied only when a step size changes (the textbook
    rule), so an initial step outside :math:`[\Delta_{\min}, \Delta_{\max}]` is used as given.

    ``irprop+`` compares the loss at the current params with the previous one: call
    ``update(grads, state, params, value=loss)``. Without ``value`` it raises :class:`TypeError`
    (rather than silently degrading to ``irprop-``). The first comparison is against
    :math:`+\infty` (no sign flip can happen on the first step anyway).

    Args:
      learning_rate: initial step size :math:`\Delta^{(0)} \ge 0`.
      eta_minus: decrease factor :math:`\eta^- \in (0, 1)`.
      eta_plus: increase factor :math:`\eta^+ > 1`.
      min_step_size: :math:`\Delta_{\min} \ge 0`.
      max_step_size: :math:`\Delta_{\max} \ge \Delta_{\min}`.
      variant: ``"rprop+"``, ``"rprop-"``, ``"irprop+"`` or ``"irprop-"`` (case-insensitive;
        default ``"irprop-"``, the variant of ``torch.optim.Rprop`` and ``optax.rprop``).
      state_dtype: dtype of the step sizes (default float32).

    Raises:
      ValueError: concrete hyperparameters out of range (including
        ``min_step_size > max_step_size``) or an unknown ``variant``. A traced
        ``min_step_size > max_step_size`` makes that run's updates NaN.
      TypeError: complex parameters (the sign of a complex number is not defined here).

    References:
      Riedmiller & Braun, `A direct adaptive method for faster backpropagation learning: the
      RPROP algorithm <https://doi.org/10.1109/ICNN.1993.298623>`_, 1993.
      Igel & Hüsken, `Improving the Rprop learning algorithm
      <https://citeseerx.ist.psu.edu/document?doi=10.1.1.17.1332>`_, 2000.
    """
    owner = "scale_by_rprop"
    variant = base.check_choice(
        variant.lower() if isinstance(variant, str) else variant, "variant", RPROP_VARIANTS, owner
    )
    learning_rate = base.hyperparameter(learning_rate, "learning_rate", owner=owner)
    eta_minus = base.hyperparameter(eta_minus, "eta_minus", _ETA_MINUS, owner=owner)
    eta_plus = base.hyperparameter(eta_plus, "eta_plus", _ETA_PLUS, owner=owner)
    min_step_size = base.hyperparameter(min_step_size, "min_step_size", owner=owner)
    max_step_size = base.hyperparameter(
        max_step_size, "max_step_size", base.NONNEGATIVE_OR_INF, owner=owner
    )
    base.check_order(min_step_size, max_step_size, "min_step_size", "max_step_size", owner=owner)
    dtype = base.state_dtype_of(state_dtype, owner)
    backtrack = variant in ("rprop+", "irprop+")
    forget_on_flip = variant != "rprop-"

    def init_fn(params):
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            if jnp.iscomplexobj(leaf):
                raise TypeError(
                    f"{owner}: Rprop needs real parameters; params"
                    f"{jax.tree_util.keystr(path)} is {jnp.asarray(leaf).dtype}"
                )
        return ScaleByRpropState(
            count=base.zero_count(),
            step_sizes=base.zeros_like(params, dtype),
            prev_sign=base.zeros_like(params, jnp.int8),
            prev_value=jnp.full([], jnp.inf, base.compute_dtype(dtype)),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra):
        del params, extra
        base.check_update(owner, state, ScaleByRpropState, updates, "step_sizes")
        if variant == "irprop+" and value is None:
            raise TypeError(
                f"{owner}: variant 'irprop+' compares losses; call "
                "update(grads, state, params, value=loss)"
            )
        count = state.count
        cdt = base.compute_dtype(dtype)
        lr0, em, ep, lo, hi = (
            base.resolve(v, count, cdt)
            for v in (learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
        )
        # A poisoned (NaN) traced hyperparameter or a traced min > max poisons its own run from
        # the first step (eta+/eta- alone would only show up on the first sign test).
        lo = jnp.where((lo <= hi) & ~jnp.isnan(em + ep), lo, jnp.nan)
        if variant == "irprop+":
            new_value = jnp.asarray(value).astype(state.prev_value.dtype)
            went_up = new_value > state.prev_value
        else:
            new_value = state.prev_value
            went_up = jnp.asarray(True)

        def leaf(g, step, prev):
            cdt = base.compute_dtype(step.dtype)
            prev_step = jnp.where(count == 0, lr0, step.astype(cdt))
            s = jnp.sign(g).astype(cdt)
            sp = prev.astype(cdt)
            prod = s * sp
            new_step = jnp.where(
                prod > 0,
                jnp.minimum(prev_step * ep, hi),
                jnp.where(prod < 0, jnp.maximum(prev_step * em, lo), prev_step),
            )
            new_step = jnp.where(jnp.isnan(lo), jnp.nan, new_step)
            flip = prod < 0
            out = s * new_step
            if backtrack:  # undo the previous weight change -Delta w^{(t-1)} = sp * prev_step
                out = jnp.where(flip, jnp.where(went_up, -sp * prev_step, 0.0), out)
            elif forget_on_flip:
                out = jnp.where(flip, 0.0, out)
            # A NaN gradient's sign is not remembered: its update is NaN, the state stays finite.
            forget = (flip | jnp.isnan(s)) if forget_on_flip else jnp.isnan(s)
            remembered = jnp.where(forget, 0.0, s)
            return out.astype(g.dtype), new_step.astype(step.dtype), remembered.astype(jnp.int8)

        out, steps, signs = base.map_leaves(leaf, updates, state.step_sizes, state.prev_sign)
        return out, ScaleByRpropState(base.safe_increment(count), steps, signs, new_value)

    return base.GradientTransformationExtraArgs(init_fn, update_fn)
