"""The model.attention switch (issue 24 item 3): the chunked path equals the xla path in fp32
(forward and gradients; padding, sliding windows, bidirectional, a KV cache, a tree mask, and
Coconut's question cache + thoughts), the splash path equals it in Pallas interpret mode on CPU,
its index masks equal the position rule on the layouts the library passes, the cuDNN call's
layout and mask (run with jax.nn.dot_product_attention's xla implementation: no GPU here) equal
it, and auto picks what the module docstring says."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.latent.coconut import coconut_loss
from latent_jax.models.attention import (
    Segment,
    attend,
    attend_dot_product,
    attention,
    attention_mask_from_positions,
    resolve_attention,
    splash_dense_mask,
)
from latent_jax.models.config import ConfigError
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache
from latent_jax.testing import cpu_devices_env, tiny_config

jax.config.update("jax_default_matmul_precision", "highest")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _padded_batch(B=3, T=13, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 128, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[0, :4] = 0  # left padding
    mask[1, -3:] = 0  # right padding
    return jnp.asarray(ids), jnp.asarray(mask)


def _decoder_loss(cfg, causal=True):
    ids, mask = _padded_batch()
    w = jnp.asarray(np.random.default_rng(1).standard_normal((ids.shape[0], ids.shape[1], cfg.vocab_size)),
                    jnp.float32)

    def loss(p):
        out = Decoder(cfg).apply({"params": p}, ids, attention_mask=mask, causal=causal)
        return jnp.sum(jnp.where(mask[..., None] > 0, out.logits * w, 0.0)) / 100

    return jax.jit(jax.value_and_grad(loss))


def test_config_and_resolution():
    with pytest.raises(ConfigError, match="attention"):
        tiny_config("llama", attention="flash")
    with pytest.raises(ConfigError, match="attention_chunk"):
        tiny_config("llama", attention_chunk=0)
    cfg = tiny_config("llama", attention_chunk=256)
    r = lambda c, **kw: resolve_attention(c, kv_len=4096, **kw)
    assert r(cfg, q_len=512, backend="cpu") == "xla"
    assert r(cfg, q_len=2048, backend="cpu") == "chunked"
    assert r(cfg, q_len=2048, backend="cpu", cached=True) == "chunked"
    assert r(cfg, q_len=2048, backend="gpu") == "chunked"  # fp32 compute: no cuDNN
    bf16 = cfg.replace(dtype="bfloat16")
    assert r(bf16, q_len=2048, backend="gpu") == "cudnn"
    assert r(bf16, q_len=1, backend="gpu") == "xla"
    assert r(bf16, q_len=64, backend="gpu", cached=True) == "xla"
    assert r(cfg, q_len=256, backend="tpu") == "splash"
    assert r(cfg, q_len=64, backend="tpu") == "xla"
    assert r(cfg, q_len=256, backend="tpu", tree_mask=True) == "xla"
    assert r(cfg.replace(attention="chunked"), q_len=300, backend="tpu") == "chunked"
    assert r(cfg.replace(attention="chunked"), q_len=200, backend="cpu") == "xla"  # one block: the same thing
    assert r(cfg.replace(attention="splash"), q_len=8, backend="cpu") == "splash"
    assert r(cfg.replace(attention="splash"), q_len=8, backend="cpu", cached=True) == "xla"
    with pytest.raises(ConfigError, match="needs a GPU"):
        r(cfg.replace(attention="cudnn"), q_len=8, backend="cpu")


@pytest.mark.parametrize("model_type,windows,causal,scan", [
    ("qwen2", (0, 4), True, False),  # a sliding-window layer, qkv bias
    ("llama", (), False, True),  # bidirectional (masked diffusion), scanned + remat layers
])
def test_chunked_equals_xla(model_type, windows, causal, scan):
    kw = dict(layer_windows=windows) if windows else {}
    cfg = tiny_config(model_type, scan_layers=scan, remat_policy="full" if scan else "none", initializer_range=0.1, **kw)
    p = init_params(cfg, 0)
    ref = _decoder_loss(cfg, causal)(p)
    got = _decoder_loss(cfg.replace(attention="chunked", attention_chunk=4), causal)(p)  # 13 queries: 4 blocks
    _close(got, ref)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref[1])) > 1e-3


def test_chunked_with_a_cache_and_a_tree_mask():
    """Prefill into a KV cache and a tree-masked step over it: logits, cache and the newest query's
    attention probabilities (TOVA's scores) equal."""
    cfg = tiny_config("mistral", layer_windows=(0, 6), initializer_range=0.1)
    p = init_params(cfg, 0)
    ids, mask = _padded_batch(B=2, T=11)
    tree = jnp.asarray(np.random.default_rng(2).random((2, 5, 5)) < 0.6) | jnp.eye(5, dtype=bool)[None]

    def run(c):
        m = Decoder(c)
        out = m.apply({"params": p}, ids, attention_mask=mask, cache=KVCache.init(c, 2, 20))
        step = m.apply({"params": p}, ids[:, :5], cache=out.cache, tree_mask=tree)
        return out.logits, out.cache, out.attn_last, step.logits, step.attn_last

    _close(jax.jit(lambda: run(cfg.replace(attention="chunked", attention_chunk=3)))(), jax.jit(lambda: run(cfg))())


def _coconut_setup():
    from tests.latent.test_coconut import ROWS, make_batch

    cfg = tiny_config("llama", vocab_size=32, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, layer_windows=(0, 7))
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, init_params(cfg, 0))
    batch, P, n = make_batch(ROWS)
    return cfg, params, batch, P, n


