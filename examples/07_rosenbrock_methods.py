r"""Line-search methods on the Rosenbrock valley, from the classic start (-1.2, 1).

.. math:: f(x, y) = 100 (y - x^2)^2 + (1 - x)^2

Every method is a direction ("descent") followed by a strong-Wolfe line search ("search"):

* steepest descent (Cauchy 1847): :math:`d = -g`, zig-zags down the curved valley floor;
* nonlinear CG, Fletcher–Reeves and Polak–Ribière+ :math:`\beta`: :math:`d = -g + \beta d_{prev}`;
* BFGS and L-BFGS: :math:`d = -H g` with a learned inverse Hessian;
* Newton and Newton-CG (when :mod:`gradlab.second_order.newton` / ``newton_cg`` are present).

The script runs each with :func:`gradlab.minimize.minimize` (one compiled loop per method),
prints iterations, evaluations, final value and status, and draws every path on the contour
plot (``rosenbrock_methods.png`` in ``--out``).

Run: ``python examples/07_rosenbrock_methods.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import problems
from gradlab.lab import plots
from gradlab.linesearch.common import FATAL_STATUSES
from gradlab.minimize import minimize
from gradlab.second_order.conjugate_gradient import nonlinear_cg
from gradlab.second_order.quasi_newton import bfgs, lbfgs
from gradlab.second_order.steepest_descent import steepest_descent
from gradlab.status import describe

PROBLEM = problems.rosenbrock()


def rosenbrock(x):
    return PROBLEM.value(x)


def methods(quick: bool = False) -> dict:
    """name -> transformation; Newton-type methods only when their modules import. ``quick``
    keeps two methods (each costs two compilations: the solver loop and the path trace)."""
    if quick:
        return {"steepest descent": steepest_descent(), "BFGS": bfgs()}
    out = {
        "steepest descent": steepest_descent(),
        "CG (Fletcher-Reeves)": nonlinear_cg("fletcher_reeves"),
        "CG (Polak-Ribiere+)": nonlinear_cg("polak_ribiere_plus"),
        "BFGS": bfgs(),
        "L-BFGS (m=5)": lbfgs(memory_size=5),
    }
    try:
        from gradlab.second_order.newton import newton

        out["Newton"] = newton()
    except ImportError:  # pragma: no cover - the module is written separately
        pass
    try:
        from gradlab.second_order.newton_cg import newton_cg

        out["Newton-CG"] = newton_cg()
    except ImportError:  # pragma: no cover
        pass
    return out


def trace(tx, x0, num_steps: int, tol: float = 1e-5) -> np.ndarray:
    """The iterates of ``tx`` from ``x0`` (frozen once converged or failed): ``(T + 1, 2)``."""
    value_and_grad = jax.value_and_grad(rosenbrock)
    f0, g0 = value_and_grad(x0)
    threshold = tol * jnp.linalg.norm(g0)

    def step(carry, _):
        x, state, f, g, done = carry
        upd, new_state = tx.update(g, state, x, value=f, grad=g, value_fn=rosenbrock)
        new_x = optax.apply_updates(x, upd)
        new_f, new_g = value_and_grad(new_x)
        fatal = jnp.zeros([], bool)
        for _, code in optax.tree.get_all_with_path(new_state, "status"):
            fatal = fatal | jnp.isin(code, jnp.asarray(FATAL_STATUSES))
        bad = fatal | ~jnp.isfinite(new_f)
        keep = done | bad
        x = jnp.where(keep, x, new_x)
        carry = (
            x,
            jax.tree.map(lambda a, b: jnp.where(keep, a, b), state, new_state),
            jnp.where(keep, f, new_f),
            jnp.where(keep, g, new_g),
            keep | (jnp.linalg.norm(new_g) <= threshold),
        )
        return carry, x

    init = (x0, tx.init(x0), f0, g0, jnp.linalg.norm(g0) <= threshold)
    _, xs = jax.jit(lambda c: jax.lax.scan(step, c, None, length=num_steps))(init)
    return np.concatenate([np.asarray(x0)[None], np.asarray(xs)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and methods (smoke test)")
    parser.add_argument("--out", default="out", help="directory for the figure (%(default)s)")
    args = parser.parse_args(argv)
    max_steps = 100 if args.quick else 5000
    os.makedirs(args.out, exist_ok=True)
    x0 = jnp.asarray([-1.2, 1.0], jnp.float32)

    rows, paths = [], {}
    for name, tx in methods(args.quick).items():
        res = minimize(rosenbrock, x0, tx, max_steps=max_steps)
        rows.append((name, res))
        paths[name] = trace(tx, x0, min(int(res.num_steps), max_steps))

    print(f"Rosenbrock from (-1.2, 1), tol = 1e-5 * |g0|, at most {max_steps} steps")
    header = f"{'method':<22} {'iters':>6} {'f-evals':>8} {'g-evals':>8} {'final f':>11}  status"
    print(header)
    print("-" * len(header))
    for name, r in rows:
        print(
            f"{name:<22} {int(r.num_steps):>6} {int(r.num_fun_evals):>8} "
            f"{int(r.num_grad_evals):>8} {float(r.value):>11.3e}  {describe(r.status)}"
        )
    out = os.path.join(args.out, "rosenbrock_methods.png")
    plots.plot_contour_paths(
        PROBLEM,
        paths,
        path=out,
        title="Rosenbrock: line-search methods from (-1.2, 1)",
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
