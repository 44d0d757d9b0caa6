r"""Steepest descent with a line search (Cauchy 1847): the direction :math:`-\nabla f`.

.. math:: x_{k+1} = x_k - t_k \nabla f(x_k), \qquad
   t_k \approx \arg\min_{t > 0} f\big(x_k - t\nabla f(x_k)\big).

With an exact line search consecutive steps are orthogonal, which is why the method zig-zags
in narrow valleys (the textbook's "ravines"); nonlinear CG and quasi-Newton methods fix that.

References:
  Cauchy, "Méthode générale pour la résolution des systèmes d'équations simultanées",
  C. R. Acad. Sci. Paris 25, 1847.
  Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), §3.1 and §3.3.
"""

from __future__ import annotations

import optax

from gradlab import base
from gradlab.second_order.common import with_search

__all__ = ["steepest_descent"]


def steepest_descent(
    linesearch: base.GradientTransformation | str | None = "strong_wolfe",
) -> base.GradientTransformationExtraArgs:
    r"""Steepest descent: the direction :math:`d = -g`, then ``linesearch`` picks :math:`t`.

    Args:
      linesearch: the step-size rule, the chain's last link: a transformation or a name,
        ``"strong_wolfe"`` (default: :func:`~gradlab.linesearch.scale_by_zoom_linesearch`),
        ``"more_thuente"``, ``"backtracking"`` or ``"exact"``. The Wolfe searches use
        :math:`c_2 = 0.1` (a fairly exact search, in Cauchy's spirit) and the "quadratic"
        first trial step :math:`t_0 = 2(f_k - f_{k-1})/\nabla f_k^\top d_k`; ``"exact"``
        (:func:`~gradlab.linesearch.scale_by_exact_linesearch`) is the textbook method.
        ``None`` means no search: a unit step along :math:`-g`.

    Returns:
      ``chain(scale(-1), linesearch)``; ``update`` needs ``params`` and the extra arguments
      ``value``, ``grad``, ``value_fn``.
    """
    return with_search(optax.scale(-1.0), None, linesearch, "quadratic", curv_rtol=0.1)
