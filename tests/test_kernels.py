"""gradlab.kernels: which programs become one XLA:CPU kernel, and that they compute the same."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradlab import kernels
from gradlab.minimize import METHODS, minimize
from gradlab.status import Status

ON_CPU = jax.default_backend() == "cpu"
needs_cpu = pytest.mark.skipif(not ON_CPU, reason="one kernel is an XLA:CPU code path")


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _is_one_kernel(fn, *args) -> bool:
    """Whether the compiled program holds a call XLA:CPU emits as one kernel."""
    return 'inlineable="false"' in jax.jit(fn).lower(*args).compile().as_text()


def _loop(x, a):
    return jax.lax.fori_loop(0, 5, lambda i, c: c * 0.9 + a * jnp.sin(c), x)


@needs_cpu
def test_a_small_loop_is_one_kernel_and_computes_the_same():
    x = jnp.linspace(0.0, 1.0, 3)
    fn = lambda x, a: kernels.call(_loop, x, a)  # noqa: E731
    assert _is_one_kernel(fn, x, 2.0)
    np.testing.assert_allclose(jax.jit(fn)(x, 2.0), jax.jit(_loop)(x, 2.0), rtol=1e-6)


def test_forward_mode_passes_through():
    x = jnp.linspace(0.0, 1.0, 3)
    got = jax.jvp(lambda x: kernels.call(_loop, x, 2.0), (x,), (jnp.ones(3),))
    want = jax.jvp(lambda x: _loop(x, 2.0), (x,), (jnp.ones(3),))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5)


@needs_cpu
def test_the_decision_is_taken_again_for_the_batched_program():
    # 4 lanes fit one kernel; 100000 lanes (2.4 MB per value) would be split into parallel
    # tasks, which one kernel cannot hold: the batched program is the ordinary one.
    small, large = jnp.ones((4, 3)), jnp.ones((100_000, 3))
    batched = jax.vmap(lambda x: kernels.call(_loop, x, 2.0))
    assert _is_one_kernel(batched, small)
    assert not _is_one_kernel(batched, large)
    nested = jax.vmap(jax.vmap(lambda x: kernels.call(_loop, x, 2.0)))
    assert _is_one_kernel(nested, small[:, None])
    assert not _is_one_kernel(nested, large[:, None])
    np.testing.assert_allclose(batched(small)[0], _loop(small[0], 2.0), rtol=1e-6)


@needs_cpu
def test_a_batched_value_the_function_closes_over_is_batched():
    # A traced hyperparameter captured by a closure (a learning rate under vmap).
    def solve(a):
        return kernels.call(lambda x: _loop(x, a), jnp.ones(3))

    got = jax.vmap(solve)(jnp.asarray([0.5, 1.0, 2.0]))
    for i, a in enumerate((0.5, 1.0, 2.0)):
        np.testing.assert_allclose(got[i], _loop(jnp.ones(3), a), rtol=1e-6)


@needs_cpu
def test_an_input_the_program_does_not_use_is_safe():
    # XLA's single-kernel emitter aborts the process on an unused call parameter; every input
    # is also returned, so none is unused.
    fn = lambda x, unused: kernels.call(lambda a, b: _loop(a, 1.0), x, unused)  # noqa: E731
    assert _is_one_kernel(fn, jnp.ones(2), jnp.ones(12))
    np.testing.assert_allclose(jax.jit(fn)(jnp.ones(2), jnp.ones(12)), _loop(jnp.ones(2), 1.0))


def _reason(fn, *args):
    return kernels.why_not_one_kernel(jax.make_jaxpr(fn)(*args))


def test_programs_one_kernel_cannot_hold_are_refused_with_the_reason():
    a = jnp.eye(3) * 2.0
    x = jnp.ones(3)
    assert "cholesky" in _reason(lambda x: jnp.linalg.cholesky(a + jnp.outer(x, x)), x)
    assert "sort" in _reason(jnp.sort, x)
    assert "fft" in _reason(lambda x: jnp.fft.fft(x).real, x)
    assert "scatter" in _reason(lambda x: x.at[jnp.asarray([0, 2])].add(1.0), x)
    assert "two matrices" in _reason(lambda m: m @ m, jnp.ones((4, 4)))
    assert _reason(lambda m, v: m @ v, jnp.ones((4, 4)), jnp.ones(4)) is None
    assert "cost" in _reason(lambda v: jnp.sin(v) * 2.0, jnp.ones(200_000))
    assert _reason(lambda v: jnp.sin(v) * 2.0, jnp.ones(100)) is None


@needs_cpu
def test_a_refused_program_runs_as_the_ordinary_program():
    a = jnp.eye(3) * 2.0
    fn = lambda x: kernels.call(lambda y: jnp.linalg.cholesky(a + jnp.outer(y, y)), x)  # noqa: E731
    assert not _is_one_kernel(fn, jnp.ones(3))
    np.testing.assert_allclose(fn(jnp.ones(3)), jnp.linalg.cholesky(a + 1.0), rtol=1e-6)


def _heavy(x, rounds=30):
    for _ in range(rounds):  # 6 flops per element and round, in one fused operation
        x = x * 1.0001 + x * x * 1e-3 - 0.5 * x
    return x


@needs_cpu
@pytest.mark.parametrize(
    ("size", "splits"),
    [(700, False), (850, True), (60_000, False), (70_000, True)],
)
def test_xla_splits_an_operation_where_the_cost_model_says(size, splits):
    """The cost model behind SPLIT_COST and SPLIT_BYTES, against this XLA (float32): a
    compute-bound fused operation (180 flops and 8 bytes per element) splits from
    flops + 10 * bytes >= 2e5 (770 elements), an I/O-bound one (x * 2 + 1: 2 flops, 8 bytes)
    from 512 KiB (65536 elements). A split operation cannot be one kernel: XLA refuses to
    compile it, with an error ``kernels.is_one_kernel_failure`` recognises. Forced here past
    gradlab's own check."""
    from jax.experimental.xla_metadata import set_xla_metadata

    inner = jax.jit(_heavy if size < 10_000 else (lambda x: x * 2.0 + 1.0))

    def forced(x):
        with set_xla_metadata(inlineable="false", xla_cpu_small_call="true"):
            return inner(x)

    lowered = jax.jit(forced).lower(jnp.linspace(0.1, 1.0, size, dtype=jnp.float32))
    if splits:
        with pytest.raises(jax.errors.JaxRuntimeError) as err:
            lowered.compile()
        assert kernels.is_one_kernel_failure(err.value)
    else:
        lowered.compile()
    # gradlab's check refuses both sizes long before (a safety factor of 2).
    assert _reason(inner, jnp.ones(size, jnp.float32)) is not None


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: jnp.argmax(x) + x,
        lambda x: jnp.cumsum(x) * jnp.tanh(x),
        lambda x: jax.scipy.special.erf(x) + jax.nn.sigmoid(x),
        lambda x: jnp.expm1(x) + jnp.log1p(x) + jnp.arctan2(x, x + 1.0) + x**x,
        lambda x: jax.lax.dynamic_update_slice(x, jnp.ones(2), (jnp.argmax(x) % 3,)),
        lambda x: x[jnp.asarray([0, 3, 5])].sum() + jnp.pad(x[::-1], 1)[1:-1],
        lambda x: jax.lax.switch(jnp.argmax(x) % 3, [lambda: x, lambda: 2 * x, lambda: -x]),
        lambda x: jax.lax.scan(lambda c, a: (c + a, c * a), 0.0, x)[1],
        lambda x: jnp.einsum("bij,bj->bi", jnp.ones((2, 7, 7)), jnp.stack([x, x])).sum(0),
        lambda x: jnp.where(jnp.isfinite(x), jnp.clip(jnp.round(x * 3), 0, 2), 0.0),
    ],
)
def test_every_supported_primitive_compiles_as_one_kernel(fn):
    """The allow-list against this XLA: each of these programs is accepted, compiles as one
    kernel on the CPU and computes what the ordinary program computes."""
    x = jnp.linspace(0.1, 1.0, 7)
    assert _reason(fn, x) is None
    got = jax.jit(lambda x: kernels.call(fn, x))(x)
    np.testing.assert_allclose(got, jax.jit(fn)(x), rtol=1e-5, atol=1e-6)
    if ON_CPU:
        assert _is_one_kernel(lambda x: kernels.call(fn, x), x)


