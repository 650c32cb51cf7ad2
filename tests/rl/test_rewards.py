"""Rewards and the length penalty on hand-computed values."""

import math

import numpy as np
import pytest

from latent_jax.rl import rewards as R


@pytest.mark.parametrize("length", [0, 500, 999, 1000])
@pytest.mark.parametrize("shape", R.PENALTY_SHAPES)
def test_no_penalty_up_to_threshold(shape, length):
    assert R.length_penalty(length, 1000, 0.001, shape) == 0.0
    assert R.apply_length_penalty(1.0, length, 1.0, shape=shape) == 1.0


def test_penalty_shapes_above_threshold():
    # seed defaults: threshold 1000, factor 0.001; 1500 tokens = 500 past the threshold
    assert R.length_penalty(1500, 1000, 0.001, "linear") == pytest.approx(0.5)
    assert R.length_penalty(1500, 1000, 0.001, "quadratic") == pytest.approx(250.0)
    assert R.length_penalty(1500, 1000, 0.001, "exponential") == pytest.approx(math.e ** 0.5 - 1)
    assert R.length_penalty(15, 10, 0.01, "quadratic") == pytest.approx(0.25)
    assert R.length_penalty(20, 10, 0.1, "exponential") == pytest.approx(1.718281828459045)
    arr = R.length_penalty(np.array([5, 12, 14]), 10, 0.5, "linear")
    np.testing.assert_allclose(arr, [0.0, 1.0, 2.0])


def test_apply_length_penalty_with_and_without_preserving_accuracy():
    # reward 1.5 = accuracy 1 + format bonus 0.5; 15 tokens, threshold 10, quadratic 0.01 -> 0.25
    assert R.apply_length_penalty(1.5, 15, 1.0, 10, 0.01, "quadratic") == pytest.approx(1.25)
    assert R.apply_length_penalty(1.5, 15, 1.0, 10, 0.01, "quadratic", preserve_accuracy=True) == pytest.approx(1.25)
    # 20 tokens -> penalty 1.0: without preservation it eats the accuracy too, with it only the bonus
    assert R.apply_length_penalty(1.5, 20, 1.0, 10, 0.01, "quadratic") == pytest.approx(0.5)
    assert R.apply_length_penalty(1.5, 20, 1.0, 10, 0.01, "quadratic", preserve_accuracy=True) == pytest.approx(1.0)
    # a pure correctness reward is never cut when accuracy is preserved
    assert R.apply_length_penalty(1.0, 200, 1.0, 10, 0.01, "exponential", preserve_accuracy=True) == 1.0
    assert R.apply_length_penalty(0.0, 11, 0.0, 10, 0.1, "linear") == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="accuracy="):
        R.apply_length_penalty(1.0, 20, None, 10, 0.01, preserve_accuracy=True)
    with pytest.raises(ValueError, match="linear, quadratic, exponential"):
        R.length_penalty(20, 10, 0.01, "cubic")


def test_prosqa_and_format_rewards():
    assert R.prosqa_reward("3 5 [A] 5", "5", "[A]") == 1.0
    assert R.prosqa_reward("3 5 [A] 4", "5", "[A]") == 0.0
    assert R.prosqa_reward("step one\n### 1,000", "1000", "#") == 1.0
    assert R.delimiter_format_reward("3 5 [A] 5", "[A]") == 1.0
    assert R.delimiter_format_reward("3 5", "[A]") == 0.0
    assert R.delimiter_format_reward("[A] 5 [A] 3", "[A]") == 0.0
    assert R.delimiter_format_reward("3 [A] ", "[A]") == 0.0
    assert R.delimiter_format_reward("a\n### 7", "#") == 1.0


