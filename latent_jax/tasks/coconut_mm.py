"""Multimodal Coconut: `run(config, workdir)` for the `multimodal_coconut` workflow.

The shared CoconutTask (tasks/coconut.py) on the one Trainer, with image or video
embeddings in the prefix (an EmbeddingSource):

    prompt  = instructions + <image>*N + question (+ <|start-latent|> <|latent|>*k <|end-latent|>)
    target  = remaining reasoning steps + answer + eos   (A-OKVQA: "### answer" after rationales)

The vision tower and projector run once per media file (they are frozen; the language model
is trained) and their features replace the `<image>` placeholders through
`embeds_override`. Datasets: CinePile (video; HiCo optional) and A-OKVQA (image; rationales
are the CoT steps). Modes (config.coconut_mode): no_cot (vanilla), cot, coconut; chained
runs (config.chain = "no_cot,cot,coconut") as for text, Coconut starting from the CoT
run's best model.

As the text workflow: validation accuracy every epoch (config.data.val_holdout training
items held out, or the eval split when 0), keep-best by it, the eval split scored with the
best model at the trained thought count. model.dtype / param_dtype / remat_policy /
scan_layers / ce_chunk / attention apply to the language model.

    workdir/metrics.jsonl, tb/       train loss, val accuracy (MetricsWriter)
    workdir/predictions.jsonl        per eval example: question, response, scores
    workdir/results.json             dataset results (CinePile: accuracy per category,
                                     hard_split, visual_reliance, and config.eval.scorer;
                                     A-OKVQA: MC and DA, and config.eval.scorer) + HiCo compression ratio, data stats,
                                     history (per epoch: train_loss, val accuracy)
    workdir/checkpoints/             TrainCheckpointer: best N by val accuracy + the latest
    workdir/best_model/              Orbax VLM checkpoint of the best epoch (vision + trained
                                     LM); `python -m latent_jax.convert orbax-to-hf` exports it
    workdir/final_model/             HF export of best_model (config.save_model; needs torch)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from latent_jax import testing as fx
from latent_jax.data import aokvqa as ak
from latent_jax.data import cinepile as cp
from latent_jax.data.hf_datasets import is_hub_name
from latent_jax.data.tokenizer import (
    add_coconut_tokens,
    load_tokenizer,
    resize_embeddings,
)
from latent_jax.data.video import vlm_video_frames
from latent_jax.latent.curriculum import TokenizedExample
from latent_jax.models.hf_vlm import load_vlm_any, save_vlm, save_vlm_checkpoint
from latent_jax.models.hico import compression_ratio
from latent_jax.models.image_processing import vlm_image_inputs
from latent_jax.models.io import restack_layers
from latent_jax.models.multimodal import VisionLanguageModel, VLMConfig
from latent_jax.paths import barrier, is_primary
from latent_jax.tasks import coconut
from latent_jax.tasks.coconut import CoconutTask, coconut_data, curriculum_config
from latent_jax.tasks.common import execution_fields
from latent_jax.train.trainer import Trainer, check_mode, quiet_logs, write_json

@dataclasses.dataclass
class MMItem:
    """One example before tokenisation: text before/after the media, media, steps, answer."""

    before: str
    after: str
    media: Any  # ("video", path | None) or ("image", path)
    steps: list[str]
    answer: str
    row: dict


# ------------------------------------------------------------------------ setup
# what config.model.path should hold, by config.model.family (the configs' model)
MODEL_HINTS = {
    "internvl": "a local InternVL3 HF directory, e.g. huggingface-cli download OpenGVLab/InternVL3-1B-hf --local-dir DIR",
    "phi4mm": "a local Phi-4-multimodal HF directory in the transformers layout, e.g. huggingface-cli download "
              "microsoft/Phi-4-multimodal-instruct --local-dir DIR, converted with transformers' "
              "convert_phi4_multimodal_weights_to_hf.py",
}


def _require(path: str, key: str, hint: str) -> str:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"config.{key}={path!r} does not exist; set --config.{key}=DIR ({hint})")
    return path


def ensure_smoke_fixtures(config: ConfigDict, workdir: str) -> None:
    """Build the tiny model and dataset the :smoke presets point at (nothing downloaded) in
    config.fixtures_dir (default workdir/fixtures; kept when present) and point config there."""
    fdir = config.fixtures_dir or os.path.join(workdir, "fixtures")
    fam = config.model.family
    mdir = os.path.join(fdir, f"tiny_{fam}")
    if not os.path.exists(os.path.join(mdir, "config.json")):
        fx.make_tiny_vlm(fam, mdir, seed=config.seed)
    with config.unlocked():
        config.fixtures_dir = fdir  # chained runs share these fixtures
        config.model.path = mdir
        config.data.path = root = os.path.join(fdir, config.data.dataset)
        if config.data.dataset == "cinepile":
            if not os.path.exists(os.path.join(root, "test.parquet")):
                fx.write_cinepile_fixture(root, n_train=8, n_test=6, n_clips=3, num_frames=8)
        else:
            if not os.path.exists(os.path.join(root, "aokvqa_v1p0_val.json")):
                fx.write_aokvqa_fixture(root, n_train=8, n_val=6)
            config.data.coco_dir = os.path.join(root, "coco")


def load_items(config: ConfigDict, split: str) -> tuple[list[MMItem], dict]:
    """The dataset's examples for `split` as MMItems (+ stats)."""
    d = config.data
    if d.dataset == "cinepile":
        rows = cp.filter_rows(cp.load_rows(d.path, split), d.use_hard_split, d.visual_reliance, d.max_videos)
        clips = cp.default_clips_dir(d.path, d.clips_dir)
        exs, stats = cp.build_examples(rows, clips, d.missing_clip, float(d.max_unreadable_fraction),
                                       cp.prepare_command(d.path, split, d.clips_dir, d.max_videos,
                                                          d.use_hard_split, d.visual_reliance))
        before = "" if d.short_prompt else cp.PROMPT + "\n"
        subs = lambda row: "" if d.short_prompt else f"**Subtitles:**\n{row.get('subtitles') or ''}\n"  # noqa: E731
        return [MMItem(before, f"{subs(e.row)}Question: {cp.format_question(e.row)}\n", ("video", e.clip), [],
                       e.answer, e.row) for e in exs], stats
    if d.dataset == "aokvqa":
        rows = ak.load_rows(d.path, split)
        coco = _require(d.coco_dir, "data.coco_dir", "COCO 2017 with train2017/ and val2017/")
        items, missing = [], 0
        for r in rows:
            p = ak.image_path(coco, split, r["image_id"])
            if not os.path.exists(p):
                missing += 1
                continue
            # the answer after a delimiter, as the text format's "###": a rationale that names
            # another option does not decide the score (ak.final_answer reads what follows it)
            items.append(MMItem("", ak.format_question(r, d.multiple_choice), ("image", p), ak.cot_steps(r),
                                f"{ak.ANSWER_DELIMITER} {ak.answer_text(r)}", r))
        if rows and not items:
            raise FileNotFoundError(f"none of the {len(rows)} {split} images is in config.data.coco_dir={coco} "
                                    f"(expected {ak.image_path(coco, split, rows[0]['image_id'])}); "
                                    f"download COCO 2017 {split}2017/ there or set --config.data.coco_dir")
        return items, {"rows": len(rows), "missing_images": missing}
    raise ValueError(f"config.data.dataset={d.dataset!r}; use cinepile or aokvqa")


