"""gradlab: composable, sweepable, visible JAX optimizers."""

from gradlab import base as base
from gradlab.base import (
    GradientTransformation as GradientTransformation,
    GradientTransformationExtraArgs as GradientTransformationExtraArgs,
    StateMismatchError as StateMismatchError,
    TreeMismatchError as TreeMismatchError,
    apply_updates as apply_updates,
    chain as chain,
)
from gradlab.transforms.learning_rate import scale_by_learning_rate as scale_by_learning_rate

__version__ = "0.1.0"
