"""Sharding: the same loss and gradients on 1 device and on 8 fake CPU devices with a
(data=2, fsdp=2, tensor=2) mesh, with and without the decoder's activation constraints
(parallel.use_mesh while tracing), and for the Coconut training path with the chunked LM head;
mesh-shape errors name the fix."""

import os
import subprocess
import sys
import textwrap

import pytest

from latent_jax.testing import cpu_devices_env


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_default_matmul_precision", "highest")
    from latent_jax import parallel
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import Decoder, init_params

    assert len(jax.devices()) == 8
    for scan in (False, True):
        cfg = tiny_config("qwen2", scan_layers=scan, initializer_range=0.1)
        params = init_params(cfg, 0)
        rng = np.random.default_rng(0)
        ids = rng.integers(3, 128, size=(8, 12)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, :4] = 0

        def loss_fn(p, batch):
            logits = Decoder(cfg).apply({"params": p}, batch["ids"], attention_mask=batch["mask"]).logits
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["ids"][:, 1:])
            w = batch["mask"][:, 1:].astype(jnp.float32)
            return jnp.sum(ce * w) / jnp.sum(w)

        step = jax.jit(jax.value_and_grad(loss_fn))
        one = jax.devices()[0]
        batch = {"ids": ids, "mask": mask}
        l1, g1 = step(jax.device_put(params, one), jax.device_put(batch, one))

        mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
        ps = parallel.shard_params(params, mesh)
        bs = parallel.shard_batch(batch, mesh)
        # params really are split: the embedding over (vocab -> tensor, embed -> fsdp)
        emb = ps["embed_tokens"]["embedding"]
        assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp"), emb.sharding.spec
        assert len(emb.addressable_shards) == 8 and emb.addressable_shards[0].data.shape == (64, 32)
        assert bs["ids"].addressable_shards[0].data.shape == (2, 12)
        l8, g8 = step(ps, bs)
        assert abs(float(l1) - float(l8)) < 1e-5, (float(l1), float(l8))
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), g1, g8))
        assert max(diffs) < 1e-5, max(diffs)
        assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(g8))
        # traced under the mesh, the decoder's activation constraints are on: same loss and grads
        step_c = jax.jit(jax.value_and_grad(loss_fn))
        with parallel.use_mesh(mesh):
            assert "sharding_constraint" in step_c.lower(ps, bs).as_text()
            lc, gc = step_c(ps, bs)
        assert "sharding_constraint" not in jax.jit(jax.value_and_grad(loss_fn)).lower(ps, bs).as_text()
        assert abs(float(l1) - float(lc)) < 1e-5, (float(l1), float(lc))
        diffs_c = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), g1, gc))
        assert max(diffs_c) < 1e-5, max(diffs_c)
        print("scan", scan, "loss", float(l1), "max grad diff", max(diffs))

    # the training path of issue 24 on the mesh: Coconut with each layer's K/V leaving the layer
    # scan as outputs and the LM head applied in chunks inside the loss (ce_chunk)
    from latent_jax.latent.coconut import coconut_loss
    cfg = tiny_config("qwen2", scan_layers=True, initializer_range=0.1, ce_chunk=4)
    params = init_params(cfg, 0)
    lat = np.zeros_like(ids, bool)
    lat[:, 5:7] = True
    cb = {"input_ids": ids, "attention_mask": mask, "latent_mask": lat,
          "labels": np.where(np.arange(12) >= 8, ids, -100).astype(np.int32)}
    closs = lambda p, b: coconut_loss(p, b, config=cfg, latent_start=5, num_latent=2)[0]
    l1, g1 = jax.jit(jax.value_and_grad(closs))(jax.device_put(params, one), jax.device_put(cb, one))
    with parallel.use_mesh(mesh):
        l8, g8 = jax.jit(jax.value_and_grad(closs))(parallel.shard_params(params, mesh), parallel.shard_batch(cb, mesh))
    assert abs(float(l1) - float(l8)) < 1e-5, (float(l1), float(l8))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), g1, g8))
    assert max(diffs) < 1e-5, max(diffs)
    print("coconut ce_chunk loss", float(l1), "max grad diff", max(diffs))

    # mesh errors
    for bad, msg in [((3, 1, 1), "needs 3 devices but 8 are visible"), ({"dp": 8}, "unknown mesh axes")]:
        try:
            parallel.make_mesh(bad)
        except ValueError as e:
            assert msg in str(e), e
        else:
            raise AssertionError(bad)
    assert parallel.make_mesh({"data": -1, "tensor": 2}).shape == {"data": 4, "fsdp": 1, "tensor": 2}
    print("OK")
    """
)


def test_one_vs_eight_devices_same_loss_and_grads():
    env = cpu_devices_env(8)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_heartbeat_timeout_reaches_jax(monkeypatch):
    """config.heartbeat_timeout_s (main passes it) is jax.distributed's heartbeat timeout."""
    import latent_jax.parallel as par

    seen = []
    monkeypatch.setattr(par.jax.distributed, "initialize", lambda *a, **k: seen.append((a, k)))
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    par.initialize_distributed("127.0.0.1:1234", 2, 0, heartbeat_timeout_s=20)
    assert seen == [(("127.0.0.1:1234", 2, 0), {"heartbeat_timeout_seconds": 20})]
    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        par.initialize_distributed("127.0.0.1:1234", 2, 0, heartbeat_timeout_s=0)


