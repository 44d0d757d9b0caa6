"""Tests for gradlab.lab.data: datasets, train-only standardisation, splits and batching."""

import jax
import numpy as np
import pytest

from gradlab.lab import data


def test_digits_shapes_dtypes_and_split():
    d = data.load_digits(val_fraction=0.2, seed=0)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.x_train.shape[1] == 64 and d.num_classes == 10
    assert len(d.x_train) + len(d.x_val) == 1797
    assert len(d.x_val) == round(0.2 * 1797)
    assert set(np.unique(d.y_train)) == set(range(10))


def test_standardisation_fitted_on_train_split_only():
    raw = data.load_digits(standardize=False, seed=3)
    std = data.load_digits(standardize=True, seed=3)
    mean = raw.x_train.astype(np.float64).mean(0)
    sd = raw.x_train.astype(np.float64).std(0)
    sd = np.where(sd < 1e-8, 1.0, sd)
    np.testing.assert_allclose(std.x_train, (raw.x_train - mean) / sd, atol=1e-5)
    # Validation uses the *training* statistics (so its mean is not exactly zero).
    np.testing.assert_allclose(std.x_val, (raw.x_val - mean) / sd, atol=1e-5)
    assert np.allclose(std.x_train.mean(0), 0.0, atol=1e-5)
    assert np.abs(std.x_val.mean(0)).max() > 1e-3
    # Constant pixels map to 0 rather than NaN.
    assert np.all(np.isfinite(std.x_train)) and np.all(np.isfinite(std.x_val))


def test_split_is_disjoint_and_reproducible():
    tr, va = data.train_val_split(100, 0.25, seed=1)
    assert len(va) == 25 and len(tr) == 75
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(100))
    tr2, va2 = data.train_val_split(100, 0.25, seed=1)
    np.testing.assert_array_equal(va, va2)
    with pytest.raises(ValueError):
        data.train_val_split(10, 1.0)


@pytest.mark.parametrize(
    "maker,classes",
    [(data.make_moons, 2), (data.make_spirals, 3), (data.make_blobs, 3), (data.make_regression, 0)],
)
def test_generated_datasets(maker, classes):
    d = maker(seed=0)
    assert d.num_classes == classes
    assert d.x_train.dtype == np.float32 and d.x_train.shape[1] == 2 - (classes == 0)
    if classes:
        assert d.y_train.dtype == np.int32
        assert set(np.unique(d.y_train)) == set(range(classes))
    else:
        assert d.y_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    again = maker(seed=0)
    np.testing.assert_array_equal(d.x_train, again.x_train)


def test_make_dataset_rejects_labels_outside_the_classes():
    """Labels outside ``[0, num_classes)`` (1-based ones, say) are refused at once (training on
    them reported ``non_finite``); boolean labels are 0/1."""
    x = np.random.default_rng(0).normal(size=(30, 2))
    y = np.arange(30) % 3
    with pytest.raises(ValueError, match=r"\[0, 3\).*1-based labels"):
        data.make_dataset(x, y + 1, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        data.make_dataset(x, y - 1, num_classes=3)
    with pytest.raises(ValueError, match="integers"):
        data.make_dataset(x, y + 0.5, num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        data.make_dataset(x, np.stack([y, y], 1), num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        data.make_dataset(x, y, num_classes=-1)
    ok = data.make_dataset(x, y.astype(np.float64), num_classes=3)
    assert ok.y_train.dtype == np.int32 and set(np.unique(ok.y_train)) == {0, 1, 2}
    assert set(np.unique(data.make_dataset(x, y > 0, num_classes=2).y_train)) == {0, 1}


def test_spirals_have_exactly_n_points():
    """``make_spirals(100, num_classes=3)`` returned 99 points; the remainder now goes to the
    first arms, and divisible sizes give the same data as before."""
    for n, counts in [(100, [34, 33, 33]), (7, [3, 2, 2]), (600, [200, 200, 200])]:
        d = data.make_spirals(n, num_classes=3, seed=0)
        y = np.concatenate([d.y_train, d.y_val])
        assert len(y) == n and np.bincount(y).tolist() == counts
    with pytest.raises(ValueError, match="n must be >= num_classes"):
        data.make_spirals(2, num_classes=3)


def test_polynomial_regression_is_fitted_by_its_features():
    d = data.make_regression(400, degree=3, noise=0.0, standardize=False, seed=2)
    x = d.x_train[:, 0].astype(np.float64)
    feats = np.stack([x, x**2, x**3, np.ones_like(x)], 1)
    coef, res, *_ = np.linalg.lstsq(feats, d.y_train.astype(np.float64), rcond=None)
    assert np.max(np.abs(feats @ coef - d.y_train)) < 1e-4


def test_iterate_batches_regimes_and_fresh_permutations():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    rng = np.random.default_rng(0)
    e1 = [yb for _, yb in data.iterate_batches(x, y, 3, seed=rng)]
    e2 = [yb for _, yb in data.iterate_batches(x, y, 3, seed=rng)]
    assert [len(b) for b in e1] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.sort(np.concatenate(e1)), y)  # each example once
    assert not np.array_equal(np.concatenate(e1), np.concatenate(e2))  # new permutation
    assert len(list(data.iterate_batches(x, y, 1))) == 10  # SGD
    (full,) = list(data.iterate_batches(x, y, "all"))  # batch GD
    assert len(full[0]) == 10
    assert [len(b) for _, b in data.iterate_batches(x, y, 3, drop_last=True)] == [3, 3, 3]


def test_epoch_indices_jittable():
    f = jax.jit(data.epoch_indices, static_argnums=(1, 2))
    a = np.asarray(f(jax.random.key(0), 10, 3))
    b = np.asarray(f(jax.random.key(1), 10, 3))
    assert a.shape == (3, 3) and a.dtype == np.int32
    assert len(set(a.ravel())) == 9 and not np.array_equal(a, b)
    assert np.asarray(f(jax.random.key(0), 10, None)).shape == (1, 10)


def test_permutations_are_uniform():
    perms = np.asarray(data.permutations(jax.random.key(0), 3, 6000))
    assert perms.shape == (6000, 3) and perms.dtype == np.int32
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(3), (6000, 1)))
    _, counts = np.unique(perms, axis=0, return_counts=True)
    assert len(counts) == 6 and np.all(np.abs(counts - 1000) < 6 * np.sqrt(1000))


@pytest.mark.parametrize("bad,err", [(0, ValueError), (11, ValueError), (2.5, TypeError)])
def test_bad_batch_size(bad, err):
    with pytest.raises(err):
        data.resolve_batch_size(bad, 10)
