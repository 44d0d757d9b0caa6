"""gradlab: composable, sweepable, visible JAX optimizers.

Every optimizer is an ``optax.GradientTransformation``; ``gradlab.chain`` and
``gradlab.apply_updates`` are optax's. The public API is re-exported here explicitly.
"""

# ruff: noqa: I001  (grouped by concept, not alphabetically)

# Protocol, policies, status codes.
from gradlab import base as base
from gradlab.base import (
    GradientTransformation as GradientTransformation,
    GradientTransformationExtraArgs as GradientTransformationExtraArgs,
    ScalarOrSchedule as ScalarOrSchedule,
    Schedule as Schedule,
    StateMismatchError as StateMismatchError,
    TreeMismatchError as TreeMismatchError,
    apply_updates as apply_updates,
    chain as chain,
    identity as identity,
)
from gradlab.status import Status as Status

# First-order atoms.
from gradlab.transforms.learning_rate import scale_by_learning_rate as scale_by_learning_rate
from gradlab.transforms.momentum import (
    MOMENTUM_FORMS as MOMENTUM_FORMS,
    damped_momentum as damped_momentum,
    ema as ema,
    heavy_ball_momentum as heavy_ball_momentum,
    nesterov_base_params as nesterov_base_params,
    scale_by_nesterov_lookahead as scale_by_nesterov_lookahead,
    sutskever_momentum as sutskever_momentum,
    trace as trace,
)
from gradlab.transforms.adagrad import scale_by_rss as scale_by_rss
from gradlab.transforms.rms import scale_by_rms as scale_by_rms, scale_by_stddev as scale_by_stddev
from gradlab.transforms.adadelta import scale_by_adadelta as scale_by_adadelta
from gradlab.transforms.adam import scale_by_adam as scale_by_adam
from gradlab.transforms.adam import scale_by_adamax as scale_by_adamax
from gradlab.transforms.rprop import RPROP_VARIANTS as RPROP_VARIANTS
from gradlab.transforms.rprop import scale_by_rprop as scale_by_rprop
from gradlab.transforms.clipping import clip as clip, clip_by_global_norm as clip_by_global_norm
from gradlab.transforms.weight_decay import add_decayed_weights as add_decayed_weights
from gradlab.transforms.averaging import get_params_ema as get_params_ema
from gradlab.transforms.averaging import params_ema as params_ema
from gradlab.transforms.finite_guard import apply_if_finite as apply_if_finite
from gradlab.transforms.plateau import reduce_on_plateau as reduce_on_plateau

# Named first-order optimizers.
from gradlab.optimizers.sgd import nesterov_lookahead as nesterov_lookahead, sgd as sgd
from gradlab.optimizers.rprop import rprop as rprop
from gradlab.optimizers.adaptive import (
    adadelta as adadelta,
    adagrad as adagrad,
    adam as adam,
    adamax as adamax,
    adamw as adamw,
    nadam as nadam,
    nadamw as nadamw,
    rmsprop as rmsprop,
)

# Schedules.
from gradlab import schedules as schedules
from gradlab.schedules import (
    constant_schedule as constant_schedule,
    cosine_decay_schedule as cosine_decay_schedule,
    exponential_decay as exponential_decay,
    inverse_time_decay as inverse_time_decay,
    join_schedules as join_schedules,
    linear_schedule as linear_schedule,
    natural_exp_decay as natural_exp_decay,
    piecewise_constant_schedule as piecewise_constant_schedule,
    polynomial_schedule as polynomial_schedule,
    robbins_monro_schedule as robbins_monro_schedule,
    step_decay_schedule as step_decay_schedule,
    warmup_constant_schedule as warmup_constant_schedule,
    warmup_cosine_decay_schedule as warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule as warmup_exponential_decay_schedule,
)

# Line searches and second-order methods.
from gradlab import linesearch as linesearch
from gradlab.linesearch import (
    scale_by_backtracking_linesearch as scale_by_backtracking_linesearch,
    scale_by_exact_linesearch as scale_by_exact_linesearch,
    scale_by_more_thuente_linesearch as scale_by_more_thuente_linesearch,
    scale_by_zoom_linesearch as scale_by_zoom_linesearch,
)
from gradlab.second_order.steepest_descent import steepest_descent as steepest_descent
from gradlab.second_order.conjugate_gradient import nonlinear_cg as nonlinear_cg
from gradlab.second_order.conjugate_gradient import scale_by_nonlinear_cg as scale_by_nonlinear_cg
from gradlab.second_order.quasi_newton import (
    bfgs as bfgs,
    lbfgs as lbfgs,
    scale_by_bfgs as scale_by_bfgs,
    scale_by_lbfgs as scale_by_lbfgs,
)
from gradlab.second_order.newton import newton as newton, scale_by_newton as scale_by_newton
from gradlab.second_order.newton_cg import (
    hvp as hvp,
    newton_cg as newton_cg,
    scale_by_newton_cg as scale_by_newton_cg,
)
from gradlab.second_order.least_squares import (
    gauss_newton as gauss_newton,
    least_squares as least_squares,
    levenberg_marquardt as levenberg_marquardt,
)
from gradlab.minimize import MinimizeResult as MinimizeResult, minimize as minimize
from gradlab import compilation as compilation
from gradlab import kernels as kernels

# Test problems and the lab.
from gradlab import problems as problems
from gradlab import lab as lab
from gradlab.lab.train import train as train

# Sweeps: ``gradlab.sweep(...)`` runs a sweep (the module is callable), ``gradlab.tasks`` builds
# tasks, and the search-space helpers sit at the top level as in the docs.
from gradlab import sweep as sweep
from gradlab.sweep import (
    SweepResult as SweepResult,
    choice as choice,
    loguniform as loguniform,
    tasks as tasks,
    uniform as uniform,
)

__version__ = "0.3.0"
