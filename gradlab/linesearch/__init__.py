"""Line searches: the last link of a chain, choosing the step size along a direction.

Every search is a :class:`~gradlab.base.GradientTransformationExtraArgs` whose ``update``
receives the direction :math:`d` as ``updates`` and the keyword arguments ``value``
(:math:`f(x)`), ``grad`` (:math:`\\nabla f(x)`) and ``value_fn`` (params -> scalar loss), and
returns :math:`t\\,d`. Its state exposes ``step_size``, ``value`` and ``grad`` at the accepted
point, the last search's ``status`` (:class:`gradlab.status.Status`) and cumulative
``num_fun_evals`` / ``num_grad_evals``.
"""

from gradlab.linesearch.backtracking import (
    ScaleByBacktrackingLinesearchState as ScaleByBacktrackingLinesearchState,
)
from gradlab.linesearch.backtracking import (
    scale_by_backtracking_linesearch as scale_by_backtracking_linesearch,
)
from gradlab.linesearch.exact import ScaleByExactLinesearchState as ScaleByExactLinesearchState
from gradlab.linesearch.exact import scale_by_exact_linesearch as scale_by_exact_linesearch
from gradlab.linesearch.zoom import ScaleByZoomLinesearchState as ScaleByZoomLinesearchState
from gradlab.linesearch.zoom import scale_by_zoom_linesearch as scale_by_zoom_linesearch

__all__ = [
    "ScaleByBacktrackingLinesearchState",
    "ScaleByExactLinesearchState",
    "ScaleByZoomLinesearchState",
    "scale_by_backtracking_linesearch",
    "scale_by_exact_linesearch",
    "scale_by_zoom_linesearch",
]
