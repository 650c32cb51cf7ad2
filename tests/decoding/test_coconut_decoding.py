"""Decoding methods inside Coconut generation: thoughts then a masked-diffusion answer (equal to
greedy Coconut generation with block size 1 and one step per token)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.diffusion import DiffusionOptions
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent.coconut import coconut_diffusion_generate, coconut_generate
from latent_jax.testing import tiny_config
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


G = 8  # answer tokens


@pytest.fixture(scope="module")
def greedy(setup):
    """Plain greedy Coconut generation (full KV cache), shared by the tests below."""
    cfg, params = setup
    ids, mask, lat, P, n = make_prompts(ROWS)
    return coconut_generate(params, ids, mask, lat, jax.random.PRNGKey(0), SamplingParams.make(0.0), NO_STOP,
                            config=cfg, latent_start=P, num_latent=n, max_new_tokens=G)


def test_diffusion_answer_with_one_token_blocks_equals_greedy_coconut(setup, greedy):
    cfg, params = setup
    ids, mask, lat, P, n = make_prompts(ROWS)
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


# ------------------------------------------------------------------------------- TOVA
def _layers_of(cache, row=0, keep=None):
    """Per-layer numpy [k (S, Hkv, D), v, pos (S,)] of one row, only the slots in `keep`."""
    from latent_jax.models.layers import KVCache

    keep = np.asarray(cache.pos[0, row]) >= 0 if keep is None else keep
    return [[np.asarray(KVCache.slot_major(cache.k[l, row]))[keep], np.asarray(KVCache.slot_major(cache.v[l, row]))[keep],
             np.asarray(cache.pos[l, row])[keep]] for l in range(cache.k.shape[0])]


def _evict(layers, attn, C):
    """Reference eviction: a layer holding more than C tokens keeps the C with the highest
    head-averaged attention of the newest query (argsort), in slot order."""
    for l, (k, v, p) in enumerate(layers):
        if len(p) > C:
            order = np.sort(np.argsort(-np.asarray(attn[l, 0]).mean(0), kind="stable")[:C])
            layers[l] = [k[order], v[order], p[order]]


def _tova_loop(params, cfg, layers, first_tok, last_pos, n_new, C):
    """Batch-1 greedy TOVA from per-layer numpy caches: feed the token, evict, take the argmax."""
    from latent_jax.models.decoder import Decoder
    from latent_jax.models.layers import KVCache

    apply = jax.jit(Decoder(cfg).apply)
    tok, pos, toks = first_tok, last_pos, [first_tok]
    grow = lambda a: np.concatenate([a, np.zeros_like(a[:1])])
    for _ in range(n_new - 1):
        pos += 1
        kv = KVCache(k=KVCache.slot_major(jnp.asarray(np.stack([grow(l[0]) for l in layers])))[:, None],
                     v=KVCache.slot_major(jnp.asarray(np.stack([grow(l[1]) for l in layers])))[:, None],
                     pos=jnp.asarray(np.stack([np.concatenate([l[2], [-1]]) for l in layers]).astype(np.int32))[:, None],
                     end=jnp.asarray(len(layers[0][2]), jnp.int32))
        o = apply({"params": params}, jnp.asarray([[tok]]), positions=jnp.asarray([[pos]]), cache=kv)
        layers = _layers_of(o.cache, keep=slice(None))
        _evict(layers, o.attn_last, C)
        tok = int(np.argmax(np.asarray(o.logits[0, -1])))
        toks.append(tok)
    return toks


def _tova_reference(params, cfg, prompt_row, P, n, G, C):
    """Coconut's rule: prompt and thoughts prefilled whole (no cut), then _tova_loop."""
    from latent_jax.latent.coconut import coconut_prefill

    ids, mask, lat = prompt_row
    cache, next_pos, last_logits = coconut_prefill(params, ids, mask, lat, config=cfg, latent_start=P, num_latent=n)
    return _tova_loop(params, cfg, _layers_of(cache), int(np.argmax(np.asarray(last_logits[0]))), int(next_pos[0]) - 1,
                      G, C)


def test_tova_in_coconut_generation(setup, greedy):
    from latent_jax.decoding.tova import TovaOptions

    cfg, params = setup
    ids, mask, lat, P, n = make_prompts(ROWS)
    T = ids.shape[1]
    sp, key = SamplingParams.make(0.0), jax.random.PRNGKey(0)
    kw = dict(config=cfg, latent_start=P, num_latent=n, max_new_tokens=G)
    full = greedy
    # a budget holding the whole sequence: exactly the uncompressed output
    big = coconut_generate(params, ids, mask, lat, key, sp, NO_STOP, tova=TovaOptions(cache_size=T + G), **kw)
    np.testing.assert_array_equal(np.asarray(big.tokens), np.asarray(full.tokens))
    # a small budget (smaller than the longest prompt + thoughts): the reference eviction rule, per row
    C = 5
    small = coconut_generate(params, ids, mask, lat, key, sp, NO_STOP, tova=TovaOptions(cache_size=C), **kw)
    assert small.cache.slots == C + 1
    for b in range(len(ROWS)):
        row = (ids[b:b + 1], mask[b:b + 1], lat[b:b + 1])
        assert np.asarray(small.tokens)[b].tolist() == _tova_reference(params, cfg, row, P, n, G, C), f"row {b}"
    assert (np.asarray(small.tokens) != np.asarray(full.tokens)).any()  # eviction changed something


