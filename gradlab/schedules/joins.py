r"""Joins: run schedules one after another, or multiply a value by scales at boundaries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base
from gradlab.schedules.common import NONNEG, arg, as_count, guarded, nan_unless, real

__all__ = ["join_schedules", "piecewise_constant_schedule"]


# --------------------------------------------------------------------------------------------
# Joins
# --------------------------------------------------------------------------------------------


def _as_vector(values: Any, name: str, owner: str) -> Any:
    """A sequence/array of numbers as one 1-D array (numpy when concrete, JAX when traced)."""
    if isinstance(values, (jax.Array, np.ndarray)):
        arr = values
    elif isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            if isinstance(v, (bool, str, bytes)) or v is None:
                raise TypeError(f"{owner}: {name}[{i}] must be a number, got {v!r}")
        if all(base.is_concrete(v) for v in values):
            arr = np.asarray([np.asarray(v, np.float64) for v in values], np.float64)
            arr = arr.reshape(len(values))
        else:
            arr = jnp.stack([real(v) for v in values])
    else:
        raise TypeError(f"{owner}: {name} must be a sequence or a 1-D array, got {values!r}")
    if jnp.ndim(arr) != 1:
        raise ValueError(f"{owner}: {name} must be 1-D, got shape {jnp.shape(arr)}")
    return arr


def _check_sorted(boundaries: Any, owner: str) -> None:
    if base.is_concrete(boundaries):
        b = np.asarray(boundaries, np.float64)
        if np.any(np.diff(b) < 0):
            raise ValueError(f"{owner}: boundaries must be non-decreasing, got {b.tolist()}")


def _sorted_ok(boundaries: jax.Array) -> jax.Array:
    b = real(boundaries)
    if b.shape[0] < 2:
        return jnp.asarray(True)
    return jnp.all(b[1:] >= b[:-1])


def join_schedules(
    schedules: Sequence[base.Schedule],
    boundaries: Sequence[float | jax.Array] | jax.Array,
) -> base.Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i-1]`` on, each on its own restarted count.

    .. math::
        \eta_t = s_i(t - b_{i-1}) \quad\text{for } b_{i-1} \le t < b_i
        \qquad (b_{-1} = 0,\ b_n = \infty)

    ``boundaries`` is a sequence or a 1-D array of ``len(schedules) - 1`` non-decreasing,
    non-negative step counts; it may be traced (a sweep over when to switch). Sub-schedules
    receive float counts (float32; float64 under x64).

    Args:
      schedules: the schedules to run in order (callables ``count -> value``).
      boundaries: where to switch, :math:`b_0 \le b_1 \le \dots`, each :math:`\ge 0`.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    owner = "join_schedules"
    if callable(schedules) or not isinstance(schedules, Iterable):
        raise TypeError(
            f"{owner}: schedules must be a sequence of schedules, got "
            f"{type(schedules).__name__} (join_schedules([first, second], [boundary]))"
        )
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{owner}: schedules must not be empty")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{owner}: schedules[{i}] must be a callable count -> value")
    boundaries = _as_vector(boundaries, "boundaries", owner)
    if jnp.shape(boundaries)[0] != len(schedules) - 1:
        raise ValueError(
            f"{owner}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
            f"got {jnp.shape(boundaries)[0]}"
        )
    boundaries = arg(boundaries, "boundaries", NONNEG, owner)
    _check_sorted(boundaries, owner)

    def schedule(count):
        t = as_count(count)
        b = real(boundaries)
        value = real(schedules[0](t))
        for i, s in enumerate(schedules[1:]):
            value = jnp.where(t < b[i], value, real(s(t - b[i])))
        return nan_unless(_sorted_ok(b), value)

    return guarded(schedule, boundaries)


def piecewise_constant_schedule(
    init_value: float | jax.Array,
    boundaries_and_scales: Mapping[int, float | jax.Array] | None = None,
    *,
    boundaries: Sequence[float | jax.Array] | jax.Array | None = None,
    scales: Sequence[float | jax.Array] | jax.Array | None = None,
) -> base.Schedule:
    r"""Piecewise constant: multiply by ``scales[i]`` from step ``boundaries[i]`` on.

    .. math:: \eta_t = \eta_0 \prod_{i:\ t \ge b_i} s_i

    Give either the optax-style dict ``{boundary: scale}`` (scales may be traced) or the
    arrays ``boundaries=`` and ``scales=`` (both may be traced, in any order: the product does
    not depend on it).

    Args:
      init_value: :math:`\eta_0 \ge 0`.
      boundaries_and_scales: ``{step: scale}`` (concrete step keys).
      boundaries: 1-D steps :math:`b_i \ge 0` (keyword-only, instead of the dict).
      scales: 1-D factors :math:`s_i \ge 0`, same length as ``boundaries``.

    Returns:
      A function ``count -> value`` (float32; float64 when ``jax_enable_x64`` is on).
    """
    owner = "piecewise_constant_schedule"
    init_value = arg(init_value, "init_value", NONNEG, owner)
    if boundaries_and_scales is not None:
        if boundaries is not None or scales is not None:
            raise TypeError(f"{owner}: give boundaries_and_scales or boundaries=/scales=, not both")
        if not isinstance(boundaries_and_scales, Mapping):
            raise TypeError(
                f"{owner}: boundaries_and_scales must be a dict {{step: scale}}, got "
                f"{type(boundaries_and_scales).__name__}"
            )
        keys = sorted(boundaries_and_scales)
        scales = [
            arg(boundaries_and_scales[k], f"boundaries_and_scales[{k!r}]", NONNEG, owner)
            for k in keys
        ]
        boundaries = [arg(k, "boundaries_and_scales (a step key)", NONNEG, owner) for k in keys]
    if (boundaries is None) != (scales is None):
        raise TypeError(f"{owner}: boundaries= and scales= must be given together")
    if boundaries is None:
        boundaries, scales = np.zeros((0,)), np.zeros((0,))
    boundaries = arg(_as_vector(boundaries, "boundaries", owner), "boundaries", NONNEG, owner)
    scales = arg(_as_vector(scales, "scales", owner), "scales", NONNEG, owner)
    if jnp.shape(boundaries) != jnp.shape(scales):
        raise ValueError(
            f"{owner}: boundaries and scales must have the same length, got "
            f"{jnp.shape(boundaries)[0]} and {jnp.shape(scales)[0]}"
        )

    def schedule(count):
        t = as_count(count)[..., None]
        factors = jnp.where(t >= real(boundaries), real(scales), 1.0)
        return real(init_value) * jnp.prod(factors, axis=-1)

    return guarded(schedule, init_value, boundaries, scales)