def test_initialize_distributed_reads_all_three_env_vars(monkeypatch):
    """jax reads only JAX_COORDINATOR_ADDRESS ("Number of processes must be defined"); the
    launch path reads the process count and id too, and picks gloo for CPU collectives."""
    import latent_jax.parallel as par

    seen = []
    monkeypatch.setattr(par.jax.distributed, "initialize", lambda *a: seen.append(a))
    monkeypatch.setattr(par.jax.config, "update", lambda k, v: seen.append((k, v)))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    par.initialize_distributed()
    assert seen == [("jax_cpu_collectives_implementation", "gloo"), ("127.0.0.1:1234", 2, 1)]
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=2 must be in \[0, 2\)"):
        par.initialize_distributed()
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="set both JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        par.initialize_distributed()
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="not an integer"):
        par.initialize_distributed()


COMPUTE_DTYPE_GATHER = textwrap.dedent(
    """
    import os, re, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    from latent_jax import parallel
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import Decoder, init_params

    jax.config.update("jax_enable_compilation_cache", False)  # a cache hit would skip the compile and its dump
    cfg = tiny_config("llama", scan_layers=True, dtype="bfloat16", param_dtype="float32", hidden_size=128,
                      intermediate_size=256, vocab_size=512, tie_word_embeddings=True)
    params = init_params(cfg, 0)
    ids = np.random.default_rng(0).integers(3, 500, size=(8, 16)).astype(np.int32)

    def loss_fn(p, ids):
        lg = Decoder(cfg).apply({"params": p}, ids).logits
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lg[:, :-1], ids[:, 1:]))

    mesh = parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    ps, bs = parallel.shard_params(params, mesh), parallel.shard_batch(ids, mesh)
    with parallel.use_mesh(mesh):
        lowered = jax.jit(jax.value_and_grad(loss_fn)).lower(ps, bs)
    # every weight is cast to bf16 where it is stored: the cast copy carries the param's sharding
    pinned = re.findall(r"sharding_constraint [^\\n]*: tensor<([0-9x]+)xbf16>", lowered.as_text())
    shapes = {"x".join(map(str, x.shape[1:] if x.ndim == 3 else x.shape))
              for path, x in jax.tree_util.tree_leaves_with_path(params) if "scale" not in str(path)}
    assert shapes <= set(pinned), (shapes, set(pinned))
    with tempfile.TemporaryDirectory() as d:
        compiled = lowered.compile(compiler_options={"xla_dump_to": d, "xla_dump_hlo_pass_re": "spmd-partitioning"})
        txt = open(os.path.join(d, sorted(f for f in os.listdir(d) if "after_spmd-partitioning" in f)[-1])).read()
    # the partitioned step gathers the weights in bf16 (XLA:CPU's float normalization later widens
    # its bf16 collectives to fp32; TPU and GPU keep them)
    gathers = re.findall(r"= (\\w+)\\[([\\d,]*)\\][^=\\n]*? all-gather\\(", txt)
    weights = [(dt, dims) for dt, dims in gathers if dims.count(",") >= 1 and dt[0] in "fb"]
    assert weights and all(dt == "bf16" for dt, _ in weights), weights
    l8, g8 = compiled(ps, bs)
    l1, g1 = jax.jit(jax.value_and_grad(loss_fn))(params, ids)
    assert abs(float(l1) - float(l8)) < 1e-3, (float(l1), float(l8))
    d = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
    assert d < 2e-3, d
    print("OK", len(weights), "bf16 weight gathers")
    """
)


def test_weights_are_gathered_in_the_compute_dtype():
    """bf16 compute over fp32 params under FSDP (issue 24 item 4): every weight is cast where it is
    stored and the partitioned step all-gathers the bf16 copy; 8 devices give 1 device's loss."""
    env = cpu_devices_env(8)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", COMPUTE_DTYPE_GATHER], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