def test_tova_coconut_compiled_memory_independent_of_length(setup):
    from latent_jax.decoding.tova import TovaOptions

    cfg, params = setup
    ids, mask, lat, P, n = make_prompts(ROWS)
    B = ids.shape[0]
    args = (params, ids, mask, lat, jax.random.PRNGKey(0), SamplingParams.make(0.0), NO_STOP)

    def mem(new):
        ma = coconut_generate.lower(*args, config=cfg, latent_start=P, num_latent=n, max_new_tokens=new,
                                    tova=TovaOptions(cache_size=6)).compile().memory_analysis()
        return ma.temp_size_in_bytes + ma.output_size_in_bytes

    grow_tova = mem(96) - mem(16)
    # only the (B, max_new) int32 token buffers may grow with TOVA (a few copies); a full cache
    # would grow by 80 slots per row and layer
    slot_bytes = cfg.num_hidden_layers * B * (2 * cfg.num_key_value_heads * cfg.head_dim * 4 + 4)
    assert grow_tova <= 4 * B * 4 * 80 < slot_bytes * 80


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """A tiny InternVL-style VLM, a prompt with 12 media rows, and its plain greedy generation."""
    from latent_jax.decoding.vlm import generate_vlm
    from latent_jax.models.hf_vlm import load_vlm
    from latent_jax.testing import IMAGE_TOKEN_ID, make_tiny_vlm

    vcfg, vparams = load_vlm(make_tiny_vlm("internvl", str(tmp_path_factory.mktemp("tova_vlm")), with_tokenizer=False))
    vparams = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, vparams)  # sharper attention: no near-ties
    n_media = 12
    prompt = [1, 9, 10] + [IMAGE_TOKEN_ID] * n_media + [11, 12]
    ids = jnp.asarray([prompt], jnp.int32)
    feats = jnp.asarray(np.random.default_rng(0).standard_normal((n_media, vcfg.text.hidden_size)), jnp.float32)
    full = generate_vlm(vparams, ids, jnp.ones_like(ids), feats, jax.random.PRNGKey(0), SamplingParams.make(0.0),
                        NO_STOP, cfg=vcfg, max_new_tokens=8)
    return vcfg, vparams, prompt, ids, feats, full


def test_typical_acceptance_in_vlm_generation(vlm):
    from latent_jax.decoding.speculative import TypicalOptions, init_heads
    from latent_jax.decoding.vlm import generate_vlm

    vcfg, vparams, prompt, ids, feats, full = vlm
    heads = init_heads(vcfg.text, 2, 0, base_params=vparams["language_model"])
    out = generate_vlm(vparams, ids, jnp.ones_like(ids), feats, jax.random.PRNGKey(0), SamplingParams.make(0.0),
                       NO_STOP, cfg=vcfg, max_new_tokens=8, medusa=(heads, TypicalOptions(tree_topk=2, num_paths=2)))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(full.tokens))
    assert 1 <= int(out.steps[0]) <= 7


def test_tova_in_vlm_generation(vlm):
    """Video / image rows are the long part of a VLM prompt: TOVA over them, one `tova` option."""
    from latent_jax.decoding.tova import TovaOptions
    from latent_jax.decoding.vlm import embed_prompt, generate_vlm
    from latent_jax.models.decoder import Decoder
    from latent_jax.models.layers import KVCache

    vcfg, vparams, prompt, ids, feats, full = vlm
    new = 8
    sp, key = SamplingParams.make(0.0), jax.random.PRNGKey(0)
    kw = dict(cfg=vcfg, max_new_tokens=new)
    big = generate_vlm(vparams, ids, jnp.ones_like(ids), feats, key, sp, NO_STOP, tova=TovaOptions(cache_size=64), **kw)
    np.testing.assert_array_equal(np.asarray(big.tokens), np.asarray(full.tokens))
    C = 6
    small = generate_vlm(vparams, ids, jnp.ones_like(ids), feats, key, sp, NO_STOP, tova=TovaOptions(cache_size=C), **kw)
    assert small.cache.slots == C + 1
    # reference: the embedded prompt prefilled, cut by its last token's attention, then _tova_loop
    lm, tcfg = vparams["language_model"], vcfg.text
    emb = embed_prompt(vparams, vcfg, ids, feats)
    pre = Decoder(tcfg).apply({"params": lm}, inputs_embeds=emb, cache=KVCache.init(tcfg, 1, len(prompt)))
    layers = _layers_of(pre.cache)
    _evict(layers, pre.attn_last, C)
    ref = _tova_loop(lm, tcfg, layers, int(np.argmax(np.asarray(pre.logits[0, -1]))), len(prompt) - 1, new, C)
    assert np.asarray(small.tokens)[0].tolist() == ref


