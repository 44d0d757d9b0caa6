"""Audit (part c): schedule boundaries, the learning-rate atom's sign and count, AdaGrad's
initial accumulator, the sweep's chunking, the race's paths and resuming an early-stopped run,
each checked against optax or a reference written out here.

Every test names the mistake it catches; each was seen to fail on a copy of the library with
that mistake made (and to pass on the library as it is).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from host_devices import ROOT, run_with_host_devices

from gradlab import schedules as S
from gradlab.transforms.adagrad import scale_by_rss
from gradlab.transforms.learning_rate import scale_by_learning_rate


# ------------------------------------------------------------------ schedules: boundaries
def _around(*boundaries):
    """Every step within one of a boundary (and 0), sorted."""
    steps = {0}
    for b in boundaries:
        steps.update(x for x in (b - 1, b, b + 1) if x >= 0)
    return np.asarray(sorted(steps), np.int32)


def _np_piecewise(t, init, pairs):
    return init * np.prod([np.where(t >= b, s, 1.0) for b, s in pairs], axis=0)


def _np_join(t, segments, boundaries):
    """``segments[i](t - b_{i-1})`` for ``b_{i-1} <= t < b_i`` (``b_{-1} = 0``)."""
    out = segments[0](t)
    for b, seg in zip(boundaries, segments[1:], strict=True):
        out = np.where(t < b, out, seg(t - b))
    return out


def _np_linear(v0, v1, n, begin=0):
    return lambda t: v0 + (v1 - v0) * np.clip(t - begin, 0, n) / n


def _np_exp(v0, k, rate, begin=0, staircase=False, end=None):
    def f(t):
        p = np.maximum(t - begin, 0) / k
        v = v0 * rate ** (np.floor(p) if staircase else p)
        if end is not None:
            v = np.maximum(v, end) if rate < 1 else np.minimum(v, end)
        return v

    return f


def _np_warmup_cosine(init, peak, w, d, end, p=1.0):
    def f(t):
        warm = init + (peak - init) * np.minimum(t, w) / w
        c = np.clip(t - w, 0, d - w)
        cos = (0.5 * (1 + np.cos(np.pi * c / (d - w)))) ** p
        return np.where(t < w, warm, end + (peak - end) * cos)

    return f


# (id, gradlab schedule, optax schedule (None where optax has no equal), numpy formula, steps)
# Each neighbouring segment takes a different value at the switch, so a switch one step early
# or late, or a restarted count off by one, changes the value there.
_PIECES = {3: 0.5, 7: 2.0, 8: 0.25, 20: 0.1}
_JOIN_B = [4, 9, 9, 15]  # a repeated boundary: the third segment never runs
_BOUNDARY_CASES = [
    (
        "piecewise_dict",
        S.piecewise_constant_schedule(0.8, _PIECES),
        optax.piecewise_constant_schedule(0.8, _PIECES),
        lambda t: _np_piecewise(t, 0.8, _PIECES.items()),
        _around(*_PIECES),
    ),
    (
        "piecewise_arrays_unsorted_repeated",
        S.piecewise_constant_schedule(0.8, boundaries=[20, 3, 8, 3], scales=[0.1, 0.5, 0.25, 3.0]),
        None,
        lambda t: _np_piecewise(t, 0.8, [(20, 0.1), (3, 0.5), (8, 0.25), (3, 3.0)]),
        _around(3, 8, 20),
    ),
    (
        "join",
        S.join_schedules(
            [
                S.linear_schedule(0.1, 1.0, 5),
                S.constant_schedule(0.4),
                S.constant_schedule(9.0),
                S.linear_schedule(0.9, 0.2, 4),
                S.exponential_decay(0.7, 2, 0.5),
            ],
            _JOIN_B,
        ),
        optax.join_schedules(
            [
                optax.linear_schedule(0.1, 1.0, 5),
                optax.constant_schedule(0.4),
                optax.constant_schedule(9.0),
                optax.linear_schedule(0.9, 0.2, 4),
                optax.exponential_decay(0.7, 2, 0.5),
            ],
            _JOIN_B,
        ),
        lambda t: _np_join(
            t,
            [
                _np_linear(0.1, 1.0, 5),
                lambda s: np.full_like(s, 0.4),
                lambda s: np.full_like(s, 9.0),
                _np_linear(0.9, 0.2, 4),
                _np_exp(0.7, 2, 0.5),
            ],
            _JOIN_B,
        ),
        _around(*_JOIN_B, 13),
    ),
    (
        "warmup_cosine",
        S.warmup_cosine_decay_schedule(0.1, 1.0, 5, 12, end_value=0.2, exponent=2.0),
        optax.warmup_cosine_decay_schedule(0.1, 1.0, 5, 12, end_value=0.2, exponent=2.0),
        _np_warmup_cosine(0.1, 1.0, 5, 12, 0.2, 2.0),
        _around(5, 12),
    ),
    (
        "warmup_constant",
        S.warmup_constant_schedule(0.3, 1.0, 6),
        optax.warmup_constant_schedule(0.3, 1.0, 6),
        lambda t: 0.3 + 0.7 * np.minimum(t, 6) / 6,
        _around(6),
    ),
    (
        # end_value above the peak with rate < 1: the decay's value at its own step 0 is
        # end_value, not the peak, so this says which segment owns step W.
        "warmup_exponential_end_above_peak",
        S.warmup_exponential_decay_schedule(0.0, 1.0, 4, 3, 0.5, end_value=1.5),
        optax.warmup_exponential_decay_schedule(0.0, 1.0, 4, 3, 0.5, end_value=1.5),
        lambda t: np.where(t < 4, t / 4, 1.5),
        _around(4),
    ),
    (
        "warmup_exponential_staircase_begin",
        S.warmup_exponential_decay_schedule(
            0.0, 1.0, 4, 3, 0.5, transition_begin=2, staircase=True
        ),
        optax.warmup_exponential_decay_schedule(
            0.0, 1.0, 4, 3, 0.5, transition_begin=2, staircase=True
        ),
        lambda t: np.where(t < 4, t / 4, _np_exp(1.0, 3, 0.5, 2, True)(t - 4)),
        _around(4, 6, 9, 12),
    ),
    (
        "exponential_staircase_begin",
        S.exponential_decay(2.0, 3, 0.5, transition_begin=5, staircase=True),
        optax.exponential_decay(2.0, 3, 0.5, transition_begin=5, staircase=True),
        _np_exp(2.0, 3, 0.5, 5, True),
        _around(5, 8, 11),
    ),
    (
        "exponential_smooth_begin",
        S.exponential_decay(2.0, 3, 0.5, transition_begin=5),
        optax.exponential_decay(2.0, 3, 0.5, transition_begin=5),
        _np_exp(2.0, 3, 0.5, 5),
        _around(5),
    ),
    (
        # decay_rate exactly 1: end_value bounds from above (optax: minimum unless rate < 1)
        "exponential_rate_one_end_value",
        S.exponential_decay(1.0, 3, 1.0, end_value=0.4),
        optax.exponential_decay(1.0, 3, 1.0, end_value=0.4),
        lambda t: np.full_like(t, 0.4),
        _around(0, 3),
    ),
    (
        "polynomial_begin",
        S.polynomial_schedule(1.0, 0.1, 2.0, 6, transition_begin=3),
        optax.polynomial_schedule(1.0, 0.1, 2.0, 6, transition_begin=3),
        lambda t: 0.9 * (1 - np.clip(t - 3, 0, 6) / 6) ** 2 + 0.1,
        _around(3, 9),
    ),
    (
        "step_decay",
        S.step_decay_schedule(1.0, 4, 2.0),
        None,
        lambda t: 1.0 / 2.0 ** np.floor(t / 4),
        _around(4, 8),
    ),
]


@pytest.mark.parametrize("case", _BOUNDARY_CASES, ids=[c[0] for c in _BOUNDARY_CASES])
def test_schedule_values_at_and_around_every_boundary(case):
    """At b - 1, b and b + 1 for every boundary: the formula written out, optax where it has
    the schedule, float32, and the same values for a Python int, an int32 scalar under jit and
    a jit(vmap) over the counts. Catches a switch one step early or late (``<`` for ``<=``),
    a restarted count off by one, and the end_value clip's side at decay_rate = 1."""
    _, ours, theirs, formula, steps = case
    want = formula(steps.astype(np.float64))
    batched = jax.jit(jax.vmap(ours))(jnp.asarray(steps))
    assert batched.dtype == jnp.float32
    np.testing.assert_allclose(batched, want, rtol=2e-6, atol=1e-7)
    one = jax.jit(ours)
    for i, t in enumerate(steps.tolist()):
        assert float(ours(t)) == pytest.approx(want[i], rel=2e-6, abs=1e-7), t
        assert float(one(jnp.int32(t))) == pytest.approx(want[i], rel=2e-6, abs=1e-7), t
    if theirs is not None:
        np.testing.assert_allclose(batched, jax.vmap(theirs)(jnp.asarray(steps)), rtol=2e-6)


