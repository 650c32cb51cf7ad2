"""Rewards for reinforcement learning on answers, as pure functions.

Correctness comes from each task's own scorer, so a reward of 1 means exactly what the
task's evaluation counts as correct:

    prosqa_reward      Coconut / ProsQA exact match: the text after the last answer
                       delimiter ("#" text format, "[A]" graph tokens) equals the gold answer
                       (latent.curriculum.extract_answer, as the Coconut evaluation scores it)
    cinepile_reward    CinePile's official answer parsing (data.cinepile.score_response:
                       "official", the lmms-eval rules, or "lenient"); +1 correct, 0 otherwise,
                       as the Phi-4-MM CinePile RL seed
    aokvqa_mc_reward   A-OKVQA multiple choice (data.aokvqa.mc_correct; "official": the final
                       answer is exactly the correct choice's text, or "lenient")
    aokvqa_da_reward   A-OKVQA direct answer, min(1, exact matches / 3)
                       (data.aokvqa.direct_answer_accuracy, "official" or "lenient")

Strict format (`strict=True`, the default for rewards): a completion without its answer
delimiter ("###" for the text format and A-OKVQA, "[A]" for graph tokens) earns no
correctness reward, even when its whole text is the answer. The evaluations themselves read
such a completion as its whole text (the Coconut evaluation scores "6" as the answer 6), which
in RL is an easy reward hack; `strict=False` scores as the evaluation does.

Format rewards check only the shape of an answer: `delimiter_format_reward` (exactly one
answer delimiter followed by a non-empty answer) and `cinepile_format_reward` (the official
parser finds an option letter).

The length penalty (the Phi-4-MM seed's "Length Penalty for Reinforcement Learning"): no
penalty up to `threshold` generated tokens; past it, with x = length - threshold,

    linear       factor * x
    quadratic    factor * x ** 2
    exponential  exp(factor * x) - 1

(the three agree to first order for small factor * x: the exponential starts like the linear
one and grows without bound). `apply_length_penalty` subtracts it from the reward; with
`preserve_accuracy` the penalty only eats into the part of the reward that is not the
accuracy component (a format bonus, say), never below it: a correct answer keeps its
accuracy reward however long it is. With `correct_only` (the GRPO configs' default) only
correct answers pay, at most `max_fraction` (< 1) of their accuracy reward: a wrong answer
never gains by being short, and a correct answer of any length outranks every wrong one
(the seed's form takes from every answer; under group-normalised advantages it then teaches
"shorter" from groups where every answer is wrong, docs/rl.md). Seed defaults: threshold
1000 tokens, factor 0.001.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from latent_jax.data import aokvqa, cinepile
from latent_jax.latent.curriculum import extract_answer

PENALTY_SHAPES = ("linear", "quadratic", "exponential")
TASKS = ("prosqa", "cinepile", "aokvqa_mc", "aokvqa_da")


# ----------------------------------------------------------------------------- correctness
def has_delimiter(text: str, delimiter: str = "#") -> bool:
    """Whether `text` holds the answer delimiter: "###" for the text format ("#", which writes
    "### answer"), else `delimiter` itself ("[A]" for graph tokens)."""
    return ("###" if delimiter == "#" else delimiter) in text


def prosqa_reward(text: str, answer: str, delimiter: str = "#", strict: bool = True) -> float:
    """1.0 when the answer extracted after the last `delimiter` equals `answer` (commas removed,
    stripped, as the Coconut evaluation), else 0.0; with `strict`, 0.0 for a text without the
    delimiter (the evaluation would read its whole text as the answer)."""
    if strict and not has_delimiter(text, delimiter):
        return 0.0
    gold = str(answer).replace(",", "").strip()
    return float(extract_answer(text, delimiter) == gold)


def cinepile_reward(text: str, row: dict, scorer: str = "official") -> float:
    """1.0 when the response answers the CinePile row correctly under `scorer` ("official" or
    "lenient"), else 0.0. `row` holds answer_key_position and answer_key."""
    return float(cinepile.score_response(text, int(row["answer_key_position"]), str(row.get("answer_key", "")), scorer))


def aokvqa_mc_reward(text: str, row: dict, scorer: str = "official", strict: bool = True) -> float:
    """1.0 when the response (its part after the last "###", as the A-OKVQA evaluation reads it)
    answers the row under `scorer` ("official": exactly the correct choice's text), else 0.0;
    with `strict`, 0.0 for a response without "###"."""
    if strict and aokvqa.ANSWER_DELIMITER not in text:
        return 0.0
    return float(aokvqa.mc_correct(aokvqa.final_answer(text), row, scorer))


def aokvqa_da_reward(text: str, row: dict, scorer: str = "official", strict: bool = True) -> float:
    """A-OKVQA direct-answer accuracy of the response under `scorer`: min(1, matching direct
    answers / 3), exact strings for "official"; with `strict`, 0.0 for a response without "###"."""
    if strict and aokvqa.ANSWER_DELIMITER not in text:
        return 0.0
    return float(aokvqa.direct_answer_accuracy(aokvqa.final_answer(text), row, scorer))


def aokvqa_choice_format_reward(text: str, row: dict, scorer: str = "official") -> float:
    """1.0 when the final answer is one of the row's choices (official: its exact text;
    lenient: aokvqa.predicted_choice finds one), else 0.0."""
    ans = aokvqa.final_answer(text)
    if aokvqa.check_scorer(scorer) == "official":
        return float(ans.strip() in row["choices"])
    return float(aokvqa.predicted_choice(ans, row["choices"]) is not None)


# ----------------------------------------------------------------------------- format
def delimiter_format_reward(text: str, delimiter: str = "#") -> float:
    """1.0 when `text` holds exactly one answer delimiter and a non-empty answer after it
    (e.g. "3 5 [A] 5" for graph tokens, "... ### 7" for text), else 0.0."""
    if delimiter == "#":  # the text format writes "### "; count the marker, not each '#'
        parts = text.split("###")
    else:
        parts = text.split(delimiter)
    return float(len(parts) == 2 and parts[1].replace(",", "").strip() != "")


def cinepile_format_reward(text: str) -> float:
    """1.0 when CinePile's official parser finds an option letter in the response, else 0.0."""
    return float(cinepile.parse_official(text)[0] is not None)


