r"""``minimize``: run a gradlab (or optax) transformation to tolerance in one compiled loop.

.. code-block:: python

    result = gradlab.minimize(fun, x0, "bfgs")          # or "lbfgs", "cg", a transformation
    print(result.summary())                            # converged in 34 steps, ...
    batch = jax.vmap(lambda x: gradlab.minimize(fun, x, "bfgs"))(starts)   # one per row

The loop (a ``lax.while_loop``, compiled once per ``fun``/method) calls at every step

.. code-block:: python

    updates, state = method.update(grad, state, params,
                                   value=value, grad=grad, value_fn=value_fn, **extra_args)
    params = optax.apply_updates(params, updates)

so any chain works: a direction ("descent": :func:`~gradlab.second_order.bfgs`, L-BFGS,
nonlinear CG, Newton...) followed by a line search ("search"), or a first-order optimizer such
as ``gradlab.adam(1e-2)`` (which simply ignores the keyword arguments).

**Stopping.** With :math:`g_0 = \nabla f(x_0)` the run *converges* when

.. math:: \lVert \nabla f(x_k)\rVert \le \max\big(\mathrm{tol}\cdot\max(\lVert g_0\rVert,
   \epsilon_{\min}),\ \mathrm{atol}\big),

a test *relative* to the starting gradient (so :math:`10^{-30}`- and :math:`10^{30}`-scaled
problems behave alike; norms are computed with rescaling so they never underflow to a false
0). It is checked **before** the first step (a start at the minimiser converges in 0 steps)
and never passes on a non-finite value or gradient.

**Status** (:class:`gradlab.status.Status`, per problem): ``CONVERGED``; ``MAX_STEPS``;
``NON_FINITE`` (NaN/Inf value, gradient or parameters: the run is frozen at the last finite
point); ``LINE_SEARCH_FAILED`` (no acceptable step; the point is the last good one);
``NOT_DESCENT`` (the method produced an uphill direction and the search refused it);
``UNBOUNDED`` (the line search found :math:`f` still decreasing at its largest step);
``INVALID_HYPERPARAMETER`` (a traced ``tol``/``atol``/``max_steps`` out of range, or a traced
hyperparameter of the method: a step whose state reports it, or a run that became NaN because
of it. Such a setting is poisoned to NaN; when a run ends ``NON_FINITE``, one ``update`` on a
benign problem after the loop tells the two apart, so valid runs pay nothing; compiled only
when ``minimize`` runs inside a ``jit``/``vmap``, where hyperparameters can be traced).

**Convention for counters and status (every gradlab transformation follows it).** A
transformation that evaluates ``value_fn`` or ``residual_fn`` itself keeps, in its state
``NamedTuple``, cumulative int32 fields ``num_fun_evals`` and ``num_grad_evals`` and the int32
``status`` of its last step. ``minimize`` finds every such field anywhere in the (possibly
chained) state with ``optax.tree.get_all_with_path`` and reports

* ``num_fun_evals = ``its own evaluations ``+`` the sum of all ``num_fun_evals`` fields (same
  for gradients);
* a step whose state holds a ``status`` in ``FATAL_STATUSES`` (``NON_FINITE``,
  ``LINE_SEARCH_FAILED``, ``INVALID_HYPERPARAMETER``, ``NOT_DESCENT``, ``UNBOUNDED``) ends the
  run with that status;
  otherwise a step reporting ``CONVERGED`` (Levenberg–Marquardt when no decrease is possible at
  machine precision) ends it as converged; other codes (``OK``, ``NEGATIVE_CURVATURE`` after a
  modified Newton step...) are informational.

**Reusing the search's evaluations.** Fields named ``value`` and ``grad`` in the state mean
"the loss and gradient at ``params + updates``" (the point the update leads to; the old point
when a search rejected its step). When the state has both, ``minimize`` takes the *last* pair
(the chain's last link, normally the line search) as :math:`f(x_{k+1}), \nabla f(x_{k+1})`
instead of evaluating again, so a BFGS step costs exactly what its line search evaluated.
Without them (first-order methods, a chain with no search) it calls ``jax.value_and_grad`` once
per step and counts it. optax's searches keep no cumulative counters: their per-step
``info.num_linesearch_steps`` is added up instead (one evaluation per trial, with a gradient
when the search stores it).

**Batches.** ``minimize`` is ``jax.vmap``-able over starting points, over arrays in ``args``
and over traced hyperparameters. Each member stops updating when it finishes: the batched
``while_loop`` keeps ``jnp.where(running, new, old)`` for every member, so a finished member's
result is frozen; a NaN in one member ends only that member, with ``NON_FINITE`` (its
parameters, value and gradient are rolled back to the last finite point with ``jnp.where``).
The batch runs until its slowest member stops.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import base, compilation, kernels, loops
from gradlab.linesearch import common
from gradlab.status import Status, describe

__all__ = ["METHODS", "MinimizeResult", "minimize", "register_method", "FATAL_STATUSES"]

FATAL_STATUSES = common.FATAL_STATUSES

#: Method names accepted by :func:`minimize` -> factory (``"module:function"`` strings are
#: imported on first use). Factories are called as ``factory(**options)``.
METHODS: dict[str, Callable[..., base.GradientTransformation] | str] = {
    "bfgs": "gradlab.second_order.quasi_newton:bfgs",
    "lbfgs": "gradlab.second_order.quasi_newton:lbfgs",
    "cg": "gradlab.second_order.conjugate_gradient:nonlinear_cg",
    "nonlinear_cg": "gradlab.second_order.conjugate_gradient:nonlinear_cg",
    "steepest_descent": "gradlab.second_order.steepest_descent:steepest_descent",
    "newton": "gradlab.second_order.newton:newton",
    "newton_cg": "gradlab.second_order.newton_cg:newton_cg",
    "gauss_newton": "gradlab.second_order.least_squares:gauss_newton",
    "levenberg_marquardt": "gradlab.second_order.least_squares:levenberg_marquardt",
}


def register_method(name: str, factory: Callable[..., base.GradientTransformation] | str) -> None:
    """Make ``minimize(fun, x0, name)`` build its transformation with ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_method: name must be a non-empty string, got {name!r}")
    METHODS[name] = factory
    _build_method.cache_clear()


