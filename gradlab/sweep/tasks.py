"""What a sweep trains: a :class:`Task` bundles pure ``init``/``loss``/``get_batch``/``evaluate``.

Two ready-made builders:

* :func:`mlp_classifier` -- a Flax NNX :class:`~gradlab.lab.models.MLP` on one of the lab's
  datasets (scikit-learn's embedded digits by default), used functionally (``nnx.split`` /
  ``merge``) so a training step is a pure, vmappable function.
* :func:`custom` -- your own ``init_fn(key) -> params`` and ``loss_fn(params, batch) -> loss``
  on a pytree of arrays.

Both are built by :func:`supervised`: training (and validation) examples sharing a leading axis,
mini-batches cut from the training examples, metrics evaluated on every split.

Mini-batches are drawn without replacement, a fresh permutation per epoch, from a stream keyed
by the run's seed only: every setting that shares a seed sees the same batches in the same order
(common random numbers, so differences between settings are not sampling noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["Task", "custom", "mlp_classifier", "supervised", "epoch_plan", "DATASETS"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem in pure-function form.

    Attributes:
      name: short name shown in tables and plots.
      init: ``key -> (params, model_state)``; ``model_state`` holds non-trained variables
        (BatchNorm statistics) and may be an empty dict.
      loss: ``(params, model_state, batch, key) -> (loss, new_model_state)`` in training mode.
      get_batch: ``(data, indices) -> batch``; ``indices`` is one row of the batch plan (the
        example indices of this step) or ``None`` for a full-batch task.
      batch_plan: ``(seed, steps) -> (steps, batch_size) int32`` numpy array of the example
        indices of every step, computed on the host once per seed before training (``None``:
        full batch every step). Precomputing the plan keeps the per-epoch shuffle (a sort)
        out of the compiled training loop.
      evaluate: ``(params, model_state, data) -> {metric: scalar}``, called every
        ``eval_every`` steps. Names containing ``"acc"`` are maximised, the others minimised.
      data: pytree of arrays passed (replicated, not vmapped) to the compiled program.
      primary: the metric :attr:`SweepResult.best` ranks by.
      target: default ``(metric, threshold)`` for the "steps to target" column, or ``None``.
      config: JSON-serialisable description (saved with results).
      flops_per_step: rough forward+backward FLOPs of one step of one run (``None`` = unknown),
        used by ``strategy="auto"``.
    """

    name: str
    init: Callable
    loss: Callable
    get_batch: Callable
    evaluate: Callable
    data: Any
    batch_plan: Callable | None = None
    primary: str = "train_loss"
    target: tuple[str, float] | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    flops_per_step: float | None = None