def _coconut_grad(cfg, params, batch, P, n):
    f = lambda q: coconut_loss(q, batch, config=cfg, latent_start=P, num_latent=n)[0]  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)


def test_chunked_equals_xla_on_coconut():
    """The question pass, the thoughts (one query over [question | thoughts]) and the answer over
    [question | thoughts | itself], with a sliding-window layer: loss and gradients equal."""
    cfg, params, batch, P, n = _coconut_setup()
    _close(_coconut_grad(cfg.replace(attention="chunked", attention_chunk=2), params, batch, P, n),
           _coconut_grad(cfg, params, batch, P, n))


def test_splash_in_interpret_mode_equals_xla():
    """Pallas splash attention (interpret mode on CPU: the kernel's own code, not a TPU compile):
    the decoder with padding and a sliding-window layer, and Coconut's answer over the question
    cache and the thoughts (index masks offset by the prefix), forward and gradients."""
    cfg = tiny_config("qwen2", layer_windows=(0, 4), initializer_range=0.1)
    p = init_params(cfg, 0)
    _close(_decoder_loss(cfg.replace(attention="splash"))(p), _decoder_loss(cfg)(p))
    ccfg, params, batch, P, n = _coconut_setup()
    _close(_coconut_grad(ccfg.replace(attention="splash"), params, batch, P, n),
           _coconut_grad(ccfg, params, batch, P, n))


def test_splash_masks_equal_the_position_rule():
    """What splash sees (index mask offset by the prefix, segment ids for padding) equals the
    position rule at every real query, for left / right padding and Coconut's question (left
    padded) + thoughts + answer (right padded), causal or not, with windows that bite."""
    from tests.latent.test_coconut import ROWS, make_batch

    layouts = []
    _, mask = _padded_batch(B=3, T=13)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    layouts.append((np.where(mask > 0, pos, -1), np.where(mask > 0, pos, -1), mask))  # own keys only
    batch, P, n = make_batch(ROWS)
    m, ps = np.asarray(batch["attention_mask"]), np.asarray(batch["position_ids"])
    kpos = np.where(m > 0, ps, -1)
    layouts.append((kpos, kpos[:, P + n:], m[:, P + n:]))  # the answer over [question | thoughts | answer]
    layouts.append((kpos[:, :P + 1], kpos[:, P:P + 1], m[:, P:P + 1]))  # a thought over [question | thoughts]
    for k_pos, q_kpos, q_valid in layouts:
        T, S = q_kpos.shape[1], k_pos.shape[1]
        q_pos = np.maximum(q_kpos, 0)
        for causal in (True, False):
            for window in (0, 3, 5, 100):
                want = np.asarray(attention_mask_from_positions(jnp.asarray(q_pos), jnp.asarray(k_pos), causal, window))
                got = splash_dense_mask(T, jnp.asarray(k_pos), S - T, causal, window)
                real = q_valid.astype(bool)[:, :, None]
                assert np.array_equal(got & real, want & real), (T, S, causal, window)


