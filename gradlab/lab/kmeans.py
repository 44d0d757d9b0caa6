r"""K-means fitted by stochastic, mini-batch and batch updates, in JAX (jittable, vmappable).

K-means minimises the *inertia*, the sum of squared distances from each point to its nearest
centre,

.. math::  J(c_1, \dots, c_k) = \sum_{i=1}^n \min_j \lVert x_i - c_j \rVert^2 .

With the assignments held fixed, the gradient of $\tfrac12 J$ with respect to $c_j$ is
$-\sum_{i \in S_j} (x_i - c_j)$, so gradient steps on a batch $B$ of $b$ points move each centre
towards the points of $B$ assigned to it. The three regimes of the CMU deck's K-means example:

* ``method="sgd"`` -- one point per step (``batch_size=1``), the online update of MacQueen
  (1967): $c_j \leftarrow c_j + \eta_j (x - c_j)$ for the nearest centre $c_j$, with the
  per-centre rate $\eta_j = 1/n_j$ ($n_j$ = points assigned to $c_j$ so far, so each centre is
  the running mean of its points) or a fixed ``learning_rate``.
* ``method="minibatch"`` -- ``batch_size`` points per step (Sculley, 2010):
  $c_j \leftarrow c_j + (\sum_{x \in B_j} x - |B_j|\,c_j) / n_j$ with cumulative counts $n_j$,
  or $c_j \leftarrow c_j + \frac{\eta}{b}(\sum_{x \in B_j} x - |B_j|\,c_j)$ for a fixed rate.
* ``method="batch"`` -- every point every step: Lloyd's algorithm $c_j \leftarrow
  \operatorname{mean}(S_j)$ (an empty cluster keeps its centre), or full-batch gradient descent
  $c_j \leftarrow c_j + \frac{\eta}{n}\sum_{i \in S_j}(x_i - c_j)$ for a fixed rate.

Points are visited in a fresh random permutation every epoch (:func:`visit_order`; the key is
split into an initialisation key and an order key). Everything is one compiled
``lax.scan``; :func:`kmeans_seeds` ``vmap``s a fit over seeds to measure the spread of the final
inertia (SGD converges faster, to worse and more variable minima).

References:
  MacQueen, "Some methods for classification and analysis of multivariate observations",
  Proc. 5th Berkeley Symposium, 1967. Lloyd, "Least squares quantization in PCM", IEEE Trans.
  Information Theory 28(2), 1982. Sculley, "Web-scale k-means clustering", WWW 2010.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import base
from gradlab.lab.data import permutations

__all__ = [
    "KMeansResult",
    "METHODS",
    "inertia",
    "assign",
    "init_centers",
    "kmeans",
    "kmeans_seeds",
    "visit_order",
]

METHODS = ("sgd", "minibatch", "batch")


class KMeansResult(NamedTuple):
    """The outcome of a K-means fit.

    Attributes:
      centers: ``(k, d)`` final centres.
      inertia: ``(R + 1,)`` inertia (sum of squared distances to the nearest centre, over all
        points) at the initial centres and after every ``record_every`` steps.
      examples: ``(R + 1,)`` number of examples processed at those points (the x axis of the
        textbook's "SGD vs batch" figure).
      counts: ``(k,)`` points assigned to each centre by the updates (cumulative for ``sgd`` and
        ``minibatch``; the last step's cluster sizes for ``batch``).
    """

    centers: jax.Array
    inertia: jax.Array
    examples: jax.Array
    counts: jax.Array


def _sq_dists(x: jax.Array, centers: jax.Array) -> jax.Array:
    """``(n, k)`` squared Euclidean distances, computed by the expansion (clamped at 0)."""
    d = (
        jnp.sum(x * x, axis=1, keepdims=True)
        - 2.0 * jnp.matmul(x, centers.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(centers * centers, axis=1)[None, :]
    )
    return jnp.maximum(d, 0.0)


def assign(x: jax.Array, centers: jax.Array) -> jax.Array:
    """Index of the nearest centre for each row of ``x`` (``(n,)`` int32)."""
    return jnp.argmin(_sq_dists(jnp.asarray(x), jnp.asarray(centers)), axis=1).astype(jnp.int32)


def inertia(x: jax.Array, centers: jax.Array) -> jax.Array:
    r"""$\sum_i \min_j \lVert x_i - c_j\rVert^2$ (scikit-learn's ``inertia_``), float32."""
    return jnp.sum(jnp.min(_sq_dists(jnp.asarray(x), jnp.asarray(centers)), axis=1))


def init_centers(key: jax.Array, x: jax.Array, k: int, method: str = "random") -> jax.Array:
    """Initial centres: ``k`` distinct data points at random, or k-means++ (Arthur &
    Vassilvitskii, 2007: each next centre drawn with probability proportional to the squared
    distance to the nearest centre chosen so far)."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if method == "random":
        return x[permutations(key, n)[:k]]
    if method != "kmeans++":
        raise ValueError(f"init_centers: method must be 'random' or 'kmeans++', got {method!r}")
    keys = jax.random.split(key, k)
    first = x[jax.random.randint(keys[0], (), 0, n)]
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    d2 = jnp.sum((x - first) ** 2, axis=1)

    def body(j, carry):
        centers, d2 = carry
        p = d2 / jnp.maximum(jnp.sum(d2), 1e-30)
        i = jax.random.choice(keys[j], n, p=p)
        centers = centers.at[j].set(x[i])
        d2 = jnp.minimum(d2, jnp.sum((x - x[i]) ** 2, axis=1))
        return centers, d2

    centers, _ = jax.lax.fori_loop(1, k, body, (centers, d2))
    return centers


def visit_order(key: jax.Array, n: int, steps: int, batch: int) -> jax.Array:
    """The flat sequence of point indices visited by ``steps`` updates of ``batch`` points: a
    fresh random permutation of ``0..n-1`` per epoch, concatenated (batches may straddle two
    epochs; :func:`gradlab.lab.data.permutations`). Update ``t`` uses entries
    ``t*batch .. (t+1)*batch - 1``."""
    return permutations(key, n, math.ceil(steps * batch / n)).reshape(-1)


def _check_int(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    value = base.check_positive_int(value, name, owner="kmeans", minimum=minimum)
    if maximum is not None and value > maximum:
        raise ValueError(f"kmeans: {name} must be <= {maximum}, got {value}")
    return value


def kmeans(
    x: Any,
    k: int,
    *,
    key: jax.Array,
    method: str = "sgd",
    steps: int = 1000,
    batch_size: int | None = None,
    learning_rate: float | jax.Array | None = None,
    init: Any = "random",
    record_every: int = 1,
) -> KMeansResult:
    """Fit ``k`` centres to the rows of ``x`` by SGD, mini-batch or batch updates.

    Args:
      x: ``(n, d)`` data.
      k: number of centres (static).
      key: a JAX PRNG key (initial centres and the order the points are visited in).
      method: ``"sgd"``, ``"minibatch"`` or ``"batch"`` (see the module docstring).
      steps: number of updates.
      batch_size: points per update; forced to 1 for ``sgd`` and ``n`` for ``batch``; default 32
        (or ``n`` if smaller) for ``minibatch``.
      learning_rate: ``None`` for the per-centre count-based rate (MacQueen/Sculley; Lloyd for
        ``batch``), or a fixed rate ``> 0`` (a number or a possibly traced array: it can be
        vmapped).
      init: ``"random"`` (k distinct points), ``"kmeans++"``, or a ``(k, d)`` array of centres.
      record_every: record the inertia every this many steps (must divide ``steps``).

    Returns:
      A :class:`KMeansResult`.

    Raises:
      ValueError: bad ``method``, sizes, ``init`` shape, ``record_every`` not dividing ``steps``,
        or a concrete ``learning_rate <= 0``.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be a 2-D (n, d) array, got shape {x.shape}")
    n = x.shape[0]
    k = _check_int(k, "k", 1, n)
    if method not in METHODS:
        raise ValueError(f"kmeans: method must be one of {METHODS}, got {method!r}")
    steps = _check_int(steps, "steps", 1)
    record_every = _check_int(record_every, "record_every", 1, steps)
    if steps % record_every:
        raise ValueError(f"kmeans: record_every={record_every} must divide steps={steps}")
    if method == "sgd":
        b = 1
    elif method == "batch":
        b = n
    else:
        b = min(32, n) if batch_size is None else _check_int(batch_size, "batch_size", 1, n)
    if learning_rate is not None:
        learning_rate = base.hyperparameter(
            learning_rate, "learning_rate", base.POSITIVE, owner="kmeans", allow_schedule=False
        )
    if isinstance(init, str):
        init_name, init_arr = init, None
        if init not in ("random", "kmeans++"):
            raise ValueError(f"kmeans: init must be 'random', 'kmeans++' or an array, got {init!r}")
    else:
        init_name, init_arr = "array", jnp.asarray(init, jnp.float32)
        if init_arr.shape != (k, x.shape[1]):
            raise ValueError(
                f"kmeans: init must have shape ({k}, {x.shape[1]}), got {init_arr.shape}"
            )
    return _fit(
        x,
        key,
        init_arr,
        learning_rate,
        k=k,
        method=method,
        steps=steps,
        batch=b,
        init_name=init_name,
        record_every=record_every,
    )


@functools.partial(
    jax.jit, static_argnames=("k", "method", "steps", "batch", "init_name", "record_every")
)
def _fit(x, key, init_arr, learning_rate, *, k, method, steps, batch, init_name, record_every):
    n, d = x.shape
    init_key, order_key = jax.random.split(key)
    centers = init_arr if init_name == "array" else init_centers(init_key, x, k, init_name)
    fixed = learning_rate is not None
    lr = jnp.asarray(learning_rate, jnp.float32) if fixed else None

    order = None if method == "batch" else visit_order(order_key, n, steps, batch)

    def update(carry, t):
        centers, counts = carry
        if method == "batch":
            xb = x
        else:
            idx = jax.lax.dynamic_slice(order, (t * batch,), (batch,))
            xb = x[idx]
        onehot = jax.nn.one_hot(assign(xb, centers), k, dtype=jnp.float32)  # (b, k)
        nb = jnp.sum(onehot, axis=0)  # (k,)
        sums = jnp.matmul(onehot.T, xb, precision=jax.lax.Precision.HIGHEST)  # (k, d)
        pull = sums - nb[:, None] * centers  # -gradient of 0.5 * batch inertia
        if fixed:
            centers = centers + (lr / xb.shape[0]) * pull
            counts = nb if method == "batch" else counts + nb
        elif method == "batch":  # Lloyd: the mean of each cluster; empty clusters stay
            centers = jnp.where(nb[:, None] > 0, sums / jnp.maximum(nb, 1.0)[:, None], centers)
            counts = nb
        else:  # MacQueen / Sculley: per-centre rate 1 / (points seen by that centre)
            counts = counts + nb
            centers = centers + pull / jnp.maximum(counts, 1.0)[:, None]
        return (centers, counts), None

    def chunk(carry, c):
        ts = c * record_every + jnp.arange(record_every)
        carry, _ = jax.lax.scan(update, carry, ts)
        return carry, inertia(x, carry[0])

    counts0 = jnp.zeros((k,), jnp.float32)
    inertia0 = inertia(x, centers)
    (centers, counts), hist = jax.lax.scan(
        chunk, (centers, counts0), jnp.arange(steps // record_every)
    )
    hist = jnp.concatenate([inertia0[None], hist])
    examples = jnp.arange(steps // record_every + 1, dtype=jnp.float32) * (record_every * batch)
    return KMeansResult(centers, hist, examples, counts)


def kmeans_seeds(x: Any, k: int, seeds: int | Any, **kwargs: Any) -> KMeansResult:
    """:func:`kmeans` for many seeds at once (``vmap`` over PRNG keys).

    Args:
      x: ``(n, d)`` data.
      k: number of centres.
      seeds: a number of seeds (keys ``0 .. seeds-1``); a 1-D array of int seeds; or PRNG
        keys: typed keys of shape ``(S,)`` (``jax.random.split(jax.random.key(0), S)``) or
        legacy raw ``uint32`` keys of shape ``(S, 2)`` (``jax.random.split(PRNGKey(0), S)``).
      **kwargs: passed to :func:`kmeans` (``method``, ``steps``, ``learning_rate`` ...).

    Returns:
      A :class:`KMeansResult` whose fields have a leading seed axis.

    Raises:
      ValueError: ``seeds`` is none of the above (e.g. a 0-D array or a float array).
    """
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = np.arange(_check_int(seeds, "seeds", 1))
    seeds = jnp.asarray(seeds)
    if jnp.issubdtype(seeds.dtype, jax.dtypes.prng_key) and seeds.ndim == 1:
        keys = seeds  # typed keys
    elif jnp.issubdtype(seeds.dtype, jnp.integer) and seeds.ndim == 1:
        keys = jax.vmap(jax.random.key)(seeds)  # int seeds
    elif seeds.dtype == jnp.uint32 and seeds.ndim == 2:
        keys = seeds  # legacy raw keys, one per row
    else:
        raise ValueError(
            "seeds must be a number of seeds, a 1-D array of int seeds, (S,) typed PRNG keys or "
            f"(S, 2) legacy uint32 keys, got an array of shape {seeds.shape} and dtype "
            f"{seeds.dtype}"
        )
    return jax.vmap(lambda kk: kmeans(x, k, key=kk, **kwargs))(keys)
