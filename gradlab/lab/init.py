r"""Weight initialisers with the textbook's gain table, built on ``jax.nn.initializers``.

The Xavier/Glorot rule keeps the variance of activations (forward) and of back-propagated
gradients (backward) constant across layers. For a layer with $n_\text{in}$ inputs and
$n_\text{out}$ outputs the compromise between $\sigma^2 = 1/n_\text{in}$ and
$\sigma^2 = 1/n_\text{out}$ is the harmonic mean, scaled by the activation's gain
$g$:

.. math::  \operatorname{Var}[w] = g^2 \frac{2}{n_\text{in} + n_\text{out}},
   \qquad w \sim U(-a, a),\ a = g\sqrt{6/(n_\text{in} + n_\text{out})}.

Gains (standard-deviation multipliers): linear / tanh / softsign 1, ReLU $\sqrt 2$
(so $\operatorname{Var}[w] = 4/(n_\text{in}+n_\text{out})$), logistic sigmoid 4. The He
(Kaiming) rule for ReLU layers uses the fan-in only, $\operatorname{Var}[w] = 2/n_\text{in}$.

Every factory returns a ``jax.nn.initializers.Initializer`` -- ``init(key, shape, dtype)`` -- so it
plugs into ``flax.nnx.Linear(kernel_init=...)`` and :class:`gradlab.lab.models.MLP`. Kernels are
``(n_in, n_out)`` (the Flax convention): ``in_axis=-2``, ``out_axis=-1``.

References:
  Glorot & Bengio, *Understanding the difficulty of training deep feedforward neural networks*,
  AISTATS 2010. He, Zhang, Ren & Sun, *Delving deep into rectifiers*, ICCV 2015. Saxe,
  McClelland & Ganguli, *Exact solutions to the nonlinear dynamics of learning in deep linear
  neural networks*, ICLR 2014 (orthogonal initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

__all__ = [
    "Initializer",
    "GAINS",
    "gain",
    "xavier_normal",
    "xavier_uniform",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "normal",
    "truncated_normal",
    "orthogonal",
    "constant",
    "zeros",
    "scaled",
    "get",
    "default_kernel_init",
]

Initializer = jinit.Initializer

#: Standard-deviation gain per activation (the textbook's table; ``leaky_relu`` uses slope 0.01).
GAINS: dict[str, float] = {
    "linear": 1.0,
    "identity": 1.0,
    "tanh": 1.0,
    "softsign": 1.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1.0 + 0.01**2)),
    "elu": math.sqrt(2.0),
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
    "softplus": math.sqrt(2.0),
    "sigmoid": 4.0,
    "logistic": 4.0,
}


def gain(activation: str | float) -> float:
    """The standard-deviation gain of ``activation`` (a name from :data:`GAINS` or a number).

    Raises:
      ValueError: unknown activation name, or a non-positive number.
    """
    if isinstance(activation, (int, float)) and not isinstance(activation, bool):
        if not activation > 0:
            raise ValueError(f"gain must be > 0, got {activation!r}")
        return float(activation)
    if not isinstance(activation, str) or activation not in GAINS:
        raise ValueError(
            f"unknown activation {activation!r} for the gain table; known: {sorted(GAINS)}"
        )
    return GAINS[activation]


def xavier_normal(
    activation: str | float = "linear",
    *,
    truncated: bool = False,
    in_axis: int = -2,
    out_axis: int = -1,
    dtype=jnp.float32,
) -> Initializer:
    r"""Xavier/Glorot normal: $\operatorname{Var}[w] = g^2 \cdot 2/(n_\text{in}+n_\text{out})$.

    Args:
      activation: the activation that follows the layer (sets the gain ``g``) or a gain value.
      truncated: draw from a normal truncated at two standard deviations (redrawn outside),
        rescaled so that the *sample* variance is still the target (``jax`` convention).
      in_axis, out_axis: axes of the kernel holding the fan-in and fan-out.
      dtype: default dtype of the draws.
    """
    g = gain(activation)
    dist = "truncated_normal" if truncated else "normal"
    return jinit.variance_scaling(
        g * g, "fan_avg", dist, in_axis=in_axis, out_axis=out_axis, dtype=dtype
    )


def xavier_uniform(
    activation: str | float = "linear",
    *,
    in_axis: int = -2,
    out_axis: int = -1,
    dtype=jnp.float32,
) -> Initializer:
    r"""Xavier/Glorot uniform on $(-a, a)$, $a = g\sqrt{6/(n_\text{in}+n_\text{out})}$.

    ReLU ($g = \sqrt2$) gives $a = \sqrt{12/(n_\text{in}+n_\text{out})}$; logistic
    ($g = 4$) gives $a = 4\sqrt{6/(n_\text{in}+n_\text{out})}$.
    """
    g = gain(activation)
    return jinit.variance_scaling(
        g * g, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis, dtype=dtype
    )


glorot_normal = xavier_normal
glorot_uniform = xavier_uniform


def he_normal(
    *, truncated: bool = False, in_axis: int = -2, out_axis: int = -1, dtype=jnp.float32
) -> Initializer:
    r"""He (Kaiming) normal for ReLU layers: $w \sim N(0, 2/n_\text{in})$."""
    dist = "truncated_normal" if truncated else "normal"
    return jinit.variance_scaling(
        2.0, "fan_in", dist, in_axis=in_axis, out_axis=out_axis, dtype=dtype
    )


def he_uniform(*, in_axis: int = -2, out_axis: int = -1, dtype=jnp.float32) -> Initializer:
    r"""He (Kaiming) uniform: $U(-a, a)$ with $a = \sqrt{6/n_\text{in}}$ (variance 2/n_in)."""
    return jinit.variance_scaling(
        2.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis, dtype=dtype
    )


def lecun_normal(*, in_axis: int = -2, out_axis: int = -1, dtype=jnp.float32) -> Initializer:
    r"""LeCun normal, $N(0, 1/n_\text{in})$ (Flax's default kernel initialiser)."""
    return jinit.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis, dtype=dtype
    )