def epoch_plan(n: int, batch_size: int | None) -> Callable | None:
    """Batch plan for ``n`` examples: a fresh permutation per epoch from
    ``numpy.random.default_rng(seed)``, ``n // batch_size`` batches per epoch (the remainder
    of each permutation is dropped). ``None`` for full batch."""
    if batch_size is None or batch_size >= n:
        return None
    per_epoch = n // batch_size

    def plan(seed: int, steps: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        epochs = -(-steps // per_epoch)
        perms = np.stack([rng.permutation(n) for _ in range(epochs)])
        rows = perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)
        return rows[:steps].astype(np.int32)

    return plan


def _check_batch_size(batch_size: Any, n: int) -> int | None:
    if batch_size is None or batch_size == "all":
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int or None (full batch), got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return None if batch_size >= n else int(batch_size)


def supervised(
    *,
    name: str,
    init: Callable,
    loss: Callable,
    metrics: Callable,
    train: Any,
    val: Any = None,
    batch_size: int | None = None,
    primary: str | None = None,
    target: tuple[str, float] | None = None,
    config: Mapping[str, Any] | None = None,
    flops_per_example: float | None = None,
) -> Task:
    """A :class:`Task` on training (and validation) examples: the shared part of the builders.

    Args:
      name: name shown in results.
      init: ``key -> (params, model_state)``.
      loss: ``(params, model_state, batch, key) -> (loss, new_model_state)``; ``batch`` has
        ``train``'s structure with the example axis cut to ``batch_size``.
      metrics: ``(params, model_state, examples) -> {name: scalar}``, evaluated on each split
        and reported as ``train_<name>`` / ``val_<name>``.
      train: a pytree of arrays sharing a leading example axis; ``val``: the same, or ``None``
        (also used for a ``val`` with no examples: then there are no ``val_`` metrics, rather
        than NaN ones).
      batch_size: mini-batch size; ``None`` uses every training example every step.
      primary: metric ranked by ``best`` (default ``val_loss`` with validation data, else
        ``train_loss``; a ``val_`` metric falls back to its ``train_`` one without them).
      target: default ``(metric, threshold)`` for "steps to target" (a ``val_`` metric becomes
        its ``train_`` one without validation data).
      config: JSON-serialisable description (``batch_size`` and ``n_train`` are added).
      flops_per_example: forward+backward FLOPs of one example (``Task.flops_per_step`` is this
        times the batch size), or ``None``.
    """
    if val is not None and _no_examples(val):
        val = None
    if val is None and primary is not None and primary.startswith("val_"):
        primary = "train_" + primary[len("val_") :]
    if val is None and target is not None and str(target[0]).startswith("val_"):
        target = ("train_" + target[0][len("val_") :], target[1])
    data = {"train": jax.tree.map(jnp.asarray, train)}
    if val is not None:
        data["val"] = jax.tree.map(jnp.asarray, val)
    leaves = jax.tree.leaves(data["train"])
    if not leaves:
        raise ValueError(f"{name}: data has no arrays")
    n = int(leaves[0].shape[0])
    if any(leaf.ndim == 0 or leaf.shape[0] != n for leaf in leaves):
        raise ValueError(f"{name}: every data array needs the same leading (example) axis")
    bs = _check_batch_size(batch_size, n)

    def get_batch(d, idx):
        if idx is None:
            return d["train"]
        return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), d["train"])

    def evaluate(params, model_state, d):
        return {
            f"{split}_{k}": v
            for split, examples in d.items()
            for k, v in metrics(params, model_state, examples).items()
        }

    return Task(
        name=name,
        init=init,
        loss=loss,
        get_batch=get_batch,
        evaluate=evaluate,
        data=data,
        batch_plan=epoch_plan(n, bs),
        primary=primary or ("val_loss" if val is not None else "train_loss"),
        target=target,
        config={**(config or {}), "batch_size": bs, "n_train": n},
        flops_per_step=None if flops_per_example is None else flops_per_example * (bs or n),
    )


def _no_examples(examples: Any) -> bool:
    """Whether a pytree of example arrays holds no example (a leading axis of length 0)."""
    leaves = jax.tree.leaves(examples)
    return not leaves or all(np.ndim(x) > 0 and np.shape(x)[0] == 0 for x in leaves)


def custom(
    init_fn: Callable[[jax.Array], Any],
    loss_fn: Callable[[Any, Any], jax.Array],
    data: Any,
    *,
    val_data: Any = None,
    batch_size: int | None = None,
    metrics_fn: Callable[[Any, Any], Mapping[str, jax.Array]] | None = None,
    name: str = "custom",
    target: tuple[str, float] | None = None,
) -> Task:
    """A task from your own functions.

    Args:
      init_fn: ``key -> params`` (any pytree of float arrays).
      loss_fn: ``(params, batch) -> scalar loss``; ``batch`` has ``data``'s structure with the
        leading (example) axis cut to ``batch_size``.
      data: training data, a pytree of arrays sharing a leading example axis.
      val_data: optional validation data with the same structure (``None`` or no examples:
        no ``val_`` metrics; the primary metric is then ``train_loss``).
      batch_size: mini-batch size; ``None`` trains on all of ``data`` every step.
      metrics_fn: optional ``(params, batch) -> {name: scalar}`` extra metrics (accuracy, ...),
        reported for train and validation data as ``train_<name>`` / ``val_<name>``.
      name: name shown in results.
      target: default ``(metric, threshold)`` for "steps to target".

    Returns:
      A :class:`Task` whose metrics are ``train_loss`` (on all of ``data``), ``val_loss`` when
      ``val_data`` is given, and the ``metrics_fn`` entries.
    """

    def metrics(params, model_state, examples):
        extra = {} if metrics_fn is None else metrics_fn(params, examples)
        return {"loss": loss_fn(params, examples), **extra}

    return supervised(
        name=name,
        init=lambda key: (init_fn(key), {}),
        loss=lambda params, model_state, batch, key: (loss_fn(params, batch), model_state),
        metrics=metrics,
        train=data,
        val=val_data,
        batch_size=batch_size,
        target=target,
        config={"task": name},
    )


