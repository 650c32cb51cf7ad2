"""Decoding methods inside Coconut generation: thoughts then a masked-diffusion answer (equal to
greedy Coconut generation with block size 1 and one step per token)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.diffusion import DiffusionOptions
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent.coconut import coconut_diffusion_generate, coconut_generate
from latent_jax.models.config import tiny_config
from latent_jax.models.decoder import init_params

LAT, START, END, MASK = 5, 6, 7, 31
NO_STOP = jnp.zeros((0,), jnp.int32)
# question + <|start-latent|>, number of latents, rest of the prompt
ROWS = [([10, 11, 12, 13, START], 3, [END]), ([14, 15, START], 1, [END]), ([16, START], 2, [END])]


def make_prompts(rows):
    """Left-pad the questions so the first latent is aligned; right-pad the rest."""
    P = max(len(q) for q, _, _ in rows)
    n = max(k for _, k, _ in rows)
    T = P + max(k + len(s) for _, k, s in rows)
    ids = np.zeros((len(rows), T), np.int32)
    mask = np.zeros_like(ids)
    lat = np.zeros(ids.shape, bool)
    for b, (q, k, s) in enumerate(rows):
        seq = list(q) + [LAT] * k + list(s)
        o = P - len(q)
        ids[b, o:o + len(seq)], mask[b, o:o + len(seq)] = seq, 1
        lat[b, P:P + k] = True
    return ids, mask, lat, P, n


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config("llama", vocab_size=32, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, init_params(cfg, 0))
    return cfg, params


def test_diffusion_answer_with_one_token_blocks_equals_greedy_coconut(setup):
    cfg, params = setup
    ids, mask, lat, P, n = make_prompts(ROWS)
    G = 6
    greedy = coconut_generate(params, ids, mask, lat, jax.random.PRNGKey(0), SamplingParams.make(0.0), NO_STOP,
                              config=cfg, latent_start=P, num_latent=n, max_new_tokens=G)
    opts = DiffusionOptions(steps=G, gen_length=G, block_length=1, mask_id=MASK, causal=True, shift_logits=True)
    out = coconut_diffusion_generate(params, ids, mask, lat, jax.random.PRNGKey(0), config=cfg, latent_start=P,
                                     num_latent=n, opts=opts)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
    assert int(out.forward_passes) == G
    # the thoughts matter: without feedback (pause tokens) the answer differs
    pause = coconut_diffusion_generate(params, ids, mask, lat, jax.random.PRNGKey(0), config=cfg, latent_start=P,
                                       num_latent=n, opts=opts, feedback=False)
    assert (np.asarray(pause.tokens) != np.asarray(out.tokens)).any()
    # parallel decoding: two tokens per step, half the forward passes, all positions filled
    fast = coconut_diffusion_generate(params, ids, mask, lat, jax.random.PRNGKey(0), config=cfg, latent_start=P,
                                      num_latent=n, opts=DiffusionOptions(steps=G // 2, gen_length=G, block_length=G,
                                                                          mask_id=MASK, causal=True, cache="prefix"))
    assert int(fast.forward_passes) == G // 2 and (np.asarray(fast.tokens) != MASK).all()