@needs_cpu
@pytest.mark.parametrize("method", sorted(METHODS))
def test_minimize_gives_the_same_solution_as_one_kernel(method):
    weights = jnp.asarray([1.0, 2.0, 4.0])

    def residual(x):
        return jnp.concatenate([jnp.sqrt(weights) * (x - 1.0), 0.3 * (x - 1.0) ** 2])

    def fun(x):
        return 0.5 * jnp.sum(residual(x) ** 2)

    extra = {"residual_fn": residual} if method in ("gauss_newton", "levenberg_marquardt") else {}
    x0 = jnp.zeros(3)
    one = minimize(fun, x0, method, max_steps=500, extra_args=extra)
    ordinary = minimize(fun, x0, method, max_steps=500, extra_args=extra, one_kernel=False)
    assert int(one.status) == Status.CONVERGED
    assert int(one.status) == int(ordinary.status)
    np.testing.assert_allclose(one.params, ordinary.params, rtol=1e-4, atol=1e-5)
    assert abs(int(one.num_steps) - int(ordinary.num_steps)) <= 2


@needs_cpu
def test_minimize_is_one_kernel_for_small_problems_only():
    small = jnp.zeros(2)
    assert _is_one_kernel(lambda x: minimize(rosenbrock, x, "bfgs").params, small)
    assert not _is_one_kernel(
        lambda x: minimize(rosenbrock, x, "bfgs", one_kernel=False).params, small
    )
    # BFGS on 100 parameters: a 100 x 100 matrix update, split into parallel tasks.
    assert not _is_one_kernel(lambda x: minimize(rosenbrock, x, "bfgs").params, jnp.zeros(100))
    # Newton solves with a Cholesky factorisation (LAPACK): never one kernel.
    assert not _is_one_kernel(lambda x: minimize(rosenbrock, x, "newton").params, small)