def test_undelimited_answers_earn_no_correctness_reward():
    """Strict format by default: "5" alone is the right answer as the Coconut evaluation reads
    it, but without "[A]" / "###" it earns nothing (a reward hack otherwise)."""
    assert R.prosqa_reward("5", "5", "[A]") == 0.0 and R.prosqa_reward("3 5", "5", "[A]") == 0.0
    assert R.prosqa_reward("5", "5", "[A]", strict=False) == 1.0  # the evaluation's own reading
    assert R.prosqa_reward("1,000", "1000", "#") == 0.0 and R.prosqa_reward("# 7", "7", "#") == 0.0
    assert R.prosqa_reward("x\n### 7", "7", "#") == 1.0
    out = R.answer_rewards(["5", "3 [A] 5", "3 5"], ["5"] * 3, [1, 3, 2], task="prosqa", delimiter="[A]")
    np.testing.assert_allclose(out["accuracy"], [0, 1, 0])
    np.testing.assert_allclose(out["reward"], [0, 1, 0])
    lenient = R.answer_rewards(["5", "3 [A] 5", "3 5"], ["5"] * 3, [1, 3, 2], task="prosqa", delimiter="[A]",
                               strict=False)
    np.testing.assert_allclose(lenient["accuracy"], [1, 1, 0])
    row = {"choices": ["cat", "dog", "bird", "fish"], "correct_choice_idx": 1, "direct_answers": ["dog"] * 10}
    for task in ("aokvqa_mc", "aokvqa_da"):
        out = R.answer_rewards(["dog", "It barks.\n### dog"], [row] * 2, [1, 4], task=task)
        np.testing.assert_allclose(out["accuracy"], [0, 1], err_msg=task)


def test_grpo_rewards_are_strict_and_heldout_reads_as_the_evaluation():
    """rl.strict_format defaults to True in the GRPO settings."""
    from configs.prosqa_grpo import get_config
    from latent_jax.tasks.grpo import rl_settings

    c = get_config("smoke")
    assert rl_settings(c)["strict_format"] is True
    c.rl.strict_format = False
    assert rl_settings(c)["strict_format"] is False


def test_cinepile_rewards_follow_the_official_parser():
    row = {"answer_key_position": 1, "answer_key": "The man"}
    assert R.cinepile_reward("Answer: B) The man", row) == 1.0
    assert R.cinepile_reward("B", row) == 1.0
    assert R.cinepile_reward("Answer: A) The man", row) == 0.0
    assert R.cinepile_reward("Answer: B) the woman", row) == 0.0
    # "the man." is not "The man" officially, but is under the lenient scorer
    assert R.cinepile_reward("Answer: B) the man.", row) == 0.0
    assert R.cinepile_reward("Answer: B) the man.", row, "lenient") == 1.0
    assert R.cinepile_format_reward("Answer: C) x") == 1.0
    assert R.cinepile_format_reward("I think so") == 0.0


def test_aokvqa_rewards():
    row = {"choices": ["cat", "dog", "bird", "fish"], "correct_choice_idx": 1,
           "direct_answers": ["dog"] * 2 + ["puppy"] * 8}
    assert R.aokvqa_mc_reward("### dog", row) == 1.0
    assert R.aokvqa_mc_reward("### B", row) == 0.0  # official: only the choice's exact text
    assert R.aokvqa_mc_reward("### B", row, "lenient") == 1.0
    assert R.aokvqa_mc_reward("### cat", row) == 0.0
    assert R.aokvqa_mc_reward("the cat sat on the mat\n### dog", row) == 1.0  # the answer after "###"
    assert R.aokvqa_mc_reward("dog", row) == 0.0 and R.aokvqa_mc_reward("dog", row, strict=False) == 1.0
    assert R.aokvqa_da_reward("### dog", row) == pytest.approx(2 / 3)
    assert R.aokvqa_da_reward("### puppy", row) == 1.0
    assert R.aokvqa_da_reward("### Puppy.", row) == 0.0 and R.aokvqa_da_reward("### Puppy.", row, "lenient") == 1.0
    out = R.answer_rewards(["### dog", "### Dog", "### B"], [row] * 3, [2, 2, 2], task="aokvqa_mc")
    np.testing.assert_allclose(out["accuracy"], [1, 0, 0])
    np.testing.assert_allclose(out["format"], [1, 0, 0])  # official: the final answer is a choice's text


def test_answer_rewards_combines_accuracy_format_and_penalty():
    out = R.answer_rewards(["1 [A] 5", "1 2 3 [A] 4", "9 9"], ["5", "4", "5"], [3, 6, 2], task="prosqa",
                           delimiter="[A]", format_weight=0.5,
                           penalty={"threshold": 3, "factor": 0.1, "shape": "linear", "preserve_accuracy": False})
    np.testing.assert_allclose(out["accuracy"], [1, 1, 0])
    np.testing.assert_allclose(out["format"], [1, 1, 0])
    np.testing.assert_allclose(out["penalty"], [0, 0.3, 0])
    np.testing.assert_allclose(out["reward"], [1.5, 1.2, 0.0])
    with pytest.raises(ValueError, match="rl.task"):
        R.answer_rewards(["x"], ["y"], [1], task="gsm")