_FEATURE_FNS: dict[Any, Any] = {}  # jitted vision functions shared by runs in one process


class FeatureCache:
    """Frozen vision features per media file, computed once with a jitted tower."""

    def __init__(self, cfg: VLMConfig, params: dict, config: ConfigDict):
        self.cfg, self.params, self.data = cfg, params, config.data
        self.model = VisionLanguageModel(cfg)
        self.cache: dict[Any, np.ndarray] = {}
        self.tokens_before = self.tokens_after = 0

    def jitted(self, key: tuple, fn):
        if key not in _FEATURE_FNS:
            _FEATURE_FNS[key] = jax.jit(fn)
        return _FEATURE_FNS[key]

    def video(self, path: str) -> np.ndarray:
        if path not in self.cache:
            d, model = self.data, self.model
            tpf, clip = int(d.hico_tokens_per_frame) if d.use_hico else None, int(d.hico_clip_frames)
            fn = self.jitted(("video", self.cfg, tpf, clip),
                             lambda p, f: model.apply({"params": p}, f, tpf, clip, method="video_features"))
            px = vlm_video_frames(self.cfg, path, int(d.num_frames))
            self.cache[path] = feats = np.asarray(fn(self.params, jnp.asarray(px)))
            self.tokens_before += px.shape[0] * self.cfg.tokens_per_tile
            self.tokens_after += feats.shape[0]
        return self.cache[path]

    def image(self, path: str) -> np.ndarray:
        if path not in self.cache:
            px, pm, layouts = vlm_image_inputs(self.cfg, path, int(self.data.max_tiles))
            model = self.model
            if layouts is None:
                fn = self.jitted(("internvl", self.cfg),
                                 lambda p, x: model.apply({"params": p}, x, method="image_features"))
                args = (jnp.asarray(px),)
            else:
                fn = self.jitted(("phi4", self.cfg, layouts),
                                 lambda p, x, m: model.apply({"params": p}, x, m, layouts, method="image_features"))
                args = (jnp.asarray(px), jnp.asarray(pm))
            self.cache[path] = np.asarray(fn(self.params, *args))
        return self.cache[path]

    def features(self, media) -> np.ndarray | None:
        kind, path = media
        if path is None:
            return None
        return self.video(path) if kind == "video" else self.image(path)


