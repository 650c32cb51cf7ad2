"""Sampling: top-k / top-p masks, temperature 0 = argmax, seed reproducibility, stop tokens."""

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding import sampling as S
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache


def _draws(logits, sp, top_k, n=2000):
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    f = jax.jit(jax.vmap(lambda k: S.sample_logits(logits[None], k, sp, top_k)[0]))
    return np.asarray(f(keys))


def test_top_k_and_top_p_masks():
    probs = np.array([0.05, 0.5, 0.15, 0.3], np.float32)
    logits = jnp.log(jnp.asarray(probs))
    sp = S.SamplingParams.make(temperature=1.0, top_p=1.0)
    assert set(_draws(logits, sp, 0)) == {0, 1, 2, 3}
    assert set(_draws(logits, sp, 2)) == {1, 3}  # the two most likely
    # nucleus 0.7: 0.5 alone is below 0.7, 0.5 + 0.3 reaches it -> {1, 3}
    d = _draws(logits, S.SamplingParams.make(1.0, 0.7), 0)
    assert set(d) == {1, 3}
    assert abs((d == 1).mean() - 0.5 / 0.8) < 0.05  # renormalised within the nucleus
    # a tiny top_p keeps only the top token
    assert set(_draws(logits, S.SamplingParams.make(1.0, 1e-3), 0)) == {1}
    # temperature 0 is argmax regardless of rng
    assert set(_draws(logits, S.SamplingParams.make(0.0, 1.0), 0, n=50)) == {1}
    # low temperature sharpens toward the argmax
    assert (_draws(logits, S.SamplingParams.make(0.1, 1.0), 0) == 1).mean() > 0.95


def _gen(cfg, params, prompts, seed=0, temperature=0.0, top_k=0, stop=(), max_new=8):
    ids, mask = S.left_pad(prompts, 0)
    stop = (tuple(stop) + (-1, -1))[:2]  # one stop-array shape (-1 never matches): fewer compiles
    return S.generate(params, ids, mask, jax.random.PRNGKey(seed), S.SamplingParams.make(temperature, 1.0),
                      jnp.asarray(stop, jnp.int32), config=cfg, max_new_tokens=max_new, top_k=top_k)


def test_seeds_and_stop_tokens():
    cfg = tiny_config("llama", initializer_range=0.2)
    params = init_params(cfg, 0)
    prompts = [[5, 6, 7, 8], [9, 10]]
    a = np.asarray(_gen(cfg, params, prompts, seed=1, temperature=1.5).tokens)
    b = np.asarray(_gen(cfg, params, prompts, seed=1, temperature=1.5).tokens)
    c = np.asarray(_gen(cfg, params, prompts, seed=2, temperature=1.5).tokens)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    topk = np.asarray(_gen(cfg, params, prompts, seed=3, temperature=1.5, top_k=1).tokens)
    greedy = _gen(cfg, params, prompts)
    np.testing.assert_array_equal(topk, np.asarray(greedy.tokens))  # top_k=1 == greedy

    # stop on row 0's third greedy token: row 0 ends there (stop token kept), row 1 runs on
    g = np.asarray(greedy.tokens)
    stop_tok = int(g[0, 2])
    assert stop_tok not in g[1].tolist() and stop_tok not in g[0, :2].tolist()
    out = _gen(cfg, params, prompts, stop=(stop_tok,))
    rows = S.trim_output(out)
    assert rows[0] == g[0, :3].tolist()
    assert rows[1] == g[1].tolist()
    assert (np.asarray(out.tokens)[0, 3:] == 0).all()  # pad after stopping
    # every row stops at once -> the loop exits early
    both = _gen(cfg, params, prompts, stop=(int(g[0, 0]), int(g[1, 0])))
    assert np.asarray(both.lengths).tolist() == [1, 1] and int(both.steps) == 0


def test_layer_split_cache_steps_like_the_stacked_one():
    """The decode loop's layer-split KV cache (one buffer per layer, batch and heads merged)
    gives the stacked cache's logits and entries, at batch 1 and above, with GQA."""
    cfg = tiny_config("llama", initializer_range=0.2)  # 4 heads over 2 kv heads
    params = init_params(cfg, 0)
    model = Decoder(cfg)
    step = jax.jit(lambda ids, cache: model.apply({"params": params}, ids, cache=cache))
    for B in (1, 3):
        ids = np.random.default_rng(B).integers(3, 128, size=(B, 9)).astype(np.int32)
        pre = step(ids[:, :6], KVCache.init(cfg, B, 12))
        split = pre.cache.split_layers()
        assert split.is_split and split.slots == 12 and split.nbytes() == pre.cache.nbytes()
        assert split.k[0].shape == (B * cfg.num_key_value_heads, 12, cfg.head_dim)
        jax.tree.map(np.testing.assert_array_equal, split.stack_layers(), pre.cache)
        stacked = pre.cache
        for t in range(6, 9):
            a, b = step(ids[:, t:t + 1], stacked), step(ids[:, t:t + 1], split)
            np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), rtol=1e-5, atol=1e-5)
            assert b.cache.is_split
            stacked, split = a.cache, b.cache
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), split.stack_layers(), stacked)


def test_greedy_decoding_leaves_the_rng_alone_and_sampling_splits_it():
    cfg = tiny_config("llama", initializer_range=0.2)
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, cfg.vocab_size)), jnp.float32)
    rng = jax.random.PRNGKey(3)
    args = (jnp.zeros((2, 4), jnp.int32), jnp.zeros((2,), jnp.int32), jnp.zeros((0,), jnp.int32), 0)
    done = jnp.zeros((2,), bool)
    nxt, *_, rng_g = S.emit_token(logits, rng, S.SamplingParams.make(), 0, 0, done, *args)
    np.testing.assert_array_equal(np.asarray(nxt), np.asarray(jnp.argmax(logits, -1)))
    np.testing.assert_array_equal(np.asarray(rng_g), np.asarray(rng))
    *_, rng_s = S.emit_token(logits, rng, S.SamplingParams.make(temperature=1.0), 0, 0, done, *args)
    np.testing.assert_array_equal(np.asarray(rng_s), np.asarray(jax.random.split(rng)[0]))