# ----------------------------------------------------------------------------- length penalty
def check_shape(shape: str, key: str = "rl.length_penalty.shape") -> str:
    if shape not in PENALTY_SHAPES:
        raise ValueError(f"config.{key}={shape!r}; use one of {', '.join(PENALTY_SHAPES)}")
    return shape


def length_penalty(length, threshold: float = 1000, factor: float = 0.001, shape: str = "quadratic"):
    """The penalty (>= 0) for `length` generated tokens (a number or an array): 0 up to
    `threshold`, then linear / quadratic / exponential in the excess (module docstring)."""
    check_shape(shape)
    if factor < 0:
        raise ValueError(f"length penalty factor={factor}; use a factor >= 0 (0 turns the penalty off)")
    x = np.maximum(np.asarray(length, np.float64) - float(threshold), 0.0)
    if shape == "linear":
        p = factor * x
    elif shape == "quadratic":
        p = factor * x * x
    else:
        with np.errstate(over="ignore"):  # a huge excess is an infinite penalty, not a warning
            p = np.expm1(factor * x)
    return float(p) if np.ndim(p) == 0 else p


def apply_length_penalty(reward, length, accuracy=None, threshold: float = 1000, factor: float = 0.001,
                         shape: str = "quadratic", preserve_accuracy: bool = False, correct_only: bool = False,
                         max_fraction: float = 0.5):
    """`reward` minus the length penalty of `length`. Numbers or arrays of one shape.

    preserve_accuracy: `accuracy` (the correctness part of `reward`) is kept intact: the
    penalty is taken only from the positive rest, reward - accuracy, and never past it.
    correct_only: only correct answers pay, and at most `max_fraction` (< 1) of their accuracy
    reward: penalty = min(penalty, max_fraction) * accuracy, so a wrong answer's length costs
    nothing and a correct answer of any length earns more than every wrong one."""
    pen = np.asarray(length_penalty(length, threshold, factor, shape), np.float64)
    r = np.asarray(reward, np.float64)
    if (preserve_accuracy or correct_only) and accuracy is None:
        raise ValueError("preserve_accuracy / correct_only need the accuracy component of the reward; pass accuracy=")
    if correct_only:
        if not 0.0 <= max_fraction < 1.0:
            raise ValueError(f"length penalty max_fraction={max_fraction}; use 0 <= max_fraction < 1 (a correct "
                             "answer must keep more than a wrong one)")
        pen = np.minimum(pen, max_fraction) * np.clip(np.asarray(accuracy, np.float64), 0.0, 1.0)
    if preserve_accuracy:
        rest = r - np.asarray(accuracy, np.float64)
        out = r - np.minimum(pen, np.maximum(rest, 0.0))
    else:
        out = r - pen
    return float(out) if np.ndim(out) == 0 else out


