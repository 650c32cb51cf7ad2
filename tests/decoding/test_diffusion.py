"""Masked-diffusion decoding: equals LLaDA's reference generate() (PyTorch, driving a ported
causal checkpoint); schedule and threshold properties; exact per-block caches on a causal
model; the hybrid after-prefix entry points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from latent_jax.decoding.diffusion import (
    DiffusionOptions, diffusion_generate, diffusion_generate_after_embeds, diffusion_generate_after_prefix,
    num_transfer_tokens,
)
from latent_jax.models.decoder import Decoder
from latent_jax.models.hf import load_hf
from latent_jax.models.layers import KVCache

MASK = 127
PROMPTS = np.array([[1, 17, 33, 5, 90, 41], [1, 8, 64, 22, 3, 70]], np.int32)


# ------------------------------------------------- reference: ML-GSAI/LLaDA generate.py (temperature 0)
def _ref_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


@torch.no_grad()
def _ref_generate(model, prompt, steps, gen_length, block_length, mask_id):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        lo = prompt.shape[1] + num_block * block_length
        block_mask_index = x[:, lo: lo + block_length] == mask_id
        ntt = _ref_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x).logits
            nfe += 1
            x0 = torch.argmax(logits, dim=-1)
            p = torch.softmax(logits, dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0_p[:, lo + block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(ntt[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x[:, prompt.shape[1]:].numpy(), nfe


@pytest.fixture(scope="module")
def llama(tiny_hf_dir):
    path = tiny_hf_dir("llama")
    cfg, params = load_hf(path)
    return path, cfg, params


def _opts(**kw):
    base = dict(steps=6, gen_length=12, block_length=4, mask_id=MASK, causal=True)
    base.update(kw)
    return DiffusionOptions(**base)


def test_matches_llada_reference(llama):
    import transformers

    path, cfg, params = llama
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ref, ref_nfe = _ref_generate(model, torch.as_tensor(PROMPTS, dtype=torch.long), 6, 12, 4, MASK)
    opts = _opts(steps=6)
    out = diffusion_generate(params, PROMPTS, np.ones_like(PROMPTS), jax.random.PRNGKey(0), config=cfg, opts=opts)
    assert np.asarray(out.tokens).tolist() == ref.tolist()
    # fixed schedule: forward passes == steps; 12 tokens over 6 steps -> 2 per step
    assert int(out.forward_passes) == 6 == ref_nfe
    us = np.asarray(out.unmask_step)
    assert [int(np.sum(us[0] == s)) for s in range(6)] == [2] * 6


def test_threshold_and_block_order(llama):
    _, cfg, params = llama
    mask = np.ones_like(PROMPTS)
    # threshold 1.0: exactly one token per step, so gen_length forward passes
    out = diffusion_generate(params, PROMPTS, mask, jax.random.PRNGKey(0), config=cfg, opts=_opts(threshold=1.0))
    us = np.asarray(out.unmask_step)
    assert int(out.forward_passes) == 12
    for row in us:
        assert sorted(row.tolist()) == list(range(12))
    # threshold 0: a whole block per step; blocks still finish left to right
    out = diffusion_generate(params, PROMPTS, mask, jax.random.PRNGKey(0), config=cfg,
                             opts=_opts(threshold=0.0, gen_length=16, block_length=8, steps=16))
    us = np.asarray(out.unmask_step)
    assert (us >= 0).all() and int(out.forward_passes) == 2
    for row in us:
        blocks = row.reshape(2, 8)
        assert blocks[0].max() < blocks[1].min()
    # the fixed schedule also finishes blocks left to right, steps // blocks steps each
    out = diffusion_generate(params, PROMPTS, mask, jax.random.PRNGKey(0), config=cfg, opts=_opts(steps=9))
    us = np.asarray(out.unmask_step)
    assert np.asarray(out.block_steps).tolist() == [3, 3, 3]
    for row in us:
        b = row.reshape(3, 4)
        assert b[0].max() < b[1].min() and b[1].max() < b[2].min()
    assert num_transfer_tokens(jnp.array([7]), 3).tolist() == [[3, 2, 2]]


def test_caches_exact_on_causal_model_and_after_prefix(llama):
    _, cfg, params = llama
    mask = np.ones_like(PROMPTS)
    rng = jax.random.PRNGKey(0)
    base = np.asarray(diffusion_generate(params, PROMPTS, mask, rng, config=cfg, opts=_opts()).tokens)
    # with causal attention the prefix's K/V do not depend on later tokens: caches are exact
    for mode in ("prefix", "dual"):
        got = diffusion_generate(params, PROMPTS, mask, rng, config=cfg, opts=_opts(cache=mode))
        assert np.asarray(got.tokens).tolist() == base.tolist(), mode
        assert int(got.forward_passes) == 6
    # hybrid entry points: the prompt as a cached prefix, or as embeddings
    B, P = PROMPTS.shape
    pre = Decoder(cfg).apply({"params": params}, PROMPTS, cache=KVCache.init(cfg, B, P))
    got = diffusion_generate_after_prefix(params, pre.cache, np.full((B,), P), rng, config=cfg, opts=_opts())
    assert np.asarray(got.tokens).tolist() == base.tolist()
    emb = Decoder(cfg).apply({"params": params}, PROMPTS, method=Decoder.embed)
    got = diffusion_generate_after_embeds(params, emb, mask, rng, config=cfg, opts=_opts(cache="dual"))
    assert np.asarray(got.tokens).tolist() == base.tolist()


def test_sampling_cfg_and_errors(llama):
    _, cfg, params = llama
    mask = np.ones_like(PROMPTS)
    o = _opts(temperature=1.0, causal=False, remasking="random", cfg_scale=1.5)
    a = diffusion_generate(params, PROMPTS, mask, jax.random.PRNGKey(1), config=cfg, opts=o)
    b = diffusion_generate(params, PROMPTS, mask, jax.random.PRNGKey(2), config=cfg, opts=o)
    ta, tb = np.asarray(a.tokens), np.asarray(b.tokens)
    assert ta.dtype == np.int32 and (ta != MASK).all() and (ta != tb).any()
    assert jnp.zeros(()).dtype == jnp.float32  # x64 mode did not leak out of the call
    with pytest.raises(ValueError, match="multiple of block_length"):
        DiffusionOptions(gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        DiffusionOptions(steps=5, gen_length=8, block_length=4)


def test_cli_strategy(llama):
    from latent_jax.generate import run

    path = llama[0]
    argv = ["--model", path, "--input-ids", "1,17,33,5", "--strategy", "diffusion", "--mask-id", str(MASK),
            "--gen-length", "8", "--block-length", "4", "--steps", "4", "--attention", "causal", "--stop-ids", "none"]
    r = run(argv)[0]
    assert r["forward_passes"] == 4 and r["tokens_unmasked_per_step"] == [2, 2, 2, 2] and len(r["output_ids"]) == 8
    r = run(argv + ["--threshold", "1.0"])[0]
    assert r["forward_passes"] == 8 and r["block_steps"] == [4, 4]
    with pytest.raises(ValueError, match="mask"):
        run(argv[:6] + ["--gen-length", "8"])  # no --mask-id and no tokenizer mask token