def tokenize_items(items: list[MMItem], tok, feats: FeatureCache, image_token_id: int) -> tuple[list, list]:
    """TokenizedExamples (placeholders expanded to the feature count) and their features."""
    out, fs = [], []
    for i, it in enumerate(items):
        f = feats.features(it.media)
        n = 0 if f is None else f.shape[0]
        q = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(it.before) + [image_token_id] * n \
            + tok.encode(it.after)
        steps = tuple(tuple(tok.encode(s + "\n")) for s in it.steps)
        ans = tuple(tok.encode(it.answer)) + (tok.eos_id,)
        out.append(TokenizedExample(question_ids=tuple(q), step_ids=steps, answer_ids=ans, idx=i,
                                    extra={"question": it.after, "answer": it.answer}))
        fs.append(f)
    return out, fs


def score_item(config: ConfigDict, it: MMItem, text: str) -> dict:
    r = it.row
    if config.data.dataset == "cinepile":
        return {"question": r["question"], "response": text, "answer": it.answer,
                "correct": cp.score_response(text, r["answer_key_position"], r["answer_key"], config.eval.scorer),
                "question_category": r.get("question_category"), "hard_split": r.get("hard_split"),
                "visual_reliance": r.get("visual_reliance"), "video": it.media[1] is not None}
    return {"question_id": r.get("question_id"), "question": r["question"], "response": text, "answer": it.answer,
            **ak.score(text, r, config.eval.scorer)}


class MMEmbeds:
    """EmbeddingSource (tasks/coconut.CoconutTask): each row's frozen image / video features
    (`feats[split][example_idx]`) at its placeholder tokens."""

    def __init__(self, feats: dict[str, list], image_token_id: int, dim: int):
        self.feats, self.image_token_id, self.dim = feats, image_token_id, dim

    def arrays(self, input_ids: np.ndarray, example_idx: np.ndarray, split: str) -> dict:
        emb = np.zeros(input_ids.shape + (self.dim,), np.float32)
        mask = input_ids == self.image_token_id
        for b, i in enumerate(example_idx):
            if i < 0:
                mask[b] = False
                continue
            f, pos = self.feats[split][i], np.nonzero(mask[b])[0]
            if f is None or len(pos) != f.shape[0]:
                n = 0 if f is None else f.shape[0]
                raise ValueError(f"row {b}: {len(pos)} image placeholders but {n} features")
            emb[b, pos] = f
        return {"embeds_override": emb, "embeds_override_mask": mask}


class MMScorer:
    """The dataset's official scoring of one response (CinePile / A-OKVQA) and of a split."""

    def __init__(self, config: ConfigDict, items: dict[str, list]):
        self.config, self.items = config, items

    def score(self, eb, row: int, text: str, split: str) -> dict:
        return score_item(self.config, self.items[split][int(eb.example_idx[row])], text)

    def results(self, rows: list[dict]) -> dict:
        if self.config.data.dataset != "cinepile":
            return ak.results(rows, self.config.eval.scorer)
        return {**cp.results(rows), "scorer": self.config.eval.scorer}


def load_model(config: ConfigDict):
    """(VLMConfig, params, unused HF tensors, tokenizer, latent ids): from an HF directory or an
    Orbax VLM checkpoint, the vocabulary grown for the Coconut tokens, the language model's
    dtype / remat / scan_layers / ce_chunk / attention from config.model."""
    m = config.model
    cfg, params, unused = load_vlm_any(config.load_model_path or m.path, dtype=m.param_dtype)
    tok = load_tokenizer(tokenizer_dir(config))
    ids = add_coconut_tokens(tok)
    lm, text = params["language_model"], cfg.text
    if tok.vocab_size > text.vocab_size:
        lm, text = resize_embeddings(lm, text, tok.vocab_size)
    scan = bool(m.scan_layers)
    if scan != text.scan_layers:
        lm = restack_layers(lm, text, scan)
    text = text.replace(dtype=m.dtype, remat_policy=m.remat_policy, scan_layers=scan, **execution_fields(m))
    return cfg.replace(text=text), dict(params, language_model=lm), unused, tok, ids