def test_traced_boundaries_switch_at_the_step_they_name():
    """Boundaries vmapped one apart switch one step apart (join and piecewise constant)."""
    bs = jnp.asarray([[4.0, 9.0], [5.0, 9.0], [4.0, 10.0]])
    t = _around(4, 5, 9, 10)
    segs = [S.linear_schedule(0.1, 1.0, 5), S.constant_schedule(0.4), S.linear_schedule(0.9, 0, 4)]
    joined = jax.jit(jax.vmap(lambda b: S.join_schedules(segs, b)(jnp.asarray(t))))(bs)
    pw = jax.vmap(
        lambda b: S.piecewise_constant_schedule(2.0, boundaries=b, scales=jnp.asarray([0.5, 3.0]))(
            jnp.asarray(t)
        )
    )(bs)
    tf = t.astype(np.float64)
    for lane, (b0, b1) in enumerate(np.asarray(bs).tolist()):
        ref = _np_join(
            tf, [_np_linear(0.1, 1.0, 5), lambda s: 0.4 + 0 * s, _np_linear(0.9, 0, 4)], [b0, b1]
        )
        np.testing.assert_allclose(joined[lane], ref, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(pw[lane], _np_piecewise(tf, 2.0, [(b0, 0.5), (b1, 3.0)]))


# ------------------------------------------------------------------ the learning-rate atom
def _run(tx, grads):
    state = tx.init(grads[0])
    out = []
    for g in grads:
        u, state = tx.update(g, state)
        out.append(np.asarray(u))
    return np.asarray(out), state


_GRADS = [jnp.asarray([1.5, -2.0, 0.25]) * (k + 1) for k in range(5)]


@pytest.mark.parametrize("flip_sign", [True, False])
def test_learning_rate_sign_and_schedule_count(flip_sign):
    """``flip_sign=False`` returns +eta_t g_t (optax.scale / scale_by_schedule), ``True``
    -eta_t g_t; a schedule is read at the number of updates already taken (0, 1, ...) and the
    state counts them. Catches ``flip_sign`` ignored or scaling by anything but +-1, and the
    schedule read one update late or early (no test used flip_sign=False on the atom)."""
    sign = -1.0 if flip_sign else 1.0
    sched = lambda c: 0.5 / (1.0 + c)  # noqa: E731
    got, state = _run(scale_by_learning_rate(sched, flip_sign=flip_sign), _GRADS)
    want = np.asarray([sign * 0.5 / (1 + t) * np.asarray(g) for t, g in enumerate(_GRADS)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert int(state.count) == len(_GRADS)
    ref = optax.scale_by_schedule(lambda c: sign * sched(c))
    np.testing.assert_allclose(got, _run(ref, _GRADS)[0], rtol=1e-6)
    got, state = _run(scale_by_learning_rate(0.3, flip_sign=flip_sign), _GRADS)
    np.testing.assert_allclose(got, _run(optax.scale(sign * 0.3), _GRADS)[0], rtol=1e-7)
    np.testing.assert_allclose(got, sign * 0.3 * np.asarray(_GRADS), rtol=1e-7)

    # traced under jit, with the sign
    def traced(lr, g):
        tx = scale_by_learning_rate(lr, flip_sign=flip_sign)
        return tx.update(g, tx.init(g))[0]

    f = jax.jit(traced)
    np.testing.assert_allclose(f(0.7, _GRADS[1]), sign * 0.7 * np.asarray(_GRADS[1]), rtol=1e-7)


# ------------------------------------------------------------------ AdaGrad's G_0
def _np_rss(g0, eps_at, grads, eps_in_sqrt=True):
    G = np.full(3, g0, np.float64)
    out = []
    for t, g in enumerate(grads):
        g = np.asarray(g, np.float64)
        G = G + g * g
        e = eps_at(t)
        out.append(g / np.sqrt(G + e) if eps_in_sqrt else g / (np.sqrt(G) + e))
    return np.asarray(out)


def test_adagrad_initial_accumulator_schedule_is_read_at_count_zero_and_eps_per_update():
    """G_0 given as a schedule is its value at count 0 (documented); a schedule eps is read at
    the number of updates already taken. Values chosen so that G_0 and eps matter at the 1e-2
    level. Catches G_0 read at count 1 and eps read one update late (only constants, and
    vmapped constants, were tested)."""
    g0_sched = lambda c: 2.0 + 3.0 * c  # noqa: E731  (2 at count 0, 5 at count 1)
    eps_sched = lambda c: 4.0 / (1.0 + c)  # noqa: E731
    for inside in (True, False):
        tx = scale_by_rss(g0_sched, eps_sched, eps_in_sqrt=inside)
        got, state = _run(tx, _GRADS)
        want = _np_rss(2.0, lambda t: 4.0 / (1 + t), _GRADS, inside)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        G = 2.0 + np.sum(np.square(np.asarray(_GRADS, np.float64)), axis=0)
        np.testing.assert_allclose(state.sum_of_squares, G, rtol=1e-6)


def test_adagrad_traced_initial_accumulator_under_jit_and_vmap():
    """A traced G_0 (jit, vmap over three values, 0 included) gives the written-out run of
    each value; the optimizer's first update is -eta g / sqrt(G_0 + g^2 + eps)."""
    from gradlab.optimizers.adaptive import adagrad

    def run(g0):
        tx = adagrad(0.5, initial_accumulator_value=g0, eps=1e-7)
        x = jnp.asarray([1.0, -2.0, 3.0])
        s = tx.init(x)
        xs = []
        for _ in range(4):
            u, s = tx.update(2.0 * x, s, x)
            x = x + u
            xs.append(x)
        return jnp.stack(xs)

    g0s = jnp.asarray([0.0, 0.7, 9.0])
    out = jax.jit(jax.vmap(run))(g0s)
    for lane, g0 in enumerate(np.asarray(g0s).tolist()):
        x, G, want = np.asarray([1.0, -2.0, 3.0]), np.full(3, g0), []
        for _ in range(4):
            g = 2.0 * x
            G = G + g * g
            x = x - 0.5 * g / np.sqrt(G + 1e-7)
            want.append(x)
        np.testing.assert_allclose(out[lane], np.asarray(want), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ sweep: chunks and rows
_SW_STEPS, _SW_EVERY = 1500, 250  # 6 evaluations: chunks of 2..5 runs take 2-6 calls each
_SW_SEEDS = [2, 0]
# Shuffled: the static ``nesterov`` groups interleave (rows 1, 2, 4, 6 and 0, 3, 5).
_SW_SETTINGS = [
    {"lr": 0.3, "momentum": 0.5, "nesterov": True},
    {"lr": 0.1, "momentum": 0.0, "nesterov": False},
    {"lr": 0.5, "momentum": 0.9, "nesterov": False},
    {"lr": 0.2, "momentum": 0.9, "nesterov": True},
    {"lr": 0.02, "momentum": 0.5, "nesterov": False},
    {"lr": 0.4, "momentum": 0.0, "nesterov": True},
    {"lr": 0.15, "momentum": 0.7, "nesterov": False},
]


def _sw_data():
    rng = np.random.default_rng(7)
    x = (0.01 * rng.standard_normal((16, 3))).astype(np.float32)  # curvature ~2e-4: slow
    y = (x @ np.asarray([1.0, -2.0, 0.5]) + 0.01 * rng.standard_normal(16)).astype(np.float32)
    return x, y


def _sw_init(key):
    return {"w": jax.random.normal(key, (3,))}


def _sw_loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)


def _sw_opt(lr, momentum, nesterov):
    from gradlab.optimizers.sgd import sgd

    return sgd(lr, momentum, nesterov)


def _sw_reference(setting, seed):
    """Full-batch SGD with optax's trace momentum, in float64, from the documented init key
    (``split(PRNGKey(seed), 3)[0]``); the training loss at every evaluation."""
    x, y = (a.astype(np.float64) for a in _sw_data())
    key = jax.random.split(jax.random.PRNGKey(seed), 3)[0]
    w = np.asarray(_sw_init(key)["w"], np.float64)
    v = np.zeros(3)
    lr, mu, nest = setting["lr"], setting["momentum"], setting["nesterov"]
    losses = [np.mean((x @ w - y) ** 2)]
    for t in range(1, _SW_STEPS + 1):
        g = 2.0 * x.T @ (x @ w - y) / len(y)
        v = g + mu * v
        w = w - lr * (g + mu * v if nest else v)
        if t % _SW_EVERY == 0:
            losses.append(np.mean((x @ w - y) ** 2))
    return np.asarray(losses)


def _balanced(n_runs, chunk_size):
    """The documented rule on one device, by search: the fewest chunks of at most
    ``chunk_size`` runs, then the smallest size that still needs no more chunks (the least
    padding)."""
    chunks = -(-n_runs // chunk_size)
    return next(s for s in range(1, chunk_size + 1) if -(-n_runs // s) <= chunks)


@pytest.fixture(scope="module")
def sw_vmap():
    from gradlab.sweep import sweep, tasks

    task = tasks.custom(_sw_init, _sw_loss, _sw_data())
    kw = dict(seeds=_SW_SEEDS, task=task, steps=_SW_STEPS, eval_every=_SW_EVERY, progress=False)
    return task, kw, sweep(_sw_opt, _SW_SETTINGS, strategy="vmap", **kw)


def test_sweep_vmap_rows_are_the_written_out_runs(sw_vmap):
    """Row ``setting * n_seeds + seed_index`` of a shuffled, two-group sweep is that setting's
    run with that seed (numpy reference). The rows differ by far more than the tolerance."""
    _, _, res = sw_vmap
    assert res.info["static"] == ["nesterov"] and len(res.info["groups"]) == 2
    assert res.curves["train_loss"].shape == (14, 7)
    for r in range(14):
        s, seed = _SW_SETTINGS[r // 2], _SW_SEEDS[r % 2]
        assert res.settings[res.run_setting(r)] == s and res.run_seed(r) == seed
        want = _sw_reference(s, seed)
        np.testing.assert_allclose(res.curves["train_loss"][r], want, rtol=2e-4, err_msg=r)
    # every two rows differ by far more than the tolerance (so a row written elsewhere shows)
    c = res.curves["train_loss"][:, 1:]
    gap = np.max(np.abs(c[:, None] - c[None]) / np.maximum(c[:, None], c[None]), axis=-1)
    assert np.min(gap + np.eye(14)) > 1e-2


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8])
def test_sweep_chunked_equals_vmap_row_for_row(sw_vmap, chunk_size):
    """Chunks of 1, 2, 3, 5 and 8 runs over groups of 8 and 6 runs (most do not divide them:
    padded last chunks; several compiled calls per chunk) give the vmap result in every row,
    and ``info`` reports the balanced chunk size. Catches a chunk's results written to another
    group's rows, the padded lanes kept instead of the last runs, the calls of a chunk joined
    out of order, a call count that is not a divisor of the evaluations, and an unbalanced
    chunk size."""
    from gradlab.sweep import sweep

    _, kw, ref = sw_vmap
    res = sweep(_sw_opt, _SW_SETTINGS, strategy="chunked", chunk_size=chunk_size, **kw)
    for k in ref.curves:
        np.testing.assert_allclose(res.curves[k], ref.curves[k], rtol=2e-5, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(res.status, ref.status)
    sizes = {g["static"]["nesterov"]: g["chunk_size"] for g in res.info["groups"]}
    assert sizes == {"False": _balanced(8, chunk_size), "True": _balanced(6, chunk_size)}


_SHARDED = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
import test_audit_strength_c as t
from gradlab.sweep import sweep, tasks

task = tasks.custom(t._sw_init, t._sw_loss, t._sw_data())
kw = dict(seeds=[1], task=task, steps=t._SW_STEPS, eval_every=t._SW_EVERY, progress=False)
one = sweep(t._sw_opt, t._SW_SETTINGS, strategy="vmap", devices=jax.devices()[:1], **kw)
out = {{"devices": len(jax.devices()), "one": one.curves["train_loss"].tolist()}}
for c in (1, 2, 4, 7):
    res = sweep(t._sw_opt, t._SW_SETTINGS, strategy="chunked", chunk_size=c, **kw)
    sizes = {{g["static"]["nesterov"]: g["chunk_size"] for g in res.info["groups"]}}
    out[str(c)] = [res.curves["train_loss"].tolist(), sizes, res.info["devices"]]
print("RESULT" + json.dumps(out))
"""


def test_sweep_chunks_over_three_devices_equal_one_device():
    """Three (forced host) devices, groups of 4 and 3 runs, chunk sizes 1, 2, 4 and 7: every
    row equals the one-device vmap, and each chunk is a balanced multiple of the device count.
    Catches a chunk not padded to the device count and the padded lanes written back."""
    out = run_with_host_devices(_SHARDED.format(tests=os.path.join(ROOT, "tests")), 3)
    assert out["devices"] == 3
    one = np.asarray(out["one"])
    assert one.shape == (7, 7)
    for c in (1, 2, 4, 7):
        curves, sizes, devices = out[str(c)]
        assert devices == 3
        np.testing.assert_allclose(np.asarray(curves), one, rtol=2e-5, atol=1e-7, err_msg=c)
        for group, runs in (("False", 4), ("True", 3)):
            # a multiple of the device count, and balanced: one device-row less per chunk
            # would need another chunk
            size = sizes[group]
            assert size % 3 == 0 and size - 3 < -(-runs // -(-runs // size)), (c, sizes)


# ------------------------------------------------------------------ the race's paths
def _np_racer(name, lr, x0, steps, grad):
    """The race's optimizers written out (documented: momentum 0.9, Nesterov in optax's
    form, the others with optax's default hyperparameters, Rprop's lr its first step size,
    iRprop-), in float64. Returns the ``(steps + 1, dim)`` path."""
    x = np.asarray(x0, np.float64)
    z = np.zeros_like(x)
    st = dict(v=z, G=z + 0.1, nu=z, ex=z, m=z, step=z + lr, prev=z)
    path = [x.copy()]
    for t in range(1, steps + 1):
        g = grad(x)
        if name == "sgd":
            u = lr * g
        elif name in ("momentum", "nesterov"):
            st["v"] = g + 0.9 * st["v"]
            u = lr * (g + 0.9 * st["v"] if name == "nesterov" else st["v"])
        elif name == "adagrad":
            st["G"] = st["G"] + g * g
            u = lr * g / np.sqrt(st["G"] + 1e-7)
        elif name == "rmsprop":
            st["nu"] = 0.9 * st["nu"] + 0.1 * g * g
            u = lr * g / np.sqrt(st["nu"] + 1e-8)
        elif name == "adadelta":
            st["nu"] = 0.9 * st["nu"] + 0.1 * g * g
            d = np.sqrt(st["ex"] + 1e-6) / np.sqrt(st["nu"] + 1e-6) * g
            st["ex"] = 0.9 * st["ex"] + 0.1 * d * d
            u = lr * d
        elif name == "adam":
            st["m"] = 0.9 * st["m"] + 0.1 * g
            st["nu"] = 0.999 * st["nu"] + 0.001 * g * g
            mh, vh = st["m"] / (1 - 0.9**t), st["nu"] / (1 - 0.999**t)
            u = lr * mh / (np.sqrt(vh) + 1e-8)
        elif name == "rprop":
            s = np.sign(g) * st["prev"]
            step = st["step"]
            step = np.where(s > 0, np.minimum(1.2 * step, 50.0), step)
            step = np.where(s < 0, np.maximum(0.5 * step, 1e-6), step)
            st["step"], st["prev"] = step, np.where(s < 0, 0.0, np.sign(g))
            u = np.where(s < 0, 0.0, np.sign(g) * step)
        else:  # pragma: no cover
            raise AssertionError(name)
        x = x - u
        path.append(x.copy())
    return np.asarray(path)


def _quadratic_grad(x):  # f = (x^2 + 10 y^2) / 2, the registry's "quadratic"
    return np.asarray([x[0], 10.0 * x[1]])


def test_every_racer_follows_its_written_out_optimizer():
    """Each name's recorded path is its optimizer's iterates from the problem's start, with
    the problem's suggested learning rate (Nesterov uses momentum's, AdaDelta 1). Catches a
    name mapped to another optimizer or hyperparameter (momentum 0.9, the Nesterov switch,
    Rprop's first step), a suggested rate taken from another name, and the path shifted by
    one step (row 0 is the start)."""
    from gradlab import problems
    from gradlab.lab import race as race_mod

    p = problems.get("quadratic")
    steps = 25
    paths = race_mod.race("quadratic", race_mod.OPTIMIZERS, steps=steps)
    assert list(paths) == list(race_mod.OPTIMIZERS)
    rates = dict(p.learning_rates)
    assert rates["nesterov"] == rates["momentum"] and rates["adadelta"] == 1.0
    for name, path in paths.items():
        assert path.shape == (steps + 1, 2) and path.dtype == np.float32, name
        want = _np_racer(name, rates[name], p.start, steps, _quadratic_grad)
        np.testing.assert_allclose(path, want, rtol=1e-4, atol=1e-5, err_msg=name)
    # the runs differ from one another by far more than the tolerance
    finals = np.asarray([paths[n][-1] for n in paths])
    assert np.min(np.abs(finals[:, None] - finals[None]).sum(-1) + np.eye(len(finals))) > 1e-3


def test_race_learning_rate_override_and_start_reach_only_their_racer():
    """``learning_rates={"adam": 0.3}`` and ``start=`` change adam's run and the start; sgd
    keeps the suggested rate. Catches an override ignored or applied to every racer."""
    from gradlab import problems
    from gradlab.lab import race as race_mod

    p = problems.get("quadratic")
    start = np.asarray([1.5, -0.7], np.float32)
    paths = race_mod.race("quadratic", "sgd, adam", 12, start, learning_rates={"adam": 0.3})
    np.testing.assert_allclose(
        paths["adam"], _np_racer("adam", 0.3, start, 12, _quadratic_grad), rtol=1e-4, atol=1e-5
    )
    want = _np_racer("sgd", p.learning_rates["sgd"], start, 12, _quadratic_grad)
    np.testing.assert_allclose(paths["sgd"], want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ lab.train: resume + patience
_ES_OPT = optax.sgd(1.0)  # one object: every run below shares one compiled epoch


def _es_train(epochs, ckdir=None, resume=False, every=1):
    from flax import nnx

    from gradlab.lab import data as lab_data
    from gradlab.lab.models import MLP
    from gradlab.lab.train import train

    d = lab_data.make_blobs(120, seed=1, spread=3.0)
    m = MLP(2, [8], 3, rngs=nnx.Rngs(0))
    kw = dict(batch_size=8, patience=2, min_delta=1e-3, restore_best=True, progress=False)
    kw.update(checkpoint_dir=ckdir, checkpoint_every=every, resume=resume)
    return train(m, _ES_OPT, d, epochs=epochs, **kw)


def _same_run(a, b):
    for k in ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "batch_loss"):
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    assert (a.status, a.stopped_early) == (b.status, b.stopped_early)
    for name in ("epoch", "step", "best_epoch", "bad_epochs", "best_val", "last_val"):
        assert np.asarray(getattr(a.state, name)) == np.asarray(getattr(b.state, name)), name
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def es_straight(tmp_path_factory):
    ck = str(tmp_path_factory.mktemp("es") / "ck")
    return ck, _es_train(20, ck, every=4)  # saves at epoch 4 and where it stops (7)


def test_early_stopped_straight_run_is_the_rule_replayed(es_straight):
    """The straight run stops ``patience`` epochs after its best (the rule of ``train``'s
    docstring replayed on its own validation losses), before ``epochs``: the resumes below
    then cross the best epoch, the bad epochs and the stop."""
    _, r = es_straight
    val = r.history.val_loss
    best, bad, stop = 0, 0, None
    best_val = np.inf
    for e in range(1, len(val)):
        if val[e] < best_val - 1e-3:
            best, best_val, bad = e, val[e], 0
        else:
            bad += 1
        if bad >= 2:
            stop = e
            break
    assert stop == len(val) - 1 < 20 and r.status == "early_stopped" and r.stopped_early
    assert int(r.state.best_epoch) == best and 1 < best < stop - 1


@pytest.mark.parametrize("where", ["before_best", "after_a_bad_epoch"])
def test_resume_with_patience_equals_the_straight_run(es_straight, tmp_path, where):
    """Interrupted (``epochs=k``, checkpointed) before the best epoch, or after one epoch
    without improvement, then resumed up to 20 epochs: the same history, best epoch, stopping
    epoch, status and (best) parameters as the straight run. Catches the early-stopping
    counter, the best validation loss or the best epoch not carried through the checkpoint."""
    _, straight = es_straight
    best = int(straight.state.best_epoch)
    k = best - 2 if where == "before_best" else best + 1
    ck = str(tmp_path / "ck")
    first = _es_train(k, ck)
    assert int(first.state.epoch) == k and first.status == "completed"
    if where == "after_a_bad_epoch":
        assert int(first.state.bad_epochs) == 1
    _same_run(_es_train(20, ck, resume=True), straight)


def test_resuming_an_early_stopped_run_trains_no_further(es_straight):
    """The checkpoint of a run that stopped early holds the stopping epoch (though
    ``checkpoint_every`` does not divide it), and resuming it (asking for the same 20 epochs)
    returns that run as it was: stopped early, same epoch and history. Catches the stop
    forgotten on resume (the run would go on training) and no save at the stop."""
    from gradlab.lab import checkpoint as ckpt

    ck, straight = es_straight
    saved, meta = ckpt.restore_checkpoint(ck, straight.state)
    stop = int(straight.state.epoch)
    assert stop % 4 != 0 and int(saved.epoch) == stop and len(meta["history"]) == stop + 1
    again = _es_train(20, ck, resume=True)
    _same_run(again, straight)
    assert len(again.history) == int(straight.state.epoch) + 1


def test_static_values_that_compare_equal_but_differ_in_type_are_separate_groups():
    """``1 == True`` (and they hash alike), yet a factory may tell them apart: settings
    ``k=1`` and ``k=True``, interleaved, run their own programs, each equal to its sweep
    alone. Catches a group key made of the values without their types."""
    from gradlab.sweep import sweep, tasks

    def factory(lr, k):
        return optax.sgd(lr * (3.0 if k is True else 1.0))

    task = tasks.custom(_sw_init, _sw_loss, _sw_data())
    kw = dict(task=task, steps=_SW_STEPS, eval_every=750, strategy="vmap", progress=False)
    settings = [{"lr": 0.2, "k": 1}, {"lr": 0.2, "k": True}, {"lr": 0.3, "k": 1}]
    both = sweep(factory, settings, **kw)
    assert len(both.info["groups"]) == 2
    for r, s in enumerate(settings):
        alone = sweep(factory, [s], **kw)
        want = alone.curves["train_loss"][0]
        np.testing.assert_allclose(both.curves["train_loss"][r], want, rtol=2e-5)
    final = both.final("train_loss")
    assert abs(final[0] - final[1]) > 0.05 * final[0]  # x3 the learning rate shows
