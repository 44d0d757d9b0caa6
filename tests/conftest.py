import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The tests compare float32 results with numpy/scipy/optax at float32 tolerances. On GPUs and
# TPUs XLA runs float32 matrix products with reduced-precision passes by default (TF32 on an
# H200 put models 1e-3 off their numpy references); on the CPU this changes nothing. Set in
# the environment so that the tests' subprocesses inherit it.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
