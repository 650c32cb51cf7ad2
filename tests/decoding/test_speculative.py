"""Typical-acceptance speculative decoding: temperature 0 equals plain greedy decoding whatever
the heads propose (chain and tree); heads trained on a toy corpus are accepted (mean accepted
length above 1); heads save / load."""

import jax
import numpy as np
import pytest

from latent_jax.decoding.sampling import SamplingParams, generate, left_pad, trim_output
from latent_jax.decoding.speculative import (
    TypicalOptions, acceptance_stats, init_heads, load_heads, save_heads, train_heads, typical_generate,
)
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params

PROMPTS = [[5, 9, 17, 3, 44, 8, 21], [12, 99, 4]]


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config("llama", vocab_size=64)
    params = init_params(cfg, 1)
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)
    return cfg, params


@pytest.mark.parametrize("opts", [TypicalOptions(), TypicalOptions(tree_topk=2, num_paths=3),
                                  TypicalOptions(tree_topk=2, num_paths=3, tree_attention=False)])
def test_greedy_equals_plain_decoding(model, opts):
    cfg, params = model
    ids, mask = left_pad(PROMPTS, 0)
    sp = SamplingParams.make()
    stops = np.array([7], np.int32)
    plain = trim_output(generate(params, ids, mask, jax.random.PRNGKey(0), sp, stops, config=cfg, max_new_tokens=20))
    for heads in (init_heads(cfg, 3, 5), init_heads(cfg, 3, 0, base_params=params)):
        out = typical_generate(params, heads, ids, mask, jax.random.PRNGKey(0), sp, stops, config=cfg,
                               max_new_tokens=20, opts=opts)
        lens = np.asarray(out.lengths)
        got = [np.asarray(out.tokens)[i, : lens[i]].tolist() for i in range(2)]
        assert got == plain
        assert (np.asarray(out.steps) >= 1).all()


def test_trained_heads_are_accepted(model, tmp_path):
    cfg, params = model
    rs = np.random.RandomState(0)
    # toy corpus: the base model's own greedy continuations of random prompts (self-distillation)
    prompts = rs.randint(3, 64, size=(264, 4)).astype(np.int32)
    none = np.zeros((0,), np.int32)
    g = generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0), SamplingParams.make(), none,
                 config=cfg, max_new_tokens=28)
    corpus = np.concatenate([prompts, np.asarray(g.tokens)], axis=1)
    heads0 = init_heads(cfg, 3, 0, base_params=params)
    heads = train_heads(params, cfg, heads0, corpus[:256], steps=150, batch_size=32, learning_rate=1e-2)
    test_ids = corpus[256:, :4]
    mask = np.ones_like(test_ids)
    stats = {}
    for name, h in (("untrained", heads0), ("trained", heads)):
        out = typical_generate(params, h, test_ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), none,
                               config=cfg, max_new_tokens=24)
        stats[name] = acceptance_stats(out)
    assert stats["trained"]["mean_accepted_length"] > 1.5, stats
    assert stats["trained"]["mean_accepted_length"] > stats["untrained"]["mean_accepted_length"] + 0.2, stats
    # saved and loaded heads decode identically
    save_heads(str(tmp_path / "heads"), heads, {"decay": 0.8})
    loaded, info = load_heads(str(tmp_path / "heads"), cfg)
    assert info["num_heads"] == 3
    a = typical_generate(params, loaded, test_ids, mask, jax.random.PRNGKey(0), SamplingParams.make(), none,
                         config=cfg, max_new_tokens=24)
    assert acceptance_stats(a) == stats["trained"]
    # typical acceptance with sampling accepts at least as much as the greedy exact match here
    t = typical_generate(params, heads, test_ids, mask, jax.random.PRNGKey(0), SamplingParams.make(0.7), none,
                         config=cfg, max_new_tokens=24)
    st = acceptance_stats(t)
    assert st["mean_accepted_length"] > 1.0 and (np.asarray(t.lengths) == 24).all()
    with pytest.raises(FileNotFoundError, match="medusa"):
        load_heads(str(tmp_path))


def test_cli_strategy(tiny_hf_dir, tmp_path):
    from latent_jax.generate import run
    from latent_jax.models.hf import load_hf

    path = tiny_hf_dir("llama")
    cfg, params = load_hf(path)
    save_heads(str(tmp_path / "h"), init_heads(cfg, 2, 0, base_params=params))
    base = ["--model", path, "--input-ids", "1,5,9,20,33", "--max-new-tokens", "12", "--stop-ids", "none"]
    greedy = run(base + ["--strategy", "greedy"])[0]
    r = run(base + ["--strategy", "typical", "--heads", str(tmp_path / "h"), "--temperature", "0"])[0]
    assert r["output_ids"] == greedy["output_ids"]
    assert r["num_heads"] == 2 and 1.0 <= r["mean_accepted_length"] <= 3.0 and r["forward_passes"] >= 2
    with pytest.raises(ValueError, match="--heads"):
        run(base + ["--strategy", "typical"])
