"""Curriculum against the Coconut paper's stage definitions, ablations included."""

import pytest

from latent_jax.latent import curriculum as C

IDS = C.LatentTokenIds(start_id=90, end_id=91, latent_id=92)
EOS = 99


def _ex(n_steps=4, idx=0):
    # question "q q \n" -> ids (1, 2, 3); step i -> (10 + i, 50); answer -> (7, 8, EOS)
    return C.TokenizedExample(
        question_ids=(1, 2, 3),
        step_ids=tuple((10 + i, 50) for i in range(n_steps)),
        answer_ids=(7, 8, EOS),
        idx=idx,
    )


def test_schedule_and_cap():
    cc = C.CurriculumConfig(epochs_per_stage=2, max_latent_stage=3)
    assert [C.scheduled_stage(e, cc) for e in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert C.stage_boundaries(10, cc) == [2, 4, 6, 8]
    assert C.stage_changed(0, cc) and C.stage_changed(2, cc) and not C.stage_changed(3, cc)
    for mode in ("cot", "no_cot"):
        assert C.scheduled_stage(7, C.CurriculumConfig(mode=mode, epochs_per_stage=2)) == 0


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_k_drops_k_steps_and_inserts_k_c_latents(stage):
    cc = C.CurriculumConfig(c_thought=2, max_latent_stage=3)
    ex = _ex(4)
    s = C.build_sample(ex, stage, cc, IDS)
    n = stage * 2
    steps = [t for st in ex.step_ids[stage:] for t in st]
    assert list(s.input_ids) == [1, 2, 3, 90] + [92] * n + [91] + steps + [7, 8, EOS]
    assert list(s.labels) == [-100] * (3 + 2 + n) + steps + [7, 8, EOS]
    assert s.anchor == 4 and s.n_latent == n
    assert s.input_ids[s.anchor : s.anchor + n] == (92,) * n


def test_beyond_max_stage_drops_all_steps():
    ex = _ex(5)
    cc = C.CurriculumConfig(c_thought=1, max_latent_stage=3)
    s = C.build_sample(ex, 4, cc, IDS)
    # stage 3 keeps steps 3 and 4; stage 4 (> max) drops everything, max_latent_stage latents
    assert list(s.input_ids) == [1, 2, 3, 90, 92, 92, 92, 91, 7, 8, EOS]
    s3 = C.build_sample(ex, 3, cc, IDS)
    assert list(s3.input_ids) == [1, 2, 3, 90, 92, 92, 92, 91, 13, 50, 14, 50, 7, 8, EOS]
    # fewer steps than max: min(#steps, max) latents unless pad_latent_to_max
    short = _ex(2)
    assert C.build_sample(short, 9, cc, IDS).n_latent == 2
    assert C.build_sample(short, 9, C.CurriculumConfig(max_latent_stage=3, pad_latent_to_max=True), IDS).n_latent == 3
    # at stage <= max the original inserts `stage` latents even past the last step
    assert C.build_sample(short, 3, cc, IDS).n_latent == 3


def test_modes_no_cot_and_cot():
    ex = _ex(3)
    no_cot = C.build_sample(ex, C.scheduled_stage(12, C.CurriculumConfig(mode="no_cot")), C.CurriculumConfig(mode="no_cot"), IDS)
    assert list(no_cot.input_ids) == [1, 2, 3, 7, 8, EOS]
    assert list(no_cot.labels) == [-100] * 3 + [7, 8, EOS]
    assert no_cot.anchor == 3 and no_cot.n_latent == 0
    cot = C.build_sample(ex, 0, C.CurriculumConfig(mode="cot"), IDS)
    assert list(cot.input_ids) == [1, 2, 3, 10, 50, 11, 50, 12, 50, 7, 8, EOS]
    assert list(cot.labels) == [-100] * 3 + [10, 50, 11, 50, 12, 50, 7, 8, EOS]
    for mode in ("cot", "no_cot"):
        cc = C.CurriculumConfig(mode=mode)
        assert not cc.markers and not cc.feedback
        assert list(C.eval_prompt(ex, 5, cc, IDS).input_ids) == [1, 2, 3]


def test_ablation_no_curriculum_is_final_stage_from_epoch_0():
    cc = C.CurriculumConfig(ablation="no_curriculum", max_latent_stage=3, pad_latent_to_max=True)
    ex = _ex(3)
    for epoch in (0, 1, 7):
        s = C.train_sample(ex, epoch, cc, IDS)
        assert list(s.input_ids) == [1, 2, 3, 90, 92, 92, 92, 91, 7, 8, EOS]
    assert C.eval_prompt(ex, C.scheduled_stage(0, cc), cc, IDS).n_latent == 3


def test_ablation_no_thought_drops_steps_without_latents():
    cc = C.CurriculumConfig(ablation="no_thought", epochs_per_stage=1, max_latent_stage=3)
    ex = _ex(4)
    assert not cc.markers and not cc.feedback
    s = C.train_sample(ex, 2, cc, IDS)  # stage 2
    assert list(s.input_ids) == [1, 2, 3, 12, 50, 13, 50, 7, 8, EOS]
    assert list(s.labels) == [-100] * 3 + [12, 50, 13, 50, 7, 8, EOS]
    assert s.n_latent == 0
    assert list(C.train_sample(ex, 9, cc, IDS).input_ids) == [1, 2, 3, 7, 8, EOS]
    assert list(C.eval_prompt(ex, 2, cc, IDS).input_ids) == [1, 2, 3]


def test_ablation_pause_as_thought_same_layout_no_feedback():
    pause = C.CurriculumConfig(ablation="pause_as_thought", epochs_per_stage=1)
    coco = C.CurriculumConfig(epochs_per_stage=1)
    ex = _ex(4)
    assert pause.markers and not pause.feedback and coco.feedback
    for epoch in range(6):
        a, b = C.train_sample(ex, epoch, pause, IDS), C.train_sample(ex, epoch, coco, IDS)
        assert a.input_ids == b.input_ids and a.labels == b.labels and a.n_latent == b.n_latent


def test_eval_prompt_latents():
    cc = C.CurriculumConfig(c_thought=2, max_latent_stage=3)
    ex = _ex(2)
    p = C.eval_prompt(ex, 1, cc, IDS)
    assert list(p.input_ids) == [1, 2, 3, 90, 92, 92, 91] and p.anchor == 4 and p.n_latent == 2
    assert C.eval_prompt(ex, 5, cc, IDS).n_latent == 4  # min(max, #steps) * c
    assert C.eval_prompt(ex, 5, C.CurriculumConfig(c_thought=2, max_latent_stage=3, pad_latent_to_max=True), IDS).n_latent == 6


def test_uniform_prob_is_seeded_and_mixes_stages():
    cc = C.CurriculumConfig(uniform_prob=0.5, epochs_per_stage=1, max_latent_stage=6, seed=3)
    stages = [C.example_stage(0, i, 4, cc) for i in range(400)]
    assert stages == [C.example_stage(0, i, 4, cc) for i in range(400)]
    assert set(stages) == {0, 1, 2, 3, 4}
    frac_sched = stages.count(0) / len(stages)
    assert 0.45 < frac_sched < 0.75  # 0.5 kept + 0.5 * 1/5 drawn as 0
    other = [C.example_stage(0, i, 4, C.CurriculumConfig(uniform_prob=0.5, seed=4)) for i in range(400)]
    assert other != stages
    assert all(C.example_stage(0, i, 4, C.CurriculumConfig()) == 0 for i in range(50))


def test_text_format_matches_original():
    cc = C.CurriculumConfig()
    q, steps, a = "Is Tom a wumpus or zorpus?", ["Tom is a rempus.", "Tom is a wumpus."], "Tom is a wumpus."
    assert C.render_text(q, steps, a, 0, C.CurriculumConfig(mode="cot"), eos="</s>") == (
        "Is Tom a wumpus or zorpus?\nTom is a rempus.\nTom is a wumpus.\n### Tom is a wumpus.</s>"
    )
    assert C.render_text(q, steps, a, 1, cc) == (
        "Is Tom a wumpus or zorpus?\n<|start-latent|><|latent|><|end-latent|>Tom is a wumpus.\n### Tom is a wumpus."
    )
    assert C.render_text(q, steps, a, 0, C.CurriculumConfig(mode="no_cot")) == "Is Tom a wumpus or zorpus?\n### Tom is a wumpus."
    assert C.extract_answer("Tom is a rempus.\n### Tom is a wumpus.") == "Tom is a wumpus."
    assert C.extract_answer("### 1,234 ") == "1234"


def test_bad_config_errors():
    with pytest.raises(ValueError, match="mode"):
        C.CurriculumConfig(mode="latent")
    with pytest.raises(ValueError, match="applies to mode='coconut'"):
        C.CurriculumConfig(mode="cot", ablation="no_thought")
    with pytest.raises(ValueError, match="unknown curriculum keys"):
        C.CurriculumConfig.from_config({"c_thoughts": 2})
    assert C.CurriculumConfig.from_config({"c_thought": 2}).c_thought == 2
