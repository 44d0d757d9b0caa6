"""First-order atoms: each a factory returning an optax ``GradientTransformation``."""
