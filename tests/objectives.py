"""Small objectives shared by the line-search tests (failure modes: NaN regions, unbounded)."""

import jax.numpy as jnp


def square(x):
    return jnp.sum(x**2)


def linear(x):
    """Unbounded below along +x."""
    return -jnp.sum(x)


def nan_off_start(x):
    """Finite only at the start: every trial is NaN."""
    return jnp.where(jnp.all(x == 0.0), jnp.sum(x**2 - x), jnp.nan)


def nan_region(x):
    """NaN beyond x = 0.5, a finite decrease before it."""
    return jnp.where(jnp.all(x < 0.5), jnp.sum((x - 1.0) ** 2), jnp.nan)
