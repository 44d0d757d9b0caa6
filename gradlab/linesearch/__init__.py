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
from gradlab.linesearch.more_thuente import (
    ScaleByMoreThuenteLinesearchState as ScaleByMoreThuenteLinesearchState,
)
from gradlab.linesearch.more_thuente import (
    scale_by_more_thuente_linesearch as scale_by_more_thuente_linesearch,
)
from gradlab.linesearch.zoom import ScaleByZoomLinesearchState as ScaleByZoomLinesearchState
from gradlab.linesearch.zoom import scale_by_zoom_linesearch as scale_by_zoom_linesearch

__all__ = [
    "LINESEARCHES",
    "get_linesearch",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByExactLinesearchState",
    "ScaleByMoreThuenteLinesearchState",
    "ScaleByZoomLinesearchState",
    "scale_by_backtracking_linesearch",
    "scale_by_exact_linesearch",
    "scale_by_more_thuente_linesearch",
    "scale_by_zoom_linesearch",
]

LINESEARCHES = ("strong_wolfe", "more_thuente", "backtracking", "exact")


def get_linesearch(spec, **zoom_options):
    """A line search from a name (``"strong_wolfe"``, ``"more_thuente"``, ``"backtracking"``,
    ``"exact"``), a transformation (returned as is) or ``None`` (returned as is: no search).

    ``zoom_options`` configure the default ``"strong_wolfe"`` search (the methods' defaults);
    ``"more_thuente"`` receives the same options (``initial_guess_strategy``, ``curv_rtol``...).
    """
    if spec is None or not isinstance(spec, str):
        return spec
    if spec == "strong_wolfe":
        return scale_by_zoom_linesearch(**zoom_options)
    if spec == "more_thuente":
        return scale_by_more_thuente_linesearch(**zoom_options)
    if spec == "backtracking":
        return scale_by_backtracking_linesearch(increase_factor=float("inf"))
    if spec == "exact":
        return scale_by_exact_linesearch()
    raise ValueError(
        f"linesearch must be one of {LINESEARCHES}, a transformation or None; got {spec!r}"
    )
