r"""Datasets for the lab: scikit-learn's embedded digits, generated toy sets, splits and batching.

Everything here is generated locally (numpy RNG) or ships with scikit-learn: nothing is
downloaded. Every loader returns a :class:`Dataset` with a train/validation split and, when
``standardize=True``, inputs standardised with statistics fitted on the **training split only**
(the validation split is transformed with the training mean and standard deviation, so nothing
about it leaks into training):

.. math::  \tilde x = (x - \mu_{\text{train}}) / \sigma_{\text{train}}.

Batching follows the textbook's three regimes -- batch size 1 (stochastic gradient descent),
``b`` (mini-batch) and all examples (batch gradient descent) -- with a fresh random permutation
every epoch: :func:`iterate_batches` for Python loops and :func:`epoch_indices` (a
``(num_batches, b)`` index array built from a JAX key, see :func:`permutations`) for loops
compiled with ``lax.scan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Dataset",
    "Standardizer",
    "fit_standardizer",
    "train_val_split",
    "make_dataset",
    "load_digits",
    "make_moons",
    "make_spirals",
    "make_blobs",
    "make_regression",
    "resolve_batch_size",
    "num_batches",
    "iterate_batches",
    "epoch_indices",
    "permutations",
]


class Dataset(NamedTuple):
    """A train/validation split.

    Attributes:
      x_train: ``(n_train, d)`` float32 inputs.
      y_train: ``(n_train,)`` int32 class labels (classification) or float32 targets
        (regression, possibly ``(n_train, k)``).
      x_val: ``(n_val, d)`` float32 inputs.
      y_val: validation labels/targets, as ``y_train``.
      num_classes: number of classes; ``0`` for a regression dataset.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        """Input dimension ``d``."""
        return int(self.x_train.shape[1])

    @property
    def is_classification(self) -> bool:
        """Whether the targets are integer class labels."""
        return self.num_classes > 0


class Standardizer(NamedTuple):
    """Per-feature mean and standard deviation fitted on a training split."""

    mean: np.ndarray
    std: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Standardise ``x`` with the fitted statistics (float32)."""
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)


def fit_standardizer(x_train: np.ndarray, eps: float = 1e-8) -> Standardizer:
    """Fit per-feature mean and standard deviation on ``x_train``.

    Constant features (standard deviation below ``eps``, e.g. the always-blank corner pixels of
    the digits) get a unit standard deviation, so they map to zero instead of ``0/0``.
    """
    x = np.asarray(x_train, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x_train must be a non-empty (n, d) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std < eps, 1.0, std)
    return Standardizer(mean.astype(np.float32), std.astype(np.float32))


def train_val_split(
    n: int, val_fraction: float, seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation index split of ``range(n)``.

    Returns:
      ``(train_idx, val_idx)``; ``val_idx`` has ``round(val_fraction * n)`` entries (at least
      one when ``0 < val_fraction``), ``train_idx`` the rest (at least one).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
) -> Dataset:
    """Split ``(x, y)`` into a :class:`Dataset`, standardising with train-split statistics.

    Args:
      x: ``(n, d)`` inputs (``(n,)`` is one feature).
      y: ``(n,)`` class labels, integers in ``[0, num_classes)`` (booleans count as 0/1), or
        regression targets (``num_classes=0``).
      num_classes: the number of classes, or ``0`` for regression.
      val_fraction: fraction of the examples held out for validation.
      seed: seed of the split.
      standardize: standardise the inputs with training-split statistics.

    Raises:
      ValueError: ``num_classes`` is negative, ``x`` and ``y`` have different numbers of
        examples, or a class label is not an integer in ``[0, num_classes)`` (1-based labels,
        say: subtract 1).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int (0 for regression), got {num_classes!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0 for regression), got {num_classes}")
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if num_classes > 0:
        y = _class_labels(y, num_classes)
    else:
        y = y.astype(np.float32)
    tr, va = train_val_split(x.shape[0], val_fraction, seed)
    x_tr, x_va = x[tr], x[va]
    if standardize:
        s = fit_standardizer(x_tr)
        x_tr, x_va = s(x_tr), s(x_va)
    return Dataset(x_tr, y[tr], x_va, y[va], int(num_classes))


