"""Frontier supervision (the superposition recipe): sequence layouts per stage, and the scan
forward and cached generation equal to the original multi-pass algorithm on such batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.data.pipeline import collate_eval, collate_train
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent import curriculum as C
from latent_jax.latent.coconut import coconut_generate, coconut_loss, masked_cross_entropy, naive_coconut_logits, naive_generate_one
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params

PAD, BOS, EOS, START, END, LAT, A = 0, 1, 2, 3, 4, 5, 6
IDS = C.LatentTokenIds(START, END, LAT)


def example(idx=0, q=(BOS, 10, 11, 12), path=(20, 21, 22), frontier=((20, 23), (21,), (22,))):
    return C.TokenizedExample(
        question_ids=tuple(q), step_ids=tuple((p,) for p in path), answer_ids=(A, path[-1], EOS), idx=idx,
        answer_lead=1, frontier_ids=tuple(frontier))


def cfg(**kw):
    base = dict(mode="coconut", supervision="frontier", latent_markers=False, max_latent_stage=3, c_thought=1)
    return C.CurriculumConfig(**{**base, **kw})


def test_stage_layouts_name_the_next_frontier_then_the_answer():
    ex, cc = example(), cfg()
    q = list(ex.question_ids)
    for choice, want in ((0, 20), (1, 23)):
        s = C.build_sample(ex, 0, cc, IDS, choice)
        assert list(s.input_ids) == q + [want] and s.anchor == 4 and s.n_latent == 0
        assert list(s.labels) == [-100] * 4 + [want]  # predicted at the root, one label
    s = C.build_sample(ex, 2, cc, IDS)
    assert list(s.input_ids) == q + [LAT, LAT, 22] and list(s.labels) == [-100] * 6 + [22]
    for stage in (3, 4, 9):  # every step dropped: the thoughts, "[A]" in the prompt, then the answer
        s = C.build_sample(ex, stage, cc, IDS)
        assert list(s.input_ids) == q + [LAT] * 3 + [A, 22, EOS]
        assert list(s.labels) == [-100] * 8 + [22, EOS]
    p = C.eval_prompt(ex, cc.final_stage, cc, IDS)
    assert list(p.input_ids) == q + [LAT] * 3 + [A] and p.anchor == 4 and p.n_latent == 3
    # padded to max_latent_stage thoughts, and markers when asked for
    s = C.build_sample(ex, 5, cfg(max_latent_stage=4, pad_latent_to_max=True), IDS)
    assert list(s.input_ids) == q + [LAT] * 4 + [A, 22, EOS]
    s = C.build_sample(ex, 1, cfg(latent_markers=True), IDS)
    assert list(s.input_ids) == q + [START, LAT, END, 21] and s.anchor == 5
    # steps supervision (the original) is unchanged by the new fields
    s = C.build_sample(ex, 1, cfg(supervision="steps", latent_markers=True), IDS)
    assert list(s.input_ids) == q + [START, LAT, END, 21, 22, A, 22, EOS]


def test_thought_labels_name_every_fed_back_state_with_its_depth():
    ex, cc = example(), cfg(thought_labels="frontier")
    q = list(ex.question_ids)
    s = C.build_sample(ex, 2, cc, IDS, choice=1)
    # slot i's label is read off the state fed into thought i (depth i), the last label names depth 3
    assert list(s.input_ids) == q + [LAT, LAT, 22]
    assert list(s.labels) == [-100] * 4 + [23, 21, 22]
    s = C.build_sample(ex, 3, cc, IDS, choice=0)
    assert list(s.labels) == [-100] * 4 + [20, 21, 22, -100, 22, EOS]  # "[A]" stays unlabelled
    assert list(C.build_sample(ex, 0, cc, IDS, 0).labels) == [-100] * 4 + [20]
    with pytest.raises(ValueError, match="thought_labels"):
        cfg(thought_labels="some")
    # with the original (steps) supervision: stage 0 is CoT, later stages label the thoughts and
    # teacher-force the remaining path
    st = cfg(supervision="steps", thought_labels="frontier")
    assert list(C.build_sample(ex, 0, st, IDS).labels) == [-100] * 4 + [20, 21, 22, A, 22, EOS]
    st_long = cfg(supervision="steps", thought_labels="frontier", epochs_per_stage=1, max_latent_stage=3)
    drawn = {C.train_sample(ex, e, st_long, IDS).labels[4] for e in range(3, 40)}  # stage 3: every hop a thought
    assert drawn == {20, 23}  # the depth-1 label is drawn per epoch, as under frontier supervision
    s = C.build_sample(ex, 2, st, IDS, choice=1)
    assert list(s.input_ids) == q + [LAT, LAT, 22, A, 22, EOS]
    assert list(s.labels) == [-100] * 4 + [23, 21, 22, A, 22, EOS]


def test_frontier_choice_is_drawn_per_epoch_and_modes_other_than_coconut_ignore_it():
    ex, cc = example(), cfg(epochs_per_stage=100)
    seen = {C.train_sample(ex, e, cc, IDS).input_ids[-1] for e in range(30)}
    assert seen == {20, 23}
    cot = C.build_sample(ex, 0, cfg(mode="cot", supervision="frontier"), IDS)
    assert list(cot.input_ids) == [BOS, 10, 11, 12, 20, 21, 22, A, 22, EOS]
    with pytest.raises(ValueError, match="frontier labels"):
        C.build_sample(C.TokenizedExample((BOS, 10), ((20,), (21,)), (A, 21, EOS), answer_lead=1), 0, cc, IDS)
    with pytest.raises(ValueError, match="supervision"):
        cfg(supervision="bfs")


def test_extract_answer_with_the_graph_delimiter():
    assert C.extract_answer("20 21 [A] 22", "[A]") == "22"
    assert C.extract_answer("22", "[A]") == "22"
    assert C.extract_answer("### 5", "#") == "5"


EXAMPLES = [
    example(0),
    example(1, q=(BOS, 13, 14), path=(24, 25), frontier=((24,), (25,))),
    example(2, q=(BOS, 15, 16, 17, 18, 19), path=(26, 27, 28, 29), frontier=((26, 27), (28,), (28,), (29,))),
    example(3, q=(BOS, 30, 31), path=(32,), frontier=((32,),)),
]


@pytest.fixture(scope="module")
def model():
    mc = tiny_config("llama", vocab_size=40, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, init_params(mc, 0))
    return mc, params


@pytest.mark.parametrize("stage,targets", [(1, "none"), (4, "frontier")])
def test_scan_equals_naive_on_frontier_batches(model, stage, targets):
    mc, params = model
    cc = cfg(max_latent_stage=4, thought_labels=targets)
    samples = [C.build_sample(e, stage, cc, IDS) for e in EXAMPLES]
    b = collate_train(samples, 4, PAD, bucket=4)
    assert b.num_latent == min(stage, 4)
    batch = {k: jnp.asarray(v) for k, v in b.arrays.items()}

    @jax.jit
    def both(p):
        ls, gs = jax.value_and_grad(lambda q: coconut_loss(q, batch, config=mc, latent_start=b.latent_start,
                                                           num_latent=b.num_latent)[0])(p)

        def naive(q):
            lg = naive_coconut_logits(q, batch["input_ids"], batch["attention_mask"], batch["latent_mask"],
                                      batch["position_ids"], config=mc, num_passes=b.num_latent)
            return masked_cross_entropy(lg, batch["labels"])[0]

        ln, gn = jax.value_and_grad(naive)(p)
        return ls, gs, ln, gn

    ls, gs, ln, gn = both(params)
    np.testing.assert_allclose(float(ls), float(ln), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(gs), jax.tree.leaves(gn)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_no_marker_generation_equals_the_uncached_reference(model):
    mc, params = model
    cc = cfg(max_latent_stage=4)
    prompts = [C.eval_prompt(e, cc.final_stage, cc, IDS) for e in EXAMPLES]
    eb = collate_eval(prompts, 4, PAD, bucket=4)
    assert eb.num_latent == 4 and all(p.input_ids[-1] == A for p in prompts)
    new = 4
    out = coconut_generate(params, jnp.asarray(eb.arrays["input_ids"]), jnp.asarray(eb.arrays["attention_mask"]),
                           jnp.asarray(eb.arrays["latent_mask"]), jax.random.PRNGKey(0), SamplingParams.make(0.0),
                           jnp.asarray([], jnp.int32), config=mc, latent_start=eb.latent_start,
                           num_latent=eb.num_latent, max_new_tokens=new)
    toks = np.asarray(out.tokens)
    for r, p in enumerate(prompts):
        ref = naive_generate_one(params, list(p.input_ids), LAT, config=mc, max_new_tokens=new)
        assert toks[r].tolist() == ref


def test_frontier_probe_on_hand_computed_values():
    from latent_jax.latent.probe import frontier_probe, probe_row

    graph = {"edges": [[0, 1], [0, 2], [1, 3], [2, 3], [2, 4], [3, 5], [4, 6], [7, 8], [7, 4]], "root": 0,
             "reach": [["1", "2"], ["3", "4"], ["5", "6"]], "frontier": [["1", "2"], ["3"], ["5"]]}
    t1 = [["1", 0.5], ["[A]", 0.2], ["7", 0.1], ["2", 0.1]]  # nodes ranked 1, 7, 2: one of the top two in reach
    t2 = [["4", 0.6], ["3", 0.3]]  # both in reach; the top one is off the shortest path
    v = probe_row([t1, t2], graph)
    assert v[0] == {"frontier_share": 0.5, "chance_share": 0.25, "top1_in_reach": 1.0, "top1_on_path": 1.0}
    assert v[1] == {"frontier_share": 1.0, "chance_share": 0.25, "top1_in_reach": 1.0, "top1_on_path": 0.0}
    agg = frontier_probe([([t1, t2], graph), ([t2], graph)])  # the second problem's first thought reads 4, 3
    assert [t["n"] for t in agg["by_thought"]] == [2, 1]
    assert agg["by_thought"][0]["frontier_share"] == pytest.approx(0.25)  # (0.5 + 0.0) / 2
    assert agg["by_thought"][0]["top1_on_path"] == pytest.approx(0.5)
