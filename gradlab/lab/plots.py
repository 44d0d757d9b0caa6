"""Headless plots for the lab: loss curves, contour plots with optimizer paths, and animations.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot`` global state,
no display needed), so it works on servers and inside tests; pass ``path=`` to save it. Values
that are NaN or infinite (a diverged run) are masked rather than crashing the plot, and a
diverged curve is cut where it first stops being finite (leading NaNs, such as the missing
epoch-0 value of ``History.batch_loss``, are gaps, not divergence).

Contour plots take a *problem* from :mod:`gradlab.problems` (anything with ``value(x)``,
``xlim``, ``ylim`` and optionally ``minimizers``/``log_levels``) and a mapping ``name -> (T, 2)``
array of iterates, as returned by :func:`gradlab.lab.trajectories.trajectories`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "plot_loss_curves",
    "plot_contour",
    "plot_contour_paths",
    "animate_paths",
    "save_figure",
    "optimizer_colors",
]

# A fixed palette so that an optimizer has the same colour in every figure of a page.
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def optimizer_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per name, in order, cycling through a fixed 10-colour palette."""
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _new_axes(ax: Axes | None, figsize=(6.0, 4.0)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _output_path(path: str | os.PathLike) -> str:
    """``path`` as a string, its parent directories created."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> str:
    """Save ``fig`` to ``path`` (creating parent directories) and return the path as a string."""
    path = _output_path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _finite_prefix(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(y, diverged)``: ``y`` as float with everything from its divergence on set to NaN.

    Leading NaNs are gaps, not divergence (``History.batch_loss`` is NaN in row 0 by design);
    the curve diverged when a value is non-finite after its first finite one, or when it opens
    with an infinity.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    started = np.logical_or.accumulate(~np.isnan(y))  # False on the leading NaNs
    bad = started & ~np.isfinite(y)
    if not bad.any():
        return y, False
    y = y.copy()
    y[int(np.argmax(bad)) :] = np.nan
    return y, True


def plot_loss_curves(
    curves: Mapping[str, Sequence[float] | np.ndarray],
    *,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    logy: bool = True,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    x: Mapping[str, Sequence[float] | np.ndarray] | Sequence[float] | np.ndarray | None = None,
) -> Figure:
    """One line per named loss curve.

    Args:
      curves: ``name -> values`` (a list or 1-D array; JAX arrays are converted).
      ax: draw into this axes instead of a new figure.
      path: if given, save the figure there (PNG, SVG, PDF... from the suffix).
      logy: logarithmic y axis. Non-positive values cannot be shown on it, so the axis falls
        back to ``symlog`` when a curve has a finite value ``<= 0``.
      xlabel, ylabel, title: labels.
      x: x values, shared (one sequence) or per curve (a mapping); default ``0, 1, ...``.

    Returns:
      The figure (one ``Line2D`` per curve). Leading NaNs are gaps (``History.batch_loss`` has
      no value for epoch 0); after the first finite value, a curve is drawn up to its first
      NaN/inf, and such a curve (or one that opens with an infinity) diverged: it is marked with
      an ``x`` at its last finite point and "(diverged)" in its legend label.
    """
    fig, ax = _new_axes(ax)
    colors = optimizer_colors(list(curves))
    any_nonpositive = False
    for name, values in curves.items():
        y, diverged = _finite_prefix(values)
        if isinstance(x, Mapping):
            xs = np.asarray(x[name], dtype=np.float64).reshape(-1)
        elif x is not None:
            xs = np.asarray(x, dtype=np.float64).reshape(-1)
        else:
            xs = np.arange(y.size, dtype=np.float64)
        label = f"{name} (diverged)" if diverged else str(name)
        (line,) = ax.plot(xs, y, label=label, color=colors[name], lw=1.5)
        finite = np.isfinite(y)
        if diverged and finite.any():
            last = int(np.nonzero(finite)[0][-1])
            ax.plot([xs[last]], [y[last]], marker="x", color=line.get_color(), ms=8, ls="none")
        if np.any(y[finite] <= 0):
            any_nonpositive = True
    if logy:
        if any_nonpositive:
            ax.set_yscale("symlog", linthresh=1e-8)
        else:
            ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig


def _grid_values(problem: Any, xlim, ylim, resolution: int) -> tuple[np.ndarray, ...]:
    """Evaluate ``problem.value`` on a grid, vectorised with ``jax.vmap`` (one compile)."""
    import jax
    import jax.numpy as jnp

    xs = np.linspace(xlim[0], xlim[1], resolution)
    ys = np.linspace(ylim[0], ylim[1], resolution)
    X, Y = np.meshgrid(xs, ys)
    pts = jnp.asarray(np.stack([X.ravel(), Y.ravel()], axis=-1), dtype=jnp.float32)
    Z = np.asarray(jax.jit(jax.vmap(problem.value))(pts), dtype=np.float64).reshape(X.shape)
    return X, Y, Z


def _levels(Z: np.ndarray, log: bool, n: int, minimum: float | None) -> tuple[np.ndarray, bool]:
    finite = Z[np.isfinite(Z)]
    if finite.size == 0:
        return np.linspace(0.0, 1.0, n), False
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        base = float(minimum) if minimum is not None and np.isfinite(minimum) else lo
        shifted_lo = max(lo - base, 0.0)
        shifted_hi = hi - base
        floor = max(shifted_lo, shifted_hi * 1e-6, 1e-12)
        if shifted_hi > floor:  # else (a flat window) linear levels around the value
            return base + np.logspace(np.log10(floor), np.log10(shifted_hi), n), True
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n), False


def _check_levels(levels: Any) -> None:
    """``levels`` is a number of levels ``>= 2`` or at least 2 increasing finite values."""
    if isinstance(levels, bool):
        raise TypeError(f"levels must be an int >= 2 or a sequence of levels, got {levels!r}")
    if isinstance(levels, numbers.Integral):
        if levels < 2:
            raise ValueError(f"levels must be >= 2 (contour levels bound bands), got {levels}")
        return
    try:
        lv = np.asarray(levels, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"levels must be an int >= 2 or a sequence of levels, got {levels!r}"
        ) from None
    if lv.ndim != 1 or lv.size < 2 or not np.all(np.isfinite(lv)) or np.any(np.diff(lv) <= 0):
        raise ValueError(
            "levels must be an int >= 2 or at least 2 finite, strictly increasing values, got "
            f"{levels!r}"
        )


def plot_contour(
    problem: Any,
    *,
    ax: Axes | None = None,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    levels: int | Sequence[float] = 30,
    log_levels: bool | None = None,
    resolution: int = 200,
    filled: bool = True,
    show_minimizers: bool = True,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Contour plot of a 2-D test function over its suggested window.

    Args:
      problem: an object with ``value(x)`` for a length-2 ``x`` and ``xlim``/``ylim``
        (a :class:`gradlab.problems.Problem`).
      levels: the number of contour levels (an int ``>= 2``, numpy ints included), or the
        levels themselves (at least 2 finite, strictly increasing values).
      log_levels: geometrically spaced levels above the minimum (default: the problem's
        ``log_levels`` attribute, else True when the function is bounded below on the window).
      resolution: grid points per axis.
      filled: draw filled contours under the lines.
      show_minimizers: mark ``problem.minimizers`` with stars.

    Returns:
      The figure. Contour artists are collections, not lines, so ``ax.get_lines()`` holds only
      the minimiser markers (and the optimizer paths when called from
      :func:`plot_contour_paths`).

    Raises:
      ValueError: fewer than 2 levels, or levels that are not finite and strictly increasing.
    """
    _check_levels(levels)
    fig, ax = _new_axes(ax, figsize=(6.0, 5.0))
    xlim = tuple(xlim if xlim is not None else problem.xlim)
    ylim = tuple(ylim if ylim is not None else problem.ylim)
    X, Y, Z = _grid_values(problem, xlim, ylim, resolution)
    if log_levels is None:
        log_levels = bool(getattr(problem, "log_levels", True))
    minimum = getattr(problem, "minimum", None)
    if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
        lv, used_log = _levels(Z, log_levels, int(levels), minimum)
    else:
        lv, used_log = np.asarray(levels, dtype=np.float64), log_levels
    Zm = np.ma.masked_invalid(Z)
    if filled:
        if used_log:
            from matplotlib import colormaps
            from matplotlib.colors import BoundaryNorm

            # One colour per band, the two extensions included (more than 255 levels too).
            cmap = colormaps["viridis"].resampled(max(256, len(lv) + 1))
            norm = BoundaryNorm(lv, ncolors=cmap.N, extend="both")
            ax.contourf(X, Y, Zm, levels=lv, cmap=cmap, norm=norm, alpha=0.55, extend="both")
        else:
            ax.contourf(X, Y, Zm, levels=lv, cmap="viridis", alpha=0.55, extend="both")
    ax.contour(X, Y, Zm, levels=lv, colors="k", linewidths=0.4, alpha=0.5)
    mins = np.asarray(getattr(problem, "minimizers", np.zeros((0, 2))), dtype=np.float64)
    if show_minimizers and mins.size:
        mins = mins.reshape(-1, mins.shape[-1])
        ax.plot(mins[:, 0], mins[:, 1], "r*", ms=14, ls="none", label="_minimizers")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title if title is not None else str(getattr(problem, "name", "")))
    if path is not None:
        save_figure(fig, path)
    return fig