def test_correct_only_penalty_keeps_every_correct_answer_above_every_wrong_one():
    # 0.2 per token past 4, linear: correct answers pay it up to max_fraction 0.5, wrong ones nothing
    acc = np.array([1, 1, 1, 1, 0, 0, 0.5])
    lens = np.array([4, 5, 6, 40, 5, 40, 6])
    out = R.apply_length_penalty(acc, lens, acc, 4, 0.2, "linear", correct_only=True, max_fraction=0.5)
    np.testing.assert_allclose(out, [1.0, 0.8, 0.6, 0.5, 0.0, 0.0, 0.3])  # partial credit pays in proportion
    # the seed's form takes from every answer: a long correct answer drops below a short wrong one
    seed = R.apply_length_penalty(acc, lens, acc, 4, 0.2, "linear")
    assert seed[3] < seed[4] and seed[5] < 0
    rng = np.random.default_rng(0)
    for shape in R.PENALTY_SHAPES:
        for factor in (0.001, 0.2, 5.0):
            lens = rng.integers(0, 2000, 64)
            acc = (rng.random(64) < 0.5).astype(float)
            r = R.apply_length_penalty(acc, lens, acc, 10, factor, shape, correct_only=True, max_fraction=0.9)
            assert r[acc == 1].min() > r[acc == 0].max() and (r[acc == 0] == 0).all()
    with pytest.raises(ValueError, match="max_fraction"):
        R.apply_length_penalty(1.0, 20, 1.0, 10, 0.01, correct_only=True, max_fraction=1.0)
    with pytest.raises(ValueError, match="accuracy="):
        R.apply_length_penalty(1.0, 20, None, 10, 0.01, correct_only=True)


def test_correct_only_penalty_in_group_advantages():
    """Only groups with a correct answer learn about length: all wrong -> no gradient at any
    length; all correct -> the shorter ones are pushed up; a mixed group ranks correct first."""
    from latent_jax.rl.grpo import group_advantages

    texts = ["1 2 [A] 2", "1 [A] 2", "1 2 [A] 3", "1 [A] 3"] * 2
    golds = ["2"] * 4 + ["9"] * 4  # group 1: two right (5 and 4 tokens), two wrong; group 2: all wrong
    lens = [5, 4, 5, 4] * 2
    pen = {"threshold": 4, "factor": 0.02, "shape": "linear", "correct_only": True, "max_fraction": 0.5}
    out = R.answer_rewards(texts, golds, lens, task="prosqa", delimiter="[A]", penalty=pen)
    np.testing.assert_allclose(out["reward"], [0.98, 1, 0, 0, 0, 0, 0, 0])
    adv = np.asarray(group_advantages(out["reward"], 4))
    assert adv[1] > adv[0] > 0 > adv[2] == adv[3]
    np.testing.assert_allclose(adv[4:], 0.0)  # wrong answers' length earns nothing
    seed = R.answer_rewards(texts, golds, lens, task="prosqa", delimiter="[A]", penalty={**pen, "correct_only": False})
    adv = np.asarray(group_advantages(seed["reward"], 4))
    assert adv[7] > 0.5 and adv[6] < -0.5  # the seed's form: an all-wrong group learns "shorter" at full scale


def test_grpo_length_penalty_defaults_to_correct_answers_only():
    from configs.prosqa_grpo import get_config
    from latent_jax.tasks.grpo import rl_settings

    assert rl_settings(get_config(""))["penalty"] is None  # off unless enabled
    pen = rl_settings(get_config("length"))["penalty"]
    assert pen == {"threshold": 4.0, "factor": 0.2, "shape": "linear", "preserve_accuracy": False,
                   "correct_only": True, "max_fraction": 0.5}
    c = get_config("length")
    c.rl.length_penalty.max_fraction = 1.0
    with pytest.raises(ValueError, match="max_fraction"):
        rl_settings(c)
