"""KV-cached decoding equals the full forward at every position: left-padded batches,
per-row positions, Mistral's sliding window, Phi-3 partial rotary, chunked prefill, and
scanned layers."""

import jax
import numpy as np
import pytest

from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache
from latent_jax.models.io import restack_layers

CONFIGS = {
    "mistral": dict(layer_windows=(8, 8)),  # sequence below is longer than the window
    "llama": dict(rope_type="llama3", rope_factor=8.0, rope_original_max_position_embeddings=16),
    "qwen2": dict(tie_word_embeddings=True),
    "phi3": dict(partial_rotary_factor=0.75, rope_type="default"),
}


def _data(B=3, T=22, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 128, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    if B >= 3:
        mask[1, :6] = 0
        mask[2, :15] = 0  # shorter than the prefill: its first real token arrives while decoding
    return ids, mask


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cached_decode_equals_full_forward(family):
    cfg = tiny_config(family, initializer_range=0.2, **CONFIGS[family])
    params = init_params(cfg, 1)
    model = Decoder(cfg)
    ids, mask = _data()
    B, T = ids.shape
    full = np.asarray(model.apply({"params": params}, ids, attention_mask=mask).logits)

    run = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, attention_mask=m, cache=c))
    P = 10
    out = run(params, ids[:, :P], mask[:, :P], KVCache.init(cfg, B, T))
    cached = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(P, T):  # one token per row per step, each at its own position
        o = run(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        cached.append(np.asarray(o.logits))
        cache = o.cache
    cached = np.concatenate(cached, axis=1)
    valid = mask.astype(bool)
    assert np.abs(cached - full)[valid].max() <= 1e-4
    assert int(cache.end) == T
    # the cache records each row's positions; pads are empty slots
    np.testing.assert_array_equal(np.asarray(cache.pos[0]), np.where(valid, np.cumsum(mask, 1) - 1, -1))


def test_chunked_prefill_and_scan_layers():
    cfg = tiny_config("mistral", layer_windows=(4, 0), initializer_range=0.2)
    params = init_params(cfg, 2)
    ids, mask = _data(T=24, seed=1)
    B, T = ids.shape
    full = np.asarray(Decoder(cfg).apply({"params": params}, ids, attention_mask=mask).logits)
    for scan in (False, True):
        c = cfg.replace(scan_layers=scan)
        p = restack_layers(params, cfg, scan)
        model = Decoder(c)
        run = jax.jit(lambda p, i, m, k: model.apply({"params": p}, i, attention_mask=m, cache=k))
        cache = KVCache.init(c, B, T)
        outs = []
        for s in range(0, T, 6):  # four chunks of 6 tokens
            o = run(p, ids[:, s:s + 6], mask[:, s:s + 6], cache)
            outs.append(np.asarray(o.logits))
            cache = o.cache
        got = np.concatenate(outs, 1)
        assert np.abs(got - full)[mask.astype(bool)].max() <= 1e-4, scan


def test_sliding_window_is_honoured_in_cache():
    """With window 4, a token's logits do not depend on tokens >= 4 positions back (1 layer)."""
    cfg = tiny_config("mistral", num_hidden_layers=1, layer_windows=(4,), initializer_range=0.3)
    params = init_params(cfg, 0)
    model = Decoder(cfg)
    ids, _ = _data(B=1, T=12)
    ids2 = ids.copy()
    ids2[0, :6] = (ids2[0, :6] + 7) % 120 + 3  # change only tokens far outside the window of the last
    outs = []
    for x in (ids, ids2):
        cache = KVCache.init(cfg, 1, 12)
        o = model.apply({"params": params}, x[:, :11], cache=cache)
        o = model.apply({"params": params}, x[:, 11:], cache=o.cache)
        outs.append(np.asarray(o.logits[0, -1]))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    # but with full attention they differ
    cfg_full = cfg.replace(layer_windows=(0,))
    a = Decoder(cfg_full).apply({"params": params}, ids).logits[0, -1]
    b = Decoder(cfg_full).apply({"params": params}, ids2).logits[0, -1]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
