import json

import numpy as np
import pytest

from latent_jax.data import pipeline as P
from latent_jax.data import prosqa
from latent_jax.data import tokenizer as T
from latent_jax.data.coconut_json import DataError, load_coconut_json
from latent_jax.latent import curriculum as C

IDS = C.LatentTokenIds(start_id=3, end_id=4, latent_id=5)
PAD = 0


def _examples(n=37, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = tuple([1] + rng.integers(10, 60, int(rng.integers(2, 25))).tolist())
        steps = tuple(tuple(rng.integers(10, 60, int(rng.integers(1, 4))).tolist()) for _ in range(int(rng.integers(1, 5))))
        out.append(C.TokenizedExample(q, steps, (7, 8, 2), idx=i))
    return out


def _data(exs, cc, bs=8, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return P.CoconutTrainData(exs, cc, IDS, PAD, bs, **kw)


def _check_batch(b, by_idx, epoch, cc, bucket):
    a = b.arrays
    B, T = a["input_ids"].shape
    assert T % bucket == 0 and b.latent_start % bucket == 0
    assert a["input_ids"].dtype == np.int32 and a["labels"].dtype == np.int32 and a["latent_mask"].dtype == bool
    assert a["attention_mask"].dtype == np.int32 and a["position_ids"].dtype == np.int32
    np.testing.assert_array_equal(a["position_ids"], np.maximum(np.cumsum(a["attention_mask"], 1) - 1, 0))
    lat_cols = a["latent_mask"].any(0).nonzero()[0]
    assert b.num_latent == (0 if len(lat_cols) == 0 else lat_cols.max() - b.latent_start + 1)
    for r in range(B):
        m = a["attention_mask"][r].astype(bool)
        if b.example_idx[r] < 0:  # dummy row
            assert not m.any() and (a["labels"][r] == -100).all() and not a["latent_mask"][r].any()
            continue
        s = C.train_sample(by_idx[b.example_idx[r]], epoch, cc, IDS)
        assert a["input_ids"][r][m].tolist() == list(s.input_ids)
        assert a["labels"][r][m].tolist() == list(s.labels) and (a["labels"][r][~m] == -100).all()
        # first latent (or where it would be) at latent_start, latents contiguous from there
        first = m.argmax()
        assert first + s.anchor == b.latent_start
        lm = a["latent_mask"][r]
        assert lm.sum() == s.n_latent and lm[b.latent_start : b.latent_start + s.n_latent].all()
        assert (a["input_ids"][r][lm] == IDS.latent_id).all()
        assert (a["input_ids"][r][m & ~lm] != IDS.latent_id).all()
        assert m[first:].tolist() == [True] * len(s.input_ids) + [False] * (T - first - len(s.input_ids))


@pytest.mark.parametrize(
    "cc",
    [
        C.CurriculumConfig(epochs_per_stage=1, max_latent_stage=3, c_thought=2, uniform_prob=0.5),
        C.CurriculumConfig(mode="cot"),
        C.CurriculumConfig(mode="no_cot"),
        C.CurriculumConfig(ablation="no_thought", epochs_per_stage=1),
    ],
    ids=["coconut_mixed", "cot", "no_cot", "no_thought"],
)
def test_batches_follow_the_contract(cc):
    exs = _examples()
    by_idx = {e.idx: e for e in exs}
    d = _data(exs, cc, bs=8, drop_remainder=False, bucket=16)
    assert d.steps_per_epoch == 5
    for epoch in (0, 2):
        bs = list(d.iterator(epoch))
        assert len(bs) == 5
        seen = np.concatenate([b.example_idx for b in bs])
        assert sorted(seen[seen >= 0].tolist()) == list(range(37)) and (seen < 0).sum() == 3
        for b in bs:
            _check_batch(b, by_idx, epoch, cc, 16)
            assert b.feedback == cc.feedback
    if cc.mode == "coconut" and cc.ablation == "none":
        assert max(b.num_latent for b in bs) > 0
    else:
        assert all(b.num_latent == 0 for b in bs)


def test_shuffle_per_epoch_and_seed():
    exs, cc = _examples(), C.CurriculumConfig(mode="cot")

    def order(seed, epoch, shuffle=True):
        return np.concatenate([b.example_idx for b in _data(exs, cc, seed=seed, shuffle=shuffle).iterator(epoch)]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert order(0, 0, shuffle=False) == list(range(32))  # drop_remainder: 4 full batches


def test_few_shapes_with_buckets():
    exs, cc = _examples(200, seed=1), C.CurriculumConfig(epochs_per_stage=1, max_latent_stage=3)
    shapes = {(b.shape, b.latent_start, b.num_latent) for e in range(5) for b in _data(exs, cc, bs=16, bucket=16).iterator(e)}
    assert len(shapes) <= 12


def test_sharding_by_process():
    exs, cc = _examples(40), C.CurriculumConfig(epochs_per_stage=1, uniform_prob=0.3)
    whole = list(_data(exs, cc, bs=8).iterator(1))
    parts = [list(_data(exs, cc, bs=8, process_index=i, process_count=2).iterator(1)) for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 5
    for w, p0, p1 in zip(whole, *parts):
        assert p0.shape == p1.shape == (4, w.shape[1])
        assert p0.latent_start == p1.latent_start == w.latent_start and p0.num_latent == p1.num_latent == w.num_latent
        for k in w.arrays:
            np.testing.assert_array_equal(np.concatenate([p0.arrays[k], p1.arrays[k]]), w.arrays[k])
        assert not set(p0.example_idx) & set(p1.example_idx)
    with pytest.raises(ValueError, match="divisible by process_count"):
        _data(exs, cc, bs=7, process_index=0, process_count=2)


def test_resume_continues_with_the_exact_next_batch():
    exs, cc = _examples(), C.CurriculumConfig(epochs_per_stage=1, uniform_prob=0.4, seed=9)
    ref = list(_data(exs, cc, bs=4, seed=3).iterator(2))
    it = _data(exs, cc, bs=4, seed=3).iterator(2)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == 2 and state["next_index"] == 3
    resumed = list(_data(exs, cc, bs=4, seed=3).iterator(state=state))  # a fresh process
    assert len(resumed) == len(ref) - 3
    for a, b in zip(resumed, ref[3:]):
        assert (a.latent_start, a.num_latent) == (b.latent_start, b.num_latent)
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
        np.testing.assert_array_equal(a.example_idx, b.example_idx)
    with pytest.raises(ValueError, match="resume with the same data"):
        _data(exs, cc, bs=8, seed=3).iterator(state=state)


def test_never_trains_on_nothing():
    cc = C.CurriculumConfig()
    with pytest.raises(DataError, match="no examples"):
        _data([], cc)
    with pytest.raises(DataError, match="lower batch_size or set drop_remainder=False"):
        _data(_examples(5), cc, bs=8)
    assert _data(_examples(5), cc, bs=8, drop_remainder=False).steps_per_epoch == 1
    with pytest.raises(DataError, match="raise max_length"):
        P.filter_by_length(_examples(5), cc, max_length=4)
    kept = P.filter_by_length(_examples(50), cc, max_length=30)
    assert 0 < len(kept) < 50 and all(P.max_sequence_length(e, cc) <= 30 for e in kept)


def test_eval_batches():
    exs = _examples(11)
    cc = C.CurriculumConfig(max_latent_stage=3)
    exs = [C.TokenizedExample(e.question_ids, e.step_ids, e.answer_ids, e.idx, {"answer": f"a{e.idx}", "question": f"q{e.idx}"}) for e in exs]
    ev = P.CoconutEvalData(exs, cc, IDS, PAD, 4, bucket=8, process_index=0, process_count=1)
    bs = list(ev.batches(2))
    assert len(bs) == 3 and [b.num_real for b in bs] == [4, 4, 3]
    assert sum((b.answers for b in bs), []) == [f"a{i}" for i in range(11)] + [""]
    for b in bs:
        a = b.arrays
        assert set(a) == {"input_ids", "attention_mask", "latent_mask", "position_ids"}
        assert b.latent_start % 8 == 0 and a["input_ids"].shape[1] % 8 == 0
        for r in range(b.num_real):
            e = exs[b.example_idx[r]]
            p = C.eval_prompt(e, 2, cc, IDS)
            m = a["attention_mask"][r].astype(bool)
            assert a["input_ids"][r][m].tolist() == list(p.input_ids)
            assert m.argmax() + p.anchor == b.latent_start
            assert a["latent_mask"][r].sum() == p.n_latent == min(2, e.num_steps)
            assert a["input_ids"][r][b.latent_start - 1] == IDS.start_id
        assert not a["attention_mask"][b.num_real :].any()
    halves = [list(P.CoconutEvalData(exs, cc, IDS, PAD, 4, process_index=i, process_count=2).batches(2)) for i in range(2)]
    assert [b.example_idx.tolist() for b in halves[1]] == [bb.example_idx[2:].tolist() for bb in bs]


def test_end_to_end_with_generated_prosqa(tmp_path):
    paths = prosqa.write_prosqa(str(tmp_path), train=40, valid=8, test=0, seed=4)
    rows = load_coconut_json(paths["train"])
    tok = T.train_tokenizer(T.text_corpus(rows), str(tmp_path / "tok"), vocab_size=320)
    cc = C.CurriculumConfig(epochs_per_stage=1, max_latent_stage=4)
    exs = P.load_split(paths["train"], tok, cc)
    d = P.CoconutTrainData(exs, cc, tok.latent_ids, tok.pad_id, 8, process_index=0, process_count=1)
    b = next(d.iterator(2))  # stage 2
    r = 0
    row = rows[b.example_idx[r]]
    m = b.arrays["attention_mask"][r].astype(bool)
    text = tok.decode(b.arrays["input_ids"][r][m])
    assert text == T.BOS + C.render_text(row.question, row.steps, row.answer, 2, cc, eos=T.EOS)
    lab = b.arrays["labels"][r]
    assert tok.decode(lab[lab >= 0]) == "".join(s + "\n" for s in row.steps[2:]) + "### " + row.answer + T.EOS
    ev = P.CoconutEvalData(P.load_split(paths["valid"], tok, cc), cc, tok.latent_ids, tok.pad_id, 8, process_index=0, process_count=1)
    e = next(ev.batches(9))
    assert e.num_real == 8 and e.answers[0] == load_coconut_json(paths["valid"])[0].answer
    m = e.arrays["attention_mask"][0].astype(bool)
    assert tok.decode(e.arrays["input_ids"][0][m]).endswith("?\n" + C.START_LATENT + C.LATENT * e.arrays["latent_mask"][0].sum() + C.END_LATENT)
