"""The chunked LM head in the loss (issue 24 item 2): the same per-token values and gradients as
the head over the whole sequence, for tied and untied heads and a short last chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.models.config import ConfigError
from latent_jax.models.decoder import init_params
from latent_jax.models.lm_head import logprob_and_argmax, map_head_chunks, masked_mean_nll
from latent_jax.testing import tiny_config


@pytest.mark.parametrize("tied", [False, True])
def test_chunks_equal_the_whole_sequence(tied):
    cfg = tiny_config("llama", vocab_size=96, tie_word_embeddings=tied)
    params = init_params(cfg, 0)
    B, T = 3, 11
    hidden = jax.random.normal(jax.random.PRNGKey(1), (B, T, cfg.hidden_size))
    labels = jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, cfg.vocab_size).at[1, 3:7].set(-100)

    def loss(p, h, chunk):
        logp, am = map_head_chunks(p, cfg, h, logprob_and_argmax, labels, chunk=chunk)
        return masked_mean_nll(logp, labels)[0], (logp, am)

    @jax.jit
    def run(p, h):
        g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        return g(p, h, 0), g(p, h, 4)  # 11 positions: chunks of 4, 4, 3 (+1 padding)

    ((l0, (lp0, am0)), g0), ((l4, (lp4, am4)), g4) = run(params, hidden)
    assert lp4.shape == (B, T) and am4.shape == (B, T)
    np.testing.assert_allclose(float(l4), float(l0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lp4), np.asarray(lp0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(am4), np.asarray(am0))
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(g4[1]).max()) > 0


def test_config_key_is_checked():
    with pytest.raises(ConfigError, match="ce_chunk"):
        tiny_config("llama", ce_chunk=-1)


def _losses():
    """Every other task loss that reads the LM head, as f(params, config) -> scalar."""
    from latent_jax.decoding.diffusion import masked_diffusion_loss
    from latent_jax.latent.coconut import coconut_diffusion_loss
    from latent_jax.rl.rollout import completion_logprobs
    from latent_jax.tasks.streaming import reply_loss

    B, T = 2, 10
    ids = jax.random.randint(jax.random.PRNGKey(3), (B, T), 3, 90)
    am = jnp.ones((B, T), jnp.int32).at[1, :1].set(0)
    lat = jnp.zeros((B, T), bool).at[:, 3:5].set(True)
    labels = jnp.where(jnp.arange(T) >= 6, ids, -100)
    grpo = dict(input_ids=ids, attention_mask=am, latent_mask=lat, completion_mask=jnp.arange(4)[None] < jnp.asarray(
        [[4], [2]]))
    cd = dict(input_ids=ids, attention_mask=am, latent_mask=lat, labels=labels, noise_seed=jnp.asarray([5, 6]))
    return {
        "grpo": lambda p, c: jnp.sum(completion_logprobs(p, grpo, config=c, latent_start=3, num_latent=2, prompt_len=6,
                                                         temperature=0.7) ** 2),
        "diffusion": lambda p, c: masked_diffusion_loss(p, ids, am, jax.random.PRNGKey(4), config=c, mask_id=2)[0],
        "coconut_diffusion": lambda p, c: coconut_diffusion_loss(p, cd, config=c, latent_start=3, num_latent=2,
                                                                 mask_id=2, eps=0.5)[0],
        "streaming": lambda p, c: reply_loss(p, c, ids, am, (jnp.arange(T) >= 5)[None].repeat(B, 0))[0],
    }


@pytest.mark.parametrize("name", ["grpo", "diffusion", "coconut_diffusion", "streaming"])
def test_every_task_loss_chunked_equals_whole(name):
    cfg = tiny_config("llama", vocab_size=96, num_hidden_layers=1, scan_layers=True)
    params = init_params(cfg, 0)
    f = _losses()[name]

    @jax.jit
    def both(p):
        return jax.value_and_grad(f)(p, cfg), jax.value_and_grad(f)(p, cfg.replace(ce_chunk=3))

    (l0, g0), (l3, g3) = both(params)
    assert np.isfinite(float(l0)) and float(l0) != 0.0
    np.testing.assert_allclose(float(l3), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g3), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
