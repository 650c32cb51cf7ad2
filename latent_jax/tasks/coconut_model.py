"""A trained Coconut model outside its run: what a Coconut run saves beside the weights of its
best model, and the decoding its evaluation and `python -m latent_jax.generate` share.

    best_model/coconut.json     written by save_model with the weights (tasks/coconut.py):
        coconut_mode            the mode the run trained (no_cot | cot | coconut | walks)
        curriculum              the CurriculumConfig fields (c_thought, max_latent_stage, markers, ...)
        stage, thoughts         the stage of the test prompts and the thoughts a question gets there
        tokens, latent_ids      <|start-latent|> / <|latent|> / <|end-latent|> and their ids
        markers                 whether <|start-latent|> / <|end-latent|> surround the thoughts
        problem_format          the question suffix, answer prefix and answer delimiter
        generation              max_new_tokens, do_sample, temperature, top_p of the evaluation
        answer, cache           the run's answer decoder and KV-cache policy blocks (configs/base.py)
        thought_norm, bucket    the thought rescaling and the length bucket of the prompts

    read_coconut_model(dir)     -> CoconutModel (None when the directory has no coconut.json)
    CoconutModel.question_prompt / text_prompt
                                -> the evaluation's prompt (curriculum.eval_prompt) of a question
    generate_aligned(...)       the decoding CoconutTask.generate runs on a batch aligned at its
                                first latent (thoughts, then the answer autoregressively, with the
                                run's TOVA cache, or by masked diffusion)

A question gets the thoughts of a question with max_latent_stage or more steps (the run's
evaluation gives a test question with fewer gold steps fewer thoughts when pad_latent_to_max
is off; a new question has no gold steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax.numpy as jnp

from latent_jax.data.coconut_json import CoconutExample
from latent_jax.data.pipeline import tokenize_examples
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent.coconut import coconut_diffusion_generate, coconut_generate, diffusion_as_generate_output
from latent_jax.latent.curriculum import (
    END_LATENT,
    LATENT,
    START_LATENT,
    CurriculumConfig,
    EvalPrompt,
    LatentTokenIds,
    ProblemFormat,
    TokenizedExample,
    eval_prompt,
    problem_format,
)

COCONUT_FILE = "coconut.json"
FORMAT_VERSION = 1


def coconut_metadata(cc: CurriculumConfig, stage: int, ids: LatentTokenIds, fmt: ProblemFormat, settings: dict,
                     *, answer: dict, cache: dict, thought_norm: str, bucket: int) -> dict:
    """The coconut.json of a run (module docstring) from its curriculum, test stage, token ids,
    problem format, evaluation settings and decoding config blocks."""
    meta = dict(format_version=FORMAT_VERSION, coconut_mode=cc.mode, curriculum=dataclasses.asdict(cc),
                stage=int(stage), thoughts=0, tokens=dict(start=START_LATENT, latent=LATENT, end=END_LATENT),
                markers=cc.markers, latent_ids=ids._asdict(), problem_format=dataclasses.asdict(fmt),
                generation=dict(settings), answer=dict(answer), cache=dict(cache), thought_norm=str(thought_norm), bucket=int(bucket))
    meta["thoughts"] = CoconutModel.from_metadata(meta, "").default_thoughts
    return meta


def task_files(task) -> dict[str, str]:
    """{coconut.json: its text} of a CoconutTask (tasks/coconut.py), for save_model(extra_files=...)."""
    c = task.config
    block = lambda k: c[k].to_dict() if c.get(k) is not None else {}  # noqa: E731
    meta = coconut_metadata(task.cc, task.test_stage, task.ids, problem_format(c.data.format), task.settings,
                            answer=block("answer"), cache=block("cache"), thought_norm=task.thought_norm,
                            bucket=task.bucket)
    return {COCONUT_FILE: json.dumps(meta, indent=2) + "\n"}


@dataclasses.dataclass(frozen=True)
class CoconutModel:
    """The layout and decoding of a model saved by a Coconut run (its coconut.json)."""

    cc: CurriculumConfig
    stage: int
    ids: LatentTokenIds
    fmt: ProblemFormat
    settings: dict
    answer: dict
    cache: dict
    thought_norm: str
    bucket: int
    source: str = ""

    @classmethod
    def from_metadata(cls, meta: dict, source: str) -> "CoconutModel":
        try:
            return cls(cc=CurriculumConfig.from_config(meta["curriculum"]), stage=int(meta["stage"]),
                       ids=LatentTokenIds(**meta["latent_ids"]), fmt=ProblemFormat(**meta["problem_format"]),
                       settings=dict(meta["generation"]), answer=dict(meta.get("answer") or {}),
                       cache=dict(meta.get("cache") or {}), thought_norm=str(meta.get("thought_norm", "none")),
                       bucket=int(meta.get("bucket", 16)), source=source)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source or COCONUT_FILE} is not a Coconut model description ({type(e).__name__}: "
                             f"{e}); save the model again with a Coconut run") from None

    @property
    def feedback(self) -> bool:
        """Whether latent slots take the previous hidden state (False: the pause-token ablation)."""
        return self.cc.feedback

    @property
    def default_thoughts(self) -> int:
        """The thoughts of a question at the test stage (one with max_latent_stage steps or more)."""
        return self._layout(None)[2] if self.cc.mode == "coconut" else 0

    def _layout(self, thoughts: int | None) -> tuple[CurriculumConfig, int, int]:
        """(curriculum, stage, steps) whose eval_prompt has the test stage's thoughts (None) or `thoughts`."""
        if thoughts is None:
            cc, stage, steps = self.cc, self.stage, self.cc.max_latent_stage
            n = eval_prompt(TokenizedExample((), ((),) * steps, ()), stage, cc, self.ids).n_latent
            return cc, stage, n
        cc = dataclasses.replace(self.cc, c_thought=1, max_latent_stage=thoughts, pad_latent_to_max=True)
        return cc, thoughts + 1, thoughts

    def text_prompt(self, question_ids: Sequence[int], lead_ids: Sequence[int], thoughts: int | None = None,
                    idx: int = 0) -> EvalPrompt:
        """The evaluation's prompt of a tokenized question (its special tokens and suffix included):
        markers and `thoughts` latents (None: the test stage's), then, under frontier supervision,
        the answer delimiter `lead_ids`."""
        if thoughts is not None and thoughts > 0 and self.cc.thoughts_per_step == 0:
            raise ValueError(f"{self.source or 'this model'} was trained without thoughts (ablation "
                             f"{self.cc.ablation!r}); drop --thoughts")
        cc, stage, _ = self._layout(thoughts)
        steps = cc.max_latent_stage
        ex = TokenizedExample(tuple(question_ids), ((),) * steps, tuple(lead_ids), idx=idx, answer_lead=len(lead_ids))
        return eval_prompt(ex, stage, cc, self.ids)

    def _tokenized(self, tok, question: str) -> TokenizedExample:
        """A question with no steps and an empty answer, tokenized as the run tokenized its data
        (data.pipeline.tokenize_examples: the format's question suffix, the tokenizer's BOS)."""
        return tokenize_examples([CoconutExample(question, (), "")], tok, self.fmt)[0]

    def question_ids(self, tok, question: str) -> list[int]:
        """The token ids of a question as the run's prompts begin (its suffix, BOS included)."""
        return list(self._tokenized(tok, question).question_ids)

    def answer_lead_ids(self, tok) -> list[int]:
        """The answer delimiter's ids that follow the thoughts in a frontier-supervised prompt
        (under steps supervision text_prompt leaves them out)."""
        ex = self._tokenized(tok, "")
        return list(ex.answer_ids[: ex.answer_lead])

    def question_prompt(self, tok, question: str, thoughts: int | None = None, idx: int = 0) -> EvalPrompt:
        """The evaluation's prompt of a question text (text_prompt of its question_ids)."""
        ex = self._tokenized(tok, question)
        return self.text_prompt(ex.question_ids, ex.answer_ids[: ex.answer_lead], thoughts, idx)


