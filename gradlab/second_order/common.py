"""Shared plumbing of the second-order descents: input checks and the descent-then-search chain.

The arithmetic (scale-safe norms, tree dots, status helpers) lives in
:mod:`gradlab.linesearch.common`, which every solver already depends on.
"""

from __future__ import annotations

from typing import Any

from gradlab import base

__all__ = ["check_update_inputs", "with_search"]


def check_update_inputs(
    owner: str, state: Any, state_type: type, params: Any, updates: Any, **required: Any
) -> None:
    """Check a descent's ``update`` inputs: the state's type, ``params`` present and shaped like
    ``updates``, and every keyword extra in ``required`` given (``ValueError`` naming it); a
    descent that evaluates one of them also needs unmasked params
    (:func:`gradlab.base.check_unmasked`)."""
    base.check_state(state, state_type, owner)
    if params is None:
        raise ValueError(f"{owner}: update needs params (the point of the linearisation)")
    for name, value in required.items():
        if value is None:
            what = "params->residuals" if name == "residual_fn" else "params->loss"
            raise ValueError(f"{owner}: update needs the keyword extra {name}={what}")
    if required:  # it evaluates a function at params
        base.check_unmasked(params, owner)
    base.check_tree_match(params, updates, "params", "updates", owner=owner)


def with_search(
    descent: base.GradientTransformation,
    learning_rate: base.ScalarOrSchedule | None,
    linesearch: base.GradientTransformation | str | None,
    initial_guess_strategy: str = "one",
    **search_options,
) -> base.GradientTransformationExtraArgs:
    """``chain(descent, [scale_by_learning_rate(lr, flip_sign=False)], [line search])``.

    ``linesearch`` is a transformation, a name understood by
    :func:`gradlab.linesearch.get_linesearch` (``"strong_wolfe"``, ``"backtracking"``,
    ``"exact"``; the strong-Wolfe search's first trial follows ``initial_guess_strategy``: 1,
    Newton's natural step, by default; ``search_options`` go to the Wolfe searches too) or
    ``None``. With neither a learning rate nor a search
    the descent's direction is applied as is (unit step).
    """
    from gradlab.linesearch import get_linesearch
    from gradlab.transforms.learning_rate import scale_by_learning_rate

    links = [descent]
    if learning_rate is not None:
        links.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    search = get_linesearch(
        linesearch, initial_guess_strategy=initial_guess_strategy, **search_options
    )
    if search is not None:
        links.append(search)
    return base.chain(*links)
