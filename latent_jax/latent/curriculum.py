"""The Coconut staged curriculum (Hao et al. 2024) as pure functions over tokenized examples.

Stage schedule (as facebookresearch/coconut):

    stage = epoch // epochs_per_stage                 (0 for the cot / no_cot modes)
    stage k <= max_latent_stage: drop the first k reasoning steps, insert k * c_thought latents
    stage k >  max_latent_stage: drop all steps, insert max_latent_stage * c_thought latents
                                 (min(#steps, max_latent_stage) * c_thought unless pad_latent_to_max)

With `uniform_prob` p, each example independently (seeded by (seed, epoch, idx)) trains
with probability p at a stage drawn uniformly from 0..#steps instead.

Modes: `no_cot` (question -> answer), `cot` (question -> all steps -> answer) and
`coconut`. Ablations of coconut (from the paper; the original code only has the second):

    no_curriculum     the final stage (all steps dropped, all latents) from epoch 0
    no_thought        the same steps dropped per stage but zero latents and no markers
    pause_as_thought  the same layout as coconut, but the latent slots are a learned pause
                      token embedding with no hidden-state feedback (`feedback` is False)

Sequence layout (original text format), tokens per part:

    question + "\\n"  (with the tokenizer's special tokens, e.g. BOS)
    <|start-latent|> <|latent|> * n <|end-latent|>          (coconut modes only)
    each remaining step + "\\n"
    "### " + answer, EOS

Labels are -100 on the question, the markers and the latents; the eval prompt is the
question plus markers and latents, with no steps or answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

IGNORE_INDEX = -100
START_LATENT, END_LATENT, LATENT = "<|start-latent|>", "<|end-latent|>", "<|latent|>"
MODES = ("no_cot", "cot", "coconut")
ABLATIONS = ("none", "no_curriculum", "no_thought", "pause_as_thought")


class LatentTokenIds(NamedTuple):
    """Ids of the Coconut special tokens in a tokenizer."""

    start_id: int
    end_id: int
    latent_id: int


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """Curriculum settings; the names follow the original Coconut configs."""

    mode: str = "coconut"
    ablation: str = "none"
    c_thought: int = 1
    epochs_per_stage: int = 5
    max_latent_stage: int = 6
    pad_latent_to_max: bool = False
    uniform_prob: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"curriculum mode={self.mode!r}; use one of {', '.join(MODES)}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"curriculum ablation={self.ablation!r}; use one of {', '.join(ABLATIONS)}")
        if self.ablation != "none" and self.mode != "coconut":
            raise ValueError(f"ablation={self.ablation!r} applies to mode='coconut' only; set mode='coconut' or ablation='none'")
        if self.c_thought < 1:
            raise ValueError(f"c_thought={self.c_thought}; use >= 1 (ablation='no_thought' trains without latents)")
        if self.epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage={self.epochs_per_stage}; use >= 1")
        if self.max_latent_stage < 0:
            raise ValueError(f"max_latent_stage={self.max_latent_stage}; use >= 0")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob={self.uniform_prob}; use a probability in [0, 1]")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> "CurriculumConfig":
        """From a dict / ml_collections ConfigDict holding (a subset of) the field names."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown curriculum keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    @property
    def markers(self) -> bool:
        """Whether sequences carry <|start-latent|> / <|end-latent|> (as the original: not for
        cot, no_cot or the no-thought ablation)."""
        return self.mode == "coconut" and self.ablation != "no_thought"

    @property
    def feedback(self) -> bool:
        """Whether latent slots take the previous hidden state (False: pause tokens)."""
        return self.mode == "coconut" and self.ablation not in ("no_thought", "pause_as_thought")

    @property
    def thoughts_per_step(self) -> int:
        """Latents per dropped step (0 for the no-thought ablation)."""
        return 0 if self.ablation == "no_thought" else self.c_thought

    @property
    def final_stage(self) -> int:
        """The stage where every step is dropped (max_latent_stage + 1)."""
        return self.max_latent_stage + 1


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """An example as token ids: question (+ "\\n", with BOS if the tokenizer adds one), each
    step (+ "\\n"), answer ("### " + answer + EOS). `extra` carries anything a caller needs
    downstream (e.g. image references for multimodal data)."""

    question_ids: tuple[int, ...]
    step_ids: tuple[tuple[int, ...], ...]
    answer_ids: tuple[int, ...]
    idx: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def num_steps(self) -> int:
        return len(self.step_ids)


class StagePlan(NamedTuple):
    """How one example is laid out: steps dropped and latent slots inserted."""

    n_skip: int
    n_latent: int


