"""gradlab.problems: values and gradients at the known minimisers, formulas, registry, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from gradlab import problems

jax.config.update("jax_enable_x64", False)


def _himmelblau_grad(v):
    """The textbook gradient of Himmelblau's function, in float64 numpy."""
    x, y = v
    return np.array(
        [
            4 * x * (x**2 + y - 11) + 2 * (x + y**2 - 7),
            2 * (x**2 + y - 11) + 4 * y * (x + y**2 - 7),
        ]
    )


@pytest.mark.parametrize("name", problems.names())
def test_minimizers_value_and_zero_gradient(name):
    p = problems.get(name)
    assert p.minimizers.ndim == 2 and p.minimizers.shape[1] == p.dim
    assert p.start.shape == (p.dim,)
    assert p.xlim[0] < p.start[0] < p.xlim[1] and p.ylim[0] < p.start[1] < p.ylim[1]
    value, grad = jax.jit(jax.vmap(p.value)), jax.jit(jax.vmap(jax.grad(p.value)))
    # Each minimiser: the minimum value, a zero gradient, inside the window, and 5 nearby
    # points that are worse (minimisers, not just stationary points).
    for m in p.minimizers:
        assert p.xlim[0] < m[0] < p.xlim[1] and p.ylim[0] < m[1] < p.ylim[1]
        near = m + np.random.default_rng(0).normal(size=(5, p.dim)) * 1e-2
        pts = jnp.asarray(np.vstack([m, near]), jnp.float32)
        vals = np.asarray(value(pts))
        assert vals[0] == pytest.approx(p.minimum, abs=1e-5) and np.all(vals[1:] > p.minimum)
        np.testing.assert_allclose(np.asarray(grad(pts[:1])), 0.0, atol=2e-5)
    if len(p.stationary_points):
        g = grad(jnp.asarray(p.stationary_points, jnp.float32))
        np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 5])