class MinimizeResult(NamedTuple):
    """What :func:`minimize` returns (every field batched under ``vmap``)."""

    params: Any  #: the last accepted point.
    value: jax.Array  #: f(params).
    grad_norm: jax.Array  #: Euclidean norm of the gradient at params.
    num_steps: jax.Array  #: int32: steps (updates) taken.
    num_fun_evals: jax.Array  #: int32: objective evaluations, line searches included.
    num_grad_evals: jax.Array  #: int32: gradient evaluations, line searches included.
    status: jax.Array  #: int32 gradlab.status code (see the module docstring).
    aux: Any = None  #: with ``has_aux=True``: the auxiliary output of ``fun`` at ``params``.

    @property
    def converged(self) -> jax.Array:
        """Boolean (array): ``status == CONVERGED``."""
        return self.status == int(Status.CONVERGED)

    def summary(self) -> str:
        """One line per problem: status, steps, evaluations, value, gradient norm."""
        status = np.atleast_1d(np.asarray(self.status))
        fields = [
            np.broadcast_to(np.atleast_1d(np.asarray(x)), status.shape).ravel()
            for x in (self.num_steps, self.num_fun_evals, self.num_grad_evals)
        ]
        values = np.broadcast_to(np.atleast_1d(np.asarray(self.value)), status.shape).ravel()
        gnorms = np.broadcast_to(np.atleast_1d(np.asarray(self.grad_norm)), status.shape).ravel()
        lines = []
        for i, code in enumerate(status.ravel()):
            lines.append(
                f"{describe(code)}: {int(fields[0][i])} steps, {int(fields[1][i])} f-evals, "
                f"{int(fields[2][i])} g-evals, f={float(values[i]):.6g}, "
                f"|g|={float(gnorms[i]):.3g}"
            )
        return "\n".join(lines)


