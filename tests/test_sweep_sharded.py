"""A sweep sharded over 4 (forced host) devices equals the same sweep on one device.

``--xla_force_host_platform_device_count`` must be set before JAX is imported, so the check runs
in a subprocess. Tolerance: ``rtol=2e-5, atol=1e-6`` (float32); the run axis (6 runs) is padded
to 8 lanes for 4 devices, so the padded lanes are exercised too.
"""

from __future__ import annotations

import textwrap

import numpy as np
from host_devices import run_with_host_devices

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from gradlab.sweep import sweep, tasks

    def init(key):
        return {"w": jax.random.normal(key, (3, 4)) * 0.5, "v": jnp.zeros(4)}

    def loss(p, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] + x[:, 0] - y) ** 2)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    y = np.sin(x[:, 1]).astype(np.float32)
    task = tasks.custom(init, loss, (x, y), batch_size=8)
    space = {"lr": [0.01, 0.1, 0.3], "momentum": [0.0, 0.9]}
    kw = dict(seeds=1, task=task, steps=12, eval_every=4, progress=False)
    opt = lambda lr, momentum: optax.sgd(lr, momentum=momentum)
    one = sweep(opt, space, strategy="vmap", devices=jax.devices()[:1], **kw)
    out = {"n_devices": len(jax.devices()), "one": one.curves["train_loss"].tolist()}
    for name, extra in [("vmap", {}), ("chunked", {"chunk_size": 4}), ("loop", {})]:
        res = sweep(opt, space, strategy=name, **extra, **kw)
        out[name] = res.curves["train_loss"].tolist()
        out[name + "_devices"] = res.info["devices"]
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_over_four_devices_equals_one_device():
    out = run_with_host_devices(SCRIPT, 4)
    assert out["n_devices"] == 4
    one = np.asarray(out["one"])
    assert one.shape == (6, 4) and np.isfinite(one).all()
    for name in ("vmap", "chunked", "loop"):
        assert out[name + "_devices"] == 4
        np.testing.assert_allclose(np.asarray(out[name]), one, rtol=2e-5, atol=1e-6, err_msg=name)