def _class_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``y`` as int32 labels, checked: one integer in ``[0, num_classes)`` per example."""
    if y.ndim != 1:
        raise ValueError(
            f"y: class labels must have shape (n,) (one integer per example), got {y.shape}"
        )
    if y.dtype == np.bool_:
        y = y.astype(np.int32)
    if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise ValueError(f"y: class labels must be integers, got dtype {y.dtype}")
    if y.size:
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("y: class labels must be integers in [0, num_classes)")
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= num_classes:
            hint = " (1-based labels? subtract 1)" if lo >= 1 and hi == num_classes else ""
            raise ValueError(
                f"y: class labels must lie in [0, num_classes) = [0, {num_classes}), got labels "
                f"from {lo:g} to {hi:g}{hint}"
            )
    return y.astype(np.int32)


# --------------------------------------------------------------------------------------------
# Datasets. Every loader and generator passes ``**split`` -- ``val_fraction`` (default 0.2) and
# ``standardize`` (default True) -- to :func:`make_dataset`; ``seed`` seeds the data and the split.
# --------------------------------------------------------------------------------------------


def _split(x, y, num_classes: int, seed: int, split: dict[str, Any]) -> Dataset:
    return make_dataset(x, y, num_classes=num_classes, seed=seed + 1, **split)


def load_digits(*, seed: int = 0, **split: Any) -> Dataset:
    """scikit-learn's embedded handwritten digits: 1797 images of 8x8 pixels, 10 classes.

    The data ship inside scikit-learn (the UCI optical-digits test set), so nothing is
    downloaded. Inputs are the 64 pixel intensities (0..16) as float32, standardised per pixel
    with training-split statistics unless ``standardize=False``.

    Args:
      seed: seed of the random split.
      **split: ``val_fraction``, ``standardize``: see :func:`make_dataset`.

    Returns:
      A :class:`Dataset` with ``num_classes=10``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return make_dataset(bunch.data, bunch.target, num_classes=10, seed=seed, **split)


def make_moons(n: int = 512, *, noise: float = 0.1, seed: int = 0, **split: Any) -> Dataset:
    """Two interleaving half circles (2 classes, 2 features) with Gaussian noise."""
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t0 = np.linspace(0.0, np.pi, n0)
    t1 = np.linspace(0.0, np.pi, n - n0)
    x0 = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    x1 = np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([x0, x1]) + noise * rng.standard_normal((n, 2))
    return _split(x, np.arange(n) >= n0, 2, seed, split)


def make_spirals(
    n: int = 600,
    *,
    num_classes: int = 3,
    turns: float = 1.0,
    noise: float = 0.2,
    seed: int = 0,
    **split: Any,
) -> Dataset:
    """``num_classes`` interleaved spiral arms in the plane (the classic CS231n toy set).

    Exactly ``n`` points: each arm has ``n // num_classes`` of them, the first
    ``n % num_classes`` arms one more.

    Raises:
      ValueError: ``num_classes < 2`` or ``n < num_classes``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if n < num_classes:
        raise ValueError(f"n must be >= num_classes ({num_classes}), got {n}")
    rng = np.random.default_rng(seed)
    counts = [n // num_classes + (k < n % num_classes) for k in range(num_classes)]
    r = np.concatenate([np.linspace(0.0, 1.0, c) for c in counts])
    y = np.repeat(np.arange(num_classes), counts)
    t = (
        y * 2 * np.pi / num_classes
        + np.concatenate([np.linspace(0.0, 2 * np.pi * turns, c) for c in counts])
        + noise * rng.standard_normal(n)
    )
    return _split(np.stack([r * np.sin(t), r * np.cos(t)], axis=1), y, num_classes, seed, split)


def make_blobs(
    n: int = 600,
    *,
    num_classes: int = 3,
    num_features: int = 2,
    spread: float = 1.0,
    separation: float = 4.0,
    seed: int = 0,
    **split: Any,
) -> Dataset:
    r"""Isotropic Gaussian blobs: class ``k`` is $N(c_k, \text{spread}^2 I)$.

    Centres are drawn uniformly in ``[-separation, separation]^d``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-separation, separation, (num_classes, num_features))
    y = rng.integers(0, num_classes, n)
    x = centres[y] + spread * rng.standard_normal((n, num_features))
    return _split(x, y, num_classes, seed, split)