def test_cudnn_call_layout_equals_xla():
    """attend_dot_product (the cuDNN path: slot-major K/V, concatenated segments, the exact mask,
    GQA heads) run with jax's xla implementation equals `attend`, forward and gradients."""
    rng = np.random.default_rng(0)
    B, T, H, Hkv, D, Sp = 2, 7, 4, 2, 8, 5
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    q, kp, vp, k, v = f(B, T, H, D), f(B, Hkv, Sp, D), f(B, Hkv, Sp, D), f(B, Hkv, T, D), f(B, Hkv, T, D)
    ppos = jnp.asarray([[-1, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    qpos = jnp.asarray([[4, 5, 6, 7, 8, 9, 9], [5, 6, 7, 8, 9, 10, 11]])
    kpos = qpos.at[0, -1].set(-1)

    def via(fn):
        def out(q, kp, vp, k, v):
            segs = [Segment(kp, vp, ppos), Segment(k, v, kpos)]
            return jnp.sum(jnp.sin(fn(q, segs)))
        return jax.jit(jax.value_and_grad(out, argnums=(0, 1, 2, 3, 4)))(q, kp, vp, k, v)

    def ref(q, segs):
        masks = tuple(attention_mask_from_positions(qpos, s.pos, True, 6) for s in segs)
        o, _ = attend(q.transpose(0, 2, 1, 3).reshape(B, Hkv, (H // Hkv) * T, D), tuple(s.k for s in segs),
                      tuple(s.v for s in segs), masks, H // Hkv, D ** -0.5)
        return o.reshape(B, H, T, D).transpose(0, 2, 1, 3)

    _close(via(lambda q, segs: attend_dot_product(q, segs, qpos, True, 6, D ** -0.5, "xla")), via(ref))
    # and the dispatcher's newest-query probabilities equal the xla path's
    cfg = tiny_config("llama", attention="chunked", attention_chunk=2)
    segs = [Segment(kp, vp, ppos), Segment(k, v, kpos)]
    _close(attention(q, segs, qpos, True, 6, config=cfg), attention(q, segs, qpos, True, 6, config=cfg.replace(attention="xla")))


SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from latent_jax import parallel
    from latent_jax.latent.coconut import coconut_loss
    from latent_jax.models.decoder import init_params
    from latent_jax.testing import tiny_config

    assert len(jax.devices()) == 8
    # scanned, remat'd layers: causal and the window reach attention traced (splash's lax.switch)
    cfg = tiny_config("qwen2", scan_layers=True, remat_policy="full", initializer_range=0.1, ce_chunk=4)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, size=(8, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    lat = np.zeros_like(ids, bool)
    lat[:, 5:7] = True
    b = {"input_ids": ids, "attention_mask": mask, "latent_mask": lat,
         "labels": np.where(np.arange(12) >= 8, ids, -100).astype(np.int32)}
    grad = lambda c: jax.jit(jax.value_and_grad(lambda p, b: coconut_loss(p, b, config=c, latent_start=5, num_latent=2)[0]))
    one = jax.devices()[0]
    l1, g1 = grad(cfg.replace(attention="xla"))(jax.device_put(params, one), jax.device_put(b, one))
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    for impl in ("chunked", "splash"):
        c = cfg.replace(attention=impl, attention_chunk=2)
        with parallel.use_mesh(mesh):
            f = grad(c)
            if impl == "splash":  # the kernel runs per device
                assert "shard_map" in str(f.trace(parallel.shard_params(params, mesh), parallel.shard_batch(b, mesh)).jaxpr)
            l8, g8 = f(parallel.shard_params(params, mesh), parallel.shard_batch(b, mesh))
        assert abs(float(l1) - float(l8)) < 1e-5, (impl, float(l1), float(l8))
        d = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)))
        assert d < 1e-5, (impl, d)
        print(impl, float(l8), d)
    print("OK")
    """
)


@pytest.mark.slow  # an 8-device subprocess (CI's second tier, as the other 8-device equalities)
def test_eight_fake_devices_match_one():
    """Coconut's training loss with the chunked and the splash paths (interpret mode, run per
    device by shard_map) on a (data=2, fsdp=2, tensor=2) mesh equals the xla path on one device."""
    env = cpu_devices_env(8)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_config_model_attention_reaches_the_model():
    """config.model.attention / attention_chunk (configs/base.py) reach the ModelConfig of a model
    built from scratch and of a loaded one (tasks.common)."""
    import importlib.util

    from latent_jax.tasks.common import execution_fields, model_config_from

    spec = importlib.util.spec_from_file_location("_base_cfg", os.path.join(ROOT, "configs", "base.py"))
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    c = base.get_base()
    assert (c.model.attention, c.model.attention_chunk, c.optim.mu_dtype) == ("auto", 512, "")
    c.model.attention, c.model.attention_chunk = "chunked", 64
    m = model_config_from(c.model, vocab_size=32)
    assert (m.attention, m.attention_chunk) == ("chunked", 64)
    assert execution_fields(c.model) == {"ce_chunk": 0, "attention": "chunked", "attention_chunk": 64}
