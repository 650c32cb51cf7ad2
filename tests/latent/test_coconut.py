"""Continuous thought: the scan + KV-cache forward equals the original multi-pass algorithm
(loss and gradients), pause-as-thought, embeds override, and batched cached generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.sampling import SamplingParams, generate
from latent_jax.latent.coconut import (
    coconut_forward,
    coconut_generate,
    coconut_loss,
    embedding_norm,
    masked_cross_entropy,
    naive_coconut_logits,
    thought_input,
    thought_topk,
)
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params

LAT, START, END, PAD = 5, 6, 7, 0


def make_batch(rows, pad_id=PAD):
    """rows: (question ids (ending with <|start-latent|>), n_latents, suffix ids). Left-pads so
    the first latent slot is aligned, right-pads the suffix. Labels: -100 on question and
    latents/markers, the suffix tokens after <|end-latent|> are labelled."""
    P = max(len(q) for q, _, _ in rows)
    n = max(k for _, k, _ in rows)
    rest = max(k + len(s) for _, k, s in rows) - n
    T = P + n + rest
    B = len(rows)
    ids = np.full((B, T), pad_id, np.int32)
    mask = np.zeros((B, T), np.int32)
    lat = np.zeros((B, T), bool)
    labels = np.full((B, T), -100, np.int32)
    for b, (q, k, s) in enumerate(rows):
        seq = list(q) + [LAT] * k + list(s)
        o = P - len(q)
        ids[b, o : o + len(seq)] = seq
        mask[b, o : o + len(seq)] = 1
        lat[b, P : P + k] = True
        lab_from = P + k + 1  # after <|end-latent|>
        labels[b, lab_from : o + len(seq)] = ids[b, lab_from : o + len(seq)]
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    batch = dict(input_ids=ids, attention_mask=mask, latent_mask=lat, labels=labels, position_ids=pos)
    return {k: jnp.asarray(v) for k, v in batch.items()}, P, n


ROWS = [
    ([10, 11, 12, 13, START], 3, [END, 20, 21, 22, 2]),
    ([14, 15, START], 1, [END, 23, 24, 2]),
    ([16, 17, 18, START], 2, [END, 25, 2]),
    ([19, START], 0, [END, 26, 27, 28, 29, 2]),
]


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config("llama", vocab_size=32, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    params = init_params(cfg, 0)
    # larger init so latent feedback matters numerically
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, params)
    return cfg, params


@pytest.mark.parametrize("thought_norm", ["none", "embed"])
def test_scan_forward_matches_naive_loss_and_grads(setup, thought_norm):
    cfg, params = setup
    batch, P, n = make_batch(ROWS)
    assert n == 3 and int(batch["latent_mask"].sum()) == 6

    args = (batch["input_ids"], batch["attention_mask"], batch["latent_mask"], batch["position_ids"])

    def loss_scan(p):
        return coconut_loss(p, batch, config=cfg, latent_start=P, num_latent=n, thought_norm=thought_norm)[0]

    def loss_naive(p):
        lg = naive_coconut_logits(p, *args, config=cfg, num_passes=n, thought_norm=thought_norm)
        return masked_cross_entropy(lg, batch["labels"])[0], lg

    @jax.jit  # one program for both sides: loss, gradients and logits
    def both(p):
        ls, gs = jax.value_and_grad(loss_scan)(p)
        (ln, lg), gn = jax.value_and_grad(loss_naive, has_aux=True)(p)
        out = coconut_forward(p, *args, config=cfg, latent_start=P, num_latent=n, thought_norm=thought_norm).logits
        return ls, gs, ln, gn, out, lg

    ls, gs, ln, gn, out, lg = both(params)
    np.testing.assert_allclose(float(ls), float(ln), rtol=1e-5, atol=1e-6)
    flat_s, flat_n = jax.tree.leaves(gs), jax.tree.leaves(gn)
    assert len(flat_s) == len(flat_n) and any(float(jnp.abs(g).max()) > 0 for g in flat_s)
    for a, b in zip(flat_s, flat_n):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # logits on every real position agree too
    m = np.asarray(batch["attention_mask"]).astype(bool)
    np.testing.assert_allclose(np.asarray(out)[m], np.asarray(lg)[m], atol=2e-5)


def test_thought_norm_embed_rescales_each_thought_to_the_embedding_norm(setup):
    cfg, params = setup
    h = jax.random.normal(jax.random.PRNGKey(3), (4, cfg.hidden_size)) * jnp.asarray([[0.1], [1.0], [10.0], [50.0]])
    target = float(embedding_norm(params))
    table = np.asarray(params["embed_tokens"]["embedding"])
    assert target == pytest.approx(float(np.linalg.norm(table, axis=-1).mean()), rel=1e-5)
    out = thought_input(h, params, "embed")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1), target, rtol=1e-5)
    # direction kept; "none" is the identity (the original)
    cos = np.sum(np.asarray(out) * np.asarray(h), -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(h, axis=-1))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(thought_input(h, params, "none")), np.asarray(h))
    with pytest.raises(ValueError, match="thought_norm"):
        thought_input(h, params, "unit")
    # it changes the loss (the thoughts enter at a different scale)
    batch, P, n = make_batch(ROWS)
    la = coconut_loss(params, batch, config=cfg, latent_start=P, num_latent=n, thought_norm="none")[0]
    lb = coconut_loss(params, batch, config=cfg, latent_start=P, num_latent=n, thought_norm="embed")[0]
    assert abs(float(la) - float(lb)) > 1e-4


def test_thought_topk_decodes_the_fed_back_states(setup):
    """thought_topk's entry i is the LM-head reading of the state fed into latent slot i;
    checked against the naive multi-pass logits at the position before each latent."""
    cfg, params = setup
    batch, P, n = make_batch(ROWS)
    args = (batch["input_ids"], batch["attention_mask"], batch["latent_mask"])
    ids, probs = thought_topk(params, *args, config=cfg, latent_start=P, num_latent=n, k=3)
    assert ids.shape == probs.shape == (len(ROWS), n, 3)
    assert bool(jnp.all(probs[..., :-1] >= probs[..., 1:])) and float(probs.sum(-1).max()) <= 1.0 + 1e-5
    ref = np.asarray(jnp.argmax(naive_coconut_logits(params, *args, batch["position_ids"], config=cfg, num_passes=n), -1))
    lm = np.asarray(batch["latent_mask"])
    for b in range(len(ROWS)):
        for i in range(n):
            if lm[b, P + i]:
                assert int(ids[b, i, 0]) == ref[b, P + i - 1]


def test_feedback_changes_result_and_gradients_flow_through_thoughts(setup):
    cfg, params = setup
    batch, P, n = make_batch(ROWS)

    @jax.jit
    def both(p):
        f = lambda q, fb: coconut_loss(q, batch, config=cfg, latent_start=P, num_latent=n, feedback=fb)[0]
        (l1, g1), (l2, g2) = jax.value_and_grad(f)(p, True), jax.value_and_grad(f)(p, False)
        return l1, l2, g1["embed_tokens"]["embedding"][LAT], g2["embed_tokens"]["embedding"][LAT]

    l_fb, l_pause, g_fb, g_pause = both(params)
    assert abs(float(l_fb) - float(l_pause)) > 1e-4
    # with feedback the <|latent|> row is never read: zero gradient ...
    assert float(jnp.abs(g_fb).max()) == 0.0
    # ... in the pause ablation it is the learned pause embedding
    assert float(jnp.abs(g_pause).max()) > 0.0


def test_embeds_override_replaces_marked_positions(setup):
    cfg, params = setup
    batch, P, n = make_batch(ROWS)
    B, T = batch["input_ids"].shape
    over = jax.random.normal(jax.random.PRNGKey(1), (B, T, cfg.hidden_size))
    omask = jnp.zeros((B, T), bool).at[:, P - 2].set(True)
    kw = dict(config=cfg, latent_start=P, num_latent=n)
    args = (batch["input_ids"], batch["attention_mask"], batch["latent_mask"], batch["position_ids"])

    @jax.jit
    def three(p):
        a = coconut_forward(p, *args, embeds_override=over, embeds_override_mask=omask, **kw).logits
        ref = naive_coconut_logits(p, *args, config=cfg, num_passes=n, embeds_override=over,
                                   embeds_override_mask=omask)
        plain = coconut_forward(p, *args, **kw).logits
        return a, ref, plain

    a, ref, plain = three(params)
    m = np.asarray(batch["attention_mask"]).astype(bool)
    np.testing.assert_allclose(np.asarray(a)[m], np.asarray(ref)[m], atol=2e-5)
    assert float(jnp.abs(a - plain)[:, -1].max()) > 1e-4


@pytest.mark.parametrize("thought_norm", ["none", "embed"])
def test_batched_cached_generation_equals_uncached_reference(setup, thought_norm):
    cfg, params = setup
    # prompts: question + start + latents + end (as the original's eval prompts)
    rows = [([10, 11, 12, 13, START], 3, [END]), ([14, 15, START], 1, [END]), ([16, START], 2, [END])]
    batch, P, n = make_batch(rows)
    new = 6
    out = coconut_generate(
        params, batch["input_ids"], batch["attention_mask"], batch["latent_mask"], jax.random.PRNGKey(0),
        SamplingParams.make(0.0), jnp.asarray([], jnp.int32),
        config=cfg, latent_start=P, num_latent=n, max_new_tokens=new, thought_norm=thought_norm,
    )
    toks = np.asarray(out.tokens)
    assert np.asarray(out.lengths).tolist() == [new] * 3
    # uncached reference: the full sequence (prompt + generated) through the original
    # multi-pass algorithm; greedy means each generated token is the argmax at its position
    seqs, lat = [], []
    for b, (q, k, s) in enumerate(rows):
        seqs.append(list(q) + [LAT] * k + list(s) + toks[b].tolist())
        lat.append([False] * len(q) + [True] * k + [False] * (len(s) + new))
    L = max(map(len, seqs))
    ids = np.zeros((3, L), np.int32); m = np.zeros((3, L), np.int32); lm = np.zeros((3, L), bool)
    for b in range(3):
        o = L - len(seqs[b])
        ids[b, o:], m[b, o:], lm[b, o:] = seqs[b], 1, lat[b]
    lg = jax.jit(lambda p, i, mm, l: naive_coconut_logits(p, i, mm, l, config=cfg, num_passes=n,
                                                          thought_norm=thought_norm))(
        params, jnp.asarray(ids), jnp.asarray(m), jnp.asarray(lm))
    pred = np.asarray(jnp.argmax(lg, -1))
    for b in range(3):
        np.testing.assert_array_equal(pred[b, L - new - 1 : L - 1], toks[b])


def test_generation_without_latents_matches_plain_generate(setup):
    cfg, params = setup
    ids = jnp.asarray([[0, 0, 10, 11, 12], [13, 14, 15, 16, 17]], jnp.int32)
    mask = (jnp.arange(5)[None] >= jnp.asarray([[2], [0]])).astype(jnp.int32)
    lm = jnp.zeros_like(ids, bool)
    sp = SamplingParams.make(0.0)
    stop = jnp.asarray([2], jnp.int32)
    a = coconut_generate(params, ids, mask, lm, jax.random.PRNGKey(0), sp, stop, config=cfg,
                         latent_start=5, num_latent=0, max_new_tokens=5)
    b = generate(params, ids, mask, jax.random.PRNGKey(0), sp, stop, config=cfg, max_new_tokens=5)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_bad_alignment_is_a_clear_error(setup):
    cfg, params = setup
    batch, P, n = make_batch(ROWS)
    with pytest.raises(ValueError, match="latent_start"):
        coconut_forward(params, batch["input_ids"], batch["attention_mask"], batch["latent_mask"],
                        config=cfg, latent_start=0, num_latent=n)


def carried_cache_logits(params, ids, mask, lat, pos, *, cfg, P, n):
    """Coconut's training forward as it was before issue 24 (the reference of the per-layer K/V
    path): the prefix prefilled into a KVCache threaded through the layers, each thought written
    into a small cache buffer, the rest run against the concatenated cache."""
    from latent_jax.latent.coconut import input_embeddings
    from latent_jax.models.decoder import Decoder
    from latent_jax.models.layers import KVCache

    model, p = Decoder(cfg), {"params": params}
    emb = input_embeddings(params, ids, cfg)
    B, T = ids.shape
    pre = model.apply(p, inputs_embeds=emb[:, :P], attention_mask=mask[:, :P], positions=pos[:, :P],
                      cache=KVCache.init(cfg, B, P))
    buf, h, logits = KVCache.init(cfg, B, n), pre.hidden[:, -1], [pre.logits]
    for i in range(n):
        c = slice(P + i, P + i + 1)
        inp = jnp.where(lat[:, P + i, None], h, emb[:, P + i])[:, None]
        o = model.apply(p, inputs_embeds=inp, attention_mask=mask[:, c], positions=pos[:, c], cache=buf.replace(end=i),
                        prefix_cache=pre.cache)
        buf, h = o.cache, o.hidden[:, 0]
        logits.append(o.logits)
    cache = KVCache.concat_slots([pre.cache, buf, KVCache.init(cfg, B, T - P - n)], P + n)
    suf = model.apply(p, inputs_embeds=emb[:, P + n:], attention_mask=mask[:, P + n:], positions=pos[:, P + n:],
                      cache=cache)
    return jnp.concatenate(logits + [suf.logits], axis=1)


@pytest.mark.parametrize("scan_layers,ce_chunk", [(False, 0), (True, 4)])
def test_training_path_equals_the_carried_cache_path(setup, scan_layers, ce_chunk):
    """Issue 24: K/V as layer-scan outputs (no carried cache) and the chunked LM head in the loss
    give the loss and gradients of the carried-cache forward with the whole logits (fp32, 1e-5),
    with set-valued labels too."""
    from latent_jax.latent.coconut import set_cross_entropy
    from latent_jax.models.io import restack_layers

    cfg0, params = setup
    cfg = cfg0.replace(scan_layers=scan_layers, ce_chunk=ce_chunk)
    params = restack_layers(params, cfg, scan_layers)
    batch, P, n = make_batch(ROWS)
    B, T = batch["input_ids"].shape
    sets = np.full((B, T, 2), -100, np.int32)
    sets[:, P:P + n, 0], sets[0, P:P + n, 1] = 20, 21  # a set label on each thought column
    batch["label_sets"] = jnp.asarray(sets)
    args = (batch["input_ids"], batch["attention_mask"], batch["latent_mask"], batch["position_ids"])

    def loss_ref(p):
        lg = carried_cache_logits(p, *args, cfg=cfg, P=P, n=n)
        loss, count = masked_cross_entropy(lg, batch["labels"])
        s_sum, s_n, _ = set_cross_entropy(lg, batch["label_sets"])
        return (loss * count + s_sum) / (count + s_n)

    @jax.jit
    def both(p):
        ln, gn = jax.value_and_grad(lambda q: coconut_loss(q, batch, config=cfg, latent_start=P, num_latent=n)[0])(p)
        lr, gr = jax.value_and_grad(loss_ref)(p)
        return ln, gn, lr, gr

    ln, gn, lr, gr = both(params)
    np.testing.assert_allclose(float(ln), float(lr), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gn), jax.tree.leaves(gr)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gn)) > 1e-2
