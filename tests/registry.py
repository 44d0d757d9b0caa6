"""A registry of every named gradlab optimizer and variant, for the conformance suite.

(Also the home of small test helpers shared by the first-order test modules.)

Each :class:`Entry` is ``(name, factory, kwargs, hyperparameters, ...)``: ``factory(**kwargs)``
builds the optimizer; ``hyperparameters`` are the numeric arguments the conformance suite vmaps
over (each with the values it sweeps); the remaining fields set the convergence runs. The numeric
arguments of each factory are also read from its signature (``ScalarOrSchedule`` annotations),
and :func:`numeric_arguments` lets a test check that no entry forgets one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradlab import schedules
from gradlab.optimizers import adaptive, rprop, sgd

#: Modules whose ``__all__`` lists named optimizers (every name must have an entry).
OPTIMIZER_MODULES = (sgd, rprop, adaptive)


def assert_vmap_matches_loop(run, values, dtype=jnp.float32, rtol=1e-6, atol=1e-7):
    """``jit(vmap(run))`` over ``values`` equals ``jit(run)`` on each value (every output leaf).

    Shared by the per-family test modules: one compiled batched program, one compiled single
    run reused for every value.
    """
    hs = jnp.asarray(values, dtype)
    batched = jax.jit(jax.vmap(run))(hs)
    single = jax.jit(run)
    for i, h in enumerate(hs):
        jax.tree.map(
            lambda b, s, i=i: np.testing.assert_allclose(b[i], s, rtol=rtol, atol=atol),
            batched,
            single(h),
        )


class Entry(NamedTuple):
    """One optimizer configuration under test."""

    name: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    #: numeric hyperparameter -> values swept by the vmap test (all valid).
    hyperparameters: dict[str, tuple[float, ...]]
    #: the update needs ``value=loss`` (iRprop+).
    needs_value: bool = False
    #: kwargs overriding ``kwargs`` for the quadratic and Rosenbrock runs.
    quadratic: dict[str, Any] | None = None
    rosenbrock: dict[str, Any] | None = None
    #: steps of the Rosenbrock run (from (-1.2, 1)) and the tolerance on max |x - (1, 1)|.
    rosenbrock_steps: int = 3000
    rosenbrock_tol: float = 5e-2

    @property
    def numeric_hyperparameter_names(self) -> tuple[str, ...]:
        return tuple(self.hyperparameters)


def numeric_arguments(factory: Callable[..., Any]) -> set[str]:
    """Arguments annotated as numbers/arrays/schedules in ``factory``'s signature."""
    out = set()
    for p in inspect.signature(factory).parameters.values():
        ann = p.annotation if isinstance(p.annotation, str) else repr(p.annotation)
        if "ScalarOrSchedule" in ann:
            out.add(p.name)
    return out


def _lr(base: float) -> tuple[float, ...]:
    return (0.5 * base, base, 2.0 * base)


def _cos(peak: float, steps: int = 3000) -> Any:
    """Cosine-annealed learning rate: adaptive methods with a constant rate hover on Rosenbrock."""
    return schedules.cosine_decay_schedule(peak, steps)


BETAS = dict(b1=(0.5, 0.9), b2=(0.9, 0.999))

_MOMENTUM_FORMS = ("trace", "ema", "heavy_ball", "sutskever", "damped")


def _sgd_entries() -> list[Entry]:
    out = [
        Entry(
            "sgd",
            sgd.sgd,
            dict(learning_rate=0.1),
            dict(learning_rate=_lr(0.1)),
            rosenbrock=dict(learning_rate=2e-3),
            rosenbrock_steps=6000,
        )
    ]
    for form in _MOMENTUM_FORMS:
        # "ema"/"damped" average g with weight (1 - mu): their effective step is eta, not
        # eta / (1 - mu), so they get a 10x learning rate.
        lr = 0.1 if form in ("ema", "damped") else 0.01
        for nesterov in (False, True):
            out.append(
                Entry(
                    f"sgd_{form}{'_nesterov' if nesterov else ''}",
                    sgd.sgd,
                    dict(learning_rate=lr, momentum=0.9, nesterov=nesterov, momentum_form=form),
                    dict(learning_rate=_lr(lr), momentum=(0.0, 0.5, 0.9)),
                    rosenbrock=dict(learning_rate=lr / 10),
                )
            )
    out.append(
        Entry(
            "nesterov_lookahead",
            sgd.nesterov_lookahead,
            dict(learning_rate=0.01, momentum=0.9),
            dict(learning_rate=_lr(0.01), momentum=(0.0, 0.5, 0.9)),
            rosenbrock=dict(learning_rate=1e-3),
        )
    )
    return out


def _rprop_entries() -> list[Entry]:
    sweeps = dict(
        learning_rate=(0.01, 0.1),
        eta_minus=(0.3, 0.5),
        eta_plus=(1.1, 1.2, 1.5),
        min_step_size=(1e-6, 1e-3),
        max_step_size=(0.5, 50.0),
    )
    return [
        Entry(
            f"rprop_{variant}",
            rprop.rprop,
            dict(learning_rate=0.1, variant=variant),
            sweeps,
            needs_value=variant == "irprop+",
            rosenbrock=dict(learning_rate=0.01),
            rosenbrock_steps=5000,
        )
        for variant in ("rprop+", "rprop-", "irprop+", "irprop-")
    ]


_RMS_CONVERGENCE = dict(
    quadratic=dict(learning_rate=_cos(0.05, 300)), rosenbrock=dict(learning_rate=_cos(0.01))
)
_ADADELTA_CONVERGENCE = dict(
    rosenbrock=dict(learning_rate=_cos(2.0, 5000), rho=0.95, eps=1e-6), rosenbrock_steps=5000
)
_ADAM_CONVERGENCE = dict(rosenbrock=dict(learning_rate=_cos(0.1)))


