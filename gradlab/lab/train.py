r"""A small, honest training loop for Flax NNX models and any optax-compatible optimizer.

:func:`train` runs whole epochs as **one compiled function** (``jax.jit`` of a ``lax.scan`` over
the epoch's mini-batches, buffers donated): a fresh random permutation per epoch, one optimizer
update per batch, then loss and accuracy on the full training and validation sets (evaluation
mode: BatchNorm running averages, no dropout), early-stopping bookkeeping and the best
parameters, all inside the same program. The Python loop only logs, draws the progress bar and
writes checkpoints. The compiled epoch is cached on its static configuration (model structure,
optimizer object, loss, data size, options): calling :func:`train` again with the same optimizer
object reuses it instead of compiling again.

The optimizer is any ``optax.GradientTransformation``. Transformations that take extra
arguments (``GradientTransformationExtraArgs``, e.g. reduce-on-plateau) receive
``value=`` -- the mini-batch loss at the current parameters (``value_from="batch"``) or the
latest validation loss (``value_from="val"``); ``optax.chain`` forwards it to the links that
want it and plain transformations ignore it.

Checkpoints (:mod:`gradlab.lab.checkpoint`, msgpack + JSON manifest, no pickle) hold the whole
:class:`TrainState` -- parameters, BatchNorm statistics, optimizer state, RNG key, epoch and step
counters, early-stopping state -- plus the history, so ``train(..., checkpoint_dir=d,
resume=True)`` continues **bit-identically** to an uninterrupted run. A resume must repeat the
run's arguments: the options, the data (its SHA-256) and the optimizer (the state's structure,
and two probe updates for its hyperparameters) are checked against the checkpoint's record.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gradlab.lab import checkpoint as ckpt
from gradlab.lab.data import Dataset, epoch_indices, resolve_batch_size
from gradlab.lab.models import ModelParts, apply_model, merge_model, split_model

__all__ = [
    "TrainState",
    "History",
    "TrainResult",
    "cross_entropy",
    "squared_error",
    "make_step",
    "train",
]

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "batch_loss")


def cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(
        outputs.astype(jnp.float32), labels.astype(jnp.int32)
    )


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error over the output dimensions."""
    targets = jnp.reshape(targets, outputs.shape).astype(jnp.float32)
    return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets), axis=-1)


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly where it stopped (a pytree).

    Attributes:
      params: trainable parameters (nested dict).
      model_state: non-trainable model variables (BatchNorm running statistics).
      opt_state: the optimizer's state.
      key: raw ``uint32[2]`` PRNG key; epoch ``e`` uses ``fold_in(key, e)``.
      epoch: completed epochs (int32).
      step: completed optimizer updates (int32).
      last_val: latest validation loss (passed as ``value`` with ``value_from="val"``).
      best_val: best validation loss so far (``inf`` before the first evaluation).
      best_epoch: epoch of ``best_val`` (-1 when none).
      bad_epochs: epochs since the last improvement (early-stopping counter).
      best_params: parameters at ``best_epoch`` (``None`` unless ``restore_best``).
      best_model_state: model state at ``best_epoch`` (``None`` unless ``restore_best``).
    """

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array
    epoch: jax.Array
    step: jax.Array
    last_val: jax.Array
    best_val: jax.Array
    best_epoch: jax.Array
    bad_epochs: jax.Array
    best_params: Any = None
    best_model_state: Any = None


@dataclasses.dataclass
class History:
    """Per-epoch metrics. Row 0 is the initial model (before any update).

    Every attribute is a 1-D numpy array of the same length: ``epoch``, ``step`` (updates
    so far), ``examples`` (training examples processed so far), ``train_loss``/``train_acc``
    (full training set, evaluation mode), ``val_loss``/``val_acc`` (NaN without validation),
    ``batch_loss`` (mean mini-batch loss during the epoch, NaN in row 0) and ``time`` (seconds
    of the epoch, including compilation in the first).
    """

    epoch: np.ndarray
    step: np.ndarray
    examples: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    batch_loss: np.ndarray
    time: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, float]]) -> History:
        """Build from a list of per-epoch dicts."""
        fields = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in fields})

    def rows(self) -> list[dict[str, float]]:
        """The history as a list of per-epoch dicts (JSON-friendly)."""
        d = self.as_dict()
        return [{k: d[k][i] for k in d} for i in range(len(self))]

    def as_dict(self) -> dict[str, list[float]]:
        """``{metric: list}`` of Python floats."""
        return {f.name: [float(v) for v in getattr(self, f.name)] for f in dataclasses.fields(self)}

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def plot(
        self,
        metrics: Sequence[str] = ("train_loss", "val_loss"),
        *,
        x: str = "epoch",
        ax: Any = None,
        label: str | None = None,
        logy: bool = True,
    ):
        """Plot metrics against ``x`` (``"epoch"``, ``"step"`` or ``"examples"``) with matplotlib.

        Returns:
          The matplotlib ``Axes``.
        """
        if ax is None:  # a headless figure (no pyplot state)
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6, 4), layout="constrained").add_subplot()
        xs = getattr(self, x)
        for m in metrics:
            ys = getattr(self, m)
            if np.all(np.isnan(ys)):
                continue
            ax.plot(xs, ys, label=f"{label} {m}" if label else m)
        ax.set_xlabel(x)
        if logy and all(m.endswith("loss") for m in metrics):
            ax.set_yscale("log")
        ax.legend()
        return ax


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      model: the trained ``nnx.Module`` (the model passed in, updated in place).
      state: the final :class:`TrainState` (parameters, optimizer state, counters).
      history: the per-epoch :class:`History`.
      stopped_early: whether early stopping ended the run.
      status: ``"completed"``, ``"early_stopped"`` or ``"non_finite"``: the final training
        loss is NaN/inf -- the run was stopped there (``stop_on_nonfinite=True``) or ran to the
        end without recovering (``stop_on_nonfinite=False``). ``"non_finite"`` takes precedence
        over ``"early_stopped"`` (``stopped_early`` still says whether early stopping ended it).
    """

    model: Any
    state: TrainState
    history: History
    stopped_early: bool
    status: str

    @property
    def params(self) -> Any:
        """The returned parameters (the best ones when ``restore_best``)."""
        return self.state.params


