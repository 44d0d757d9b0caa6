r"""The learning-rate lesson: gradient descent on f(x) = a x^2 as the step size grows.

Gradient descent on :math:`f(x) = a x^2` (curvature :math:`L = f'' = 2a`) is the linear map

.. math::  x_{t+1} = x_t - \eta f'(x_t) = (1 - \eta L)\, x_t ,

so the step size alone decides what happens:

* :math:`\eta < 1/L`: the factor is in (0, 1) -- monotone convergence;
* :math:`\eta = 1/L`: one step lands on the minimum;
* :math:`1/L < \eta < 2/L`: the factor is in (-1, 0) -- oscillating convergence;
* :math:`\eta = 2/L`: bouncing between :math:`\pm x_0` forever;
* :math:`\eta > 2/L`: divergence.

For :math:`f = x^2` (:math:`L = 2`) that is 0.5 and 1 (the deck's runs with
:math:`\eta = 0.1, 0.001, 0.8, 1.1` from :math:`x_0 = 99`). The same :math:`\eta = 0.1` that
converges on :math:`x^2` oscillates on :math:`9x^2` (:math:`L = 18`) and diverges on
:math:`20x^2` (:math:`L = 40`) -- the deck's "another square function" examples.

The script runs all learning rates at once (gradlab's ``sgd`` with the learning rate ``vmap``-ped:
one compiled program), classifies every run numerically and checks the classification against
the theory. It then shows why the learning rate is decayed: with noisy gradients a constant step
stalls at a noise floor while step decay and exponential decay keep going down, and a step decay
rescues a learning rate that starts too large.

Run: ``python examples/02_learning_rate.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import schedules
from gradlab.lab import example_parser, plots
from gradlab.optimizers.sgd import sgd

CURVATURES = {"x^2": 2.0, "9x^2": 18.0, "20x^2": 40.0}  # L = f'' for f = a x^2


def gd_path(learning_rate, curvature: float, x0: float, steps: int, noise=0.0, key=None):
    """Iterates of gradlab ``sgd(learning_rate)`` on f(x) = (L/2) x^2, optionally with gradient
    noise ``noise * N(0, 1)`` (then ``key`` is required). Returns ``(steps + 1,)`` floats."""
    opt = sgd(learning_rate)
    x = jnp.asarray([x0], jnp.float32)
    keys = jax.random.split(key, steps) if key is not None else jnp.zeros((steps, 2), jnp.uint32)

    def step(carry, k):
        x, state = carry
        g = curvature * x
        if key is not None:
            g = g + noise * jax.random.normal(k, x.shape)
        u, state = opt.update(g, state, x)
        x = x + u
        return (x, state), x[0]

    _, xs = jax.lax.scan(step, (x, opt.init(x)), keys)
    return jnp.concatenate([x, xs])


def gd_paths(etas, curvatures, x0s, steps: int) -> np.ndarray:
    """Many noiseless runs at once: ``gd_path`` vmapped over (eta, L, x0), one compilation per
    ``steps`` (gradlab's ``sgd`` accepts a traced learning rate). Returns ``(runs, steps + 1)``."""
    args = [jnp.asarray(np.broadcast_to(a, np.broadcast_shapes(
        np.shape(etas), np.shape(curvatures), np.shape(x0s))), jnp.float32)
        for a in (etas, curvatures, x0s)]  # fmt: skip
    return np.asarray(_batched(*args, steps))


@functools.partial(jax.jit, static_argnums=3)
def _batched(etas, curvatures, x0s, steps):
    return jax.vmap(lambda e, c, x: gd_path(e, c, x, steps))(etas, curvatures, x0s)


def classify(xs: np.ndarray) -> str:
    """Observed regime of a path: monotone, one-step, oscillating, bouncing or diverging."""
    xs = np.asarray(xs, dtype=np.float64)
    a = np.abs(xs)
    if not np.all(np.isfinite(xs)) or a[-1] > a[0] * (1 + 1e-3):
        return "diverging"
    if a[1] <= 1e-6 * a[0]:
        return "one step"
    if np.allclose(a, a[0], rtol=1e-3):
        return "bouncing"
    signs = np.sign(xs[a > 1e-30 * a[0]])
    if len(signs) > 2 and np.all(signs[1:] * signs[:-1] < 0):
        return "oscillating"
    if np.all(signs == signs[0]) and np.all(np.diff(a) <= 1e-9 * a[0]):
        return "monotone"
    return "other"


def theory(eta: float, curvature: float) -> str:
    """The regime predicted by the factor 1 - eta L."""
    q = 1.0 - eta * curvature
    if np.isclose(q, 0.0, atol=1e-6):
        return "one step"
    if np.isclose(q, -1.0, atol=1e-6):
        return "bouncing"
    if q > 0:
        return "monotone"
    return "oscillating" if q > -1 else "diverging"


def regimes(steps: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows, curves = [], {}
    for name, L in CURVATURES.items():
        etas = np.array(
            [0.1 / L, 0.5 / L, 1.0 / L, 1.5 / L, 1.9 / L, 2.0 / L, 2.1 / L, 0.1], dtype=np.float32
        )
        # one compiled program for all learning rates: gradlab's sgd takes a traced lr
        paths = gd_paths(etas, L, 1.0, steps)
        for eta, xs in zip(etas, paths, strict=True):
            obs, exp = classify(xs), theory(float(eta), L)
            rows.append(
                {
                    "f": name,
                    "L": L,
                    "eta": float(eta),
                    "eta_L": float(eta) * L,
                    "final": abs(float(xs[-1])),
                    "observed": obs,
                    "theory": exp,
                }
            )
        curves[name] = (etas, paths)
    return rows, curves


def decay_experiment(steps: int, seeds: int) -> dict[str, np.ndarray]:
    """Mean f(x_t) over seeds for constant, step-decay and exponential-decay learning rates
    on f = x^2 with noisy gradients g = 2x + N(0, 1)."""
    eta0, period = 0.2, max(steps // 8, 1)
    lrs = {
        "constant 0.2": eta0,
        f"step decay (/2 every {period})": schedules.step_decay_schedule(eta0, period, 2.0),
        f"exponential (x0.5 per {period})": schedules.exponential_decay(eta0, period, 0.5),
    }

    def mean_f(lr, keys):
        return jnp.mean(jax.vmap(lambda k: gd_path(lr, 2.0, -1.5, steps, 1.0, k))(keys) ** 2, 0)

    run = jax.jit(lambda keys: {name: mean_f(lr, keys) for name, lr in lrs.items()})  # one program
    out = run(jax.random.split(jax.random.key(0), seeds))
    return {name: np.asarray(out[name]) for name in lrs}  # (jit sorts dict keys)


@functools.partial(jax.jit, static_argnums=0)
def rescue_experiment(steps: int) -> dict[str, jax.Array]:
    """eta0 = 1.05 > 2/L diverges on x^2 if held constant; halving it every 10 steps rescues it."""
    decayed = schedules.step_decay_schedule(1.05, 10, 2.0)
    return {
        "constant 1.05": gd_path(1.05, 2.0, 1.0, steps) ** 2,
        "step decay 1.05, /2 every 10": gd_path(decayed, 2.0, 1.0, steps) ** 2,
    }


def main(argv: list[str] | None = None) -> int:
    args = example_parser(__doc__, "fewer steps and seeds").parse_args(argv)
    steps = 30 if args.quick else 60
    os.makedirs(args.out, exist_ok=True)

    # 1. regimes -------------------------------------------------------------------------------
    rows, curves = regimes(steps)
    print(f"Gradient descent on f = a x^2 from x0 = 1, {steps} steps (L = f'' = 2a)")
    print(f"{'f':>6} {'eta':>9} {'eta*L':>6} {'|x_T|':>10}  {'observed':<12} {'theory':<12}")
    mismatches = 0
    for r in rows:
        ok = r["observed"] == r["theory"]
        mismatches += not ok
        print(
            f"{r['f']:>6} {r['eta']:>9.4g} {r['eta_L']:>6.2f} {r['final']:>10.3g}  "
            f"{r['observed']:<12} {r['theory']:<12}{'' if ok else '  <-- mismatch'}"
        )
    print(f"regimes matching theory: {len(rows) - mismatches}/{len(rows)}")
    print(
        "eta = 0.1 on the three functions: "
        + ", ".join(f"{r['f']}: {r['observed']}" for r in rows if r["eta"] == np.float32(0.1))
    )

    # x_t vs t on x^2, the deck's learning rates
    etas = [0.001, 0.1, 0.5, 0.8, 1.0, 1.1]
    fig = plots.plot_loss_curves(
        dict(
            zip(
                [f"eta={e:g}" for e in etas],
                gd_paths(np.asarray(etas), 2.0, 99.0, steps),
                strict=True,
            )
        ),
        logy=False,
        ylabel="$x_t$",
        title="gradient descent on $x^2$ from $x_0 = 99$",
    )
    fig.axes[0].set_ylim(-150, 150)
    fig.axes[0].set_xlim(0, 25)
    plots.save_figure(fig, os.path.join(args.out, "02_lr_paths.png"))

    # |x_T| against eta for the three functions: steeper functions need smaller steps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    grid = np.geomspace(1e-3, 1.2, 300)
    colors = plots.optimizer_colors(list(CURVATURES))
    for name, L in CURVATURES.items():
        vals = gd_paths(grid, L, 1.0, steps)[:, -1]
        ax.loglog(grid, np.abs(vals) + 1e-30, color=colors[name], label=f"f = {name} (L={L:g})")
        ax.axvline(1.0 / L, color=colors[name], ls=":", lw=0.9)
        ax.axvline(2.0 / L, color=colors[name], ls="--", lw=0.9)
    ax.axvline(0.1, color="k", lw=0.6)
    ax.set_xlabel(r"learning rate $\eta$ (dotted: $1/L$, dashed: $2/L$)")
    ax.set_ylabel(f"$|x_{{{steps}}}|$ from $x_0 = 1$")
    ax.set_ylim(1e-25, 1e5)
    ax.set_title(r"converges for $\eta < 2/L$, fastest at $\eta = 1/L$")
    ax.legend(fontsize="small", loc="lower left")
    plots.save_figure(fig, os.path.join(args.out, "02_lr_regimes.png"))

    # 2. decay -------------------------------------------------------------------------------
    decay_steps = 80 if args.quick else 200
    seeds = 64 if args.quick else 512
    decay = decay_experiment(decay_steps, seeds)
    print(f"\nNoisy gradients g = 2x + N(0,1) on f = x^2 from x0 = -1.5, mean over {seeds} seeds:")
    for name, curve in decay.items():
        print(f"  {name:<32} E[f(x_T)] = {curve[-1]:.4g}")
    print(f"  (constant-eta noise floor eta/(4(1-eta)) = {0.2 / (4 * 0.8):.4g})")
    plots.plot_loss_curves(
        decay,
        ylabel="mean $f(x_t)$",
        title="learning-rate decay under gradient noise",
        path=os.path.join(args.out, "02_lr_decay.png"),
    )
    rescue = rescue_experiment(40)
    for name, curve in rescue.items():
        print(f"  {name:<32} f(x_40) = {curve[-1]:.4g}")
    plots.plot_loss_curves(
        rescue,
        ylabel="$f(x_t)$",
        title=r"too-large $\eta_0$: step decay rescues it",
        path=os.path.join(args.out, "02_lr_rescue.png"),
    )
    print(f"figures written to {args.out}/02_lr_*.png")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