@needs_cpu
def test_minimize_in_one_kernel_keeps_statuses_and_the_diagnosis():
    import gradlab

    def nan_beyond_half(x):
        return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum((x - 1.0) ** 2))

    res = minimize(nan_beyond_half, jnp.zeros(2), gradlab.adam(0.1))
    assert int(res.status) == Status.NON_FINITE
    # A NaN learning rate under vmap is told apart from a NaN objective (the diagnosis runs
    # after the kernel, on the traced hyperparameter the solver closes over).
    quadratic = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    res = jax.vmap(lambda lr: minimize(quadratic, jnp.zeros(2), gradlab.sgd(lr)))(
        jnp.asarray([0.1, jnp.nan])
    )
    assert [int(s) for s in res.status] == [Status.CONVERGED, Status.INVALID_HYPERPARAMETER]


def test_one_kernel_must_be_a_bool():
    with pytest.raises(TypeError, match="one_kernel"):
        minimize(rosenbrock, jnp.zeros(2), "bfgs", one_kernel=1)


def test_the_failure_test_recognises_xla_refusals_only():
    refusal = RuntimeError("UNIMPLEMENTED: Fft is not implemented in the legacy emitter")
    assert kernels.is_one_kernel_failure(refusal)
    assert not kernels.is_one_kernel_failure(RuntimeError("RESOURCE_EXHAUSTED: out of memory"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minimize(rosenbrock, jnp.zeros(2), "bfgs")  # no fallback warning on a normal solve


def test_derivatives_are_the_ordinary_programs():
    # Reverse mode through a fixed-length loop works (the ordinary program's derivative)...
    x = jnp.linspace(0.0, 1.0, 3)
    got = jax.grad(lambda x: kernels.call(_loop, x, 2.0).sum())(x)
    np.testing.assert_allclose(got, jax.grad(lambda x: _loop(x, 2.0).sum())(x), rtol=1e-5)

    # ... and through minimize's data-dependent loop it fails with JAX's own message.
    def through_minimize(y):
        return jnp.sum(minimize(lambda x: jnp.sum((x - y) ** 2), jnp.zeros(2), "bfgs").params)

    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(through_minimize)(jnp.ones(2))
