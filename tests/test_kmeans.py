"""gradlab.lab.kmeans against scikit-learn (Lloyd) and textbook update loops written in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from gradlab.lab import kmeans as km


def _blobs(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    centers = [(0.0, 0.0), (4.0, 4.0), (-4.0, 4.0)]
    return np.concatenate([rng.normal(c, 0.6, size=(n_per, 2)) for c in centers]).astype(np.float32)


X = _blobs()
INIT = X[[0, 1, 2]].copy()  # three points from the first blob: a poor start


def _order(key, steps, batch):
    _, order_key = jax.random.split(key)
    return np.asarray(km.visit_order(order_key, X.shape[0], steps, batch))


def test_inertia_and_assign_match_numpy():
    c = X[[5, 50, 100]]
    d = ((X[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(float(km.inertia(X, c)), d.min(1).sum(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(km.assign(X, c)), d.argmin(1))


def test_batch_lloyd_matches_sklearn():
    res = km.kmeans(X, 3, key=jax.random.key(0), method="batch", steps=20, init=INIT)
    ref = KMeans(3, init=INIT, n_init=1, algorithm="lloyd", max_iter=20, tol=0.0).fit(X)
    np.testing.assert_allclose(np.asarray(res.centers), ref.cluster_centers_, atol=1e-4)
    assert float(res.inertia[-1]) == pytest.approx(ref.inertia_, rel=1e-5)
    assert res.inertia.shape == (21,) and float(res.examples[-1]) == 20 * X.shape[0]
    assert np.all(np.diff(np.asarray(res.inertia)) <= 1e-3)  # Lloyd never increases J


def test_sgd_is_macqueen_online_update():
    key = jax.random.key(3)
    steps = 200  # more than one epoch: checks the per-epoch permutations too
    res = km.kmeans(X, 3, key=key, method="sgd", steps=steps, init=INIT, record_every=50)
    c = INIT.astype(np.float64).copy()
    counts = np.zeros(3)
    for i in _order(key, steps, 1)[:steps]:
        j = np.argmin(((X[i] - c) ** 2).sum(1))
        counts[j] += 1
        c[j] += (X[i] - c[j]) / counts[j]
    np.testing.assert_allclose(np.asarray(res.centers), c, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.counts), counts)
    assert res.inertia.shape == (5,)
    np.testing.assert_array_equal(np.asarray(res.examples), [0, 50, 100, 150, 200])


def test_minibatch_fixed_rate_is_gradient_step():
    key = jax.random.key(4)
    steps, b, lr = 30, 8, 0.5
    res = km.kmeans(
        X, 3, key=key, method="minibatch", steps=steps, batch_size=b, learning_rate=lr, init=INIT
    )
    c = INIT.astype(np.float64).copy()
    order = _order(key, steps, b)
    for t in range(steps):
        xb = X[order[t * b : (t + 1) * b]].astype(np.float64)
        lab = ((xb[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        pull = np.stack([(xb[lab == j] - c[j]).sum(0) for j in range(3)])
        c = c + lr / b * pull
    np.testing.assert_allclose(np.asarray(res.centers), c, atol=1e-4)


def test_minibatch_count_rate_and_batch_gradient_descent():
    key = jax.random.key(5)
    steps, b = 12, 10
    res = km.kmeans(X, 3, key=key, method="minibatch", steps=steps, batch_size=b, init=INIT)
    c, counts = INIT.astype(np.float64).copy(), np.zeros(3)
    order = _order(key, steps, b)
    for t in range(steps):
        xb = X[order[t * b : (t + 1) * b]].astype(np.float64)
        lab = ((xb[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        nb = np.bincount(lab, minlength=3)
        counts += nb
        sums = np.stack([xb[lab == j].sum(0) for j in range(3)])
        c = c + (sums - nb[:, None] * c) / np.maximum(counts, 1)[:, None]
    np.testing.assert_allclose(np.asarray(res.centers), c, atol=1e-4)
    # full-batch gradient descent with a fixed rate
    gd = km.kmeans(X, 3, key=key, method="batch", steps=5, learning_rate=0.9, init=INIT)
    c = INIT.astype(np.float64).copy()
    for _ in range(5):
        lab = ((X[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        c = c + 0.9 / len(X) * np.stack([(X[lab == j] - c[j]).sum(0) for j in range(3)])
    np.testing.assert_allclose(np.asarray(gd.centers), c, atol=1e-4)


def test_seeds_accept_legacy_uint32_keys():
    """``(S, 2)`` uint32 keys from ``jax.random.split(PRNGKey(0), S)`` are keys, one per row
    (they were taken for int seeds and raised a TypeError); int seeds must be 1-D."""
    kw = dict(method="batch", steps=2)
    legacy = jax.random.split(jax.random.PRNGKey(0), 3)
    res = km.kmeans_seeds(X, 3, legacy, **kw)
    for i in range(3):
        one = km.kmeans(X, 3, key=legacy[i], **kw)
        np.testing.assert_allclose(np.asarray(res.centers[i]), np.asarray(one.centers), rtol=1e-5)
    typed = km.kmeans_seeds(X, 3, jax.random.split(jax.random.key(0), 3), **kw)
    assert typed.centers.shape == res.centers.shape
    ints = km.kmeans_seeds(X, 3, np.array([5, 7]), **kw)
    np.testing.assert_allclose(
        np.asarray(ints.centers[1]),
        np.asarray(km.kmeans(X, 3, key=jax.random.key(7), **kw).centers),
        rtol=1e-5,
    )
    for bad in (np.array(3), np.ones((2, 2), np.int32), np.ones(3)):
        with pytest.raises(ValueError, match="seeds must be"):
            km.kmeans_seeds(X, 3, bad, **kw)


def test_seeds_vmap_jit_and_traced_learning_rate():
    res = km.kmeans_seeds(X, 3, 4, method="minibatch", steps=40, batch_size=16, record_every=10)
    assert res.centers.shape == (4, 3, 2) and res.inertia.shape == (4, 5)
    assert np.all(np.isfinite(np.asarray(res.inertia)))
    # different seeds give different initialisations
    assert len({float(v) for v in np.asarray(res.inertia[:, 0])}) > 1
    fit = jax.jit(
        jax.vmap(
            lambda lr: km.kmeans(
                X, 3, key=jax.random.key(0), method="sgd", steps=50, learning_rate=lr
            ).inertia[-1]
        )
    )
    out = np.asarray(fit(jnp.asarray([0.05, 0.2, -1.0])))
    assert np.all(np.isfinite(out[:2])) and np.isnan(out[2])  # a bad traced rate poisons its lane


def test_kmeanspp_init_picks_distinct_points():
    key = jax.random.key(0)
    init_key, _ = jax.random.split(key)
    pp = jax.jit(km.init_centers, static_argnums=(2, 3))
    c = np.asarray(pp(init_key, X, 3, "kmeans++"))
    rows = {tuple(r) for r in X.tolist()}
    assert all(tuple(r) in rows for r in c.tolist()) and len({tuple(r) for r in c.tolist()}) == 3
    res = km.kmeans(X, 3, key=key, method="batch", steps=20, init="kmeans++")
    assert float(res.inertia[-1]) < float(res.inertia[0])
    # The fit starts from init_centers(first half of the key) (same program as the Lloyd test).
    ref = km.kmeans(X, 3, key=key, method="batch", steps=20, init=c)
    np.testing.assert_allclose(np.asarray(res.centers), np.asarray(ref.centers), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"method": "adam"}, ValueError),
        ({"k": 1000}, ValueError),
        ({"steps": 10, "record_every": 3}, ValueError),
        ({"init": np.zeros((2, 2))}, ValueError),
        ({"init": "farthest"}, ValueError),
        ({"learning_rate": 0.0}, ValueError),
        ({"method": "minibatch", "batch_size": 0}, ValueError),
        ({"steps": 2.5}, TypeError),
    ],
)
def test_errors(kwargs, error):
    args = {"k": 3, "steps": 10, **kwargs}
    k = args.pop("k")
    with pytest.raises(error):
        km.kmeans(X, k, key=jax.random.key(0), **args)


def test_x_must_be_2d():
    with pytest.raises(ValueError):
        km.kmeans(X[:, 0], 3, key=jax.random.key(0))