def _adaptive_entries() -> list[Entry]:
    A = adaptive
    rms_sweep = dict(learning_rate=_lr(0.01), decay=(0.5, 0.9), eps=(1e-8, 1e-3))
    out = [
        *(
            Entry(
                name,
                A.adagrad,
                dict(learning_rate=0.5, **kwargs),
                dict(learning_rate=_lr(0.5), initial_accumulator_value=g0, eps=eps),
                rosenbrock=dict(learning_rate=0.5),
                rosenbrock_steps=5000,
            )
            for name, kwargs, g0, eps in (
                ("adagrad", {}, (0.0, 0.1, 1.0), (1e-7, 1e-2)),
                (
                    "adagrad_eps_outside",
                    dict(initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False),
                    (0.0, 0.1),
                    (1e-10, 1e-2),
                ),
            )
        ),
        Entry(
            "rmsprop",
            A.rmsprop,
            dict(learning_rate=0.01),
            dict(**rms_sweep),
            **_RMS_CONVERGENCE,
        ),
        Entry(
            "rmsprop_centered",
            A.rmsprop,
            dict(learning_rate=0.01, centered=True),
            dict(**rms_sweep, initial_scale=(0.0, 0.5)),
            **_RMS_CONVERGENCE,
        ),
        Entry(
            "rmsprop_momentum",
            A.rmsprop,
            dict(learning_rate=0.003, momentum=0.9),
            dict(learning_rate=_lr(0.003), decay=(0.5, 0.9), momentum=(0.0, 0.5, 0.9)),
            rosenbrock=dict(learning_rate=_cos(0.004)),
        ),
        Entry(
            "rmsprop_nesterov",
            A.rmsprop,
            dict(learning_rate=0.003, momentum=0.9, nesterov=True),
            dict(learning_rate=_lr(0.003), momentum=(0.0, 0.5, 0.9)),
            rosenbrock=dict(learning_rate=_cos(0.004)),
        ),
        Entry(
            "rmsprop_bias_corrected_eps_outside",
            A.rmsprop,
            dict(learning_rate=0.01, bias_correction=True, eps_in_sqrt=False),
            dict(**rms_sweep),
            **_RMS_CONVERGENCE,
        ),
        Entry(
            "rmsprop_first_gradient",
            A.rmsprop,
            dict(learning_rate=0.01, init_with_first_gradient=True),
            dict(**rms_sweep),
            **_RMS_CONVERGENCE,
        ),
        Entry(
            # Zeiler's method (no learning rate). On Rosenbrock it crawls (max|x - 1| = 0.54
            # after 5000 steps), so that run adds an annealed rate.
            "adadelta",
            A.adadelta,
            dict(eps=1e-3),
            dict(rho=(0.5, 0.9), eps=(1e-4, 1e-3), weight_decay=(0.0, 1e-3)),
            **_ADADELTA_CONVERGENCE,
        ),
        Entry(
            "adadelta_lr",
            A.adadelta,
            dict(learning_rate=1.0, rho=0.9, eps=1e-3),
            dict(learning_rate=(0.5, 1.0), rho=(0.5, 0.9), eps=(1e-4, 1e-3)),
            **_ADADELTA_CONVERGENCE,
        ),
    ]
    adam_sweep = dict(learning_rate=_lr(0.05), **BETAS, eps=(1e-8, 1e-3), eps_root=(0.0, 1e-8))
    for bc in ("both", "first", "second", "none"):
        out.append(
            Entry(
                f"adam_bias_{bc}",
                A.adam,
                dict(learning_rate=0.05, bias_correction=bc),
                adam_sweep,
                # Without the second-moment correction the first steps are ~1/sqrt(1 - b2)
                # times too long: slower on Rosenbrock (max|x - 1| = 0.14 after 3000 steps).
                **(
                    dict(rosenbrock=dict(learning_rate=_cos(0.05)), rosenbrock_tol=0.2)
                    if bc == "first"
                    else _ADAM_CONVERGENCE
                ),
            )
        )
    out += [
        Entry(
            "adam_eps_in_sqrt",
            A.adam,
            dict(learning_rate=0.05, eps_in_sqrt=True),
            dict(learning_rate=_lr(0.05), eps=(1e-8, 1e-3)),
            **_ADAM_CONVERGENCE,
        ),
        Entry(
            "adamw",
            A.adamw,
            dict(learning_rate=0.05, weight_decay=1e-4),
            dict(**adam_sweep, weight_decay=(0.0, 1e-4, 1e-2)),
            **_ADAM_CONVERGENCE,
        ),
        Entry(
            "adamax",
            A.adamax,
            dict(learning_rate=0.05),
            dict(learning_rate=_lr(0.05), **BETAS, eps=(1e-8, 1e-3)),
            rosenbrock=dict(learning_rate=_cos(1.0)),
        ),
        Entry(
            "adamax_no_bias_correction",
            A.adamax,
            dict(learning_rate=0.05, bias_correction=False),
            dict(learning_rate=_lr(0.05), **BETAS),
            rosenbrock=dict(learning_rate=_cos(1.0)),
        ),
        Entry("nadam", A.nadam, dict(learning_rate=0.05), adam_sweep, **_ADAM_CONVERGENCE),
        Entry(
            "nadamw",
            A.nadamw,
            dict(learning_rate=0.05, weight_decay=1e-4),
            dict(**adam_sweep, weight_decay=(0.0, 1e-4, 1e-2)),
            **_ADAM_CONVERGENCE,
        ),
    ]
    return out


REGISTRY: list[Entry] = _sgd_entries() + _rprop_entries() + _adaptive_entries()