@dataclasses.dataclass(frozen=True)
class CurriculumSample:
    """One training sequence. `anchor` is the index where the first latent sits (or would
    sit, when n_latent is 0): right after <|start-latent|>, or right after the question
    when there are no markers. Batches align rows on it."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    anchor: int
    n_latent: int
    stage: int
    idx: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    """A generation prompt: question, then markers and latents (coconut modes)."""

    input_ids: tuple[int, ...]
    anchor: int
    n_latent: int
    idx: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


# ----------------------------------------------------------------------------- schedule
def scheduled_stage(epoch: int, cc: CurriculumConfig) -> int:
    """The stage trained at `epoch` (0-based): 0 for cot / no_cot, the final stage for the
    no-curriculum ablation, else epoch // epochs_per_stage capped at max_latent_stage + 1."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch}; epochs count from 0")
    if cc.mode != "coconut":
        return 0
    if cc.ablation == "no_curriculum":
        return cc.final_stage
    return min(epoch // cc.epochs_per_stage, cc.final_stage)


def stage_changed(epoch: int, cc: CurriculumConfig) -> bool:
    """True when `epoch` starts a new stage (epoch 0 included): where the optimizer is
    reset when reset_optimizer is on."""
    return epoch == 0 or scheduled_stage(epoch, cc) != scheduled_stage(epoch - 1, cc)


def stage_boundaries(num_epochs: int, cc: CurriculumConfig) -> list[int]:
    """Epochs (> 0) at which a new stage starts, for plots."""
    return [e for e in range(1, num_epochs) if stage_changed(e, cc)]


def example_stage(epoch: int, idx: int, num_steps: int, cc: CurriculumConfig) -> int:
    """The stage one example trains at: the scheduled stage, or with probability
    uniform_prob a stage drawn uniformly from 0..num_steps (coconut mode; deterministic in
    (seed, epoch, idx))."""
    stage = scheduled_stage(epoch, cc)
    if cc.mode == "coconut" and cc.uniform_prob > 0.0:
        rng = np.random.default_rng((cc.seed, epoch, idx))
        if rng.random() < cc.uniform_prob:
            stage = int(rng.integers(0, num_steps + 1))
    return stage


def stage_plan(stage: int, num_steps: int, cc: CurriculumConfig) -> StagePlan:
    """Steps dropped and latents inserted for a training example at `stage`."""
    if cc.mode == "no_cot":
        return StagePlan(num_steps, 0)
    if cc.mode == "cot":
        return StagePlan(0, 0)
    if stage > cc.max_latent_stage:
        n_skip = num_steps
        k = cc.max_latent_stage if cc.pad_latent_to_max else min(num_steps, cc.max_latent_stage)
    else:
        n_skip, k = min(stage, num_steps), stage
    return StagePlan(n_skip, k * cc.thoughts_per_step)


def eval_latents(stage: int, num_steps: int, cc: CurriculumConfig) -> int:
    """Latents in the generation prompt at `stage` (as the original's question-latent set)."""
    if cc.mode != "coconut":
        return 0
    cap = cc.max_latent_stage if cc.pad_latent_to_max else min(cc.max_latent_stage, num_steps)
    return min(cap, stage) * cc.thoughts_per_step


# ----------------------------------------------------------------------------- sequences
def build_sample(ex: TokenizedExample, stage: int, cc: CurriculumConfig, ids: LatentTokenIds) -> CurriculumSample:
    """The training sequence and labels of `ex` at `stage`."""
    plan = stage_plan(stage, ex.num_steps, cc)
    q = list(ex.question_ids)
    head = q + ([ids.start_id] if cc.markers else [])
    prefix = head + [ids.latent_id] * plan.n_latent + ([ids.end_id] if cc.markers else [])
    rest: list[int] = [t for s in ex.step_ids[plan.n_skip :] for t in s] + list(ex.answer_ids)
    return CurriculumSample(
        input_ids=tuple(prefix + rest),
        labels=tuple([IGNORE_INDEX] * len(prefix) + rest),
        anchor=len(head),
        n_latent=plan.n_latent,
        stage=stage,
        idx=ex.idx,
        extra=ex.extra,
    )


def train_sample(ex: TokenizedExample, epoch: int, cc: CurriculumConfig, ids: LatentTokenIds) -> CurriculumSample:
    """The training sequence of `ex` at `epoch` (uniform_prob mixing included)."""
    return build_sample(ex, example_stage(epoch, ex.idx, ex.num_steps, cc), cc, ids)


def eval_prompt(ex: TokenizedExample, stage: int, cc: CurriculumConfig, ids: LatentTokenIds) -> EvalPrompt:
    """The generation prompt of `ex` at `stage`: question (+ markers and latents)."""
    n = eval_latents(stage, ex.num_steps, cc)
    head = list(ex.question_ids) + ([ids.start_id] if cc.markers else [])
    toks = head + [ids.latent_id] * n + ([ids.end_id] if cc.markers else [])
    return EvalPrompt(input_ids=tuple(toks), anchor=len(head), n_latent=n, idx=ex.idx, extra=ex.extra)


def render_text(
    question: str,
    steps: Sequence[str],
    answer: str,
    stage: int,
    cc: CurriculumConfig,
    eos: str = "",
) -> str:
    """The training text at `stage` with the special tokens written out (for inspection;
    training tokenizes the parts separately, as the original does)."""
    plan = stage_plan(stage, len(steps), cc)
    s = question + "\n"
    if cc.markers:
        s += START_LATENT + LATENT * plan.n_latent + END_LATENT
    s += "".join(st + "\n" for st in steps[plan.n_skip :])
    return s + "### " + answer + eos


def extract_answer(text: str) -> str:
    """The answer in a generated text, as the original scores it: after the last '#',
    commas removed, stripped."""
    return text.split("#")[-1].replace(",", "").strip()