def _load(dataset: str, seed: int):
    from gradlab.lab import data as lab_data

    loaders = {
        "digits": lab_data.load_digits,
        "moons": lab_data.make_moons,
        "spirals": lab_data.make_spirals,
        "blobs": lab_data.make_blobs,
    }
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(loaders)}")
    return loaders[dataset](seed=seed)


DATASETS = ("digits", "moons", "spirals", "blobs")


def mlp_classifier(
    dataset: Any = "digits",
    widths: tuple[int, ...] = (64,),
    *,
    batch_size: int | None = 128,
    activation: str = "relu",
    batch_norm: bool = False,
    dropout: float = 0.0,
    data_seed: int = 0,
    target_accuracy: float | None = 0.95,
) -> Task:
    """A Flax NNX MLP classifier trained with softmax cross-entropy.

    Args:
      dataset: a name in :data:`DATASETS` (``"digits"``: scikit-learn's embedded 8x8 digits,
        1438 train / 359 validation images, standardised) or a
        :class:`gradlab.lab.data.Dataset` (one with no validation examples, as from
        ``val_fraction=0``, gives a task without ``val_`` metrics: see Returns).
      widths: hidden-layer widths.
      batch_size: mini-batch size; ``None`` for full-batch gradient descent.
      activation, batch_norm, dropout: passed to :class:`gradlab.lab.models.MLP`.
      data_seed: seed of the train/validation split (the same for every run).
      target_accuracy: default threshold of the "steps to target" column (validation
        accuracy; training accuracy without validation data), or ``None``.

    Returns:
      A :class:`Task` with metrics ``train_loss``, ``train_accuracy``, ``val_loss``,
      ``val_accuracy`` (full train and validation sets, evaluation mode) and primary metric
      ``val_loss``. Without validation examples the metrics are ``train_loss`` and
      ``train_accuracy``, and ``train_loss`` is the primary metric.
    """
    from flax import nnx

    from gradlab.lab import models

    ds = _load(dataset, data_seed) if isinstance(dataset, str) else dataset
    if not getattr(ds, "num_classes", 0):
        raise ValueError("mlp_classifier needs a classification dataset (num_classes > 0)")
    widths = tuple(int(w) for w in widths)
    x_train = np.asarray(ds.x_train, np.float32)
    d, k = x_train.shape[1], int(ds.num_classes)

    def build(key):
        return models.MLP(
            d,
            widths,
            k,
            activation=activation,
            batch_norm=batch_norm,
            dropout=dropout,
            rngs=nnx.Rngs(params=key),
        )

    # The graph definition is static: build it once from an abstract model.
    abstract = nnx.eval_shape(lambda: build(jax.random.PRNGKey(0)))
    graphdef, _, _ = models.split_model(abstract)

    def init(key):
        _, params, state = models.split_model(build(key))
        return params, state

    def xent(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss(params, model_state, batch, key):
        x, y = batch
        logits, new_state = models.apply_model(
            graphdef, params, model_state, x, train=True, key=key if dropout > 0 else None
        )
        return xent(logits, y), new_state

    def metrics(params, model_state, examples):
        x, y = examples
        logits, _ = models.apply_model(graphdef, params, model_state, x)
        return {"loss": xent(logits, y), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    sizes = (d, *widths, k)
    matmul = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    name = dataset if isinstance(dataset, str) else "dataset"
    return supervised(
        name=f"mlp_classifier({name})",
        init=init,
        loss=loss,
        metrics=metrics,
        train=(x_train, np.asarray(ds.y_train, np.int32)),
        val=(np.asarray(ds.x_val, np.float32), np.asarray(ds.y_val, np.int32)),
        batch_size=batch_size,
        primary="val_loss",  # train_loss when there is no validation example (supervised)
        target=("val_accuracy", float(target_accuracy)) if target_accuracy else None,
        config={
            "task": "mlp_classifier",
            "dataset": name,
            "widths": list(widths),
            "activation": activation,
            "batch_norm": bool(batch_norm),
            "dropout": float(dropout),
            "data_seed": int(data_seed),
        },
        # forward (2 flops per MAC) + backward (twice the forward) of one example
        flops_per_example=6.0 * matmul,
    )
