r"""RMSProp: rescale updates by the root of an exponential moving average of squared gradients.

This module also holds the small numeric helpers shared by the adaptive per-parameter atoms
(:mod:`~gradlab.transforms.adagrad`, :mod:`~gradlab.transforms.adadelta`,
:mod:`~gradlab.transforms.adam`): the compute-dtype policy (hyperparameters and accumulators in
float32 or a chosen ``state_dtype``, arithmetic in at least float32, updates returned in the
gradient's dtype), complex-aware squares, and the structural checks every ``update`` runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base

__all__ = [
    "ScaleByRmsState",
    "ScaleByStddevState",
    "scale_by_rms",
    "scale_by_stddev",
]


# --------------------------------------------------------------------------------------------
# Shared helpers for the adaptive atoms (not part of the public API)
# --------------------------------------------------------------------------------------------


def check_bool(value: Any, name: str, owner: str) -> bool:
    """A static boolean switch: ``TypeError`` for anything but ``True``/``False``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool (it is static), got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...], owner: str) -> str:
    """A static variant name: ``TypeError`` if not a string, ``ValueError`` if unknown."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value


def check_state_dtype(state_dtype: Any, owner: str, name: str = "state_dtype") -> Any:
    """Normalise a ``state_dtype`` argument: ``None`` = float32; must be a floating dtype."""
    if state_dtype is None:
        return jnp.dtype(base.DEFAULT_STATE_DTYPE)
    try:
        dt = jnp.dtype(state_dtype)
    except TypeError as e:
        raise TypeError(f"{owner}: {name} must be a floating dtype, got {state_dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{owner}: {name} must be a floating dtype, got {dt}")
    return dt


def compute_dtype(state_dtype: Any) -> Any:
    """Arithmetic dtype: the state dtype promoted to at least float32 (bf16/f16 state -> f32)."""
    return jnp.promote_types(state_dtype, jnp.float32)


def to_dtype(x: jax.Array, dtype: Any) -> jax.Array:
    """Cast a leaf to ``dtype``, keeping complex leaves complex (no-op when it already matches)."""
    if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
        dtype = jnp.result_type(dtype, jnp.complex64)
    return x if x.dtype == dtype else x.astype(dtype)


def abs_sq(x: jax.Array) -> jax.Array:
    r"""$|x|^2$, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2
    return x * x


def zeros(params: Any, dtype: Any, *, real: bool = False, fill: Any = 0.0) -> Any:
    """Accumulators shaped like ``params`` in ``dtype`` filled with ``fill`` (may be traced).

    ``real=True`` keeps complex leaves real (second moments of complex gradients are real).
    """

    def leaf(p):
        p = jnp.asarray(p)
        dt = dtype
        if jnp.iscomplexobj(p) and not real:
            dt = jnp.result_type(dt, jnp.complex64)
        return jnp.full(p.shape, fill, dt)

    return jax.tree.map(leaf, params)


def check_updates(updates: Any, reference: Any, owner: str) -> None:
    """Structure, shapes and dtypes of incoming gradients (static; free under ``jit``).

    Raises:
      base.TreeMismatchError: ``updates`` does not match the tree ``init`` saw (names the path).
      TypeError: a gradient leaf is not floating point (e.g. an integer leaf), naming its path.
    """
    base.check_tree_match(reference, updates, "params (as given to init)", "updates", owner=owner)
    for path, g in jax.tree_util.tree_flatten_with_path(updates)[0]:
        if not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
            raise TypeError(
                f"{owner}: updates{jax.tree_util.keystr(tuple(path))} has dtype "
                f"{jnp.result_type(g)}; gradients must be floating point or complex"
            )


def tree_unzip(updates: Any, tuples: Any, n: int) -> tuple:
    """Split a tree of ``n``-tuples (from a per-leaf ``jax.tree.map``) into ``n`` trees."""
    return jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0,) * n), tuples)


