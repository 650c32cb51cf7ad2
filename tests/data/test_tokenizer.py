import json
import re
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.data import tokenizer as T
from latent_jax.data.prosqa import generate_splits
from latent_jax.data.coconut_json import CoconutExample
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import Decoder, init_params


@pytest.fixture(scope="module")
def rows():
    return generate_splits({"train": 150}, seed=1)["train"]


@pytest.fixture(scope="module")
def trained(rows, tmp_path_factory):
    exs = [CoconutExample(r["question"], tuple(r["steps"]), r["answer"]) for r in rows]
    out = str(tmp_path_factory.mktemp("tok"))
    tok = T.train_tokenizer(T.text_corpus(exs), out, vocab_size=400)
    return tok, out


def test_trained_tokenizer_is_hf_loadable_and_exact(trained, rows):
    tok, out = trained
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    cfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == (T.BOS, T.EOS, T.PAD)
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out)
    again = T.load_tokenizer(out)
    r = rows[0]
    text = r["question"] + "\n"
    ids = tok.encode(text, add_special_tokens=True)
    assert ids[0] == tok.bos_id and ids[1:] == tok.encode(text)
    assert hf(text)["input_ids"] == ids == again.encode(text, add_special_tokens=True)
    assert again.encode_batch([text, "x"], True) == [ids, again.encode("x", True)]
    assert tok.decode(tok.encode(text)) == text  # byte-level: exact round trip
    assert tok.eos_id != tok.pad_id and tok.vocab_size <= 400
    # the original Coconut's check: pieces tokenized separately == the whole text
    full = r["question"] + "\n" + "\n".join(r["steps"]) + "\n### " + r["answer"]
    parts = tok.encode(r["question"] + "\n", True) + sum((tok.encode(s + "\n") for s in r["steps"]), [])
    parts += tok.encode("### " + r["answer"])
    assert parts == tok.encode(full, True)
    # special tokens are single ids and survive decoding
    lid = again.latent_ids
    assert lid is not None and len(set(lid)) == 3
    assert tok.encode(T.LATENT) == [lid.latent_id]
    s = "Q\n" + T.START_LATENT + T.LATENT * 2 + T.END_LATENT + "A"
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s), skip_special_tokens=True) == "Q\nA"


def test_add_coconut_tokens(rows, tmp_path):
    tok = T.train_tokenizer([r["question"] for r in rows], vocab_size=300, add_latent_tokens=False)
    assert tok.latent_ids is None
    n = tok.vocab_size
    ids = T.add_coconut_tokens(tok)
    assert sorted(ids) == [n, n + 1, n + 2] and tok.vocab_size == n + 3
    assert T.add_coconut_tokens(tok) == ids  # idempotent
    assert tok.encode("a" + T.END_LATENT)[-1] == ids.end_id
    tok.save(str(tmp_path))
    assert T.load_tokenizer(str(tmp_path)).latent_ids == ids
    init = T.coconut_init_token_id(tok)
    assert init is None or tok.encode("<<") == [init]


def test_load_errors(tmp_path):
    with pytest.raises(T.TokenizerError, match="no tokenizer files"):
        T.load_tokenizer(str(tmp_path))
    with pytest.raises(T.TokenizerError, match="no such tokenizer directory"):
        T.load_tokenizer(str(tmp_path / "nope"))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_resize_embeddings(family):
    tie = family == "qwen2"
    cfg = tiny_config(family, vocab_size=40, tie_word_embeddings=tie, num_hidden_layers=1, hidden_size=32, intermediate_size=32)
    params = init_params(cfg, 0)
    old_e = np.asarray(params["embed_tokens"]["embedding"])
    p2, cfg2 = T.resize_embeddings(params, cfg, 43, init_from_token_id=7)
    assert cfg2.vocab_size == 43 and cfg.vocab_size == 40
    e = np.asarray(p2["embed_tokens"]["embedding"])
    assert e.shape == (43, cfg.hidden_size)
    np.testing.assert_array_equal(e[:40], old_e)
    np.testing.assert_array_equal(e[40:], np.repeat(old_e[7:8], 3, 0))
    assert np.asarray(params["embed_tokens"]["embedding"]).shape == (40, cfg.hidden_size)  # input untouched
    if not tie:
        h = np.asarray(p2["lm_head"]["kernel"])
        old_h = np.asarray(params["lm_head"]["kernel"])
        assert h.shape == (cfg.hidden_size, 43)
        np.testing.assert_array_equal(h[:, :40], old_h)
        np.testing.assert_array_equal(h[:, 40:], np.repeat(old_h[:, 7:8], 3, 1))
    else:
        assert "lm_head" not in p2
    # the grown model runs and scores a new token like the token it was copied from
    logits = jax.jit(lambda p, x: Decoder(cfg2).apply({"params": p}, input_ids=x).logits)(p2, jnp.array([[1, 5, 41]]))
    assert logits.shape == (1, 3, 43)
    np.testing.assert_allclose(logits[..., 41], logits[..., 7], rtol=1e-5, atol=1e-5)
    # mean-row default, optional noise, re-initialising ids inside the old vocabulary
    p3, _ = T.resize_embeddings(params, cfg, 42, reinit_ids=[39])
    e3 = np.asarray(p3["embed_tokens"]["embedding"])
    np.testing.assert_allclose(e3[39], old_e.mean(0), rtol=1e-6)
    np.testing.assert_allclose(e3[41], old_e.mean(0), rtol=1e-6)
    p4, _ = T.resize_embeddings(params, cfg, 42, rng=jax.random.PRNGKey(0))
    e4 = np.asarray(p4["embed_tokens"]["embedding"])
    assert not np.allclose(e4[40], e4[41]) and np.abs(e4[40] - old_e.mean(0)).max() < 0.2
    with pytest.raises(ValueError, match="smaller"):
        T.resize_embeddings(params, cfg, 30)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        T.resize_embeddings(params, cfg, 42, init_from_token_id=99)


def test_word_level_tokenizer(rows, tmp_path):
    exs = [CoconutExample(r["question"], tuple(r["steps"]), r["answer"]) for r in rows]
    tok = T.train_tokenizer(T.text_corpus(exs), str(tmp_path), kind="word")
    again = T.load_tokenizer(str(tmp_path))
    r = rows[0]
    full = r["question"] + "\n" + "\n".join(r["steps"]) + "\n### " + r["answer"]
    ids = again.encode(full, True)
    assert ids == tok.encode(full, True) and ids[0] == tok.bos_id
    assert again.decode(ids[1:]) == full  # exact round trip
    # every word (with its leading space) and punctuation run is one id
    assert len(ids) == 1 + len(re.findall(r" ?[A-Za-z]+| ?[^\sA-Za-z]+|\n", full))
    parts = tok.encode(r["question"] + "\n", True) + sum((tok.encode(s + "\n") for s in r["steps"]), [])
    assert parts + tok.encode("### " + r["answer"]) == ids
    words = T_words(rows)
    assert len(tok.encode(" " + " ".join(words))) == len(words)
    assert again.latent_ids is not None and tok.encode(T.LATENT) == [again.latent_ids.latent_id]
    unk = tok.hf.unk_token_id
    assert unk is not None and tok.encode(" zzzqq") == [unk]
    assert T.coconut_init_token_id(tok) is None  # "<<" is unknown: new rows use the mean row
    with pytest.raises(T.TokenizerError, match="use one of bpe, word"):
        T.train_tokenizer(["a"], kind="chars")


def T_words(rows):
    """The distinct concept words used in `rows`."""
    return sorted({w for r in rows for w in r["idx_to_symbol"][1:]})
