"""Search spaces: grid axes, random distributions, and the split into traced and static axes.

A *space* maps each hyperparameter name (the optimizer factory's keyword) to an axis:

* a list, tuple or 1-D numpy array of values (a grid axis; also a categorical distribution when
  sampling at random),
* :func:`loguniform` / :func:`uniform` -- a continuous range, turned into ``n`` grid points
  (log-spaced / evenly spaced) or sampled,
* :func:`choice` -- explicit values, with a ``traced=`` override,
* a single scalar (a fixed value).

An axis is **traced** (vmapped: one compiled program for all its values) when its values are
floats, or when it is a continuous range; it is **static** (one compiled program per distinct
value) when its values are strings, booleans, ``None``, callables or Python ints -- ints are
often shapes or memory sizes. ``choice([100, 200], traced=True)`` traces an integer axis whose
consumer accepts traced values (schedule step counts in gradlab).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Axis",
    "Choice",
    "LogUniform",
    "Uniform",
    "choice",
    "loguniform",
    "uniform",
    "as_axis",
    "grid",
    "sample",
    "settings_from",
]


class Axis:
    """One hyperparameter's range of values."""

    traced: bool

    def grid(self) -> list[Any]:
        """The values this axis contributes to a grid search."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        """``n`` independent draws (random search)."""
        raise NotImplementedError


def _check_n(n: Any, owner: str) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(
            f"{owner}: n must be a positive int (the number of grid points), got {n!r}"
        )
    return int(n)


def _check_range(low: Any, high: Any, owner: str, positive: bool) -> tuple[float, float]:
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{owner}: {name} must be a real number, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{owner}: {name} must be finite, got {v!r}")
        if positive and not v > 0:
            raise ValueError(f"{owner}: {name} must be > 0 (a log scale), got {v!r}")
    if not float(low) <= float(high):
        raise ValueError(f"{owner}: low must be <= high, got low={low!r} > high={high!r}")
    return float(low), float(high)


class _Range(Axis):
    """A continuous range ``[low, high]`` (log-scaled when ``_log``)."""

    traced = True
    _kind = "uniform"
    _log = False

    def __init__(self, low: float, high: float, n: int | None = None):
        self.low, self.high = _check_range(low, high, self._kind, positive=self._log)
        self.n = _check_n(n, self._kind)

    def grid(self) -> list[float]:
        if self.n is None:
            raise ValueError(
                f"{self._kind}(low, high) without n has no grid points: give n, or sample at "
                "random with sweep(..., samples=K)"
            )
        points = np.geomspace if self._log else np.linspace
        return [float(v) for v in points(self.low, self.high, self.n)]

    def sample(self, rng: np.random.Generator, n: int) -> list[float]:
        if self._log:
            draws = np.exp(rng.uniform(np.log(self.low), np.log(self.high), n))
            # exp(log(x)) need not round-trip: keep the draws inside [low, high]
            return [float(v) for v in np.clip(draws, self.low, self.high)]
        return [float(v) for v in rng.uniform(self.low, self.high, size=n)]

    def __repr__(self) -> str:
        return f"{self._kind}({self.low!r}, {self.high!r}, {self.n!r})"


class LogUniform(_Range):
    """Log-uniform range ``[low, high]``: ``n`` log-spaced grid points, or log-uniform draws."""

    _kind = "loguniform"
    _log = True


class Uniform(_Range):
    """Uniform range ``[low, high]``: ``n`` evenly spaced grid points, or uniform draws."""


def _is_float(v: Any) -> bool:
    return isinstance(v, (float, np.floating))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (so values print, hash and serialise plainly)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


class Choice(Axis):
    """Explicit values (a grid axis, or a uniform categorical draw when sampling)."""

    def __init__(self, values: Sequence[Any], *, traced: bool | None = None):
        if isinstance(values, np.ndarray):
            if values.ndim != 1:
                raise ValueError(f"choice: a numpy axis must be 1-D, got shape {values.shape}")
            values = values.tolist()
        values = [_plain(v) for v in values]
        if not values:
            raise ValueError("choice: an axis needs at least one value")
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
        if traced is None:
            traced = all(_is_float(v) for v in values)
        elif traced and not numeric:
            raise TypeError(
                f"choice: only numbers can be traced (vmapped), got {values!r}; leave traced "
                "unset and the values become static (one compiled program each)"
            )
        self.values = values
        self.traced = bool(traced)

    def grid(self) -> list[Any]:
        return list(self.values)

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        idx = rng.integers(0, len(self.values), size=n)
        return [self.values[i] for i in idx]

    def __repr__(self) -> str:
        return f"choice({self.values!r}, traced={self.traced})"


def loguniform(low: float, high: float, n: int | None = None) -> LogUniform:
    """A log-uniform range: ``n`` points ``low * (high/low)**(k/(n-1))`` in a grid.

    Args:
      low: smallest value, ``> 0``.
      high: largest value, ``>= low``.
      n: number of grid points (needed for a grid search; ignored by random search).
    """
    return LogUniform(low, high, n)


def uniform(low: float, high: float, n: int | None = None) -> Uniform:
    """A uniform range: ``n`` evenly spaced points from ``low`` to ``high`` in a grid.

    Args:
      low: smallest value.
      high: largest value, ``>= low``.
      n: number of grid points (needed for a grid search; ignored by random search).
    """
    return Uniform(low, high, n)


def choice(values: Sequence[Any], *, traced: bool | None = None) -> Choice:
    """Explicit values of one hyperparameter.

    Args:
      values: the values. Floats are traced (vmapped); anything else is static.
      traced: override. ``True`` traces a numeric axis of ints (a schedule's step count);
        ``False`` makes a float axis static (one compilation per value) for consumers that
        need concrete numbers.
    """
    return Choice(values, traced=traced)


def as_axis(name: str, spec: Any) -> Axis:
    """Normalise one entry of a space to an :class:`Axis`."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"space keys must be Python identifiers (keyword names), got {name!r}")
    if isinstance(spec, Axis):
        return spec
    if isinstance(spec, (list, tuple, np.ndarray)):
        return Choice(spec)
    return Choice([spec])


def _normalise(space: Mapping[str, Any]) -> dict[str, Axis]:
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict name -> axis, got {type(space).__name__}")
    return {name: as_axis(name, spec) for name, spec in space.items()}


def grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' grid values (the first axis varies slowest)."""
    axes = _normalise(space)
    names = list(axes)
    values = [axes[n].grid() for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def sample(space: Mapping[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` settings drawn independently from each axis (random search)."""
    n = _check_n(n, "sample")
    axes = _normalise(space)
    rng = np.random.default_rng(seed)
    columns = {name: axis.sample(rng, n) for name, axis in axes.items()}
    return [{name: columns[name][i] for name in axes} for i in range(n)]


def traced_names(space: Mapping[str, Any] | None, settings: list[dict[str, Any]]) -> list[str]:
    """Names of the traced (vmapped) hyperparameters.

    With an explicit list of settings (no space), a name is traced when every value is a float.
    """
    if space is not None and isinstance(space, Mapping):
        axes = _normalise(space)
        return [n for n, a in axes.items() if a.traced]
    names = list(settings[0]) if settings else []
    return [n for n in names if all(_is_float(s[n]) for s in settings)]


def settings_from(
    space: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    *,
    samples: int | None = None,
    sample_seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The list of settings a sweep runs and the names of its traced hyperparameters.

    Args:
      space: a dict name -> axis (grid, or random search when ``samples`` is given), or an
        explicit list of settings (dicts with the same keys), or ``None`` (one empty setting).
      samples: number of random settings instead of the full grid.
      sample_seed: seed of the random search.
    """
    if space is None:
        return [{}], []
    if isinstance(space, Mapping):
        settings = sample(space, samples, sample_seed) if samples is not None else grid(space)
        return settings, traced_names(space, settings)
    if samples is not None:
        raise ValueError("samples= needs a space dict of axes, not a list of settings")
    settings = [dict(s) for s in space]
    if not settings:
        raise ValueError("space is an empty list of settings")
    keys = set(settings[0])
    for s in settings:
        if set(s) != keys:
            raise ValueError(f"every setting needs the same keys: {sorted(keys)} vs {sorted(s)}")
        for k in s:
            as_axis(k, s[k])
            s[k] = _plain(s[k])
    return settings, traced_names(None, settings)