#: Smallest normal float32: a floor for denominators, so that 0 / 0 becomes 0 (not NaN).
TINY = float(np.finfo(np.float32).tiny)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, else ``num`` (so ``0 / 0`` is 0 when ``eps = 0``)."""
    return num / jnp.where(den > 0, den, jnp.ones_like(den))


def resolve_decay(value: Any, count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    r"""A decay rate $\rho$ and its complement $1-\rho$ at ``count``, as ``dtype`` scalars.

    For a Python number the complement is computed in double precision before rounding
    (``1 - 0.999`` is then exact to float32 precision, unlike ``1 - float32(0.999)``).
    """
    if isinstance(value, float):
        return jnp.asarray(value, dtype), jnp.asarray(1.0 - value, dtype)
    v = base.resolve(value, count, dtype)
    return v, 1 - v


def debias_factor(decay: jax.Array, count: jax.Array) -> jax.Array:
    r"""$1 - \beta^t$ in the (float32 or wider) dtype of ``decay`` (optax #328)."""
    return 1 - decay ** count.astype(decay.dtype)


# --------------------------------------------------------------------------------------------
# RMSProp
# --------------------------------------------------------------------------------------------


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms` (non-centered)."""

    count: jax.Array  # shape=(), dtype=jnp.int32: number of updates taken so far.
    nu: base.Updates  # EMA of squared gradients, in state_dtype.


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_rms` with ``centered=True`` (and of :func:`scale_by_stddev`)."""

    count: jax.Array  # shape=(), dtype=jnp.int32.
    mu: base.Updates  # EMA of gradients.
    nu: base.Updates  # EMA of squared gradients.


def scale_by_rms(
    decay: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-8,
    initial_scale: base.ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    init_with_first_gradient: bool = False,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Divide gradients by the root of an EMA of their squares (Tieleman & Hinton's RMSProp).

    .. math::

        \nu_t = \rho\,\nu_{t-1} + (1-\rho)\,g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{\hat\nu_t + \epsilon}} \;\;(\texttt{eps\_in\_sqrt}) \quad\text{or}
        \quad u_t = \frac{g_t}{\sqrt{\hat\nu_t} + \epsilon}

    with $\nu_0$ = ``initial_scale``, $\hat\nu_t = \nu_t / (1-\rho^t)$ when ``bias_correction``
    (else $\hat\nu_t = \nu_t$). With ``centered=True`` the variance is used instead of the raw
    second moment (Graves 2013): $\mu_t = \rho\mu_{t-1} + (1-\rho) g_t$ and $\nu_t$ is replaced by
    $\max(\nu_t - \mu_t^2, 0)$ (the clamp guards against rounding making it negative).

    ``init_with_first_gradient=True`` starts the average at the first squared gradient,
    $\nu_1 = g_1^2$ (the "$G(0) = (\nabla E(w_0))^2$" variant of the textbook), instead of
    $\nu_1 = \rho\,\nu_0 + (1-\rho) g_1^2$; ``initial_scale`` is then unused. It is not
    defined for ``centered=True`` (the first variance would be exactly 0).

    Defaults match ``optax.scale_by_rms`` (``eps`` inside the square root, zero initial
    scale, no bias correction). Arithmetic is done in float32 (or ``state_dtype`` if wider), so a
    zero gradient in float16 gives a zero update, never NaN.

    Args:
      decay: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      initial_scale: $\nu_0 \ge 0$ (evaluated at count 0 if a schedule).
      eps_in_sqrt: put $\epsilon$ inside (optax, keras) or outside (torch) the square root.
      bias_correction: divide $\nu_t$ (and $\mu_t$) by $1-\rho^t$.
      centered: use the centered second moment (variance).
      init_with_first_gradient: start the average at $g_1^2$.
      state_dtype: dtype of the accumulators (float32 by default, whatever the params).

    Returns:
      A ``GradientTransformation`` whose state is :class:`ScaleByRmsState` (or
      :class:`ScaleByStddevState` when ``centered``).

    References:
      Tieleman & Hinton, *Lecture 6.5 — RMSProp*, COURSERA: Neural Networks for Machine
      Learning, 2012. Graves, *Generating Sequences With Recurrent Neural Networks*, 2013.
    """
    owner = "scale_by_rms"
    decay = base.hyperparameter(decay, "decay", base.UNIT_INTERVAL_OPEN_RIGHT, owner=owner)
    eps = base.hyperparameter(eps, "eps", base.NONNEGATIVE, owner=owner)
    initial_scale = base.hyperparameter(
        initial_scale, "initial_scale", base.NONNEGATIVE, owner=owner
    )
    eps_in_sqrt = check_bool(eps_in_sqrt, "eps_in_sqrt", owner)
    use_bc = check_bool(bias_correction, "bias_correction", owner)
    centered = check_bool(centered, "centered", owner)
    first_init = check_bool(init_with_first_gradient, "init_with_first_gradient", owner)
    if centered and first_init:
        raise ValueError(f"{owner}: init_with_first_gradient is not defined for centered=True")
    sdt = check_state_dtype(state_dtype, owner)
    cdt = compute_dtype(sdt)
    State = ScaleByStddevState if centered else ScaleByRmsState

    def init_fn(params):
        count = jnp.zeros([], jnp.int32)
        nu0 = base.resolve(initial_scale, count, cdt)
        nu = zeros(params, sdt, real=True, fill=nu0)
        if centered:
            return ScaleByStddevState(count=count, mu=zeros(params, sdt), nu=nu)
        return ScaleByRmsState(count=count, nu=nu)

    def update_fn(updates, state, params=None):
        del params
        base.check_state(state, State, owner)
        check_updates(updates, state.nu, owner)
        rho, one_m_rho = resolve_decay(decay, state.count, cdt)
        e = base.resolve(eps, state.count, cdt)
        count_inc = base.safe_increment(state.count)
        bc = debias_factor(rho, count_inc) if use_bc else None
        first = state.count == 0

        def leaf(g, nu, mu=None):
            gc = to_dtype(g, cdt)
            g2 = abs_sq(gc)
            nu = one_m_rho * g2 + rho * to_dtype(nu, cdt)
            if first_init:
                nu = jnp.where(first, g2, nu)
            v = nu if bc is None else nu / bc
            if centered:
                mu = one_m_rho * gc + rho * to_dtype(mu, cdt)
                m = mu if bc is None else mu / bc
                v = jnp.maximum(v - abs_sq(m), 0)
            if eps_in_sqrt:
                u = gc * jax.lax.rsqrt(jnp.maximum(v + e, TINY))
            else:
                u = safe_divide(gc, jnp.sqrt(v) + e)
            if centered:
                return u.astype(g.dtype), nu.astype(sdt), to_dtype(mu, sdt)
            return u.astype(g.dtype), nu.astype(sdt)

        if centered:
            res = jax.tree.map(leaf, updates, state.nu, state.mu)
            out, nu, mu = tree_unzip(updates, res, 3)
            new_state = ScaleByStddevState(count=count_inc, mu=mu, nu=nu)
        else:
            out, nu = tree_unzip(updates, jax.tree.map(leaf, updates, state.nu), 2)
            new_state = ScaleByRmsState(count=count_inc, nu=nu)
        return out, new_state

    return base.GradientTransformation(init_fn, update_fn)


def scale_by_stddev(
    decay: base.ScalarOrSchedule = 0.9,
    eps: base.ScalarOrSchedule = 1e-8,
    initial_scale: base.ScalarOrSchedule = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    state_dtype: Any = None,
) -> base.GradientTransformation:
    r"""Centered RMSProp atom: :func:`scale_by_rms` with ``centered=True`` (optax's name).

    .. math:: u_t = \frac{g_t}{\sqrt{\max(\nu_t - \mu_t^2, 0) + \epsilon}}

    Args:
      decay: $\rho \in [0, 1)$.
      eps: $\epsilon \ge 0$.
      initial_scale: $\nu_0 \ge 0$.
      eps_in_sqrt: $\epsilon$ inside (default) or outside the square root.
      bias_correction: divide both moments by $1-\rho^t$.
      state_dtype: accumulator dtype (float32 by default).

    References:
      Graves, *Generating Sequences With Recurrent Neural Networks*, 2013 (eq. 38–45).
    """
    return scale_by_rms(
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction,
        centered=True,
        state_dtype=state_dtype,
    )