def _as_paths(paths: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, p in paths.items():
        arr = np.asarray(p, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"path {name!r} must have shape (T, 2), got {arr.shape}")
        out[name] = arr
    return out


def plot_contour_paths(
    problem: Any,
    paths: Mapping[str, np.ndarray],
    *,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    levels: int | Sequence[float] = 30,
    log_levels: bool | None = None,
    resolution: int = 200,
    markevery: int | None = None,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """Contours of a 2-D test function with one optimizer path per entry of ``paths``.

    Args:
      problem: a 2-D :class:`gradlab.problems.Problem` (or anything with ``value``, ``xlim``,
        ``ylim``).
      paths: ``name -> (T, 2)`` iterates (JAX or numpy); non-finite points are dropped from the
        line, so a diverging optimizer simply leaves the window.
      path: save the figure there.
      markevery: put a dot every ``markevery`` iterates (default: about 20 per path).

    Returns:
      The figure; ``ax.get_lines()`` holds one line per path (labelled with its name), plus one
      marker line for the start point and one for the minimisers (when the problem has any).

    Raises:
      ValueError: a path is not shaped ``(T, 2)``.
    """
    arrs = _as_paths(paths)
    fig = plot_contour(
        problem,
        ax=ax,
        xlim=xlim,
        ylim=ylim,
        levels=levels,
        log_levels=log_levels,
        resolution=resolution,
        title=title,
    )
    ax = fig.axes[0] if ax is None else ax
    colors = optimizer_colors(list(arrs))
    starts = []
    for name, p in arrs.items():
        keep = np.all(np.isfinite(p), axis=1)
        q = p.copy()
        q[~keep] = np.nan
        every = markevery or max(1, len(p) // 20)
        ax.plot(
            q[:, 0], q[:, 1], "-o", color=colors[name], lw=1.6, ms=2.5, markevery=every, label=name
        )
        if len(p) and keep[0]:
            starts.append(p[0])
    if starts:
        s = np.asarray(starts)
        ax.plot(s[:, 0], s[:, 1], "ko", ms=6, ls="none", label="_start")
    if arrs:
        ax.legend(loc="upper right", fontsize="small")
    if path is not None:
        save_figure(fig, path)
    return fig


def animate_paths(
    problem: Any,
    paths: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    frames: int | None = 60,
    fps: int = 15,
    tail: int | None = None,
    title: str | None = None,
    levels: int | Sequence[float] = 30,
    log_levels: bool | None = None,
    resolution: int = 150,
    dpi: int = 80,
    figsize: tuple[float, float] = (5.0, 4.2),
) -> str:
    """Write an animated GIF of several optimizers racing on a 2-D function.

    The contour background is drawn once; each frame advances every path to the same iterate
    (a frame shows iterates ``0..k``), with a head marker on the current point. Written with
    :class:`matplotlib.animation.PillowWriter` (no ffmpeg needed).

    Args:
      problem: a 2-D :class:`gradlab.problems.Problem`.
      paths: ``name -> (T, 2)`` iterates; paths may differ in length (a shorter one stops).
      path: output file (``.gif``); parent directories are created.
      frames: number of frames; iterates are subsampled evenly (``None``: one per iterate).
        The GIF has exactly ``min(frames, T)`` frames, where ``T`` is the longest path.
      fps: frames per second.
      tail: draw only the last ``tail`` iterates of each path (``None``: the whole history).
      dpi, figsize: output size.

    Returns:
      The path written, as a string.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    arrs = _as_paths(paths)
    if not arrs:
        raise ValueError("animate_paths needs at least one path")
    T = max(len(p) for p in arrs.values())
    n_frames = T if frames is None else max(1, min(int(frames), T))
    # n_frames <= T, so the rounded, evenly spaced iterate indices are distinct.
    steps = np.linspace(0, T - 1, n_frames).round().astype(int)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    plot_contour(
        problem, ax=ax, levels=levels, log_levels=log_levels, resolution=resolution, title=title
    )
    colors = optimizer_colors(list(arrs))
    lines, heads = {}, {}
    for name in arrs:
        (lines[name],) = ax.plot([], [], "-", color=colors[name], lw=1.8, label=name)
        (heads[name],) = ax.plot([], [], "o", color=colors[name], ms=6)
    ax.legend(loc="upper right", fontsize="small")
    label = ax.text(
        0.02, 0.02, "", transform=ax.transAxes, fontsize="small", va="bottom", ha="left"
    )

    def draw(frame_index):
        k = int(steps[frame_index])
        for name, p in arrs.items():
            stop = min(k, len(p) - 1)
            start = 0 if tail is None else max(0, stop + 1 - tail)
            seg = p[start : stop + 1]
            lines[name].set_data(seg[:, 0], seg[:, 1])
            heads[name].set_data(seg[-1:, 0], seg[-1:, 1])
        label.set_text(f"step {k}")
        return [*lines.values(), *heads.values(), label]

    anim = FuncAnimation(fig, draw, frames=len(steps), blit=False)
    path = _output_path(path)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=dpi)
    return path
