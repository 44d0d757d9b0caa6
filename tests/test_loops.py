"""gradlab.loops: packed while loops give the plain loop's results bit for bit, under jit, vmap
and forward-mode differentiation, and build their packed vector in fused groups on the CPU."""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from gradlab import loops
from gradlab.linesearch import common


class _LoopCarry(NamedTuple):
    i: jax.Array
    flag: jax.Array
    x: jax.Array
    triple: jax.Array
    tree: dict


def _cond(c):
    return c.i < 7


def _body(c):
    x = c.x * 1.5 - 0.25
    return _LoopCarry(
        i=c.i + 1,
        flag=~c.flag,
        x=x,
        triple=jnp.where(c.flag, c.triple[::-1], c.triple + x),
        tree={
            "w": c.tree["w"] * x,
            "n": c.tree["n"] + c.i,
            "half": (c.tree["half"] * 2).astype(jnp.float16),
            "none": None,
            "u8": c.tree["u8"] + 1,
        },
    )


def _init(big_int=5):
    return _LoopCarry(
        i=jnp.asarray(0, jnp.int32),
        flag=jnp.asarray(True),
        x=jnp.asarray(0.3, jnp.float32),
        triple=jnp.asarray([1.0, 2.0, 3.0], jnp.float32),
        tree={
            "w": jnp.ones((4, 3), jnp.float32),  # too large: carried as it is
            "n": jnp.asarray(big_int, jnp.int32),
            "half": jnp.asarray(1.5, jnp.float16),  # another float dtype: as it is
            "none": None,
            "u8": jnp.asarray(250, jnp.uint8),
        },
    )


def _assert_same(plain, packed):
    assert jax.tree.structure(plain) == jax.tree.structure(packed)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(packed), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _while_carry_count(fn, *args) -> int:
    jaxpr = jax.make_jaxpr(fn)(*args)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "while"]
    return len(eqn.outvars)


@pytest.mark.parametrize("big_int", [5, 2**30 + 1])
def test_packed_while_loop_equals_plain_loop(big_int):
    """Scalars (int32, uint8, bool, float) and short vectors travel packed; other leaves as
    they are. In float32, integers get an int32 vector of their own, so 2**30 + 1 stays exact."""
    init = _init(big_int)
    plain = jax.jit(lambda c: jax.lax.while_loop(_cond, _body, c))(init)
    packed = jax.jit(lambda c: loops.packed_while_loop(_cond, _body, c, jnp.float32))(init)
    assert type(packed) is _LoopCarry
    _assert_same(plain, packed)
    assert int(packed.tree["n"]) == big_int + 21
    # float vector, int32 vector, and the 4x3 array and the float16 scalar as they are
    carried = _while_carry_count(
        lambda c: loops.packed_while_loop(_cond, _body, c, jnp.float32), init
    )
    assert carried == 4


def test_small_ints_and_float64_pack_integers_with_the_floats():
    init = _init()
    one_vector = _while_carry_count(
        lambda c: loops.packed_while_loop(_cond, _body, c, jnp.float32, small_ints=True), init
    )
    assert one_vector == 3
    # the line searches' loop: counters below 2**24 by construction
    searches = _while_carry_count(
        lambda c: common.packed_while_loop(_cond, _body, c, jnp.float32), init
    )
    assert searches == 3
    with enable_x64(True):
        init64 = _init()._replace(
            x=jnp.asarray(0.3, jnp.float64), triple=jnp.asarray([1.0, 2.0, 3.0], jnp.float64)
        )

        def body64(c):
            out = _body(c)
            tree = dict(out.tree, w=out.tree["w"].astype(jnp.float32))
            return out._replace(
                x=out.x.astype(jnp.float64), triple=out.triple.astype(jnp.float64), tree=tree
            )

        def run(c):
            return loops.packed_while_loop(_cond, body64, c, jnp.float64)

        assert _while_carry_count(run, init64) == 3  # int32 is exact in float64
        _assert_same(jax.lax.while_loop(_cond, body64, init64), jax.jit(run)(init64))


def test_packed_while_loop_under_vmap_and_jacfwd():
    def solve(x0):
        def body(c):
            k, x, best = c
            x = x - 0.1 * (2.0 * x - jnp.asarray([1.0, 2.0]))
            return k + 1, x, jnp.minimum(best, jnp.sum(x))

        init = (jnp.asarray(0), x0, jnp.asarray(jnp.inf))
        return body, init

    def run(loop, x0, steps):
        body, init = solve(x0)
        return loop(lambda c: c[0] < steps, body, init)

    def packed(cond, body, init):
        return loops.packed_while_loop(cond, body, init, jnp.float32)

    x0 = jnp.asarray([[0.0, 0.0], [3.0, -1.0], [1.0, 1.0]])
    steps = jnp.asarray([0, 5, 12])
    expected = jax.vmap(lambda x, s: run(jax.lax.while_loop, x, s))(x0, steps)
    got = jax.jit(jax.vmap(lambda x, s: run(packed, x, s)))(x0, steps)
    _assert_same(expected, got)
    # forward mode goes through the packing (reverse mode does not go through a while loop)
    jac = jax.jacfwd(lambda x: run(packed, x, 3)[1])(x0[1])
    np.testing.assert_allclose(np.asarray(jac), 0.8**3 * np.eye(2), rtol=1e-6)