def _resolve_factory(name: str) -> Callable[..., base.GradientTransformation]:
    if name not in METHODS:
        raise ValueError(f"minimize: unknown method {name!r}; known: {sorted(METHODS)}")
    factory = METHODS[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"minimize: method {name!r} is registered as {METHODS[name]!r}, which cannot "
                f"be imported ({err})"
            ) from err
    return factory


@functools.lru_cache(maxsize=64)
def _build_method(name: str, options: tuple) -> base.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(_resolve_factory(name)(**dict(options)))


def _as_transformation(method, options) -> base.GradientTransformationExtraArgs:
    if isinstance(method, str):
        options = dict(options or {})
        try:
            key = tuple(sorted(options.items()))
            hash(key)
        except TypeError:  # unhashable options: build afresh (recompiles each call)
            return optax.with_extra_args_support(_resolve_factory(method)(**options))
        return _build_method(method, key)
    if options:
        raise TypeError("minimize: options are only accepted with a method name")
    if isinstance(method, base.GradientTransformation):
        return _wrapped(method)
    raise TypeError(
        "minimize: method must be a method name or a GradientTransformation, got "
        f"{type(method).__name__}"
    )


@functools.lru_cache(maxsize=64)
def _wrapped(tx):
    return optax.with_extra_args_support(tx)


def _fields(state, key):
    return [v for _, v in optax.tree.get_all_with_path(state, key)]


_MAX_INT32 = 2**31 - 1  # minimize's loop counts steps in int32


def _last_link(state):
    """The state of a chain's last transformation (``optax.chain`` keeps a plain tuple of its
    links' states, nested for nested chains); any other state is its own last link."""
    while isinstance(state, (tuple, list)) and not hasattr(state, "_fields") and len(state):
        state = state[-1]
    return state


def _counter(state, key):
    total = jnp.zeros([], jnp.int32)
    for v in _fields(state, key):
        total = total + jnp.asarray(v, jnp.int32)
    return total


def _step_status(state):
    """What the step's own ``status`` fields say: the first fatal code found in ``state``, else
    ``CONVERGED`` when any link reports it (e.g. Levenberg–Marquardt at machine precision),
    else ``RUNNING``."""
    code = jnp.asarray(int(Status.RUNNING), jnp.int32)
    converged = jnp.asarray(False)
    for v in reversed(_fields(state, "status")):
        v = jnp.asarray(v, jnp.int32)
        if v.shape != ():
            continue
        fatal = base.small_any(jnp.stack([v == int(s) for s in FATAL_STATUSES]))
        code = jnp.where(fatal, v, code)
        converged = converged | (v == int(Status.CONVERGED))
    fallback = jnp.where(converged, int(Status.CONVERGED), int(Status.RUNNING))
    return jnp.where(code != int(Status.RUNNING), code, fallback).astype(jnp.int32)


class _Carry(NamedTuple):
    params: Any
    state: Any
    value: jax.Array
    grad: Any
    grad_norm: jax.Array
    count: jax.Array
    own_fevals: jax.Array
    own_gevals: jax.Array
    status: jax.Array


def _check_traced_inputs(x0, tol, atol, max_steps) -> None:
    leaves = jax.tree.leaves_with_path(x0)
    if not leaves:
        raise ValueError("minimize: x0 has no arrays (an empty pytree): nothing to minimise")
    for path, leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"minimize: x0{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
                "parameters must be floating point (e.g. x0.astype(jnp.float32))"
            )
    for name, value in (("tol", tol), ("atol", atol), ("max_steps", max_steps)):
        if jnp.shape(value) != ():
            raise ValueError(
                f"minimize: {name} must be a scalar (shape ()), got shape {jnp.shape(value)}; "
                "vmap over minimize for one tolerance per problem"
            )
    if not jnp.issubdtype(jnp.result_type(max_steps), jnp.integer):
        raise TypeError(
            f"minimize: max_steps must be an integer, got dtype {jnp.result_type(max_steps)}"
        )