def tokenizer_dir(config: ConfigDict) -> str:
    """Where the tokenizer is: config.load_model_path when it holds tokenizer files, else model.path."""
    src = config.load_model_path or config.model.path
    has_tok = any(os.path.exists(os.path.join(src, f)) for f in ("tokenizer_config.json", "tokenizer.json"))
    return src if has_tok else config.model.path


# --------------------------------------------------------------------------- run
def run(config: ConfigDict, workdir: str) -> dict:
    """Train (config.mode == 'train') and evaluate a multimodal Coconut model, or a chain of
    modes (config.chain); returns the results."""
    check_mode(config)
    if config.data.dataset == "cinepile":
        cp.check_scorer(config.eval.scorer)
    elif config.data.dataset == "aokvqa":
        ak.check_scorer(config.eval.scorer)
    if config.smoke:  # one set of fixtures for chained runs
        config = copy.deepcopy(config)
        ensure_smoke_fixtures(config, workdir)
    return coconut.run(config, workdir, run_one=run_single, result_key="")


def run_single(config: ConfigDict, workdir: str) -> dict:
    """One multimodal Coconut mode in `workdir`."""
    quiet_logs(config)
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    curriculum_config(config)  # a wrong coconut_mode stops here, before anything is loaded
    if config.smoke:
        config = copy.deepcopy(config)
        ensure_smoke_fixtures(config, workdir)
    d = config.data
    _require(config.model.path, "model.path", MODEL_HINTS.get(config.model.family, MODEL_HINTS["internvl"]))
    if not is_hub_name(d.path):
        _require(d.path, "data.path", "python -m latent_jax.data.cinepile prepare --root DIR"
                 if d.dataset == "cinepile" else "the A-OKVQA v1p0 JSON directory")
    cfg, params, unused, tok, ids = load_model(config)
    feats = FeatureCache(cfg, params, config)
    items, eval_stats = load_items(config, d.eval_split)
    sets = {"eval": items[: int(d.max_eval) or None]}
    if config.mode == "train":
        items, train_stats = load_items(config, d.train_split)
        items, hold = items[: int(d.max_train) or None], int(d.val_holdout)
        sets.update(val=items[:hold] if hold else sets["eval"], train=items[hold:])
        if not sets["train"]:
            raise ValueError(f"no training examples in {d.path} ({train_stats}); check the clips / filters")
    tokd = {k: tokenize_items(v, tok, feats, cfg.image_token_id) for k, v in sets.items()}
    data = coconut_data(config, {k: ex for k, (ex, _) in tokd.items()}, ids, tok.pad_id, int(config.batch_size))
    embeds = MMEmbeds({k: f for k, (_, f) in tokd.items()}, cfg.image_token_id, cfg.text.hidden_size)

    def export(path, lm):  # the best model: the whole VLM (vision tower + trained LM), an Orbax checkpoint
        save_vlm_checkpoint(path, dict(params, language_model=lm), cfg, unused, tokenizer_dir=config.model.path)

    load = lambda path: load_vlm_any(path)[1]["language_model"]  # noqa: E731
    task = CoconutTask(config, workdir, cfg.text, tok, data, export, load, embeds, MMScorer(config, sets))
    task.test_dir = workdir  # the eval split's predictions.jsonl and results.json
    trainer = Trainer(config, task, workdir)
    if config.mode == "train":
        steps = task.num_epochs * task.steps_per_epoch() // int(config.optim.grad_accum)
        out = trainer.fit(trainer.init_state(params["language_model"], max(1, steps)))
        if out["stopped"]:
            return out
        res, history = out.pop("test"), out["history"]
    else:
        res, history = task.test(trainer.put(params["language_model"]), int(config.seed)), []
    res.update(eval_data=eval_stats, history=history, mode=config.coconut_mode, eval_stage=task.test_stage,
               seconds=round(time.time() - t0, 1))
    if feats.tokens_before:
        res["video_tokens"] = {"before": feats.tokens_before, "after": feats.tokens_after,
                               "compression_ratio": compression_ratio(feats.tokens_before, feats.tokens_after)}
    write_json(os.path.join(workdir, "results.json"), res)
    if config.mode == "train" and config.save_model:
        _, best, best_unused = load_vlm_any(os.path.join(workdir, "best_model"))  # every process (Orbax's restore)
        if is_primary():  # one writer of the HF directory
            save_vlm(best, cfg, os.path.join(workdir, "final_model"), tokenizer_dir=config.model.path,
                     unused=best_unused)
        barrier("coconut_mm:final_model")
    print(json.dumps({k: res[k] for k in ("accuracy", "n") if k in res}))
    return res
