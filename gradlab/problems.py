"""Classic test functions for optimizers, with their known minimisers.

Each function is a :class:`Problem`: a small frozen record with a JAX-traceable ``value(x)`` (a
length-``dim`` array in, a scalar out; works under ``jit``, ``grad`` and ``vmap``), the known
minimisers, the minimum value, a plotting window, the classic starting point and a name. They are
the functions of the well-known "optimizer race" animations (Beale, a long valley, a saddle
point) and the standard ill-conditioned and multimodal benchmarks.

>>> from gradlab import problems
>>> p = problems.get("beale")
>>> float(p.value(p.minimizers[0]))
0.0

The registry :data:`PROBLEMS` maps names to the default instances; the factories
(:func:`rosenbrock`, :func:`quadratic`, ...) build variants (other dimensions, ``a``/``b``, a
condition number ``kappa``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Problem",
    "rosenbrock",
    "beale",
    "long_valley",
    "saddle",
    "quadratic",
    "himmelblau",
    "PROBLEMS",
    "get",
    "names",
]


def _arr(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def _rates(
    *, sgd: float, momentum: float, rmsprop: float, adam: float, rprop: float, adagrad: float = 0.5
) -> dict[str, float]:
    """Suggested race learning rates: Nesterov uses momentum's, AdaDelta its unit rate."""
    return dict(
        sgd=sgd,
        momentum=momentum,
        nesterov=momentum,
        adagrad=adagrad,
        rmsprop=rmsprop,
        adadelta=1.0,
        adam=adam,
        rprop=rprop,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A test function with its known solution and plotting metadata.

    Attributes:
      name: registry name (``"beale"``).
      fn: the function, ``x -> scalar`` (JAX-traceable).
      dim: the length of ``x``.
      minimizers: ``(k, dim)`` array of the known global minimisers (``k = 0`` when the function
        is unbounded below, as for the saddle).
      minimum: the minimum value (``-inf`` when unbounded below).
      start: the classic starting point, shape ``(dim,)``.
      xlim, ylim: a plotting window for the first two coordinates.
      stationary_points: ``(m, dim)`` points where the gradient vanishes that are not minimisers
        (the saddle's origin); used by tests and plots.
      log_levels: whether contour plots should use geometrically spaced levels.
      formula: the formula, in LaTeX, for docs and plot titles.
      learning_rates: suggested learning rates per optimizer name for the race demos (default:
        generic ones).

    Problems compare by identity (``eq=False``) and are hashable, so they can be passed as
    static arguments to ``jax.jit``.
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    minimizers: np.ndarray
    start: np.ndarray
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    dim: int = 2
    minimum: float = 0.0
    stationary_points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    log_levels: bool = True
    formula: str = ""
    learning_rates: dict[str, float] = dataclasses.field(
        default_factory=lambda: _rates(sgd=1e-2, momentum=1e-2, rmsprop=1e-2, adam=0.05, rprop=1e-2)
    )

    def value(self, x: jax.Array) -> jax.Array:
        """The function value at ``x`` (shape ``(dim,)``), as a scalar."""
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(f"{self.name}: x must have shape ({self.dim},), got {x.shape}")
        return self.fn(x)

    __call__ = value

    def distance_to_minimizer(self, x: np.ndarray) -> float:
        """Euclidean distance from ``x`` to the nearest known minimiser (``inf`` if none)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.minimizers.shape[0] == 0:
            return math.inf
        if not np.all(np.isfinite(x)):
            return math.nan
        return float(np.min(np.linalg.norm(self.minimizers - x, axis=1)))


# --------------------------------------------------------------------------------------------
# Rosenbrock
# --------------------------------------------------------------------------------------------


def rosenbrock(dim: int = 2, a: float = 1.0, b: float = 100.0) -> Problem:
    r"""The Rosenbrock function: a curved, flat-floored valley.

    .. math::
       f(x) = \sum_{i=1}^{n-1} b\,(x_{i+1} - x_i^2)^2 + (a - x_i)^2

    For ``a = 1, b = 100`` this is ``scipy.optimize.rosen``. The global minimiser is
    ``(a, a^2)`` in two dimensions and ``(1, ..., 1)`` for ``a = 1`` in any dimension
    (``(0, ..., 0)`` for ``a = 0``); for other ``a`` with ``dim > 2`` the minimiser has no closed
    form and the factory raises.

    Args:
      dim: the dimension ``n >= 2``.
      a, b: the shape parameters (``b > 0``).

    References:
      Rosenbrock, "An automatic method for finding the greatest or least value of a function",
      The Computer Journal 3(3), 1960.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"rosenbrock: dim must be an int >= 2, got {dim!r}")
    a, b = float(a), float(b)
    if not (b > 0 and math.isfinite(b) and math.isfinite(a)):
        raise ValueError(f"rosenbrock: need finite a and b > 0, got a={a!r}, b={b!r}")
    if dim == 2:
        xmin = _arr([[a, a * a]])
    elif a in (0.0, 1.0):
        xmin = np.full((1, dim), a)
    else:
        raise ValueError(
            f"rosenbrock: the minimiser is known in closed form only for dim=2 or a in (0, 1); "
            f"got dim={dim}, a={a}"
        )

    def fn(x):
        return jnp.sum(b * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)

    start = np.full(dim, -1.2)
    start[1::2] = 1.0
    name = "rosenbrock" if (dim, a, b) == (2, 1.0, 100.0) else f"rosenbrock{dim}d_a{a:g}_b{b:g}"
    return Problem(
        name=name,
        fn=fn,
        dim=dim,
        minimizers=xmin,
        start=start,
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        formula=r"\sum_i b(x_{i+1}-x_i^2)^2 + (a-x_i)^2",
        learning_rates=_rates(sgd=1e-3, momentum=1e-3, rmsprop=1e-2, adam=0.05, rprop=1e-3),
    )


# --------------------------------------------------------------------------------------------
# Beale
# --------------------------------------------------------------------------------------------


def beale() -> Problem:
    r"""Beale's function: flat plateaus and sharp ridges, one minimum at ``(3, 0.5)``.

    .. math::
       f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2

    References:
      Beale, "On an iterative method for finding a local minimum of a function of more than
      one variable", Princeton University technical report 25, 1958.
    """

    def fn(v):
        x, y = v[0], v[1]
        return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2

    return Problem(
        name="beale",
        fn=fn,
        minimizers=_arr([[3.0, 0.5]]),
        start=_arr([1.0, 1.4]),
        xlim=(-4.5, 4.5),
        ylim=(-4.5, 4.5),
        formula=r"(1.5-x+xy)^2+(2.25-x+xy^2)^2+(2.625-x+xy^3)^2",
        learning_rates=_rates(sgd=5e-3, momentum=5e-3, rmsprop=0.01, adam=0.05, rprop=5e-3),
    )


# --------------------------------------------------------------------------------------------
# Long narrow valley
# --------------------------------------------------------------------------------------------


def long_valley(slope: float = 0.5, wall: float = 10.0) -> Problem:
    r"""A long, narrow, gently sloping valley with steep walls.

    .. math::
       f(x, y) = s \log\cosh(x) + w\, y^2

    Far from the origin the floor descends with a constant slope ``s`` (the gradient along the
    valley is ``s tanh(x)``), while the walls have curvature ``2w``: plain gradient descent must
    keep its step below ``1/w`` to avoid bouncing between the walls and so crawls along the floor,
    which is what momentum and per-coordinate scaling fix. Minimum 0 at the origin.

    Args:
      slope: the floor's slope ``s > 0``.
      wall: the walls' steepness ``w > 0``.
    """
    s, w = float(slope), float(wall)
    if not (s > 0 and w > 0 and math.isfinite(s) and math.isfinite(w)):
        raise ValueError(f"long_valley: slope and wall must be finite and > 0, got {s}, {w}")

    def fn(v):
        x, y = v[0], v[1]
        # log cosh(x) = |x| + log1p(exp(-2|x|)) - log 2, stable for large |x|.
        ax = jnp.abs(x)
        logcosh = ax + jnp.log1p(jnp.exp(-2.0 * ax)) - jnp.log(2.0)
        return s * logcosh + w * y**2

    return Problem(
        name="long_valley" if (s, w) == (0.5, 10.0) else f"long_valley_s{s:g}_w{w:g}",
        fn=fn,
        minimizers=_arr([[0.0, 0.0]]),
        start=_arr([-4.5, 0.8]),
        xlim=(-5.0, 1.5),
        ylim=(-1.2, 1.2),
        formula=r"s\log\cosh x + w y^2",
        learning_rates=_rates(sgd=0.09, momentum=0.02, rmsprop=0.02, adam=0.1, rprop=0.02),
    )


# --------------------------------------------------------------------------------------------
# Saddle
# --------------------------------------------------------------------------------------------


def saddle() -> Problem:
    r"""The saddle ``f(x, y) = x^2 - y^2``: unbounded below, one stationary point at the origin.

    Starting on the ridge ``y = 0`` (up to a tiny perturbation) gradient descent converges
    towards the saddle and escapes only as fast as the perturbation grows; methods with
    per-coordinate scaling leave it quickly. There is no minimiser (``minimizers`` is empty,
    ``minimum`` is ``-inf``); the origin is listed in ``stationary_points``.
    """

    def fn(v):
        return v[0] ** 2 - v[1] ** 2

    return Problem(
        name="saddle",
        fn=fn,
        minimizers=np.zeros((0, 2)),
        minimum=-math.inf,
        start=_arr([1.0, 1e-3]),
        xlim=(-1.5, 1.5),
        ylim=(-1.5, 1.5),
        stationary_points=_arr([[0.0, 0.0]]),
        log_levels=False,
        formula=r"x^2 - y^2",
        learning_rates=_rates(
            sgd=0.05, momentum=0.02, rmsprop=0.01, adam=0.05, rprop=0.01, adagrad=0.2
        ),
    )


# --------------------------------------------------------------------------------------------
# Oblong quadratic
# --------------------------------------------------------------------------------------------


def quadratic(kappa: float = 10.0, angle: float = 0.0) -> Problem:
    r"""An oblong quadratic bowl with condition number ``kappa``.

    .. math::
       f(x) = \tfrac12 x^\top R^\top \operatorname{diag}(1, \kappa) R\, x

    where ``R`` rotates by ``angle`` radians. The Hessian has eigenvalues ``1`` and ``kappa``:
    gradient descent converges for ``0 < eta < 2/kappa`` with a rate governed by
    ``(kappa - 1)/(kappa + 1)`` at the best fixed step.

    Args:
      kappa: the condition number ``>= 1``.
      angle: rotation of the principal axes, in radians.
    """
    k, th = float(kappa), float(angle)
    if not (k >= 1.0 and math.isfinite(k) and math.isfinite(th)):
        raise ValueError(f"quadratic: kappa must be finite and >= 1, got {kappa!r}")
    c, s = math.cos(th), math.sin(th)

    def fn(v):
        u0 = c * v[0] + s * v[1]
        u1 = -s * v[0] + c * v[1]
        return 0.5 * (u0**2 + k * u1**2)

    eta = 1.0 / k
    return Problem(
        name="quadratic" if (k, th) == (10.0, 0.0) else f"quadratic_k{k:g}_a{th:g}",
        fn=fn,
        minimizers=_arr([[0.0, 0.0]]),
        start=_arr([-2.5, 1.0]),
        xlim=(-3.0, 3.0),
        ylim=(-1.5, 1.5),
        formula=_quadratic_formula(th),
        learning_rates=_rates(
            sgd=1.8 * eta, momentum=0.5 * eta, rmsprop=0.02, adam=0.1, rprop=0.02
        ),
    )


def _quadratic_formula(angle: float) -> str:
    """The quadratic's formula in LaTeX (matplotlib mathtext too), with its rotation if any."""
    if angle == 0.0:
        return r"\frac{1}{2}(x^2 + \kappa y^2)"
    return (
        r"\frac{1}{2}(u^2 + \kappa v^2),\ u = x\cos\theta + y\sin\theta,\ "
        rf"v = y\cos\theta - x\sin\theta,\ \theta = {angle:g}"
    )


# --------------------------------------------------------------------------------------------
# Himmelblau
# --------------------------------------------------------------------------------------------

# The three irrational minimisers, solved to double precision by Newton's method.
_HIMMELBLAU_MINIMIZERS = _arr(
    [
        [3.0, 2.0],
        [-2.805118086952745, 3.131312518250573],
        [-3.779310253377747, -3.283185991286170],
        [3.584428340330492, -1.848126526964404],
    ]
)


# The other stationary points: the local maximum, then the four saddle points (Newton's method
# on the gradient, to double precision).
_HIMMELBLAU_STATIONARY = _arr(
    [
        [-0.2708445906673476, -0.9230385564799815],
        [-3.0730257507643897, -0.08135304428796751],
        [-0.12796134673068005, -1.9537149802445766],
        [0.08667750455539634, 2.884254701174776],
        [3.385154183607021, 0.07385187983774928],
    ]
)


def himmelblau() -> Problem:
    r"""Himmelblau's function: four global minima (value 0) around a local maximum.

    Its other stationary points -- the local maximum near ``(-0.2708, -0.9230)`` and four
    saddle points between the minima -- are in ``stationary_points``.

    .. math::
       f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2

    Which minimum an optimizer reaches depends on the start and the method.

    References:
      Himmelblau, "Applied Nonlinear Programming", McGraw-Hill, 1972.
    """

    def fn(v):
        x, y = v[0], v[1]
        return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2

    return Problem(
        name="himmelblau",
        fn=fn,
        minimizers=_HIMMELBLAU_MINIMIZERS.copy(),
        start=_arr([0.0, 0.0]),
        xlim=(-5.0, 5.0),
        ylim=(-5.0, 5.0),
        stationary_points=_HIMMELBLAU_STATIONARY.copy(),
        formula=r"(x^2+y-11)^2 + (x+y^2-7)^2",
        learning_rates=_rates(sgd=5e-3, momentum=2e-3, rmsprop=0.05, adam=0.1, rprop=0.05),
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

PROBLEMS: dict[str, Problem] = {
    p.name: p for p in (rosenbrock(), beale(), long_valley(), saddle(), quadratic(), himmelblau())
}


def names() -> list[str]:
    """The registered problem names."""
    return list(PROBLEMS)


def get(name: str | Problem) -> Problem:
    """The registered problem called ``name`` (a :class:`Problem` is returned unchanged).

    Raises:
      KeyError: unknown name (the message lists the known ones).
    """
    if isinstance(name, Problem):
        return name
    try:
        return PROBLEMS[name]
    except KeyError:
        raise KeyError(f"unknown problem {name!r}; known: {', '.join(PROBLEMS)}") from None