def _solve(
    x0,
    args,
    tol,
    atol,
    max_steps,
    dynamic_extra,
    *,
    objective,
    solver,
    static_extra,
    has_aux,
    diagnose,
    one_kernel,
):
    # Checked while tracing (once per compiled program, not per call). (``objective``, not
    # ``fun``: jax 0.8's jit takes a keyword argument ``fun`` as its own.)
    _check_traced_inputs(x0, tol, atol, max_steps)

    def loop(x0, args, tol, atol, max_steps, dynamic_extra):
        return _solve_loop(
            objective, solver, static_extra, x0, args, tol, atol, max_steps, dynamic_extra, has_aux
        )

    operands = (x0, args, tol, atol, max_steps, dynamic_extra)
    result = kernels.call(loop, *operands) if one_kernel else loop(*operands)
    # Outside the single kernel, so that XLA drops them when the caller does not use them.
    if diagnose:
        extra = {**dict(static_extra), **dynamic_extra}
        state0 = solver.init(x0)
        dtype = common.compute_dtype(x0)
        status = _diagnose_non_finite(solver, state0, x0, extra, dtype, result.status)
        result = result._replace(status=status)
    if has_aux:  # one more evaluation, at the final point (counted)
        aux = objective(result.params, *args)[1]
        result = result._replace(aux=aux, num_fun_evals=result.num_fun_evals + 1)
    return result