@pytest.mark.parametrize("count", [1, 8, 9, 21, 70])
def test_concatenate_equals_jnp_concatenate(count):
    parts = [jnp.arange(i % 3 + 1, dtype=jnp.float32) + i for i in range(count)]
    expected = np.concatenate([np.asarray(p) for p in parts])
    np.testing.assert_array_equal(np.asarray(loops.concatenate(parts)), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(loops.concatenate)(parts)), expected)
    # vmapped: all pieces, some pieces or no piece batched
    batched = [jnp.stack([p, p + 100.0]) for p in parts]
    for axes in ([0] * count, [None if i % 2 else 0 for i in range(count)]):
        args = [b if a == 0 else p for b, p, a in zip(batched, parts, axes, strict=True)]
        got = jax.vmap(lambda *ps: loops.concatenate(ps), in_axes=axes)(*args)
        want = np.stack(
            [
                np.concatenate(
                    [np.asarray(a[k] if ax == 0 else a) for a, ax in zip(args, axes, strict=True)]
                )
                for k in range(2)
            ]
        )
        np.testing.assert_array_equal(np.asarray(got), want)


def test_concatenate_groups_only_on_the_cpu():
    parts = [jnp.full((1,), float(i)) for i in range(21)]

    def pack(*ps):
        return loops.concatenate(ps)

    for platform, barriers in (("cpu", 1), ("cuda", 0)):
        exported = jax.export.export(jax.jit(pack), platforms=[platform])(*parts)
        assert exported.mlir_module().count("stablehlo.optimization_barrier") == barriers


def test_packed_loop_body_compiles_to_few_cpu_kernels():
    """20 scalars computed in the body, each with its own expensive operation: XLA:CPU runs a
    kernel per scalar in the plain loop, a kernel per group of 8 in the packed one."""
    if jax.default_backend() != "cpu":
        pytest.skip("counts XLA:CPU kernels")

    def body(c):
        k, xs = c
        return k + 1, tuple(jnp.sqrt(x + k) / (x + 2.0) for x in xs)

    init = (jnp.asarray(0, jnp.int32), tuple(jnp.asarray(float(i)) for i in range(20)))

    def cond(c):
        return c[0] < 3

    def kernels(loop):
        """The most kernels (fusions and copies) in one computation other than the entry."""
        text = jax.jit(lambda c: loop(cond, body, c)).lower(init).compile().as_text()
        counts = []
        for computation in re.split(r"\n(?=\S)", text):
            name = computation.lstrip("%")
            if name.startswith(("ENTRY", "fused", "HloModule")):
                continue
            counts.append(len(re.findall(r"= \S+ (?:fusion|copy)\(", computation)))
        return max(counts)

    plain = kernels(jax.lax.while_loop)
    packed = kernels(lambda c, b, i: loops.packed_while_loop(c, b, i, jnp.float32))
    assert plain >= 20, plain
    assert packed <= 6, packed


@pytest.mark.parametrize("size", [0, 1, 2, 5, 8, 9, 30])
def test_small_reductions_equal_jnp_reductions(size):
    """Written out up to 8 elements (no ``reduce`` in the program), jnp's reductions above."""
    from gradlab import base

    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=size), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(jax.jit(base.small_sum)(x)), np.asarray(jnp.sum(x)), rtol=1e-6
    )
    if size:
        assert float(base.small_max(x)) == float(jnp.max(x))
    assert float(base.small_max(x, initial=0.5)) == float(jnp.max(x, initial=0.5))
    for flags in (x > 0, x > -10, x > 10):
        assert bool(base.small_all(flags)) == bool(jnp.all(flags))
        assert bool(base.small_any(flags)) == bool(jnp.any(flags))
    if size:
        with_nan = x.at[size // 2].set(jnp.nan)
        assert np.isnan(float(base.small_max(with_nan)))
        assert np.isnan(float(base.small_sum(with_nan)))
    text = jax.jit(lambda v: (base.small_sum(v), base.small_max(v, 0.0))).lower(x).as_text()
    assert ("reduce" in text) == (size > base.UNROLLED_REDUCTION_SIZE)


def test_solver_programs_have_few_reductions():
    """Every ``reduce`` costs ~0.25 us per call on XLA:CPU even in a loop that never runs: a
    2-D BFGS solve keeps only its dot products and the objective's own sum."""
    from gradlab.minimize import minimize

    def rosenbrock(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    text = (
        jax.jit(lambda x: minimize(rosenbrock, x, "bfgs").params)
        .lower(jnp.asarray([-1.2, 1.0]))
        .as_text()
    )
    assert text.count("stablehlo.reduce") <= 8, text.count("stablehlo.reduce")  # 34 before


def test_small_max_of_nothing_raises_like_jnp():
    from gradlab import base

    with pytest.raises(ValueError):
        base.small_max(jnp.zeros((0,)))
    assert float(base.small_max(jnp.zeros((0,)), initial=2.0)) == 2.0
