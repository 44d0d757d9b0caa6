"""Hyperparameter sweeps: many settings x seeds as one compiled, vmapped, sharded program.

``gradlab.sweep`` is both this package and the function :func:`~gradlab.sweep.engine.sweep`:
calling the module runs a sweep, so ``gradlab.sweep(...)``, ``gradlab.sweep.sweep(...)`` and
``from gradlab.sweep import sweep`` are the same thing::

    import gradlab
    from gradlab.sweep import loguniform, tasks

    result = gradlab.sweep(
        optimizer=lambda lr, momentum: gradlab.sgd(lr, momentum=momentum),
        space={"lr": loguniform(1e-3, 1.0, 8), "momentum": [0.0, 0.9]},
        seeds=2,
        task=tasks.mlp_classifier(dataset="digits"),
        steps=300,
    )
    print(result.table())
"""

from __future__ import annotations

import sys
import types

from gradlab.sweep import tasks as tasks
from gradlab.sweep.engine import choose_strategy as choose_strategy
from gradlab.sweep.engine import sweep as sweep
from gradlab.sweep.program import clear_caches as clear_caches
from gradlab.sweep.result import SweepResult as SweepResult
from gradlab.sweep.result import Table as Table
from gradlab.sweep.space import choice as choice
from gradlab.sweep.space import loguniform as loguniform
from gradlab.sweep.space import uniform as uniform
from gradlab.sweep.tasks import Task as Task
from gradlab.sweep.tasks import custom as custom
from gradlab.sweep.tasks import mlp_classifier as mlp_classifier

__all__ = [
    "sweep",
    "SweepResult",
    "Table",
    "Task",
    "choice",
    "choose_strategy",
    "clear_caches",
    "custom",
    "loguniform",
    "mlp_classifier",
    "tasks",
    "uniform",
    "load",
]


def load(path) -> SweepResult:
    """Read a result written by :meth:`SweepResult.save` (``.npz`` + JSON, never pickle)."""
    return SweepResult.load(path)


class _CallableModule(types.ModuleType):
    """Makes ``gradlab.sweep(...)`` call :func:`gradlab.sweep.engine.sweep`."""

    def __call__(self, *args, **kwargs) -> SweepResult:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