def make_regression(
    n: int = 256,
    *,
    degree: int = 1,
    num_features: int = 1,
    noise: float = 0.1,
    seed: int = 0,
    **split: Any,
) -> Dataset:
    r"""A linear (``degree=1``) or polynomial regression problem with Gaussian noise.

    Inputs are uniform on ``[-1, 1]^d``; the target is
    $y = \sum_{j=1}^{d} \sum_{p=1}^{\text{degree}} w_{jp} x_j^p + b + \varepsilon$ with
    standard-normal coefficients and $\varepsilon \sim N(0, \text{noise}^2)$.
    Targets are float32 of shape ``(n,)`` and ``num_classes`` is 0.
    """
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, num_features))
    w = rng.standard_normal((num_features, degree))
    b = rng.standard_normal()
    powers = np.stack([x**p for p in range(1, degree + 1)], axis=-1)  # (n, d, degree)
    y = np.einsum("ndp,dp->n", powers, w) + b + noise * rng.standard_normal(n)
    return _split(x, y, 0, seed, split)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def resolve_batch_size(batch_size: int | str | None, n: int) -> int:
    """Normalise a batch-size argument: ``None``, ``"all"`` or ``-1`` mean all ``n`` examples.

    Raises:
      ValueError: ``batch_size`` is not positive or exceeds ``n``.
    """
    if batch_size is None or batch_size == "all" or batch_size == -1:
        return int(n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, 'all' or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (or 'all'), got {batch_size}")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of examples ({n})")
    return int(batch_size)


def num_batches(n: int, batch_size: int | str | None, *, drop_last: bool = True) -> int:
    """Batches per epoch for ``n`` examples."""
    b = resolve_batch_size(batch_size, n)
    return n // b if drop_last else -(-n // b)


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int | str | None,
    *,
    seed: int | np.random.Generator = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(x_batch, y_batch)`` pairs under a fresh random permutation.

    Call it once per epoch with a different ``seed`` (or a shared ``numpy.random.Generator``,
    which advances) to get a new permutation each epoch. ``batch_size=1`` is stochastic
    gradient descent, ``"all"``/``None`` is batch gradient descent.

    Args:
      x: inputs, first axis the examples.
      y: labels/targets, first axis the examples.
      batch_size: examples per batch (``1``, ``b``, or ``"all"``/``None``).
      seed: an int seed or a ``numpy.random.Generator``.
      shuffle: permute the examples (``False`` keeps the stored order).
      drop_last: drop the final short batch (keeps shapes static for ``jit``).
    """
    n = len(x)
    b = resolve_batch_size(batch_size, n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = (n // b) * b if drop_last else n
    for start in range(0, stop, b):
        idx = order[start : start + b]
        yield x[idx], y[idx]


def epoch_indices(key: jax.Array, n: int, batch_size: int | str | None) -> jax.Array:
    """A jittable epoch: a fresh permutation of ``range(n)`` cut into ``(n // b, b)`` batches.

    ``n`` and ``batch_size`` are static; the last ``n mod b`` examples of the permutation are
    dropped (a different subset each epoch), so every batch has the same shape and the epoch
    compiles to one ``lax.scan``. Index ``x[idx[i]]`` for batch ``i``.

    Args:
      key: a JAX PRNG key (fold in the epoch number for a new permutation each epoch).
      n: number of examples (static).
      batch_size: ``b``, or ``"all"``/``None`` for one full batch.

    Returns:
      An int32 array of shape ``(n // b, b)``.
    """
    b = resolve_batch_size(batch_size, n)
    k = n // b
    return permutations(key, n)[: k * b].reshape(k, b)


def permutations(key: jax.Array, n: int, num: int | None = None) -> jax.Array:
    r"""Uniformly random permutations of ``range(n)``: shape ``(n,)``, or ``(num, n)``.

    Each is the (stable) argsort of ``n`` random 32-bit keys: one draw and one sort, which
    compiles several times faster than ``jax.random.permutation`` (more so under ``vmap``).
    Equal keys, of probability about $n^2 / 2^{33}$ per permutation, keep their index order.

    Returns:
      int32 indices.
    """
    shape = (n,) if num is None else (num, n)
    return jnp.argsort(jax.random.bits(key, shape), axis=-1).astype(jnp.int32)