def _solve_loop(fun, solver, static_extra, x0, args, tol, atol, max_steps, dynamic_extra, has_aux):
    """The solver loop: a :class:`MinimizeResult` without ``aux`` and before the diagnosis."""
    extra = dict(static_extra)
    extra.update(dynamic_extra)

    def value_fn(p):
        out = fun(p, *args)
        if not has_aux:
            return out
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "minimize: has_aux=True needs fun to return a pair (value, aux); got "
                f"{type(out).__name__} {jax.tree.map(jnp.shape, out)}"
            )
        return out[0]

    value_and_grad = jax.value_and_grad(value_fn)
    dtype = common.compute_dtype(x0)

    f0, g0 = value_and_grad(x0)
    f0 = jnp.asarray(f0, dtype)
    g0_norm = common.safe_norm(g0, dtype)
    tiny = jnp.finfo(dtype).tiny
    threshold = jnp.maximum(
        jnp.asarray(tol, dtype) * jnp.maximum(g0_norm, tiny), jnp.asarray(atol, dtype)
    )
    max_steps = jnp.asarray(max_steps, jnp.int32)

    def classify(grad_norm, finite, count):
        return common.first_status(
            [
                (~finite, Status.NON_FINITE),
                (grad_norm <= threshold, Status.CONVERGED),
                (count >= max_steps, Status.MAX_STEPS),
            ],
            Status.RUNNING,
        )

    finite0 = jnp.isfinite(f0) & base.tree_all_finite(g0) & base.tree_all_finite(x0)
    finite0 = finite0 & jnp.isfinite(threshold)
    # Traced tolerances are checked here (concrete ones raised in ``minimize``).
    valid = (jnp.asarray(tol, dtype) >= 0) & (jnp.asarray(atol, dtype) >= 0) & (max_steps >= 0)
    state0 = solver.init(x0)
    carry = _Carry(
        params=x0,
        state=state0,
        value=f0,
        grad=g0,
        grad_norm=g0_norm,
        count=jnp.zeros([], jnp.int32),
        own_fevals=jnp.ones([], jnp.int32),
        own_gevals=jnp.ones([], jnp.int32),
        status=jnp.where(
            valid,
            classify(g0_norm, finite0, jnp.zeros([], jnp.int32)),
            int(Status.INVALID_HYPERPARAMETER),
        ).astype(jnp.int32),
    )
    # Reuse only a pair that looks like a loss and a gradient of x0 (optax's backtracking
    # search keeps grad=None unless store_grad=True), and only from the chain's last link: a
    # link after the search (a scale, a clip) moves the parameters away from the point the
    # search evaluated.
    last = _last_link(state0)
    values, grads = _fields(last, "value"), _fields(last, "grad")
    reuse = (
        bool(values)
        and bool(grads)
        and jnp.shape(values[-1]) == ()
        and grads[-1] is not None
        and jax.tree.structure(grads[-1]) == jax.tree.structure(x0)
    )

    # optax's searches keep no cumulative counters; they report each step's trials in
    # ``info.num_linesearch_steps`` (one evaluation each, with a gradient when they store it).
    optax_trials = not _fields(state0, "num_fun_evals") and bool(
        _fields(state0, "num_linesearch_steps")
    )

    def cond(c: _Carry):
        return c.status == int(Status.RUNNING)

    def body(c: _Carry):
        updates, state = solver.update(
            c.grad, c.state, c.params, value=c.value, grad=c.grad, value_fn=value_fn, **extra
        )
        params = optax.apply_updates(c.params, updates)
        own_f, own_g = c.own_fevals, c.own_gevals
        if optax_trials:
            trials = _counter(state, "num_linesearch_steps")
            own_f, own_g = own_f + trials, (own_g + trials) if reuse else own_g
        if reuse:
            search = _last_link(state)
            value = jnp.asarray(_fields(search, "value")[-1], dtype)
            grad = base.cast_like(_fields(search, "grad")[-1], c.grad)
        else:
            value, grad = value_and_grad(params)
            value = jnp.asarray(value, dtype)
            grad = base.cast_like(grad, c.grad)
            own_f, own_g = own_f + 1, own_g + 1
        grad_norm = common.safe_norm(grad, dtype)  # inf/NaN when any entry is: no extra check
        count = c.count + 1
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        if not reuse:
            # A search's accepted point was evaluated with a finite value and gradient; a plain
            # update (first-order method) may still have overflowed the parameters.
            finite = finite & base.tree_all_finite(params)
        status = classify(grad_norm, finite, count)
        reported = _step_status(state)
        status = jnp.where(finite & (reported != int(Status.RUNNING)), reported, status)
        # A non-finite step is not taken: the run is frozen at the last finite point.
        keep = finite
        new = _Carry(
            params=common.tree_select(keep, params, c.params),
            # The state is not rolled back: a non-finite step ends the run, and the new state's
            # counters include the evaluations that step made. (Selecting the whole state,
            # L-BFGS memory included, every step cost ~40% of the loop time.)
            state=state,
            value=jnp.where(keep, value, c.value),
            grad=common.tree_select(keep, grad, c.grad),
            grad_norm=jnp.where(keep, grad_norm, c.grad_norm),
            count=count,
            own_fevals=own_f,
            own_gevals=own_g,
            status=status,
        )
        # Finished members of a vmapped batch are frozen by the batched while_loop itself: JAX
        # runs the body for every member and keeps ``jnp.where(running, new, old)``.
        return new

    c = loops.packed_while_loop(cond, body, carry, dtype)
    return MinimizeResult(
        params=c.params,
        value=c.value,
        grad_norm=c.grad_norm,
        num_steps=c.count,
        num_fun_evals=c.own_fevals + _counter(c.state, "num_fun_evals"),
        num_grad_evals=c.own_gevals + _counter(c.state, "num_grad_evals"),
        status=c.status,
        aux=None,
    )


