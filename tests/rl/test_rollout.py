"""Group rollouts from the KV-cached generators, scored by completion_logprobs, against a
per-row uncached recomputation (plain prompts and Coconut prompts with different thought counts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.data.pipeline import collate_eval
from latent_jax.latent.coconut import naive_coconut_logits
from latent_jax.latent.curriculum import EvalPrompt
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params
from latent_jax.rl.rollout import completion_logprobs_jit, rollout, sequence_arrays

LATENT, START, END, EOS = 100, 101, 102, 2


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(vocab_size=128, num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                      num_key_value_heads=1)
    return cfg, init_params(cfg, 0)


def _reference_logprobs(params, cfg, ro, temperature):
    """Every row's [prompt | completion] moved to the left (right-padded instead of aligned at the
    thoughts) through the uncached original algorithm, one batch."""
    n, m = ro.tokens.shape
    L = ro.prompt["input_ids"].shape[1] + m
    seq, lat, am, starts = np.zeros((n, L), np.int32), np.zeros((n, L), bool), np.zeros((n, L), np.int32), []
    for i in range(n):
        pm = ro.prompt["attention_mask"][i].astype(bool)
        s = np.concatenate([ro.prompt["input_ids"][i][pm], ro.tokens[i, : ro.lengths[i]]])
        seq[i, : len(s)], am[i, : len(s)] = s, 1
        lat[i, : pm.sum()] = ro.prompt["latent_mask"][i][pm]
        starts.append(int(pm.sum()))
    logits = jax.jit(naive_coconut_logits, static_argnames=("config", "num_passes"))(
        params, jnp.asarray(seq), jnp.asarray(am), jnp.asarray(lat), config=cfg, num_passes=int(lat.sum(1).max()))
    lp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1))
    out = np.zeros((n, m), np.float32)
    for i in range(n):
        for j in range(int(ro.lengths[i])):
            out[i, j] = lp[i, starts[i] - 1 + j, ro.tokens[i, j]]
    return out


def _check(params, cfg, ro, temperature, num_latent):
    b = sequence_arrays(ro)
    P = ro.prompt["input_ids"].shape[1]
    lp = completion_logprobs_jit(params, {k: jnp.asarray(v) for k, v in b.items()}, jnp.float32(temperature),
                                 config=cfg, latent_start=ro.latent_start, num_latent=num_latent, prompt_len=P)
    ref = _reference_logprobs(params, cfg, ro, temperature)
    np.testing.assert_allclose(np.asarray(lp), ref, atol=2e-4)
    return np.asarray(lp)


def test_plain_prompts_group_sampling(model):
    cfg, params = model
    prompts = [EvalPrompt((1, 5, 6, 7, 8), 5, 0), EvalPrompt((1, 9, 10), 3, 0)]
    eb = collate_eval(prompts, 2, 0, bucket=4, feedback=False)
    ro = rollout(params, eb.arrays, eb.latent_start, 0, jax.random.PRNGKey(0), config=cfg, group_size=4,
                 max_new_tokens=6, stop_ids=(EOS,), temperature=1.0)
    assert ro.tokens.shape == (8, 6) and ro.prompt["input_ids"].shape[0] == 8
    # groups are consecutive copies of their prompt, and sampling differs within a group
    np.testing.assert_array_equal(ro.prompt["input_ids"][:4], np.repeat(ro.prompt["input_ids"][:1], 4, 0))
    assert len({tuple(t) for t in ro.tokens[:4].tolist()}) > 1
    _check(params, cfg, ro, 1.0, 0)
    # greedy: every completion token is the argmax of the teacher-forced distribution
    g = rollout(params, eb.arrays, eb.latent_start, 0, jax.random.PRNGKey(0), config=cfg, group_size=2,
                max_new_tokens=6, stop_ids=(EOS,), temperature=0.0)
    np.testing.assert_array_equal(g.tokens[0], g.tokens[1])


def test_coconut_prompts_score_through_the_thoughts(model):
    cfg, params = model
    prompts = [EvalPrompt((1, 5, 6, 7, START, LATENT, LATENT, END), 5, 2),
               EvalPrompt((1, 9, START, LATENT, END), 3, 1)]
    eb = collate_eval(prompts, 2, 0, bucket=4)
    ro = rollout(params, eb.arrays, eb.latent_start, eb.num_latent, jax.random.PRNGKey(1), config=cfg, group_size=3,
                 max_new_tokens=5, stop_ids=(EOS,), temperature=0.8)
    lp = _check(params, cfg, ro, 0.8, eb.num_latent)
    assert np.all(lp[ro.mask] < 0)
    # the gradient of a completion log-probability reaches the question through the thoughts
    b = {k: jnp.asarray(v) for k, v in sequence_arrays(ro).items()}
    from latent_jax.rl.rollout import completion_logprobs

    def f(p):
        return jnp.sum(completion_logprobs(p, b, config=cfg, latent_start=ro.latent_start, num_latent=eb.num_latent,
                                           prompt_len=ro.prompt["input_ids"].shape[1], temperature=0.8))

    g = jax.jit(jax.grad(f))(params)
    assert float(jnp.abs(g["embed_tokens"]["embedding"][6]).max()) > 0  # a question token
