r"""Run optimizers on a test function and record their paths.

For a problem $f$ (a :class:`gradlab.problems.Problem`) and a gradient transformation, the path is
the sequence of iterates

.. math::  x_0 = \text{start}, \qquad x_{t+1} = x_t + u_t,\quad
           (u_t, s_{t+1}) = \text{update}(\nabla f(x_t), s_t, x_t),

for ``t = 0 .. steps-1``, so a path has ``steps + 1`` rows. Each optimizer's run is one jitted
``lax.scan`` (one compilation per optimizer). Transformations that take the library's extra
arguments (line searches, second-order pieces: :class:`optax.GradientTransformationExtraArgs`)
receive ``value``, ``grad`` and ``value_fn`` at every step.

Several starting points can be run at once: a ``start`` of shape ``(B, dim)`` is vmapped and gives
a ``(B, steps + 1, dim)`` path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import problems as _problems

__all__ = ["trajectory", "trajectories", "path_values", "summarize"]


def _scan_path(problem, optimizer, steps: int, start: jax.Array):
    fn = problem.value
    value_and_grad = jax.value_and_grad(fn)
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def step(carry, _):
        x, state = carry
        value, grad = value_and_grad(x)
        if extra:
            updates, state = optimizer.update(grad, state, x, value=value, grad=grad, value_fn=fn)
        else:
            updates, state = optimizer.update(grad, state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), x

    state = optimizer.init(start)
    _, xs = jax.lax.scan(step, (start, state), None, length=steps)
    return jnp.concatenate([start[None], xs], axis=0)


def trajectory(
    problem: Any,
    optimizer: optax.GradientTransformation,
    steps: int = 100,
    start: Any = None,
) -> np.ndarray:
    """The iterates of ``optimizer`` on ``problem``, one compiled ``lax.scan``.

    Args:
      problem: a :class:`gradlab.problems.Problem` or its registry name.
      optimizer: any optax-compatible gradient transformation.
      steps: number of updates (a Python int).
      start: the first iterate, shape ``(dim,)``, or ``(B, dim)`` for ``B`` starts run together
        under ``vmap``; default the problem's classic start.

    Returns:
      A float32 numpy array of shape ``(steps + 1, dim)`` (or ``(B, steps + 1, dim)``). A run that
      diverges carries NaN/inf from the step it stops being finite.

    Raises:
      ValueError: ``steps`` is not a positive int or ``start`` has the wrong shape.
    """
    problem = _problems.get(problem)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"trajectory: steps must be an int >= 1, got {steps!r}")
    start = problem.start if start is None else start
    start = jnp.asarray(start, dtype=jnp.float32)
    if start.ndim not in (1, 2) or start.shape[-1] != problem.dim:
        raise ValueError(
            f"trajectory: start must have shape ({problem.dim},) or (B, {problem.dim}) for "
            f"{problem.name}, got {start.shape}"
        )
    run = lambda s: _scan_path(problem, optimizer, int(steps), s)
    if start.ndim == 2:
        run = jax.vmap(run)
    return np.asarray(jax.jit(run)(start))


def trajectories(
    problem: Any,
    optimizers: Mapping[str, optax.GradientTransformation],
    steps: int = 100,
    start: Any = None,
) -> dict[str, np.ndarray]:
    """:func:`trajectory` for each named optimizer, from the same start.

    Returns:
      ``name -> (steps + 1, dim)`` paths, in the order of ``optimizers``; ready for
      :func:`gradlab.lab.plots.plot_contour_paths` and :func:`gradlab.lab.plots.animate_paths`.
    """
    return {name: trajectory(problem, opt, steps, start) for name, opt in optimizers.items()}


def path_values(problem: Any, paths: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The function value at every iterate of every path (``name -> (T,)``)."""
    problem = _problems.get(problem)
    f = jax.jit(jax.vmap(problem.value))
    return {
        name: np.asarray(f(jnp.asarray(p, jnp.float32).reshape(-1, problem.dim))).reshape(
            np.shape(p)[:-1]
        )
        for name, p in paths.items()
    }


def summarize(problem: Any, paths: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per path: the final point, its value and distance to the nearest minimiser.

    A multi-start path of shape ``(B, steps + 1, dim)`` (from a ``(B, dim)`` ``start``) gives one
    row per start, in order.

    Returns:
      A list of dicts with keys ``name``, ``start`` (the start's index in a multi-start path,
      ``None`` for a single ``(steps + 1, dim)`` path), ``final`` (the last iterate), ``value``
      (``f`` there), ``distance`` (to the nearest known minimiser; ``inf`` when the problem has
      none, NaN when the run diverged) and ``diverged`` (the path left the finite numbers).

    Raises:
      ValueError: a path is not shaped ``(T, dim)`` or ``(B, T, dim)``.
    """
    problem = _problems.get(problem)
    arrays = {}
    for name, p in paths.items():
        p = np.asarray(p)
        if p.ndim not in (2, 3) or p.shape[-1] != problem.dim or p.shape[-2] == 0:
            raise ValueError(
                f"summarize: path {name!r} must have shape (T, {problem.dim}) or "
                f"(B, T, {problem.dim}) with T >= 1, got {p.shape}"
            )
        arrays[name] = p
    values = path_values(problem, arrays)
    rows = []
    for name, p in arrays.items():
        if p.ndim == 2:
            starts = [(None, p, values[name])]
        else:
            starts = zip(range(len(p)), p, values[name], strict=True)
        for index, path, vals in starts:
            final = path[-1]
            v = float(vals[-1])
            rows.append(
                {
                    "name": name,
                    "start": index,
                    "final": final,
                    "value": v,
                    "distance": problem.distance_to_minimizer(final),
                    "diverged": not (np.all(np.isfinite(path)) and np.isfinite(v)),
                }
            )
    return rows
