"""A read-only prefix cache plus a small writable cache equals one concatenated cache."""

import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache


@pytest.mark.parametrize("scan", [False, True])
def test_prefix_cache_equals_concatenated_cache(scan):
    cfg = tiny_config("mistral", layer_windows=(6, 0), scan_layers=scan)
    params = init_params(cfg, 0)
    model = Decoder(cfg)
    rng = np.random.RandomState(0)
    B, P, T = 2, 9, 4
    ids = jnp.asarray(rng.randint(3, cfg.vocab_size, (B, P + T)))
    mask = np.ones((B, P + T), np.int32)
    mask[1, :3] = 0  # left padding in the prefix
    mask = jnp.asarray(mask)

    # reference: one cache holding prefix and continuation
    full = model.apply({"params": params}, ids[:, :P], attention_mask=mask[:, :P], cache=KVCache.init(cfg, B, P + T))
    ref = model.apply({"params": params}, ids[:, P:], attention_mask=mask[:, P:], cache=full.cache)

    # prefix kept constant; the continuation writes a cache of T slots only
    pre = model.apply({"params": params}, ids[:, :P], attention_mask=mask[:, :P], cache=KVCache.init(cfg, B, P))
    out = model.apply({"params": params}, ids[:, P:], attention_mask=mask[:, P:], cache=KVCache.init(cfg, B, T),
                      prefix_cache=pre.cache)

    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref.logits), atol=1e-5)
    # the small cache holds exactly the continuation's K/V, at the continuation's positions
    np.testing.assert_allclose(np.asarray(out.cache.k), np.asarray(ref.cache.slice_slots(P, P + T).k), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.cache.pos), np.asarray(ref.cache.pos[:, :, P:]))
    # attention over [prefix slots, cache slots] equals attention over the concatenated cache
    np.testing.assert_allclose(np.asarray(out.attn_last), np.asarray(ref.attn_last), atol=1e-6)
    # and the prefix participates: dropping it changes the result
    alone = model.apply({"params": params}, ids[:, P:], attention_mask=mask[:, P:], cache=KVCache.init(cfg, B, T),
                        positions=out.cache.pos[0])
    assert np.abs(np.asarray(alone.logits) - np.asarray(ref.logits)).max() > 1e-3

    # training form (issue 24): no cache is threaded through the layers; each layer's K/V leave as
    # outputs (return_kv), and the prefix may be several read-only segments
    pre_kv = model.apply({"params": params}, ids[:, :P], attention_mask=mask[:, :P], return_kv=True)
    np.testing.assert_allclose(np.asarray(pre_kv.cache.k), np.asarray(pre.cache.k), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pre_kv.cache.pos), np.asarray(pre.cache.pos))
    segs = (pre_kv.cache.slice_slots(0, 4), pre_kv.cache.slice_slots(4, P))
    kv = model.apply({"params": params}, ids[:, P:], attention_mask=mask[:, P:], prefix_cache=segs, return_kv=True)
    np.testing.assert_allclose(np.asarray(kv.logits), np.asarray(ref.logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(kv.cache.v), np.asarray(out.cache.v), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(kv.cache.pos), np.asarray(out.cache.pos))
    assert int(kv.cache.end) == T
