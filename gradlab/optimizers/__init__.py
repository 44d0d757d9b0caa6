"""Named optimizers: chains of atoms ending in the learning-rate atom (one module per family)."""