def test_rosenbrock_matches_scipy(dim):
    p = problems.rosenbrock(dim)
    rng = np.random.default_rng(dim)
    xs = rng.uniform(-2, 2, size=(20, dim))
    got = np.asarray(jax.jit(jax.vmap(p.value))(jnp.asarray(xs, jnp.float32)))
    want = np.array([scipy.optimize.rosen(x) for x in xs.astype(np.float32).astype(np.float64)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    g = np.asarray(jax.jit(jax.vmap(jax.grad(p.value)))(jnp.asarray(xs, jnp.float32)))
    g_ref = np.array([scipy.optimize.rosen_der(x) for x in xs.astype(np.float32)])
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(p.minimizers, np.ones((1, dim)))


def test_rosenbrock_a_b_minimizer_and_errors():
    p = problems.rosenbrock(2, a=2.0, b=10.0)
    np.testing.assert_array_equal(p.minimizers, [[2.0, 4.0]])
    x = np.array([0.3, -0.7])
    assert float(p.value(jnp.asarray(x))) == pytest.approx(
        10 * (x[1] - x[0] ** 2) ** 2 + (2 - x[0]) ** 2, rel=1e-6
    )
    with pytest.raises(ValueError):
        problems.rosenbrock(1)
    with pytest.raises(ValueError):
        problems.rosenbrock(3, a=2.0)
    with pytest.raises(ValueError):
        problems.rosenbrock(2, b=0.0)


def test_formulas_against_numpy():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-2, 2, size=(10, 2))
    formulas = {
        "beale": lambda x, y: (
            (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
        ),
        "himmelblau": lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
        "saddle": lambda x, y: x**2 - y**2,
        "long_valley": lambda x, y: 0.5 * np.log(np.cosh(x)) + 10 * y**2,
        "quadratic": lambda x, y: 0.5 * (x**2 + 10 * y**2),
    }
    for name, f in formulas.items():
        p = problems.get(name)
        got = np.asarray(jax.jit(jax.vmap(p.value))(jnp.asarray(pts, jnp.float32)))
        np.testing.assert_allclose(got, f(pts[:, 0], pts[:, 1]), rtol=1e-5, atol=1e-6)


def test_long_valley_is_stable_far_out_and_slopes_gently():
    p = problems.long_valley()
    x = jnp.asarray([-200.0, 0.0])
    assert np.isfinite(float(p.value(x)))
    g = np.asarray(jax.jit(jax.grad(p.value))(x))
    np.testing.assert_allclose(g, [-0.5, 0.0], atol=1e-6)  # constant slope s along the floor
    h = np.asarray(jax.jit(jax.hessian(p.value))(jnp.zeros(2)))
    np.testing.assert_allclose(h, np.diag([0.5, 20.0]), atol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 0.6])
def test_quadratic_condition_number(angle):
    p = problems.quadratic(kappa=25.0, angle=angle)
    h = np.asarray(jax.jit(jax.hessian(p.value))(jnp.asarray([0.3, -0.2])))
    np.testing.assert_allclose(np.linalg.eigvalsh(h), [1.0, 25.0], rtol=1e-5)
    with pytest.raises(ValueError):
        problems.quadratic(kappa=0.5)


def test_saddle_has_no_minimizer():
    p = problems.saddle()
    assert p.minimizers.shape == (0, 2) and p.minimum == -np.inf
    h = np.asarray(jax.jit(jax.hessian(p.value))(jnp.zeros(2)))
    np.testing.assert_allclose(np.linalg.eigvalsh(h), [-2.0, 2.0])
    assert p.distance_to_minimizer([0.0, 0.0]) == np.inf


def test_himmelblau_minimizers_against_scipy_root():
    p = problems.himmelblau()
    for m in p.minimizers:  # (their gradients are checked in float32 above)
        sol = scipy.optimize.root(_himmelblau_grad, m + 0.05, tol=1e-12)
        np.testing.assert_allclose(sol.x, m, atol=1e-9)
    assert p.distance_to_minimizer([3.1, 2.0]) == pytest.approx(0.1, abs=1e-9)
    assert np.isnan(p.distance_to_minimizer([np.nan, 0.0]))


def _himmelblau_hessian(v):
    x, y = v
    return np.array(
        [[12 * x**2 + 4 * y - 42, 4 * x + 4 * y], [4 * x + 4 * y, 4 * x + 12 * y**2 - 26]]
    )


def test_himmelblau_stationary_points_are_the_maximum_and_four_saddles():
    """All five non-minimising stationary points are listed (only the maximum was): a zero
    float64 gradient, one point with two negative Hessian eigenvalues, four with one."""
    p = problems.himmelblau()
    assert p.stationary_points.shape == (5, 2)
    negative = []
    for s in p.stationary_points:
        assert np.abs(_himmelblau_grad(s)).max() < 1e-9
        negative.append(int(np.sum(np.linalg.eigvalsh(_himmelblau_hessian(s)) < 0)))
        sol = scipy.optimize.root(_himmelblau_grad, s + 0.02, tol=1e-12)
        np.testing.assert_allclose(sol.x, s, atol=1e-9)
    assert sorted(negative) == [1, 1, 1, 1, 2]


def test_rotated_quadratic_formula_describes_the_rotation():
    """A rotated quadratic's formula (a plot title) names the rotation; it said x^2 + kappa y^2."""
    import io

    from matplotlib import mathtext

    plain, rotated = problems.quadratic(kappa=4.0), problems.quadratic(kappa=4.0, angle=0.7)
    assert plain.formula == r"\frac{1}{2}(x^2 + \kappa y^2)"
    assert r"\theta = 0.7" in rotated.formula and r"x\cos\theta + y\sin\theta" in rotated.formula
    mathtext.math_to_image(f"${rotated.formula}$", io.BytesIO(), format="png")  # renders
    x, y, th = 1.0, 0.0, 0.7
    u, v = x * np.cos(th) + y * np.sin(th), y * np.cos(th) - x * np.sin(th)
    assert float(rotated.value(jnp.asarray([x, y]))) == pytest.approx(0.5 * (u**2 + 4 * v**2))


def test_registry_jit_vmap_and_errors():
    expected = "rosenbrock beale long_valley saddle quadratic himmelblau".split()
    assert set(expected) <= set(problems.names())
    p = problems.get("beale")
    assert problems.get(p) is p
    with pytest.raises(KeyError):
        problems.get("nope")
    with pytest.raises(ValueError):
        p.value(jnp.zeros(3))
    f = jax.jit(p.value)
    assert float(f(jnp.asarray([3.0, 0.5]))) == pytest.approx(0.0, abs=1e-7)
    vals = jax.vmap(p.value)(jnp.zeros((4, 2)))
    assert vals.shape == (4,)
    assert hash(p) == hash(p)  # usable as a static jit argument