def _diagnose_non_finite(solver, state0, x0, extra, dtype, status):
    r"""``INVALID_HYPERPARAMETER`` instead of ``NON_FINITE`` when the method's own settings
    caused the NaN: an invalid *traced* hyperparameter is poisoned to NaN
    (:func:`gradlab.base.hyperparameter`), and a transformation that does not report it in a
    ``status`` field (``scale_by_learning_rate``, ``adam``...) turns the step into NaN.

    Compiled only when ``minimize`` is called inside a transformation (at top level every
    hyperparameter is concrete, checked when the method was built: the diagnosis would only
    add compile time, 20-40%). Runs after the solver loop, and only for a run that ended
    ``NON_FINITE`` (a ``while_loop`` of at most one iteration: under ``vmap`` it runs only
    when some member needs it). One
    ``update`` from the fresh state on a benign problem: :math:`x = 0`,
    :math:`f = \tfrac12\lVert x - 1\rVert^2`, :math:`\nabla f = -1` (``residual_fn``:
    :math:`r = x - 1`); a nonzero gradient, so methods that normalise it stay finite. With valid
    settings every gradlab method gives a finite update there and no ``NON_FINITE`` status;
    a NaN setting gives NaN or reports itself. A setting
    that only becomes invalid later in a schedule (at a step count above 0) is not seen:
    such a run stays ``NON_FINITE``.
    """

    def benign_residual(p, *args):
        del args
        return jnp.concatenate([jnp.ravel(x).astype(dtype) - 1 for x in jax.tree.leaves(p)])

    def benign_value(p):
        return 0.5 * jnp.sum(jnp.square(benign_residual(p)))

    def probe(carry):
        _, code = carry
        zeros = jax.tree.map(jnp.zeros_like, x0)
        grad = jax.tree.map(lambda x: -jnp.ones_like(x), x0)
        probe_extra = dict(extra)
        if "residual_fn" in probe_extra:
            probe_extra["residual_fn"] = benign_residual
        updates, state = solver.update(
            grad,
            state0,
            zeros,
            value=benign_value(zeros),
            grad=grad,
            value_fn=benign_value,
            **probe_extra,
        )
        bad = ~base.tree_all_finite(updates)
        for v in _fields(state, "status"):
            if jnp.shape(v) == ():
                v = jnp.asarray(v, jnp.int32)
                bad = bad | (v == int(Status.NON_FINITE))
                bad = bad | (v == int(Status.INVALID_HYPERPARAMETER))
        return jnp.asarray(False), jnp.where(bad, int(Status.INVALID_HYPERPARAMETER), code).astype(
            jnp.int32
        )

    needs = status == int(Status.NON_FINITE)
    return jax.lax.while_loop(lambda carry: carry[0], probe, (needs, status))[1]


# One compiled loop per (fun, solver, static extras, has_aux), with gradlab's CPU options.
_run = compilation.jit(
    _solve,
    static_argnames=("objective", "solver", "static_extra", "has_aux", "diagnose", "one_kernel"),
)


def _inside_a_trace() -> bool:
    """Whether ``minimize`` is called inside a JAX transformation (``jit``, ``vmap``...): only
    there can the method's hyperparameters be traced, and so poisoned to NaN. (JAX has no
    public test; if its private one moves, assume a trace: the diagnosis is then compiled
    into every loop, which costs compile time, not results.)"""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover
        return True
    return not trace_state_clean()