# ------------------------------------------------------------- the workflow switches
def test_diffusion_loss_on_the_answer_span(setup):
    from latent_jax.latent.coconut import coconut_diffusion_loss, coconut_forward

    cfg, params = setup
    ids, mask, lat, P, n = make_prompts([(q, k, s + [20, 21, 2]) for q, k, s in ROWS])
    labels = np.full(ids.shape, -100, np.int32)
    for b, (q, k, s) in enumerate(ROWS):  # the answer after <|end-latent|>
        a0 = P + k + len(s)
        labels[b, a0:a0 + 3] = ids[b, a0:a0 + 3]
    batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), latent_mask=jnp.asarray(lat),
                 labels=jnp.asarray(labels), noise_seed=jnp.arange(3, dtype=jnp.uint32))
    kw = dict(config=cfg, latent_start=P, num_latent=n, mask_id=MASK)
    # eps = 1: every answer token masked with p = 1 -> per-row mean CE of the shifted predictions
    loss, aux = jax.jit(lambda p, b: coconut_diffusion_loss(p, b, eps=1.0, **kw))(params, batch)
    noisy = np.where(labels != -100, MASK, ids)
    lg = jax.jit(lambda p, x: coconut_forward(p, x, jnp.asarray(mask), jnp.asarray(lat), config=cfg, latent_start=P,
                                              num_latent=n).logits)(params, jnp.asarray(noisy))
    lp = np.asarray(jax.nn.log_softmax(lg[:, :-1], -1))
    ce = -np.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
    ans = labels[:, 1:] != -100
    want = np.mean([ce[b][ans[b]].mean() for b in range(3)])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(aux["mask_frac"]) == 1.0


def test_config_blocks_and_errors():
    from ml_collections import ConfigDict

    from latent_jax.decoding.diffusion import answer_options_from_config
    from latent_jax.decoding.tova import tova_options_from_config

    assert tova_options_from_config(ConfigDict(dict(policy="full"))) is None
    o = tova_options_from_config(ConfigDict(dict(policy="tova", size=64, head_weights="momentum", recency_bias=0.5)))
    assert (o.cache_size, o.head_weight_update, o.recency_bias) == (64, "momentum", 0.5)
    with pytest.raises(ValueError, match="cache.policy"):
        tova_options_from_config(ConfigDict(dict(policy="lru")))
    assert answer_options_from_config(ConfigDict(dict(decoding="autoregressive")), 8, 0) is None
    d = answer_options_from_config(ConfigDict(dict(decoding="diffusion", block_length=4, mask_id=-1)), 8, 3)
    assert (d.steps, d.block_length, d.mask_id, d.shift_logits, d.causal) == (8, 4, 3, True, True)
    with pytest.raises(ValueError, match="block_length"):
        answer_options_from_config(ConfigDict(dict(decoding="diffusion", block_length=3)), 8, 0)


def test_coconut_workflow_trains_and_answers_by_diffusion(tmp_path):
    """answer.decoding=diffusion: one switch trains the answer span with the masked-diffusion
    objective and decodes test answers by diffusion after the thoughts; predictions.jsonl
    records the forward passes."""
    import json
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from configs.prosqa_coconut import get_config
    from latent_jax.tasks.coconut import run

    c = get_config("smoke")
    c.chain, c.coconut_mode = "", "coconut"
    c.data.gen.train, c.data.gen.valid, c.data.gen.test = 8, 2, 2
    c.model.num_hidden_layers, c.batch_size, c.num_epochs, c.start_epoch = 1, 8, 2, 1  # stage 1 only
    c.coconut.epochs_per_stage, c.coconut.max_latent_stage = 1, 1
    c.eval_every_epochs, c.max_steps = 100, 0
    c.generation.coconut.max_new_tokens = 8
    c.answer.decoding, c.answer.block_length = "diffusion", 4
    out = run(c, str(tmp_path))
    rows = [json.loads(l) for l in open(tmp_path / "test" / "predictions.jsonl")]
    res = json.load(open(tmp_path / "test" / "results.json"))
    assert rows and all(r["forward_passes"] == 1 + 8 for r in rows)  # prefill + one step per answer token
    assert res["answer_decoding"] == "diffusion" and res["mean_forward_passes"] == 9.0
    from latent_jax.train.metrics import read_metrics

    losses = [r["train/loss"] for r in read_metrics(str(tmp_path)) if "train/loss" in r]
    assert out["step"] >= 1 and losses and all(np.isfinite(losses))