def make_step(
    graphdef: Any,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
    *,
    batch_value: bool = False,
    line_search: bool = False,
):
    """A pure training step, for users who write their own loop (jit/vmap/scan it freely).

    Args:
      graphdef: the model's graph definition (from :func:`~gradlab.lab.models.split_model`).
      optimizer: any optax-compatible transformation.
      loss_fn: per-example loss ``(outputs, targets) -> (batch,)``.
      batch_value: pass ``value=`` (the mini-batch loss at the current parameters, from the
        same forward pass as the gradient) to ``optimizer.update``.
      line_search: also pass ``grad=`` and ``value_fn=`` (the mini-batch loss as a function of
        the parameters: same batch, dropout mask and BatchNorm input state).

    Returns:
      ``step(params, model_state, opt_state, x, y, key=None, **extra) -> (params, model_state,
      opt_state, loss)``; ``extra`` (e.g. ``value=``) is forwarded to ``optimizer.update``.
    """
    opt = optax.with_extra_args_support(optimizer)

    def step(params, model_state, opt_state, x, y, key=None, **extra):
        def objective(p):
            out, new_state = apply_model(graphdef, p, model_state, x, train=True, key=key)
            return jnp.mean(loss_fn(out, y)), new_state

        (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        if batch_value or line_search:
            extra["value"] = loss
        if line_search:
            extra.update(grad=grads, value_fn=lambda p: objective(p)[0])
        updates, opt_state = opt.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    return step


class _Spec(NamedTuple):
    """The static configuration of a compiled epoch (hashable: the jit cache key)."""

    graphdef: Any
    optimizer: optax.GradientTransformation
    loss_fn: Callable
    classification: bool
    n: int
    batch_size: int
    value_from: str | None
    min_delta: float
    line_search: bool


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _metrics(graphdef, loss_fn, classification, n, params, model_state, x, y):
    """Loss and accuracy (evaluation mode) on the training examples ``x[:n]`` and the validation
    examples ``x[n:]``, in one forward pass (NaN where there are none, or for regression)."""
    out, _ = apply_model(graphdef, params, model_state, x, train=False)
    losses = loss_fn(out, y).astype(jnp.float32)
    if classification:
        correct = (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)
    else:
        correct = jnp.full_like(losses, jnp.nan)
    nan = jnp.asarray(jnp.nan, jnp.float32)
    train = [jnp.mean(losses[:n]), jnp.mean(correct[:n])]
    val = [jnp.mean(losses[n:]), jnp.mean(correct[n:])] if x.shape[0] > n else [nan, nan]
    return (*train, *val)


def _epoch(ts: TrainState, x, y, spec: _Spec):
    """One epoch on ``x[:spec.n]`` (the rest is validation data): a fresh permutation, one
    update per batch (``lax.scan``), then the metrics."""
    step = make_step(
        spec.graphdef,
        spec.optimizer,
        spec.loss_fn,
        batch_value=spec.value_from == "batch",
        line_search=spec.line_search,
    )
    ekey = jax.random.fold_in(ts.key, ts.epoch)
    if spec.batch_size == spec.n:  # batch GD: the order of the examples does not matter
        idx = jnp.arange(spec.n)[None]
    else:
        idx = epoch_indices(ekey, spec.n, spec.batch_size)
    extra = {"value": ts.last_val} if spec.value_from == "val" else {}

    def body(carry, inp):
        i, bidx = inp
        *carry, loss = step(*carry, x[bidx], y[bidx], jax.random.fold_in(ekey, i), **extra)
        return tuple(carry), loss

    steps = idx.shape[0]
    (params, mstate, ostate), losses = jax.lax.scan(
        body, (ts.params, ts.model_state, ts.opt_state), (jnp.arange(steps), idx)
    )
    tr_loss, tr_acc, va_loss, va_acc = _metrics(
        spec.graphdef, spec.loss_fn, spec.classification, spec.n, params, mstate, x, y
    )
    epoch = ts.epoch + 1
    improved = va_loss < ts.best_val - spec.min_delta
    pick = functools.partial(jax.tree.map, lambda new, old: jnp.where(improved, new, old))
    new = ts._replace(
        params=params,
        model_state=mstate,
        opt_state=ostate,
        epoch=epoch,
        step=ts.step + steps,
        last_val=va_loss,
        best_val=jnp.where(improved, va_loss, ts.best_val),
        best_epoch=jnp.where(improved, epoch, ts.best_epoch),
        bad_epochs=jnp.where(improved, 0, ts.bad_epochs + 1),
    )
    if ts.best_params is not None:
        new = new._replace(
            best_params=pick(params, ts.best_params),
            best_model_state=pick(mstate, ts.best_model_state),
        )
    batch_loss = jnp.mean(losses.astype(jnp.float32))
    return new, dict(zip(METRICS, (tr_loss, tr_acc, va_loss, va_acc, batch_loss), strict=True))


# Module-level jit: train() calls with an equal spec (same model structure, optimizer object,
# loss, data size and options) reuse the compiled epoch.
_RUN_EPOCH = {
    donate: jax.jit(_epoch, static_argnums=3, donate_argnums=(0,) if donate else ())
    for donate in (True, False)
}


def _resolve_data(data, val):
    """``(x, y, n, classification)`` from a Dataset or ``(x, y)`` and the ``val`` option: the
    ``n`` training examples followed by the validation examples, if any."""
    if isinstance(data, Dataset):
        x, y = data.x_train, data.y_train
        classification = data.is_classification
        default_val = (data.x_val, data.y_val) if len(data.x_val) else None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        classification = np.issubdtype(np.asarray(y).dtype, np.integer)
        default_val = None
    else:
        raise TypeError("data must be a gradlab.lab.data.Dataset or an (x, y) pair")
    if isinstance(val, str) and val == "auto":
        val = default_val
    elif val is True:
        if default_val is None:
            raise ValueError("val=True but the data has no validation split")
        val = default_val
    elif val is False:
        val = None
    if val is not None and not (isinstance(val, (tuple, list)) and len(val) == 2):
        raise TypeError("val must be 'auto', True, False, None or an (x_val, y_val) pair")
    n = len(x)
    for xs, ys in [(x, y)] + ([] if val is None else [val]):
        if len(xs) != len(ys):
            raise ValueError(f"x has {len(xs)} examples but y has {len(ys)}")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    if val is not None:  # appended: one evaluation pass covers both
        x = jnp.concatenate([x, jnp.asarray(val[0], jnp.float32)])
        y = jnp.concatenate([y, jnp.asarray(val[1], y.dtype)])
    return x, y, n, bool(classification)


def _check_model_fits_data(
    graphdef: Any,
    params: Any,
    mstate: Any,
    x: jax.Array,
    y: jax.Array,
    classification: bool,
    num_classes: int,
    default_loss: bool,
) -> None:
    """Raise a ``ValueError`` naming the argument when the model cannot take the data's inputs,
    has fewer outputs than the data's classes, or (with the default loss) gives outputs of
    another size than the regression targets. Shapes only (``jax.eval_shape``): nothing runs."""
    features = tuple(x.shape[1:])
    try:
        out = jax.eval_shape(
            lambda p, s, xx: apply_model(graphdef, p, s, xx, train=False)[0],
            params,
            mstate,
            jax.ShapeDtypeStruct((2, *features), x.dtype),
        )
    except (TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        per = features[0] if len(features) == 1 else features
        raise ValueError(
            f"data: the model cannot take the inputs, {per} features per example (check the "
            f"model's input size, e.g. MLP's in_features): {first}"
        ) from e
    out_shape = tuple(getattr(out, "shape", ()))
    if classification:
        if len(out_shape) != 2:
            raise ValueError(
                f"model: a classifier must output (batch, num_classes) logits, got outputs of "
                f"shape {out_shape} for a batch of 2"
            )
        width = out_shape[1]
        if num_classes > width:
            raise ValueError(
                f"model: it has {width} outputs but the data has num_classes={num_classes} "
                "(e.g. MLP's out_features must be >= the number of classes)"
            )
        labels = np.asarray(y)
        if labels.size and (labels.min() < 0 or labels.max() >= width):
            raise ValueError(
                f"data: class labels must lie in [0, {width}) for a model with {width} outputs, "
                f"got labels from {labels.min()} to {labels.max()}"
            )
    elif default_loss:
        outputs, targets = math.prod(out_shape[1:]), math.prod(y.shape[1:])
        if outputs != targets:
            raise ValueError(
                f"model: it gives {outputs} outputs per example but the regression targets "
                f"have {targets} per example (e.g. MLP's out_features)"
            )


def _fingerprint(x: jax.Array, y: jax.Array) -> str:
    """SHA-256 of the training and validation examples as :func:`train` uses them (shapes,
    dtypes and bytes): a resumed run must see the data it was checkpointed with."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: Entries of each parameter leaf the optimizer probe's summaries read.
_PROBE_ENTRIES = 4096


def _optimizer_probe(optimizer: optax.GradientTransformation, params: Any) -> list[float] | None:
    """Two updates of ``optimizer`` on a fixed quadratic over ``params``' structure (fixed start,
    curvatures and gradients; ``value``, ``grad`` and ``value_fn`` passed, so line searches run
    too), each summarised by a weighted sum and the absolute sum of its entries (the first
    4096 of every leaf, summed on the host in float64).

    A checkpoint stores these four numbers and a resume recomputes them: the state restore
    catches another optimizer *structure*, this catches what the structure does not show (a
    learning rate, a momentum, a weight decay changed between the runs). ``None`` when the
    optimizer cannot take the probe (it raised); the resume then skips the comparison."""
    leaves, treedef = jax.tree.flatten(params)

    def pattern(fn):  # the same numbers for the same structure, in each leaf's dtype
        out, offset = [], 0
        for leaf in leaves:
            i = offset + jnp.arange(leaf.size, dtype=jnp.float32).reshape(leaf.shape)
            out.append(fn(i).astype(leaf.dtype))
            offset += leaf.size
        return treedef.unflatten(out)

    @jax.jit
    def probe():
        curvature = pattern(lambda i: 1.0 + jnp.mod(i, 5.0))
        objective = lambda p: 0.5 * optax.tree.vdot(curvature, optax.tree.mul(p, p))  # noqa: E731
        opt = optax.with_extra_args_support(optimizer)
        # cos of small arguments (exact mod): the same start, to an ulp, on every platform
        p = pattern(lambda i: 1.0 + 0.5 * jnp.cos(jnp.mod(i, 97.0)))
        state, updates = opt.init(p), []
        for _ in range(2):
            value, grad = jax.value_and_grad(objective)(p)
            u, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
            p = optax.apply_updates(p, u)
            updates.append([jnp.ravel(x)[:_PROBE_ENTRIES] for x in jax.tree.leaves(u)])
        return updates

    try:
        updates = jax.device_get(probe())
    except Exception:  # an optimizer that needs other inputs: no probe, no comparison
        return None
    summary = []
    with np.errstate(all="ignore"):  # a diverging optimizer's probe is inf/nan, compared as such
        for u in updates:
            u = np.concatenate([np.asarray(x, np.float64) for x in u])
            weights = np.cos(0.37 * np.arange(u.size))
            summary += [float(weights @ u), float(np.abs(u).sum())]
    return summary


def _check_optimizer_probe(directory: str, stored: Any, current: Any, params: Any) -> None:
    """``ValueError`` unless the probe summaries agree to :math:`10^{-6}` (8 machine epsilons
    for 16-bit parameters) relative to the size of each update: the same optimizer gives the
    same numbers to the last bits on one platform, and to a few units in the last place of
    the parameter dtype on another."""
    if stored is None or current is None:
        return
    leaves = jax.tree.leaves(params)
    floats = [leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    rtol = max([1e-6] + [8.0 * float(jnp.finfo(dtype).eps) for dtype in floats])
    a, b = np.asarray(stored, np.float64), np.asarray(current, np.float64)
    if a.shape == b.shape == (4,):
        size = np.repeat(np.maximum(np.abs(a[1::2]), np.abs(b[1::2])), 2)  # each update's size
        with np.errstate(all="ignore"):  # inf - inf: equal infinities agree through a == b
            agree = (a == b) | (np.abs(a - b) <= rtol * size) | (np.isnan(a) & np.isnan(b))
        if agree.all():
            return
    raise ValueError(
        f"cannot resume from {directory!r}: it was written with another optimizer or other "
        f"optimizer hyperparameters (the same state structure, but two probe updates differ: "
        f"{np.round(a, 6).tolist()} stored, {np.round(b, 6).tolist()} now); resuming "
        "must repeat the run's arguments (start a new checkpoint_dir to change them)"
    )


#: Run options a checkpoint records and a resume must repeat (checked when the checkpoint has
#: them: older checkpoints stored only the first three).
_RESUME_KEYS = (
    "batch_size",
    "seed",
    "n",
    "n_val",
    "value_from",
    "min_delta",
    "restore_best",
    "line_search",
    "data_sha256",
)
_ALWAYS_STORED = ("batch_size", "seed", "n")


def _check_resume_config(directory: str, manifest: dict, config: dict) -> None:
    """``ValueError`` unless ``config`` repeats the options the checkpoint was written with."""
    meta = manifest.get("metadata")
    stored = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(stored, dict) or not isinstance(meta.get("history"), list):
        raise ckpt.CheckpointError(
            f"{directory!r} is not a checkpoint written by gradlab.lab.train (its metadata has "
            "no run configuration or history)"
        )
    for k in _RESUME_KEYS:
        if k not in stored and k not in _ALWAYS_STORED:
            continue
        if stored.get(k) != config[k]:
            what = {
                "data_sha256": "other training or validation data (its SHA-256 differs)",
                "n": "another number of training examples",
                "n_val": "another number of validation examples",
            }.get(k, f"{k}={stored.get(k)!r}, this call has {k}={config[k]!r}")
            if k in ("n", "n_val"):
                what += f" ({stored.get(k)!r}, this call has {config[k]!r})"
            raise ValueError(
                f"cannot resume from {directory!r}: it was written with {what}; resuming "
                "must repeat the run's arguments (start a new checkpoint_dir to change them)"
            )


def train(
    model: nnx.Module | ModelParts,
    optimizer: optax.GradientTransformation,
    data: Dataset | tuple[Any, Any],
    *,
    epochs: int = 10,
    batch_size: int | str | None = 32,
    val: Any = "auto",
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    seed: int = 0,
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    value_from: Literal["batch", "val"] | None = "batch",
    line_search: bool = False,
    stop_on_nonfinite: bool = True,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    donate: bool = True,
) -> TrainResult:
    """Train ``model`` with ``optimizer`` on ``data``, one compiled program per epoch.

    Args:
      model: an ``nnx.Module`` (e.g. :class:`gradlab.lab.models.MLP`; updated in place with the
        final parameters) or :class:`~gradlab.lab.models.ModelParts` from ``split_model``.
      optimizer: any optax-compatible ``GradientTransformation`` (gradlab's or optax's).
      data: a :class:`~gradlab.lab.data.Dataset` or an ``(x, y)`` pair. Integer ``y`` means
        classification (softmax cross-entropy, accuracy), float ``y`` regression (mean squared
        error).
      epochs: total number of epochs (a resumed run continues up to this number).
      batch_size: ``1`` (stochastic GD), ``b`` (mini-batch) or ``"all"``/``None`` (batch GD).
        Each epoch draws a new permutation and drops its last ``n mod b`` examples so that every
        batch has the same shape.
      val: ``"auto"`` (the dataset's validation split, if any), ``True``, ``False``/``None``, or
        an explicit ``(x_val, y_val)`` pair.
      loss_fn: per-example loss ``(outputs, targets) -> (batch,)``; default
        :func:`cross_entropy` or :func:`squared_error`.
      seed: seed of the permutations and dropout masks.
      patience: stop when the validation loss has not improved by more than ``min_delta`` for
        this many epochs (``None`` disables early stopping).
      min_delta: minimum decrease of the validation loss that counts as an improvement.
      restore_best: return (and keep) the parameters of the best validation epoch.
      value_from: what ``optimizer.update`` receives as ``value=``: the mini-batch loss
        (``"batch"``), the latest validation loss (``"val"``) or nothing (``None``).
      line_search: also pass ``grad=`` and ``value_fn=`` (the mini-batch loss as a function of
        the parameters, same batch and dropout mask) -- what line searches and L-BFGS
        (gradlab's or ``optax.lbfgs``) consume. Needs ``value_from="batch"``.
      stop_on_nonfinite: stop when the training loss becomes NaN or infinite
        (``status="non_finite"``). With ``False`` the run goes on to ``epochs``, and its status
        is still ``"non_finite"`` when the final training loss is not finite. Resuming a run
        that stopped as ``"non_finite"`` returns it as it was, without training.
      progress: show a ``tqdm`` progress bar.
      checkpoint_dir: save the :class:`TrainState` and history here every ``checkpoint_every``
        epochs and at the end.
      checkpoint_every: epochs between checkpoints.
      resume: continue from ``checkpoint_dir`` if it holds a checkpoint (a ``manifest.json``;
        bit-identical to an uninterrupted run with the same arguments). A checkpoint that
        cannot be restored raises instead of starting over, and so does one written with
        other run options (``batch_size``, ``seed``, ``value_from``, ``min_delta``,
        ``restore_best``, ``line_search``, other data) or more epochs than ``epochs``.
        Optimizer hyperparameters are checked only through the structure of their state.
      donate: donate the state buffers to the compiled epoch (halves peak memory).

    Returns:
      A :class:`TrainResult` with the model, the final state and the :class:`History`.

    Raises:
      ValueError: bad arguments (batch size, epochs, patience without validation data...),
        resuming with other run options or data than the checkpoint was written with, or
        a model that does not fit the data: it cannot take the inputs (e.g. MLP's
        ``in_features`` differs from the number of features), has fewer outputs than the
        dataset's classes, a class label outside ``[0, outputs)``, or (default loss) another
        output size than the regression targets.
      gradlab.lab.checkpoint.CheckpointMismatchError: resuming from a checkpoint written for a
        different model or optimizer (names the key path).
      gradlab.lab.checkpoint.CheckpointError: resuming from a broken checkpoint (unreadable
        manifest, unsupported format version, missing or corrupt state file).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if value_from not in ("batch", "val", None):
        raise ValueError(f"value_from must be 'batch', 'val' or None, got {value_from!r}")
    if line_search and value_from != "batch":
        raise ValueError("line_search=True needs value_from='batch' (the mini-batch objective)")
    if patience is not None and (isinstance(patience, bool) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )
    x, y, n, classification = _resolve_data(data, val)
    num_classes = int(data.num_classes) if isinstance(data, Dataset) else 0
    has_val = x.shape[0] > n
    if (patience is not None or restore_best or value_from == "val") and not has_val:
        raise ValueError("patience, restore_best and value_from='val' need validation data")
    default_loss = loss_fn is None
    if loss_fn is None:
        loss_fn = cross_entropy if classification else squared_error
    b = resolve_batch_size(batch_size, n)
    if isinstance(model, ModelParts):
        graphdef, params, mstate = model
        module = None
    elif isinstance(model, nnx.Module):
        (graphdef, params, mstate), module = split_model(model), model
    else:
        raise TypeError("model must be an nnx.Module or ModelParts")
    _check_model_fits_data(
        graphdef, params, mstate, x, y, classification, num_classes, default_loss
    )
    spec = _Spec(
        graphdef,
        optimizer,
        loss_fn,
        classification,
        n,
        b,
        value_from,
        float(min_delta),
        line_search,
    )
    ts = TrainState(
        params=params,
        model_state=mstate,
        opt_state=optimizer.init(params),
        key=jax.random.key_data(jax.random.key(seed)),
        epoch=jnp.zeros((), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        last_val=jnp.asarray(jnp.nan, jnp.float32),
        best_val=jnp.asarray(jnp.inf, jnp.float32),
        best_epoch=jnp.asarray(-1, jnp.int32),
        bad_epochs=jnp.zeros((), jnp.int32),
        best_params=params if restore_best else None,
        best_model_state=mstate if restore_best else None,
    )
    config = dict(batch_size=b, seed=seed, n=n, value_from=value_from, min_delta=min_delta)
    if checkpoint_dir is not None:
        config.update(
            n_val=int(x.shape[0] - n),
            restore_best=bool(restore_best),
            line_search=bool(line_search),
            data_sha256=_fingerprint(x, y),
            optimizer_probe=_optimizer_probe(optimizer, params),
        )
    if resume and ckpt.checkpoint_exists(checkpoint_dir):
        # the run's configuration first (a clear message), then the state against the template
        manifest = ckpt.read_manifest(checkpoint_dir)
        _check_resume_config(checkpoint_dir, manifest, config)
        ts, meta = ckpt.restore_checkpoint(checkpoint_dir, ts)  # the state's structure
        stored_probe = manifest["metadata"]["config"].get("optimizer_probe")
        _check_optimizer_probe(checkpoint_dir, stored_probe, config["optimizer_probe"], params)
        rows = list(meta["history"])
        if int(ts.epoch) > epochs:
            raise ValueError(
                f"cannot resume from {checkpoint_dir!r}: it holds {int(ts.epoch)} epochs, more "
                f"than epochs={epochs} (a resumed run continues up to `epochs`, never back)"
            )
    else:  # row 0: the initial model
        first = _metrics(graphdef, loss_fn, classification, n, params, mstate, x, y)
        ts = ts._replace(last_val=first[2])
        first = {k: float(v) for k, v in zip(METRICS, (*first, math.nan), strict=True)}
        rows = [dict(epoch=0.0, step=0.0, examples=0.0, time=0.0, **first)]
    # Fresh device buffers, one per leaf: the state is donated to the compiled epoch (the
    # user's arrays must survive; optimizer states may share arrays; best_params is params).
    # An explicit dtype also drops weak types (as the epoch's outputs do): one compilation.
    ts = jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype, copy=True), ts)
    run_epoch = _RUN_EPOCH[bool(donate)]
    start = int(ts.epoch)
    # A resumed run that had already stopped stays stopped, as the uninterrupted run did.
    stopped_early = patience is not None and int(ts.bad_epochs) >= patience
    status = "early_stopped" if stopped_early else "completed"
    if start > 0 and stop_on_nonfinite and not math.isfinite(rows[-1]["train_loss"]):
        status = "non_finite"
    bar = None
    if progress and status == "completed" and start < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc="train", unit="epoch", leave=False)
    for _ in range(start, epochs if status == "completed" else start):
        t0 = time.perf_counter()
        ts, metrics = run_epoch(ts, x, y, spec)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        e, s = int(ts.epoch), int(ts.step)
        elapsed = time.perf_counter() - t0
        rows.append(dict(epoch=e, step=s, examples=s * b, time=elapsed, **metrics))
        if bar is not None:
            bar.update(1)
            val = f", val {metrics['val_loss']:.4g}" if has_val else ""
            bar.set_postfix_str(f"loss {metrics['train_loss']:.4g}{val}")
        if stop_on_nonfinite and not math.isfinite(metrics["train_loss"]):
            status = "non_finite"
        elif patience is not None and int(ts.bad_epochs) >= patience:
            status, stopped_early = "early_stopped", True
        if checkpoint_dir is not None and (
            e % checkpoint_every == 0 or e == epochs or status != "completed"
        ):
            meta = {"history": rows, "config": config}
            ckpt.save_checkpoint(checkpoint_dir, ts, metadata=meta)
        if status != "completed":
            break
    if bar is not None:
        bar.close()
    if not math.isfinite(rows[-1]["train_loss"]):  # also with stop_on_nonfinite=False
        status = "non_finite"

    final = ts
    if restore_best and int(ts.best_epoch) >= 0:
        final = ts._replace(params=ts.best_params, model_state=ts.best_model_state)
    trained = merge_model(graphdef, final.params, final.model_state)
    if module is not None:  # update the user's model in place
        nnx.update(module, nnx.state(trained))
        trained = module
    return TrainResult(trained, final, History.from_rows(rows), stopped_early, status)