def minimize(
    fun: Callable[..., jax.Array],
    x0: Any,
    method: str | base.GradientTransformation = "bfgs",
    *,
    args: tuple = (),
    tol: float | jax.Array = 1e-5,
    atol: float | jax.Array = 0.0,
    max_steps: int | jax.Array = 1000,
    extra_args: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    has_aux: bool = False,
    one_kernel: bool = True,
) -> MinimizeResult:
    r"""Minimise ``fun(x, *args)`` from ``x0`` with ``method``, in one compiled loop.

    Args:
      fun: scalar objective ``fun(params, *args)``; ``params`` is any pytree of float arrays.
      x0: starting point (a pytree).
      method: a name in :data:`METHODS` (``"bfgs"``, ``"lbfgs"``, ``"cg"``,
        ``"steepest_descent"``, ``"newton"``, ``"newton_cg"``, ``"gauss_newton"``,
        ``"levenberg_marquardt"``) or any gradlab/optax transformation (built once and reused:
        the compiled loop is cached on the transformation object and on ``fun``).
      args: extra positional arguments of ``fun`` (arrays; may be batched under ``vmap``).
      tol: relative gradient tolerance: stop when :math:`\lVert g\rVert \le \mathrm{tol}\,
        \lVert g_0\rVert`.
      atol: absolute gradient tolerance (0 by default): stop when :math:`\lVert g\rVert \le
        \mathrm{atol}` as well.
      max_steps: step budget (an integer; may be traced; Python numbers above
        :math:`2^{31}-1` mean no limit).
      extra_args: keyword arguments forwarded to every ``update`` (for example
        ``{"residual_fn": r}`` for least-squares methods). Callables are static (part of the
        compiled program's identity); arrays are traced.
      options: keyword arguments for the method's factory when ``method`` is a name, e.g.
        ``{"memory_size": 5}`` for ``"lbfgs"``.
      has_aux: ``fun`` returns ``(value, aux)``; ``result.aux`` is ``aux`` at the final point
        (one extra evaluation, counted in ``num_fun_evals``).
      one_kernel: on the CPU, compile the solver loop into a single XLA kernel when it is small
        enough (:mod:`gradlab.kernels`: 1.6-6x faster on small problems, results equal to
        round-off). ``False``: XLA's ordinary program, one runtime task per fused operation.

    Returns:
      A :class:`MinimizeResult` ``(params, value, grad_norm, num_steps, num_fun_evals,
      num_grad_evals, status, aux)``; ``result.summary()`` prints it.

    Raises:
      ValueError: unknown method name. TypeError: a method that is not a transformation.
    """
    solver = _as_transformation(method, options)
    extra_args = dict(extra_args or {})
    for reserved in ("value", "grad", "value_fn"):
        if reserved in extra_args:
            raise ValueError(
                f"minimize: extra_args may not contain {reserved!r} (minimize sets it)"
            )
    static_extra = tuple(sorted((k, v) for k, v in extra_args.items() if callable(v)))
    dynamic_extra = {k: v for k, v in extra_args.items() if not callable(v)}
    for name, flag in (("has_aux", has_aux), ("one_kernel", one_kernel)):
        if not isinstance(flag, bool):
            raise TypeError(f"minimize: {name} must be a bool, got {flag!r}")
    for name, value in (("tol", tol), ("atol", atol)):
        base.hyperparameter(value, name, base.NONNEGATIVE, owner="minimize", allow_schedule=False)
    if max_steps is None or isinstance(max_steps, bool):
        raise TypeError(f"minimize: max_steps must be a whole number >= 0, got {max_steps!r}")
    if base.is_concrete(max_steps) and (
        np.ndim(max_steps) == 0 and (max_steps != int(max_steps) or max_steps < 0)
    ):
        raise ValueError(f"minimize: max_steps must be a whole number >= 0, got {max_steps!r}")
    if type(max_steps) in (int, float):  # the loop counts in int32: larger means "no limit"
        max_steps = min(int(max_steps), _MAX_INT32)
    tol, atol, max_steps = (_device_scalar(v) for v in (tol, atol, max_steps))
    operands = (x0, tuple(args), tol, atol, max_steps, dynamic_extra)
    statics = dict(objective=fun, solver=solver, static_extra=static_extra, has_aux=has_aux)
    diagnose = _inside_a_trace()
    try:
        return _run(*operands, **statics, diagnose=diagnose, one_kernel=one_kernel)
    except jax.errors.JaxRuntimeError as err:
        # A program gradlab.kernels accepted but this XLA cannot compile as one kernel (its
        # checks are conservative; this is a safety net for direct calls only).
        if not one_kernel or diagnose or not kernels.is_one_kernel_failure(err):
            raise
        warnings.warn(
            f"minimize: XLA could not compile this solve as one kernel ({err}); compiling it "
            "as an ordinary program (same results up to round-off). Pass one_kernel=False to "
            "skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return _run(*operands, **statics, diagnose=diagnose, one_kernel=False)


def _device_scalar(value: Any) -> Any:
    """A Python number as a cached weakly-typed device scalar (the same abstract value JAX gives
    it), so a direct call does not transfer it again every time (~3 us each); others as is."""
    if type(value) in (int, float):
        return _cached_scalar(value, type(value), bool(jax.config.jax_enable_x64))
    return value


@functools.lru_cache(maxsize=256)
def _cached_scalar(value: float, kind: type, x64: bool) -> jax.Array:
    del kind, x64  # part of the key: 1 and 1.0, and the x64 mode, give different arrays
    # A first call may come while the caller's ``jax.jit`` traces ``minimize``: the array must
    # still be a concrete one made outside that trace (jax 0.10 otherwise hoists it as an
    # argument of that one program, and a later program that captures it fails to run).
    with jax.ensure_compile_time_eval():
        return jnp.asarray(value)
