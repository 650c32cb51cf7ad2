"""TOVA: a big cache equals plain generation; a small cache equals a straightforward reference
(Python loop, per-layer cache of growing numpy arrays, explicit argsort eviction); the cache
does not grow with the number of generated tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.sampling import SamplingParams, generate, left_pad, trim_output
from latent_jax.decoding.tova import TovaOptions, tova_generate
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache

NO_STOP = np.zeros((0,), np.int32)
PROMPTS = [[5, 9, 17, 3, 44, 8, 21, 60, 7, 11, 30, 2 + 40], [12, 99, 4, 71, 33]]


def _setup(family="llama", **kw):
    cfg = tiny_config(family, **kw)
    params = init_params(cfg, 3)
    # sharper attention than the 0.02 init so eviction decisions are not near-ties
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)
    return cfg, params


def _reference(params, cfg, prompt, n_new, C, per_layer=True):
    """Batch-1 greedy TOVA: per-layer lists of (k, v, pos) numpy arrays; after every forward,
    if a layer holds more than C tokens, drop the lowest-scoring ones (argsort)."""
    model = Decoder(cfg)
    apply = jax.jit(model.apply)
    L = cfg.num_hidden_layers
    T = len(prompt)
    cache = KVCache.init(cfg, 1, T)
    out = apply({"params": params}, jnp.asarray([prompt]), cache=cache)
    layers = [[np.asarray(KVCache.slot_major(out.cache.k[l, 0])), np.asarray(KVCache.slot_major(out.cache.v[l, 0])), np.asarray(out.cache.pos[l, 0])] for l in range(L)]

    def evict(attn):
        sc = [np.asarray(attn[l, 0]).mean(axis=0) for l in range(L)]
        if not per_layer:
            sc = [np.mean(sc, axis=0)] * L
        for l in range(L):
            k, v, p = layers[l]
            if len(p) > C:
                order = np.argsort(-sc[l], kind="stable")[:C]
                order = np.sort(order)
                layers[l] = [k[order], v[order], p[order]]

    evict(out.attn_last)
    tok = int(np.argmax(np.asarray(out.logits[0, -1])))
    toks = [tok]
    pos = T - 1
    for _ in range(n_new - 1):
        pos += 1
        n = len(layers[0][2])
        kv = KVCache(
            k=KVCache.slot_major(jnp.asarray(np.stack([np.concatenate([l[0], np.zeros_like(l[0][:1])]) for l in layers])))[:, None],
            v=KVCache.slot_major(jnp.asarray(np.stack([np.concatenate([l[1], np.zeros_like(l[1][:1])]) for l in layers])))[:, None],
            pos=jnp.asarray(np.stack([np.concatenate([l[2], [-1]]) for l in layers]).astype(np.int32))[:, None],
            end=jnp.asarray(n, jnp.int32),
        )
        o = apply({"params": params}, jnp.asarray([[tok]]), positions=jnp.asarray([[pos]]), cache=kv)
        layers = [[np.asarray(KVCache.slot_major(o.cache.k[l, 0])), np.asarray(KVCache.slot_major(o.cache.v[l, 0])), np.asarray(o.cache.pos[l, 0])] for l in range(L)]
        evict(o.attn_last)
        tok = int(np.argmax(np.asarray(o.logits[0, -1])))
        toks.append(tok)
    return toks


def test_big_cache_equals_plain_generation():
    cfg, params = _setup("mistral", layer_windows=(0, 8))
    ids, mask = left_pad(PROMPTS, 0)
    sp = SamplingParams.make()
    n = 16
    plain = trim_output(generate(params, ids, mask, jax.random.PRNGKey(0), sp, NO_STOP, config=cfg, max_new_tokens=n))
    out = tova_generate(params, ids, mask, jax.random.PRNGKey(0), sp, NO_STOP, config=cfg, max_new_tokens=n,
                        opts=TovaOptions(cache_size=ids.shape[1] + n))
    got = [np.asarray(out.tokens)[i].tolist() for i in range(2)]
    assert got == plain
    assert int(out.steps) == n - 1


@pytest.mark.parametrize("per_layer", [True, False])
def test_small_cache_matches_reference(per_layer):
    cfg, params = _setup("llama")
    C, n = 6, 12  # the first prompt (12 tokens) is cut after prefill, the second (5) is not
    ids, mask = left_pad(PROMPTS, 0)
    out = tova_generate(params, ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP, config=cfg,
                        max_new_tokens=n, opts=TovaOptions(cache_size=C, per_layer=per_layer))
    for i, p in enumerate(PROMPTS):
        ref = _reference(params, cfg, p, n, C, per_layer)
        assert np.asarray(out.tokens)[i].tolist() == ref, f"row {i}"
    # the pruned cache keeps exactly C tokens with their original (distinct) positions
    pos = np.asarray(out.cache.pos)[:, :, :C]
    assert (pos >= 0).all() and all(len(set(r)) == C for r in pos.reshape(-1, C).tolist())
    plain = trim_output(generate(params, ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP,
                                 config=cfg, max_new_tokens=n))
    assert np.asarray(out.tokens).tolist() != plain  # pruning really changed something


def test_memory_independent_of_length():
    cfg, params = _setup("qwen2")
    ids, mask = left_pad(PROMPTS, 0)
    sizes = []
    for n in (8, 64):
        out = tova_generate(params, ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP, config=cfg,
                            max_new_tokens=n, opts=TovaOptions(cache_size=8))
        sizes.append(out.cache.nbytes())
        assert int(out.steps) == n - 1
    assert sizes[0] == sizes[1]
    # dynamic sizing picks the budget from the sequence length, clipped
    o = TovaOptions(dynamic_sizing=True, cache_size_factor=0.25, min_cache_size=4, max_cache_size=10)
    assert [o.budget(8), o.budget(24), o.budget(400)] == [4, 6, 10]


def test_weighted_heads_and_bad_options():
    cfg, params = _setup("phi3")
    ids, mask = left_pad(PROMPTS, 0)
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    # one-hot head weights differ from the mean; momentum updates keep rows normalised
    w = np.zeros((L, H), np.float32)
    w[:, 0] = 1
    a = tova_generate(params, ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP, config=cfg,
                      max_new_tokens=10, opts=TovaOptions(cache_size=4, head_weight_strategy="weighted",
                                                          head_weight_update="momentum"), head_weights=w)
    hw = np.asarray(a.head_weights)
    assert np.allclose(hw.sum(-1), 1, atol=1e-5) and not np.allclose(hw, w[None])
    with pytest.raises(ValueError, match="head_weight_strategy"):
        TovaOptions(head_weight_strategy="max")


def test_cli_strategy(tiny_hf_dir):
    from latent_jax.generate import run

    path = tiny_hf_dir("llama")
    base = ["--model", path, "--input-ids", "1,5,9,20,33,7,8", "--max-new-tokens", "10", "--stop-ids", "none"]
    greedy = run(base + ["--strategy", "greedy"])[0]
    big = run(base + ["--strategy", "tova", "--cache-size", "64"])[0]
    small = run(base + ["--strategy", "tova", "--cache-size", "4", "--shared-decisions"])[0]
    assert big["output_ids"] == greedy["output_ids"] and big["forward_passes"] == 10
    assert small["cache_size"] == 4 and small["prompt_cut"] and len(small["output_ids"]) == 10
