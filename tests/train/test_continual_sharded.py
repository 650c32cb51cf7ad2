"""Continual backprop on 8 fake CPU devices (data=2, fsdp=2, tensor=2; MLP kernels split over
fsdp and tensor) gives the same params, moments and unit state as on one device."""

import os
import subprocess
import sys
import textwrap

from latent_jax.testing import cpu_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_default_matmul_precision", "highest")
    from latent_jax import parallel
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import Decoder, init_params
    from latent_jax.train import continual as C

    assert len(jax.devices()) == 8
    cfg = tiny_config("llama", num_hidden_layers=2, intermediate_size=32, initializer_range=0.1)
    params = init_params(cfg, 0)
    layers = C.find_mlp_layers(params)
    tx = C.continual_backprop(optax.adam(1e-2), layers,
                              C.CBPConfig(replacement_rate=0.05, maturity_threshold=1, apply_freq=2, init="normal"))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, size=(8, 10)).astype(np.int32)

    def step(state, ids):
        def loss_fn(p):
            out, inter = Decoder(cfg).apply({"params": p}, ids, mutable=["intermediates"])
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], ids[:, 1:]).mean()
            return ce, C.activations_from_intermediates(inter["intermediates"])
        (loss, acts), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        u, o = tx.update(g, state["opt"], state["params"], activations=acts)
        return {"params": optax.apply_updates(state["params"], u), "opt": o}, loss

    def run(mesh):
        p = jax.device_put(params, parallel.param_shardings(params, mesh))
        opt = tx.init(p)
        state = {"params": p, "opt": opt}
        sh = parallel.param_shardings(state, mesh)
        state = jax.device_put(state, sh)
        f = jax.jit(step, in_shardings=(sh, parallel.batch_sharding(mesh, 2)), out_shardings=(sh, None))
        for _ in range(6):
            state, loss = f(state, ids)
        return state, f

    s1, _ = run(parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    s8, f8 = run(parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    k = s8["params"]["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor"), k.sharding.spec
    assert f8._cache_size() == 1
    rep1, rep8 = int(C.cbp_state(s1["opt"]).replaced), int(C.cbp_state(s8["opt"]).replaced)
    assert rep1 == rep8 > 0, (rep1, rep8)
    a, b = C.flatten_paths(s1), C.flatten_paths(s8)
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(np.asarray(a[p], np.float64) - np.asarray(b[p], np.float64)))) for p in a)
    assert diff < 1e-4, diff
    ages = [np.asarray(x) for x in C.cbp_state(s8["opt"]).age]
    print("replaced", rep8, "max diff", diff, "OK")
    """
)


def test_sharded_continual_backprop_equals_single_device():
    env = cpu_devices_env(8)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