def read_coconut_model(path: str) -> CoconutModel | None:
    """The CoconutModel of a model directory, None when it has no coconut.json (not saved by a
    Coconut run)."""
    f = os.path.join(path, COCONUT_FILE)
    if not os.path.isfile(f):
        return None
    try:
        with open(f) as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f} cannot be read ({type(e).__name__}: {e}); save the model again or remove the "
                         "file to decode it as a plain LM") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{f} is not a JSON object; save the model again or remove the file")
    return CoconutModel.from_metadata(meta, f)


def generate_aligned(params: dict, config, arrays: dict, latent_start: int, num_latent: int, rng, *,
                     settings: dict, stop_ids: Sequence[int], pad_id: int, feedback: bool = True,
                     thought_norm: str = "none", answer=None, tova=None, top_k: int = 0,
                     extra: dict[str, Any] | None = None):
    """Batched, cached Coconut decoding of prompts aligned at column `latent_start` (an EvalBatch's
    arrays: input_ids, attention_mask, latent_mask): the thoughts, then the answer by masked
    diffusion (`answer`: DiffusionOptions) or autoregressively (settings: max_new_tokens,
    do_sample, temperature, top_p; `tova`: a TOVA cache). Returns a GenerateOutput (tokens,
    lengths, steps)."""
    stops = jnp.asarray(list(stop_ids), jnp.int32)
    ids, mask, lat = (jnp.asarray(arrays[k]) for k in ("input_ids", "attention_mask", "latent_mask"))
    extra = extra or {}
    if answer is not None:  # thoughts autoregressively, then the answer by masked diffusion
        out = coconut_diffusion_generate(params, ids, mask, lat, rng, config=config, latent_start=latent_start,
                                         num_latent=num_latent, opts=answer, feedback=feedback,
                                         thought_norm=thought_norm, **extra)
        return diffusion_as_generate_output(out, stops, pad_id)
    sp = SamplingParams.make(settings["temperature"] if settings["do_sample"] else 0.0, settings["top_p"])
    return coconut_generate(
        params, ids, mask, lat, rng, sp, stops, config=config, latent_start=latent_start, num_latent=num_latent,
        max_new_tokens=int(settings["max_new_tokens"]), top_k=top_k, pad_id=pad_id, feedback=feedback,
        thought_norm=thought_norm, tova=tova, **extra)
