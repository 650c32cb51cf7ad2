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

Frontier supervision (`supervision="frontier"`, the recipe of "Reasoning by Superposition",
Zhu, Hao et al. 2025, arXiv 2505.12514), for examples that carry per-depth frontier labels
(the graph-token format of latent_jax.data.prosqa_graph): at stage s < #steps the sequence is
the question, s * c_thought latents and ONE label, a node at depth s + 1 on a shortest path
to the target (drawn per (seed, epoch, idx)), so every fed-back thought is trained to name
the next frontier; at stage s >= #steps all steps are dropped, the latents (one stage's worth
per step, or max_latent_stage's with pad_latent_to_max) are followed by the answer delimiter
as part of the prompt, and the label is the answer. Usually without markers
(`latent_markers=False`), so the first label sits right after the last thought.

Thought labels (`thought_labels="frontier"`, either supervision; not in either reference,
which label no thought slot): every fed-back state is labelled at every stage, the state fed
into thought i (the question's last state for i = 1) with a node at depth i on a shortest
path, so every thought is trained to be readable as its frontier through the LM head (with
c_thought > 1, the state fed into the last thought of each step's group). With
`supervision="steps"` and no markers this is the original curriculum (stage 0 = CoT, stage s
replaces s steps with thoughts, the remaining steps and the answer follow) with labelled
thoughts.

Set-valued thought labels (`thought_labels="reach"`): every fed-back state is labelled, at
every stage, with the whole BFS layer of its depth (every node at distance i from the root for
the state fed into thought i), as a set: the loss is the cross-entropy to the uniform
distribution over the set (`set_loss="uniform"`) or minus the log of the set's total
probability (`set_loss="sum"`). This trains the superposition the paper finds directly: a
thought that names one node of the layer is only partly right. The sets leave as
`CurriculumSample.label_sets` (position, members), next to `labels`.

Graph walks (`mode="walks"`, graph data; the shared base of the embedded default, which every
method then fine-tunes): the question, then random walks along its edges, the first from the
root ("... [R] root c1 c2 ..."), then from other nodes after a fresh "[R]", up to `walk_tokens`
tokens; every walk node with children is labelled with the set of its children (a set-valued
label: `set_loss`), so every supervised position is an in-context lookup and nothing names
the answer. The walk is drawn per (seed, epoch, idx).

Problem formats (`FORMATS`): "text" (the original: question + "\n", steps + "\n",
"### " + answer, answers extracted after the last "#") and "graph" (symbols separated by
spaces, "[A] " + answer, extracted after the last "[A]").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

IGNORE_INDEX = -100
START_LATENT, END_LATENT, LATENT = "<|start-latent|>", "<|end-latent|>", "<|latent|>"
MODES = ("no_cot", "cot", "coconut", "walks")
ABLATIONS = ("none", "no_curriculum", "no_thought", "pause_as_thought")
SUPERVISIONS = ("steps", "frontier")
THOUGHT_LABELS = ("none", "frontier", "reach")
SET_LOSSES = ("uniform", "sum")


@dataclasses.dataclass(frozen=True)
class ProblemFormat:
    """How a problem's parts are written as text: what follows the question and each step,
    what precedes the answer, and the delimiter an answer is extracted after."""

    name: str
    question_suffix: str
    step_suffix: str
    answer_prefix: str
    answer_delimiter: str


FORMATS = {
    "text": ProblemFormat("text", "\n", "\n", "### ", "#"),
    "graph": ProblemFormat("graph", "", "", "[A] ", "[A]"),
}


def problem_format(name: str) -> ProblemFormat:
    if name not in FORMATS:
        raise ValueError(f"data.format={name!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[name]


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
    supervision: str = "steps"
    latent_markers: bool = True
    thought_labels: str = "none"
    set_loss: str = "uniform"
    walk_tokens: int = 12

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
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"supervision={self.supervision!r}; use one of {', '.join(SUPERVISIONS)}")
        if self.thought_labels not in THOUGHT_LABELS:
            raise ValueError(f"thought_labels={self.thought_labels!r}; use one of {', '.join(THOUGHT_LABELS)}")
        if self.set_loss not in SET_LOSSES:
            raise ValueError(f"set_loss={self.set_loss!r}; use one of {', '.join(SET_LOSSES)}")

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
        return self.latent_markers and self.mode == "coconut" and self.ablation != "no_thought"

    @property
    def frontier(self) -> bool:
        """Whether coconut stages are supervised by frontier labels (see the module docstring)."""
        return self.supervision == "frontier" and self.mode == "coconut"

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
    answer_lead: int = 0  # leading answer_ids that are the delimiter ("[A]"): prompt-side under frontier supervision
    frontier_ids: tuple[tuple[int, ...], ...] = ()  # per depth 1 .. #steps: token ids of the frontier labels
    reach_ids: tuple[tuple[int, ...], ...] = ()  # per depth 1 .. #steps: token ids of every node at that depth
    edge_ids: tuple[tuple[int, int], ...] = ()  # the graph's edges as (source, target) token ids (graph data)

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
    label_sets: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (position in input_ids, members): set-valued labels


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
    if cc.frontier:  # s < #steps: s thoughts and a frontier label; else every step becomes thoughts
        if stage < num_steps:
            return StagePlan(stage, stage * cc.thoughts_per_step)
        k = cc.max_latent_stage if cc.pad_latent_to_max else min(num_steps, cc.max_latent_stage)
        return StagePlan(num_steps, k * cc.thoughts_per_step)
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
    if cc.frontier:
        return stage_plan(stage, num_steps, cc).n_latent
    cap = cc.max_latent_stage if cc.pad_latent_to_max else min(cc.max_latent_stage, num_steps)
    return min(cap, stage) * cc.thoughts_per_step


def frontier_choice(epoch: int, idx: int, cc: CurriculumConfig) -> int:
    """Which frontier label a training example uses at `epoch` (an index to reduce modulo the
    frontier's size; deterministic in (seed, epoch, idx), as the reference draws at random)."""
    return int(np.random.default_rng((cc.seed, epoch, idx, 1)).integers(0, 1 << 30))


# ----------------------------------------------------------------------------- sequences
def _prompt(ex: TokenizedExample, plan: StagePlan, cc: CurriculumConfig, ids: LatentTokenIds) -> tuple[list[int], list[int]]:
    """(head, prompt): the question (+ <|start-latent|>), then the latents (+ <|end-latent|>),
    and, under frontier supervision once every step is dropped, the answer delimiter."""
    head = list(ex.question_ids) + ([ids.start_id] if cc.markers else [])
    prompt = head + [ids.latent_id] * plan.n_latent + ([ids.end_id] if cc.markers else [])
    if cc.frontier and plan.n_skip >= ex.num_steps:
        prompt += list(ex.answer_ids[: ex.answer_lead])
    return head, prompt


def build_sample(ex: TokenizedExample, stage: int, cc: CurriculumConfig, ids: LatentTokenIds,
                 choice: int = 0) -> CurriculumSample:
    """The training sequence and labels of `ex` at `stage` (`choice` picks the frontier label
    under frontier supervision)."""
    plan = stage_plan(stage, ex.num_steps, cc)
    head, prefix = _prompt(ex, plan, cc, ids)
    pre_labels = [IGNORE_INDEX] * len(prefix)
    sets: list[tuple[int, tuple[int, ...]]] = []
    if cc.mode == "coconut" and cc.thought_labels != "none":  # label each thought slot with its depth's nodes
        tps = cc.thoughts_per_step
        n_lab = min(plan.n_skip, plan.n_latent // max(tps, 1))
        layers = ex.reach_ids if cc.thought_labels == "reach" else ex.frontier_ids
        if len(layers) < n_lab:
            raise ValueError(
                f"example {ex.idx} has no {cc.thought_labels} labels; thought_labels={cc.thought_labels!r} needs "
                "graph-token rows (convert ProsQA with `python -m latent_jax.data.prosqa convert`)"
            )
        for i in range(n_lab):
            pos, layer = len(head) + (i + 1) * tps - 1, layers[i]
            if cc.thought_labels == "reach":
                sets.append((pos, tuple(layer)))
            else:
                pre_labels[pos] = layer[(choice + i) % len(layer)]
    if cc.frontier and plan.n_skip < ex.num_steps:
        if len(ex.frontier_ids) < ex.num_steps:
            raise ValueError(
                f"example {ex.idx} has no frontier labels for depth {plan.n_skip + 1}; frontier supervision needs "
                "graph-token rows (convert ProsQA with `python -m latent_jax.data.prosqa convert`)"
            )
        layer = ex.frontier_ids[plan.n_skip]
        rest = [layer[choice % len(layer)]]
    elif cc.frontier:
        rest = list(ex.answer_ids[ex.answer_lead :])
    else:
        rest = [t for s in ex.step_ids[plan.n_skip :] for t in s] + list(ex.answer_ids)
    return CurriculumSample(
        input_ids=tuple(prefix + rest),
        labels=tuple(pre_labels + rest),
        anchor=len(head),
        n_latent=plan.n_latent,
        stage=stage,
        idx=ex.idx,
        extra=ex.extra,
        label_sets=tuple(sets),
    )


def walk_sample(ex: TokenizedExample, epoch: int, cc: CurriculumConfig) -> CurriculumSample:
    """The graph-walk sequence of `ex` at `epoch` (module docstring): the question (ending in
    "[R] root"), then walks of random children, every node with children labelled with their set."""
    if not ex.edge_ids or len(ex.question_ids) < 2:
        raise ValueError(f"example {ex.idx} has no graph edges; mode='walks' needs graph-token rows "
                         "(data.format='graph')")
    kids: dict[int, list[int]] = {}
    for u, v in ex.edge_ids:
        kids.setdefault(u, []).append(v)
    kids = {u: sorted(set(v)) for u, v in kids.items()}
    starts = sorted(kids)
    walk_id, cur = ex.question_ids[-2], ex.question_ids[-1]  # "[R]", the root
    rng = np.random.default_rng((cc.seed, epoch, ex.idx, 2))
    seq, sets = list(ex.question_ids), []
    budget = len(seq) + cc.walk_tokens
    while len(seq) < budget:
        if cur in kids:  # the next token is one of cur's children: label the position with all of them
            sets.append((len(seq), tuple(kids[cur])))
            cur = int(kids[cur][rng.integers(len(kids[cur]))])
            seq.append(cur)
        elif len(seq) + 2 <= budget:  # a leaf: a new walk from a random node with children
            cur = int(starts[rng.integers(len(starts))])
            seq += [walk_id, cur]
        else:
            break
    return CurriculumSample(input_ids=tuple(seq), labels=(IGNORE_INDEX,) * len(seq), anchor=len(ex.question_ids),
                            n_latent=0, stage=0, idx=ex.idx, extra=ex.extra, label_sets=tuple(sets))


def train_sample(ex: TokenizedExample, epoch: int, cc: CurriculumConfig, ids: LatentTokenIds) -> CurriculumSample:
    """The training sequence of `ex` at `epoch` (uniform_prob mixing included; graph walks in
    mode "walks")."""
    if cc.mode == "walks":
        return walk_sample(ex, epoch, cc)
    labelled = cc.frontier or (cc.mode == "coconut" and cc.thought_labels == "frontier")
    choice = frontier_choice(epoch, ex.idx, cc) if labelled else 0
    return build_sample(ex, example_stage(epoch, ex.idx, ex.num_steps, cc), cc, ids, choice)


def eval_prompt(ex: TokenizedExample, stage: int, cc: CurriculumConfig, ids: LatentTokenIds) -> EvalPrompt:
    """The generation prompt of `ex` at `stage`: question (+ markers and latents; + the answer
    delimiter under frontier supervision once every step is dropped)."""
    n = eval_latents(stage, ex.num_steps, cc)
    n_skip = ex.num_steps if not cc.frontier else stage_plan(stage, ex.num_steps, cc).n_skip
    head, toks = _prompt(ex, StagePlan(n_skip, n), cc, ids)
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


def extract_answer(text: str, delimiter: str = "#") -> str:
    """The answer in a generated text, as the original scores it: after the last
    `delimiter` ('#' for the text format, '[A]' for graph tokens), commas removed, stripped."""
    return text.split(delimiter)[-1].replace(",", "").strip()
