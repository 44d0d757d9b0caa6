r"""Learning-rate (and hyperparameter) schedules: pure ``count -> value`` functions.

A schedule maps the number of updates already taken, :math:`t` (0 on the first update), to a
value. Every schedule here is a closure over its arguments composed with ``jnp.where`` joins, so
**every numeric argument is traceable**: step counts, boundaries, decay rates, peak values and
scales may be JAX arrays traced under ``jit`` or ``vmap`` (a sweep over ``warmup_steps`` or
``peak_value`` is one compiled program). Arguments follow the hyperparameter policy of
:mod:`gradlab.base`:

* a concrete invalid value (a non-positive period, a negative value, ``decay_rate <= 0``, NaN)
  raises :class:`ValueError` at construction, naming the argument as the user spelled it and
  its valid range;
* a traced invalid value is never inspected with Python control flow: the schedule returns NaN
  in that lane only (the run is poisoned and reported by sweeps, the other lanes are untouched).

Arithmetic runs in JAX's default float: every schedule returns a float32 array, or a float64 one
when ``jax_enable_x64`` is on (as optax's schedules do; a float64 run's learning rate is not
rounded to float32). Counts are converted to that float before any arithmetic, so an int32
counter at ``2**31 - 1`` (where :func:`optax.safe_increment` saturates) never overflows. Each
schedule accepts a scalar or an array of counts.

Names and argument names follow optax wherever optax has the same schedule, so switching is a
change of import.
"""

# ruff: noqa: I001  (grouped by module, in the order of the docs)
from gradlab.schedules import decays, joins, warmup
from gradlab.schedules.decays import (
    constant_schedule as constant_schedule,
    step_decay_schedule as step_decay_schedule,
    exponential_decay as exponential_decay,
    natural_exp_decay as natural_exp_decay,
    inverse_time_decay as inverse_time_decay,
    robbins_monro_schedule as robbins_monro_schedule,
    polynomial_schedule as polynomial_schedule,
    linear_schedule as linear_schedule,
    cosine_decay_schedule as cosine_decay_schedule,
)
from gradlab.schedules.warmup import (
    warmup_constant_schedule as warmup_constant_schedule,
    warmup_cosine_decay_schedule as warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule as warmup_exponential_decay_schedule,
)
from gradlab.schedules.joins import (
    join_schedules as join_schedules,
    piecewise_constant_schedule as piecewise_constant_schedule,
)

__all__ = decays.__all__ + warmup.__all__ + joins.__all__
