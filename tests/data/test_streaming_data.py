"""Stop / noise mix builder, chat templates and the synthetic stream task."""

import random

import pytest

from latent_jax.data.streaming import (
    CHAT_TEMPLATES,
    NOISE_PHRASES,
    STOP_PHRASES,
    make_stop,
    mix_stop_noise,
    render,
    replies,
    synthetic_streams,
    template_for,
    tokenize,
)

QA = {"messages": [{"role": "user", "content": "<video>\nwhat happens in the clip?"},
                   {"role": "assistant", "content": "a man cuts an onion with a knife"}], "video": "clip.mp4"}


def test_mix_counts_kinds_and_keeps_media():
    mixed = mix_stop_noise([QA] * 5, n_stop=7, n_noise=3, seed=1)
    kinds = [s["kind"] for s in mixed]
    assert kinds.count("original") == 5 and kinds.count("stop") == 7 and kinds.count("noise") == 3
    assert all(s["video"] == "clip.mp4" for s in mixed)
    # the same seed gives the same mix
    assert mixed == mix_stop_noise([QA] * 5, n_stop=7, n_noise=3, seed=1)


def test_stop_sample_cuts_an_answer_then_interrupts_with_an_empty_reply():
    s = make_stop(QA, random.Random(0))
    cut, user, reply = s["messages"][-3:]
    full = QA["messages"][1]["content"].split()
    assert cut["interrupted"] and 1 <= len(cut["content"].split()) < len(full)
    assert full[: len(cut["content"].split())] == cut["content"].split()
    assert user["content"] in STOP_PHRASES and reply == {"role": "assistant", "content": "", "kind": "stop"}
    # a one-word answer cannot be interrupted
    assert make_stop({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}]},
                     random.Random(0)) is None


def test_noise_sample_inserts_a_statement_with_an_empty_reply_before_the_question():
    s = mix_stop_noise([QA], 0, 1, seed=0)
    noise = [x for x in s if x["kind"] == "noise"][0]["messages"]
    assert noise[0]["content"] in NOISE_PHRASES and noise[1]["content"] == ""
    assert noise[2:] == QA["messages"]


def test_chatml_render_targets_and_empty_reply():
    t = template_for("internvl")
    assert t is CHAT_TEMPLATES["chatml"] and template_for("qwen2") is t
    s = make_stop(QA, random.Random(0))
    text = "".join(x for x, _ in render(s["messages"], t))
    # the interrupted answer has no end token; the reply to the interruption is the end token alone
    assert text.endswith("<|im_start|>assistant\n<|im_end|>\n")
    assert text.count("<|im_end|>") == 3
    targets = "".join(x for x, y in render(s["messages"], t) if y)
    assert targets == "<|im_end|>"
    phi = "".join(x for x, _ in render(QA["messages"], template_for("phi4mm")))
    assert phi == "<|user|><video>\nwhat happens in the clip?<|end|><|assistant|>a man cuts an onion with a knife <|end|>"
    with pytest.raises(ValueError, match="chat template"):
        template_for("gpt2")


def test_tokenize_marks_reply_tokens():
    ids, tgt = tokenize([("ab", False), ("c", True)], lambda s: [ord(ch) for ch in s])
    assert ids == [97, 98, 99] and tgt == [0, 0, 1]


def test_synthetic_streams_answers_follow_the_frames():
    for s in synthetic_streams(20, seed=3):
        seen = []
        for i, m in enumerate(s["messages"]):
            if m["role"] == "frames":
                seen += m["content"].split()[1::2]
            if m["role"] == "assistant":
                q = s["messages"][i - 1]["content"]
                want = seen[-3:] if "three" in q else seen[-1:]
                assert m["content"].split() == want
        assert len(list(replies(s))) == 3


def test_bad_counts_and_empty_sets_fail_on_one_line():
    with pytest.raises(ValueError, match=">= 0"):
        mix_stop_noise([QA], -1, 0)
    with pytest.raises(ValueError, match="empty instruction set"):
        mix_stop_noise([], 1, 0)
    short = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}]}
    with pytest.raises(ValueError, match="two or more words"):
        mix_stop_noise([short], 1, 0)
