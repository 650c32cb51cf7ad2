"""One-pass Medusa tree attention: the decoder's tree mask equals running each branch alone;
tree verification equals greedy decoding at T=0 with one verification forward (one row) per
step, and accepts exactly what the batch-row version accepts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.sampling import SamplingParams, generate, left_pad, trim_output
from latent_jax.decoding.speculative import TypicalOptions, candidate_tree, init_heads, typical_generate
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.layers import KVCache

PROMPTS = [[5, 9, 17, 3, 44, 8, 21], [12, 99, 4]]


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config("llama", vocab_size=128)
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, init_params(cfg, 1))
    return cfg, params


def test_tree_mask_equals_each_branch_alone(model):
    cfg, params = model
    prompt = jnp.asarray([[5, 9, 17, 3]])
    m = Decoder(cfg)
    pre = m.apply({"params": params}, prompt, cache=KVCache.init(cfg, 1, 4 + 7))
    tree = candidate_tree(3, 2)  # root + 3 chains of 2
    flat = jnp.asarray([[40, 1, 2, 1, 3, 4, 5]])  # chains (1, 2), (1, 3), (4, 5): the first two share a prefix
    o = m.apply({"params": params}, flat, positions=(4 + jnp.asarray(tree["depth"]))[None], cache=pre.cache,
                tree_mask=jnp.asarray(tree["mask"])[None])
    for p, chain in enumerate(([1, 2], [1, 3], [4, 5])):
        alone = m.apply({"params": params}, jnp.asarray([[40] + chain]), cache=pre.cache).logits[0]
        got = o.logits[0, [0] + tree["node"][p].tolist()]
        np.testing.assert_allclose(np.asarray(got), np.asarray(alone), atol=1e-5)
    # a repeated node (chain 0 and 1 share draft 1) gets the same logits as its twin
    np.testing.assert_allclose(np.asarray(o.logits[0, 1]), np.asarray(o.logits[0, 3]), atol=1e-6)


def test_one_pass_equals_greedy_one_forward_per_step(model, monkeypatch):
    cfg, params = model
    ids, mask = left_pad(PROMPTS, 0)
    sp, stops = SamplingParams.make(), np.array([7], np.int32)
    plain = trim_output(generate(params, ids, mask, jax.random.PRNGKey(0), sp, stops, config=cfg, max_new_tokens=16))
    heads = init_heads(cfg, 3, 0, base_params=params)
    tree, rows = (TypicalOptions(tree_topk=2, num_paths=4, tree_attention=t) for t in (True, False))
    out = typical_generate(params, heads, ids, mask, jax.random.PRNGKey(0), sp, stops, config=cfg,
                           max_new_tokens=16, opts=tree)
    lens = np.asarray(out.lengths)
    assert [np.asarray(out.tokens)[i, : lens[i]].tolist() for i in range(2)] == plain
    ref = typical_generate(params, heads, ids, mask, jax.random.PRNGKey(0), sp, stops, config=cfg,
                           max_new_tokens=16, opts=rows)
    np.testing.assert_array_equal(np.asarray(out.steps), np.asarray(ref.steps))
    np.testing.assert_array_equal(np.asarray(out.accepted), np.asarray(ref.accepted))
    # the traced program: one prefill and one verification forward per step, a single row of
    # 1 + paths * heads tokens (the batch-row version runs `paths` rows of 1 + heads tokens)
    calls = []
    orig = Decoder.__call__

    def counting(self, input_ids=None, *a, **kw):
        calls.append(None if input_ids is None else tuple(input_ids.shape))
        return orig(self, input_ids, *a, **kw)

    monkeypatch.setattr(Decoder, "__call__", counting)
    for opts in (tree, rows):
        calls.clear()
        jax.make_jaxpr(lambda i, m: typical_generate.__wrapped__(
            params, heads, i, m, jax.random.PRNGKey(0), sp, stops, config=cfg, max_new_tokens=16, opts=opts))(
            jnp.asarray(ids), jnp.asarray(mask))
        assert calls == [(1, ids.shape[1]), (1, 1 + 4 * 3) if opts.tree_attention else (4, 1 + 3)], calls


def test_longrope_past_the_switch_is_refused_by_name(tiny_hf_dir):
    """Phi-3 longrope (original context 32): diffusion, typical acceptance, TOVA and Coconut
    diffusion answers refuse a sequence that may cross the switch, naming the fix; within it
    they run."""
    from latent_jax.decoding.diffusion import DiffusionOptions, diffusion_generate, diffusion_generate_after_prefix
    from latent_jax.decoding.tova import TovaOptions, tova_generate
    from latent_jax.models.hf import load_hf

    cfg, params = load_hf(tiny_hf_dir("phi3"))
    assert cfg.rope_type == "longrope" and cfg.rope_original_max_position_embeddings == 32
    ids = np.arange(3, 27, dtype=np.int32)[None]  # 24 tokens
    mask, key, sp, none = np.ones_like(ids), jax.random.PRNGKey(0), SamplingParams.make(), np.zeros((0,), np.int32)
    long = DiffusionOptions(steps=16, gen_length=16, block_length=16, mask_id=1, causal=True)
    with pytest.raises(ValueError, match="crosses rope_original_max_position_embeddings=32.*lower gen_length"):
        diffusion_generate(params, ids, mask, key, config=cfg, opts=long)
    pre = Decoder(cfg).apply({"params": params}, ids, cache=KVCache.init(cfg, 1, 24))
    with pytest.raises(ValueError, match="lower gen_length"):
        diffusion_generate_after_prefix(params, pre.cache, np.array([24]), key, config=cfg, opts=long)
    heads = init_heads(cfg, 2, 0, base_params=params)
    with pytest.raises(ValueError, match="typical acceptance.*lower max_new_tokens"):
        typical_generate(params, heads, ids, mask, key, sp, none, config=cfg, max_new_tokens=8)
    with pytest.raises(ValueError, match="TOVA.*lower max_new_tokens"):
        tova_generate(params, ids, mask, key, sp, none, config=cfg, max_new_tokens=9, opts=TovaOptions(cache_size=8))
    short = DiffusionOptions(steps=4, gen_length=4, block_length=4, mask_id=1, causal=True)
    assert np.asarray(diffusion_generate(params, ids, mask, key, config=cfg, opts=short).tokens).shape == (1, 4)
