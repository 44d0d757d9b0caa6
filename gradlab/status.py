"""Per-run status codes reported by solvers, line searches and sweeps (never exceptions).

Inside compiled code a run cannot raise; it reports one of these int32 codes instead, and one
member of a vmapped batch failing never stops the others.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    """Outcome of a run, a solver, or the last line search."""

    RUNNING = -1  #: still iterating (inside a loop only).
    CONVERGED = 0  #: the tolerance was met (relative to the starting gradient norm).
    MAX_STEPS = 1  #: the step budget ran out before convergence.
    NON_FINITE = 2  #: a value, gradient or update was NaN/Inf; the run was frozen there.
    LINE_SEARCH_FAILED = 3  #: no acceptable step was found; the step was rejected.
    INVALID_HYPERPARAMETER = 4  #: a hyperparameter was outside its valid range.
    NOT_DESCENT = 5  #: the search direction was not a descent direction.
    UNBOUNDED = 6  #: the objective decreased without bound (step hit its maximum).
    NEGATIVE_CURVATURE = 7  #: an inner CG met non-positive curvature.
    OK = 8  #: a step (or a sweep run) finished normally.
    #: a training run's loss became non-finite or exceeded the divergence threshold; the run
    #: was frozen at its last good state (sweeps).
    DIVERGED = 9

    @property
    def label(self) -> str:
        return self.name.lower()


def as_code(status: Status) -> jnp.ndarray:
    """The int32 array form used inside compiled code."""
    return jnp.asarray(int(status), jnp.int32)


def describe(code) -> str:
    """Human name of a (concrete) status code: ``describe(0) == 'converged'``."""
    return Status(int(code)).label