def normal(stddev: float = 1e-2, dtype=jnp.float32) -> Initializer:
    r"""Plain $N(0, \text{stddev}^2)$, independent of the layer's size."""
    if not stddev >= 0:
        raise ValueError(f"stddev must be >= 0, got {stddev!r}")
    return jinit.normal(stddev, dtype=dtype)


def truncated_normal(
    stddev: float = 1e-2, *, lower: float = -2.0, upper: float = 2.0, dtype=jnp.float32
) -> Initializer:
    r"""The textbook's truncated normal $N^*(0, \sigma)$: support $(-2\sigma, 2\sigma)$.

    A draw $\sigma z$ with $z \sim N(0, 1)$ is discarded and redrawn when it falls
    outside $(\text{lower}\,\sigma, \text{upper}\,\sigma)$ (sampled exactly by inverse CDF,
    ``jax.random.truncated_normal``). With the default bounds the sample standard deviation is
    $\approx 0.880\,\sigma$ (the truncation removes the tails); use
    :func:`xavier_normal` with ``truncated=True`` for a variance-corrected version.
    """
    if not stddev >= 0:
        raise ValueError(f"stddev must be >= 0, got {stddev!r}")
    if not lower < upper:
        raise ValueError(f"lower must be < upper, got lower={lower!r}, upper={upper!r}")

    def init(key, shape, dtype=dtype):
        z = jax.random.truncated_normal(key, lower, upper, shape, jnp.float32)
        return (stddev * z).astype(dtype)

    return init


def orthogonal(
    activation: str | float = "linear", *, column_axis: int = -1, dtype=jnp.float32
) -> Initializer:
    r"""A (semi-)orthogonal matrix scaled by the activation's gain (Saxe et al., 2014).

    Rows or columns (whichever are fewer) are orthonormal, so $W^\top W = g^2 I$ when
    $n_\text{in} \ge n_\text{out}$.
    """
    return jinit.orthogonal(scale=gain(activation), column_axis=column_axis, dtype=dtype)


def constant(value: float = 0.0, dtype=jnp.float32) -> Initializer:
    """Constant initialiser for biases (the textbook uses 0 or 0.01)."""
    return jinit.constant(value, dtype=dtype)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the default bias initialiser)."""
    return jnp.zeros(shape, dtype)


def scaled(init: Initializer, factor: float) -> Initializer:
    """``init`` multiplied by ``factor`` (standard deviation times ``factor``).

    Used to build deliberately too-small (``factor < 1``) or too-large initialisations.
    """

    def wrapped(key, shape, dtype=jnp.float32):
        return (factor * init(key, shape, dtype)).astype(dtype)

    return wrapped


_NAMED: dict[str, Callable[[str], Initializer]] = {
    "xavier_normal": lambda a: xavier_normal(a),
    "xavier_uniform": lambda a: xavier_uniform(a),
    "glorot_normal": lambda a: xavier_normal(a),
    "glorot_uniform": lambda a: xavier_uniform(a),
    "xavier_truncated_normal": lambda a: xavier_normal(a, truncated=True),
    "he_normal": lambda a: he_normal(),
    "he_uniform": lambda a: he_uniform(),
    "kaiming_normal": lambda a: he_normal(),
    "kaiming_uniform": lambda a: he_uniform(),
    "lecun_normal": lambda a: lecun_normal(),
    "orthogonal": lambda a: orthogonal(a),
}


def get(name: str | Initializer, activation: str | float = "linear") -> Initializer:
    """An initialiser by name (``"xavier_normal"``, ``"he_uniform"``, ``"orthogonal"``, ...).

    Xavier and orthogonal initialisers take their gain from ``activation``. A callable is
    returned unchanged.

    Raises:
      ValueError: unknown name.
    """
    if callable(name):
        return name
    if name not in _NAMED:
        raise ValueError(f"unknown initialiser {name!r}; known: {sorted(_NAMED)}")
    return _NAMED[name](activation)


def default_kernel_init(activation: str) -> Initializer:
    """The kernel initialiser gradlab's MLP uses: He normal for ReLU-like, Xavier otherwise."""
    if activation in ("relu", "leaky_relu", "elu", "gelu", "silu", "softplus"):
        return he_normal()
    return xavier_normal(activation if activation in GAINS else "linear")
