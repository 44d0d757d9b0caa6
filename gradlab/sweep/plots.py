"""Plots of a sweep: learning curves per setting and a heatmap of the final metric over the grid."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gradlab.sweep.result import maximise


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _seed_mean(result, values: np.ndarray) -> np.ndarray:
    """``(R, ...)`` -> ``(settings, ...)`` NaN-mean over seeds (NaN if every seed is NaN)."""
    n = len(result.seeds)
    v = values.reshape(len(result.settings), n, *values.shape[1:])
    with np.errstate(all="ignore"):
        count = np.sum(np.isfinite(v), axis=1)
        total = np.nansum(v, axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _varying(result) -> list[str]:
    out = []
    for n in result.names:
        vals = {repr(s[n]) for s in result.settings}
        if len(vals) > 1:
            out.append(n)
    return out


def _sorted_values(result, name: str) -> list[Any]:
    seen = []
    for s in result.settings:
        if s[name] not in seen:
            seen.append(s[name])
    try:
        return sorted(seen)
    except TypeError:
        return seen


def plot_result(result, path: str | os.PathLike | None = None, *, metric: str | None = None):
    """Draw learning curves and a final-value heatmap; see :meth:`SweepResult.plot`."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = metric or result.primary
    if metric not in result.curves:
        raise ValueError(f"unknown metric {metric!r}; have {sorted(result.curves)}")
    curves = _seed_mean(result, result.curves[metric])
    final = _seed_mean(result, result.curves[metric][:, -1])
    better_max = maximise(metric)
    fig, (ax_c, ax_h) = plt.subplots(1, 2, figsize=(12, 4.8))

    # ---- learning curves (colour: first varying axis; line style: second)
    varying = _varying(result)
    cmap = plt.get_cmap("viridis")
    n = len(result.settings)
    log = (not better_max) and np.nanmin(curves, initial=np.inf) > 0
    c_vals = _sorted_values(result, varying[0]) if varying else [None]
    s_vals = _sorted_values(result, varying[1]) if len(varying) > 1 else [None]
    styles = ["-", "--", ":", "-."]
    for i, setting in enumerate(result.settings):
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in setting.items()) or "run"
        ci = c_vals.index(setting[varying[0]]) if varying else 0
        si = s_vals.index(setting[varying[1]]) if len(varying) > 1 else 0
        ax_c.plot(
            result.steps,
            curves[i],
            color=cmap(ci / max(len(c_vals) - 1, 1)),
            ls=styles[si % len(styles)],
            lw=1.2,
            label=label,
        )
    start = curves[:, 0][np.isfinite(curves[:, 0])]
    if not better_max and start.size and np.isfinite(curves).any():
        # Runs that blow up would flatten the others: clip above the start (10x on a log axis,
        # half its size more on a linear one, so that negative losses work too), never below
        # any run's first value.
        top = float(np.median(start))
        low = float(np.nanmin(np.where(np.isfinite(curves), curves, np.nan)))
        upper = max(top * 10 if log else top + 0.5 * abs(top), float(np.max(start)))
        if upper > low:
            ax_c.set_ylim(low / 2 if log else low, upper)
    if log:
        ax_c.set_yscale("log")
    ax_c.set_xlabel("step")
    ax_c.set_ylabel(metric + (" (seed mean)" if len(result.seeds) > 1 else ""))
    ax_c.set_title(f"{metric} during training")
    if n <= 12:
        ax_c.legend(fontsize=7, loc="best")
    elif varying:
        ax_c.text(
            0.99,
            0.99,
            f"colour: {varying[0]}" + (f", style: {varying[1]}" if len(varying) > 1 else ""),
            transform=ax_c.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    ax_c.grid(alpha=0.3)

    # ---- final value over the grid
    title = f"final {metric}" + (" (best over other axes)" if len(varying) > 2 else "")
    if len(varying) >= 2:
        xn, yn = varying[0], varying[1]
        xs, ys = _sorted_values(result, xn), _sorted_values(result, yn)
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, s in enumerate(result.settings):
            v = final[i]
            if not np.isfinite(v):
                continue
            r, c = ys.index(s[yn]), xs.index(s[xn])
            cur = grid[r, c]
            if np.isnan(cur) or (v > cur if better_max else v < cur):
                grid[r, c] = v
        shown = np.ma.masked_invalid(grid)
        cm = plt.get_cmap("viridis" if better_max else "viridis_r").with_extremes(bad="0.8")
        finite = grid[np.isfinite(grid)]
        vmin = vmax = None
        if finite.size:
            vmin, vmax = float(finite.min()), float(finite.max())
            if not better_max and start.size:  # saturate blown-up cells at the start value
                vmax = max(min(vmax, float(np.median(start))), vmin)
        norm = None
        if log and finite.size and vmin > 0:
            from matplotlib.colors import LogNorm

            norm = LogNorm(vmin=vmin, vmax=vmax)
            vmin = vmax = None
        im = ax_h.imshow(
            shown, cmap=cm, norm=norm, vmin=vmin, vmax=vmax, aspect="auto", origin="lower"
        )
        fig.colorbar(im, ax=ax_h, label=f"final {metric}")
        ax_h.set_xticks(range(len(xs)), [_fmt(v) for v in xs], rotation=45, ha="right")
        ax_h.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
        ax_h.set_xlabel(xn)
        ax_h.set_ylabel(yn)
        if grid.size <= 150:
            for r in range(len(ys)):
                for c in range(len(xs)):
                    v = grid[r, c]
                    dark = False
                    if not np.isnan(v):
                        rgba = im.cmap(im.norm(v))
                        dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                    ax_h.text(
                        c,
                        r,
                        "x" if np.isnan(v) else f"{v:.2g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="w" if dark else "k",
                    )
    elif len(varying) == 1:
        xn = varying[0]
        xs = [s[xn] for s in result.settings]
        order = np.argsort(np.arange(len(xs)))
        try:
            order = np.argsort(np.asarray(xs, float))
            numeric = True
        except (TypeError, ValueError):
            numeric = False
        xv = np.asarray(xs, float)[order] if numeric else np.arange(len(xs))
        ax_h.plot(xv, final[order], "o-")
        bad = ~np.isfinite(final[order])
        any_final = np.isfinite(final).any()
        if bad.any():
            # at the lowest final value, or where the runs started when none has one
            first = curves[:, 0][np.isfinite(curves[:, 0])]
            ymin = (
                np.nanmin(final[np.isfinite(final)])
                if any_final
                else (float(np.median(first)) if first.size else 1.0)
            )
            ax_h.plot(xv[bad], np.full(bad.sum(), ymin), "rx", label="diverged / invalid")
            ax_h.legend(fontsize=8)
        if numeric and np.all(xv > 0) and xv.max() / xv.min() > 20:
            ax_h.set_xscale("log")
        if not numeric:
            ax_h.set_xticks(xv, [_fmt(xs[i]) for i in order])
        if log and (any_final or ymin > 0):
            ax_h.set_yscale("log")
        ax_h.set_xlabel(xn)
        ax_h.set_ylabel(f"final {metric}")
        ax_h.grid(alpha=0.3)
    else:
        ax_h.text(0.5, 0.5, f"final {metric}: {final[0]:.4g}", ha="center", va="center")
        ax_h.set_axis_off()
    ax_h.set_title(title)
    fig.suptitle(
        f"{result.info.get('task', 'sweep')}: {len(result.settings)} settings x "
        f"{len(result.seeds)} seeds, {int(result.steps[-1])} steps",
        fontsize=10,
    )
    fig.tight_layout()
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
