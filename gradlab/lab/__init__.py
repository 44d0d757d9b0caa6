"""The lab: Flax models, initialisers, data, a training loop, plots and experiments."""
