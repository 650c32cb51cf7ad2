"""Set-valued thought labels (thought_labels="reach"): every fed-back state is labelled with its
depth's whole BFS layer; layouts, collation and re-padding, and the set losses against a direct
computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.data.pipeline import collate_train
from latent_jax.latent import curriculum as C
from latent_jax.latent.coconut import coconut_forward, coconut_loss, masked_cross_entropy, set_cross_entropy
from latent_jax.models.decoder import init_params
from latent_jax.data.pipeline import geometry, repad
from latent_jax.testing import tiny_config

PAD, BOS, EOS, START, END, LAT, A = 0, 1, 2, 3, 4, 5, 6
IDS = C.LatentTokenIds(START, END, LAT)


def example(idx=0, q=(BOS, 10, 11, 12), path=(20, 21), frontier=((20,), (21,)), reach=((20, 23, 24), (21, 25))):
    return C.TokenizedExample(
        question_ids=tuple(q), step_ids=tuple((p,) for p in path), answer_ids=(A, path[-1], EOS), idx=idx,
        answer_lead=1, frontier_ids=tuple(frontier), reach_ids=tuple(reach))


def cfg(**kw):
    base = dict(mode="coconut", supervision="steps", latent_markers=False, max_latent_stage=2, c_thought=1,
                thought_labels="reach")
    return C.CurriculumConfig(**{**base, **kw})


def test_each_fed_back_state_is_labelled_with_its_whole_layer():
    ex, q = example(), [BOS, 10, 11, 12]
    s = C.build_sample(ex, 2, cfg(), IDS)
    assert list(s.input_ids) == q + [LAT, LAT, A, 21, EOS]
    assert list(s.labels) == [-100] * 6 + [A, 21, EOS]  # no single-node label on the thought slots
    assert s.label_sets == ((4, (20, 23, 24)), (5, (21, 25)))  # read off the root's state and thought 1's
    s1 = C.build_sample(ex, 1, cfg(), IDS)
    assert s1.label_sets == ((4, (20, 23, 24)),) and list(s1.input_ids) == q + [LAT, 21, A, 21, EOS]
    assert C.build_sample(ex, 0, cfg(), IDS).label_sets == ()  # stage 0 is CoT: no thought to label
    assert C.build_sample(ex, 2, cfg(mode="cot"), IDS).label_sets == ()
    # under frontier supervision too, and c_thought > 1 labels the last thought of each group
    s = C.build_sample(ex, 2, cfg(supervision="frontier", c_thought=2, max_latent_stage=2), IDS)
    assert [p for p, _ in s.label_sets] == [5, 7]
    with pytest.raises(ValueError, match="reach labels"):
        C.build_sample(example(reach=()), 2, cfg(), IDS)
    with pytest.raises(ValueError, match="set_loss"):
        cfg(set_loss="max")


def test_collation_and_repad_place_the_sets_at_their_tokens():
    exs = [example(0), example(1, q=(BOS, 13), reach=((20,), (21, 25, 26, 27)))]
    samples = [C.build_sample(e, 2, cfg(), IDS) for e in exs]
    b = collate_train(samples, 3, PAD, bucket=4)
    ls = b.arrays["label_sets"]
    assert ls.shape == b.arrays["input_ids"].shape + (4,)
    s0 = b.latent_start
    np.testing.assert_array_equal(ls[0, s0], [20, 23, 24, -100])
    np.testing.assert_array_equal(ls[1, s0 + 1], [21, 25, 26, 27])
    assert (ls != -100).sum() == 3 + 2 + 1 + 4  # nothing anywhere else (the dummy row has none)
    g = geometry(samples, 4)
    assert g.label_set == 4
    out = repad(b.arrays, b.latent_start, g.start + 4, g.T + 8, PAD, label_set=6)
    assert out["label_sets"].shape == (3, g.T + 8, 6)
    np.testing.assert_array_equal(out["label_sets"][1, g.start + 5, :4], [21, 25, 26, 27])
    # a batch without sets (e.g. a CoT-stage batch) gets an empty array of the stage's shape
    cot = collate_train([C.build_sample(exs[0], 0, cfg(), IDS)], 3, PAD, bucket=4)
    assert "label_sets" not in cot.arrays
    empty = repad(cot.arrays, cot.latent_start, cot.latent_start, cot.arrays["input_ids"].shape[1], PAD, label_set=4)
    assert empty["label_sets"].shape == cot.arrays["input_ids"].shape + (4,) and (empty["label_sets"] == -100).all()


def test_set_losses_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    sets = np.full((2, 4, 3), -100, np.int32)
    sets[0, 1, :2] = [3, 5]  # predicted by logits[0, 0]
    sets[1, 3, :3] = [0, 1, 6]  # by logits[1, 2]
    sets[1, 2, :1] = [int(np.argmax(logits[1, 1]))]  # a set holding the argmax
    logp = jax.nn.log_softmax(jnp.asarray(logits), -1)
    lp = np.asarray(logp)
    want_u = -(lp[0, 0, [3, 5]].mean() + lp[1, 2, [0, 1, 6]].mean() + lp[1, 1, sets[1, 2, 0]])
    want_s = -(np.log(np.exp(lp[0, 0, [3, 5]]).sum()) + np.log(np.exp(lp[1, 2, [0, 1, 6]]).sum())
               + lp[1, 1, sets[1, 2, 0]])
    for kind, want in (("uniform", want_u), ("sum", want_s)):
        total, n, hit = set_cross_entropy(jnp.asarray(logits), jnp.asarray(sets), kind)
        np.testing.assert_allclose(float(total), want, rtol=1e-5)
        assert int(n) == 3
        hits = int(np.argmax(logits[0, 0]) in (3, 5)) + 1 + int(np.argmax(logits[1, 2]) in (0, 1, 6))
        assert int(hit) == hits
    # a single-member set is plain cross-entropy (both kinds)
    one = np.full((2, 4, 1), -100, np.int32)
    one[0, 2, 0] = 4
    lab = np.full((2, 4), -100, np.int32)
    lab[0, 2] = 4
    ce, _ = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(lab))
    for kind in ("uniform", "sum"):
        np.testing.assert_allclose(float(set_cross_entropy(jnp.asarray(logits), jnp.asarray(one), kind)[0]),
                                   float(ce), rtol=1e-6)


def test_coconut_loss_counts_each_set_as_one_labelled_token():
    mc = tiny_config("llama", vocab_size=40, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    params = init_params(mc, 0)
    samples = [C.build_sample(e, 2, cfg(), IDS) for e in (example(0), example(1, q=(BOS, 13)))]
    b = collate_train(samples, 2, PAD, bucket=4)
    batch = {k: jnp.asarray(v) for k, v in b.arrays.items()}
    kw = dict(config=mc, latent_start=b.latent_start, num_latent=b.num_latent)
    # jitted: called eagerly, the scans compile one program per primitive (~560 compiles, ~50 s)
    loss_fn = jax.jit(lambda p, bt: coconut_loss(p, bt, **kw))
    loss, aux = loss_fn(params, batch)
    plain = {k: v for k, v in batch.items() if k != "label_sets"}
    tok_loss, tok_aux = loss_fn(params, plain)
    assert int(aux["n_tokens"]) == int(tok_aux["n_tokens"]) + 4  # two sets per row
    lg = jax.jit(lambda p, bt: coconut_forward(p, bt["input_ids"], bt["attention_mask"], bt["latent_mask"],
                                               bt["position_ids"], **kw).logits)(params, batch)
    s_sum, s_n, _ = set_cross_entropy(lg, batch["label_sets"])
    want = (float(tok_loss) * int(tok_aux["n_tokens"]) + float(s_sum)) / (int(tok_aux["n_tokens"]) + int(s_n))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # the gradient reaches the thoughts' inputs: set labels alone give a non-zero gradient
    only_sets = {**batch, "labels": jnp.full_like(batch["labels"], -100)}
    g = jax.jit(jax.grad(lambda p: loss_fn(p, only_sets)[0]))(params)
    assert float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(g))) > 0


def graph_example(idx=0):
    # edges 30->31, 30->32, 31->33, 32->33, 40->41; question "... [R] 30" ([R] = 9)
    edges = ((30, 31), (30, 32), (31, 33), (32, 33), (40, 41))
    q = (BOS, 30, 31, 30, 32, 31, 33, 32, 33, 40, 41, 8, 33, 41, 9, 30)
    return C.TokenizedExample(question_ids=q, step_ids=((31,), (33,)), answer_ids=(A, 33, EOS), idx=idx,
                              answer_lead=1, frontier_ids=((31, 32), (33,)), reach_ids=((31, 32), (33,)),
                              edge_ids=edges)


def test_walks_label_every_step_with_the_current_nodes_children():
    ex = graph_example()
    cc = C.CurriculumConfig(mode="walks", walk_tokens=12)
    kids = {30: (31, 32), 31: (33,), 32: (33,), 40: (41,)}
    for epoch in range(6):
        s = C.train_sample(ex, epoch, cc, IDS)
        seq = list(s.input_ids)
        assert seq[: len(ex.question_ids)] == list(ex.question_ids) and len(seq) <= len(ex.question_ids) + 12
        assert set(s.labels) == {-100} and s.n_latent == 0
        sets = dict(s.label_sets)
        assert sets[len(ex.question_ids)] == (31, 32)  # the first walk starts at the root
        for pos in range(len(ex.question_ids), len(seq)):
            prev = seq[pos - 1]
            if prev == 9:  # a new walk starts at a node with children, unlabelled
                assert pos not in sets and seq[pos] in kids
            elif prev in kids:  # after a node with children: its children's set, and the token is one of them
                assert sets[pos] == kids[prev] and seq[pos] in kids[prev]
            else:  # after a leaf: "[R]", unlabelled
                assert pos not in sets and seq[pos] == 9
    walks = {C.train_sample(ex, e, cc, IDS).input_ids for e in range(10)}
    assert len(walks) > 1  # drawn per epoch
    assert C.train_sample(ex, 3, cc, IDS) == C.train_sample(ex, 3, cc, IDS)
    with pytest.raises(ValueError, match="graph edges"):
        C.walk_sample(example(), 0, cc)