# ----------------------------------------------------------------------------- combined
def answer_rewards(texts: Sequence[str], refs: Sequence, lengths: Sequence[int], *, task: str = "prosqa",
                   delimiter: str = "#", scorer: str = "official", format_weight: float = 0.0,
                   penalty: dict | None = None, strict: bool = True) -> dict[str, np.ndarray]:
    """Rewards of a batch of completions: {"reward", "accuracy", "format", "penalty"}, each (N,).

    reward = accuracy + format_weight * format - length penalty. `refs` are the gold answers
    (task "prosqa") or the data rows (cinepile, aokvqa_mc, aokvqa_da). `penalty`: None (off) or
    {threshold, factor, shape, preserve_accuracy, correct_only, max_fraction}. `strict` (prosqa, aokvqa_*): no correctness
    reward without the answer delimiter (the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"config.rl.task={task!r}; use one of {', '.join(TASKS)}")
    if not (len(texts) == len(refs) == len(lengths)):
        raise ValueError(f"{len(texts)} texts, {len(refs)} references and {len(lengths)} lengths; pass one of each per completion")
    if task == "prosqa":
        acc = [prosqa_reward(t, a, delimiter, strict) for t, a in zip(texts, refs)]
        fmt = [delimiter_format_reward(t, delimiter) for t in texts]
    elif task == "cinepile":
        acc = [cinepile_reward(t, r, scorer) for t, r in zip(texts, refs)]
        fmt = [cinepile_format_reward(t) for t in texts]
    elif task == "aokvqa_mc":
        acc = [aokvqa_mc_reward(t, r, scorer, strict) for t, r in zip(texts, refs)]
        fmt = [aokvqa_choice_format_reward(t, r, scorer) for t, r in zip(texts, refs)]
    else:
        acc = [aokvqa_da_reward(t, r, scorer, strict) for t, r in zip(texts, refs)]
        fmt = [float(t.strip() != "") for t in texts]
    acc_a, fmt_a = np.asarray(acc, np.float64), np.asarray(fmt, np.float64)
    base = acc_a + float(format_weight) * fmt_a
    lens = np.asarray(lengths, np.float64)
    if penalty:
        pen_kw = dict(threshold=float(penalty.get("threshold", 1000)), factor=float(penalty.get("factor", 0.001)),
                      shape=str(penalty.get("shape", "quadratic")),
                      preserve_accuracy=bool(penalty.get("preserve_accuracy", False)),
                      correct_only=bool(penalty.get("correct_only", False)),
                      max_fraction=float(penalty.get("max_fraction", 0.5)))
        reward = apply_length_penalty(base, lens, acc_a, **pen_kw)
        pen = base - reward
    else:
        reward, pen = base, np.zeros_like(base)
    return {"reward": np.asarray(reward, np.float64), "accuracy": acc_a, "format": fmt_a, "penalty": np.asarray(pen)}

