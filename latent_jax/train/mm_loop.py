"""Multimodal Coconut: `run(config, workdir)` for the `multimodal_coconut` workflow.

The Coconut curriculum (latent_jax.latent.curriculum) and continuous thought
(latent_jax.latent.coconut) with image or video embeddings in the prefix:

    prompt  = instructions + <image>*N + question (+ <|start-latent|> <|latent|>*k <|end-latent|>)
    target  = remaining reasoning steps + answer + eos

The vision tower and projector run once per example (they are frozen; the language model
is trained) and their features replace the `<image>` placeholders through
`embeds_override`. Datasets: CinePile (video; HiCo optional) and A-OKVQA (image; rationales
are the CoT steps). Modes (config.coconut_mode): no_cot (vanilla), cot, coconut.

    workdir/metrics.jsonl, tb/       train loss / eval accuracy (MetricsWriter)
    workdir/predictions.jsonl        per eval example: prompt question, response, scores
    workdir/results.json             dataset results (CinePile: accuracy per category,
                                     hard_split, visual_reliance, and the scorer that produced
                                     them, config.eval.scorer; A-OKVQA: MC and DA) +
                                     HiCo compression ratio and data stats
    workdir/checkpoints/             TrainCheckpointer: the latest training state (params,
                                     optimizer, step, epoch, batch position, history)
    workdir/final_model/             HF export of the trained model (config.save_model)

Resume: a restarted run continues from the latest checkpoint (saved at every epoch end,
every `checkpoint_every_steps` and at `max_steps`, which stops the run before evaluation).
Sharding: the language model's params, optimizer state and batches are placed on the
`config.mesh` mesh with latent_jax.parallel, through latent_jax.train.loop.Trainer (its
init_state / reset_optimizer are reused; the step adds the image-embedding inputs). The
frozen vision tower runs replicated, once per media file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from latent_jax.data.hf_datasets import is_hub_name
from latent_jax.data.pipeline import collate_eval, collate_train
from latent_jax.data.tokenizer import add_coconut_tokens, load_tokenizer, resize_embeddings
from latent_jax.decoding.sampling import SamplingParams
from latent_jax.latent.coconut import check_thought_norm, coconut_generate
from latent_jax.latent.curriculum import (
    CurriculumConfig,
    TokenizedExample,
    eval_prompt,
    scheduled_stage,
    train_sample,
)
from latent_jax.models.multimodal import VLMConfig, VisionLanguageModel
from latent_jax.parallel import batch_sharding, make_mesh, replicated
from latent_jax.train.loop import BATCH_KEYS, Trainer, eval_geometry, repad, train_geometry
from latent_jax.train.metrics import MetricsWriter
from latent_jax.train.optim import make_optimizer

log = logging.getLogger(__name__)
IMAGE_PLACEHOLDER = "<image>"


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


def _ensure_smoke_fixtures(config: ConfigDict, workdir: str) -> None:
    """Build the tiny model and dataset the :smoke presets point at (nothing downloaded)."""
    from latent_jax.data import mm_fixtures as fx

    fdir = config.get("fixtures_dir") or os.path.join(workdir, "fixtures")
    fam = config.model.family
    mdir = os.path.join(fdir, f"tiny_{fam}")
    if not os.path.exists(os.path.join(mdir, "config.json")):
        fx.make_tiny_vlm(fam, mdir, seed=config.seed)
    with config.unlocked():
        config.model.path = mdir
        if config.data.dataset == "cinepile":
            root = os.path.join(fdir, "cinepile")
            if not os.path.exists(os.path.join(root, "test.parquet")):
                fx.write_cinepile_fixture(root, n_train=8, n_test=6, n_clips=3, num_frames=8)
            config.data.path = root
        else:
            root = os.path.join(fdir, "aokvqa")
            if not os.path.exists(os.path.join(root, "aokvqa_v1p0_val.json")):
                fx.write_aokvqa_fixture(root, n_train=8, n_val=6)
            config.data.path = root
            config.data.coco_dir = os.path.join(root, "coco")


def load_items(config: ConfigDict, split: str) -> tuple[list[MMItem], dict]:
    """The dataset's examples for `split` as MMItems (+ stats)."""
    d = config.data
    if d.dataset == "cinepile":
        from latent_jax.data import cinepile as cp

        rows = cp.filter_rows(cp.load_rows(d.path, split), d.use_hard_split, d.visual_reliance, d.max_videos)
        clips = cp.default_clips_dir(d.path, d.clips_dir)
        exs, stats = cp.build_examples(rows, clips, d.missing_clip, float(d.get("max_unreadable_fraction", 0.1)),
                                       cp.prepare_command(d.path, split, d.clips_dir, d.max_videos,
                                                          d.use_hard_split, d.visual_reliance))
        items = []
        for e in exs:
            before = "" if d.get("short_prompt") else cp.PROMPT + "\n"
            subs = "" if d.get("short_prompt") else f"**Subtitles:**\n{e.row.get('subtitles') or ''}\n"
            after = f"{subs}Question: {cp.format_question(e.row)}\n"
            items.append(MMItem(before, after, ("video", e.clip), [], e.answer, e.row))
        return items, stats
    if d.dataset == "aokvqa":
        from latent_jax.data import aokvqa as ak

        rows = ak.load_rows(d.path, split)
        coco = _require(d.coco_dir, "data.coco_dir", "COCO 2017 with train2017/ and val2017/")
        items, missing = [], 0
        for r in rows:
            p = ak.image_path(coco, split, r["image_id"])
            if not os.path.exists(p):
                missing += 1
                continue
            items.append(MMItem("", ak.format_question(r, d.multiple_choice), ("image", p), ak.cot_steps(r),
                                ak.answer_text(r), r))
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
        self.cfg, self.params, self.config = cfg, params, config
        self.model = VisionLanguageModel(cfg)
        self.cache: dict[Any, np.ndarray] = {}
        self.tokens_before = 0
        self.tokens_after = 0
        d = config.data
        self.tpf = int(d.hico_tokens_per_frame) if d.get("use_hico") else None
        vkey = ("video", cfg, self.tpf, int(d.hico_clip_frames))
        if vkey not in _FEATURE_FNS:
            model, tpf, clip = self.model, self.tpf, int(d.hico_clip_frames)
            _FEATURE_FNS[vkey] = jax.jit(lambda p, f: model.apply({"params": p}, f, tpf, clip, method="video_features"))
        self._video = _FEATURE_FNS[vkey]
        self._img = _FEATURE_FNS

    def video(self, path: str) -> np.ndarray:
        from latent_jax.data.image_processing import vlm_video_frames

        if path not in self.cache:
            px = vlm_video_frames(self.cfg, path, int(self.config.data.num_frames))
            feats = np.asarray(self._video(self.params, jnp.asarray(px)))
            self.cache[path] = feats
            self.tokens_before += px.shape[0] * self.cfg.tokens_per_tile
            self.tokens_after += feats.shape[0]
        return self.cache[path]

    def image(self, path: str) -> np.ndarray:
        from latent_jax.data.image_processing import vlm_image_inputs

        if path not in self.cache:
            px, pm, layouts = vlm_image_inputs(self.cfg, path, int(self.config.data.max_tiles))
            model = self.model
            if layouts is None:
                key, args = ("internvl", self.cfg), (jnp.asarray(px),)
                fn = lambda p, x: model.apply({"params": p}, x, method="image_features")  # noqa: E731
            else:
                key, args = ("phi4", self.cfg, layouts), (jnp.asarray(px), jnp.asarray(pm))
                fn = lambda p, x, m, _l=layouts: model.apply({"params": p}, x, m, _l, method="image_features")  # noqa: E731
            if key not in self._img:
                self._img[key] = jax.jit(fn)
            self.cache[path] = np.asarray(self._img[key](self.params, *args))
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


def overrides(input_ids: np.ndarray, example_idx: np.ndarray, feats: list, image_token_id: int, dim: int):
    """(embeds_override (B, T, D), mask (B, T)) placing each row's features at its placeholders."""
    B, T = input_ids.shape
    emb = np.zeros((B, T, dim), np.float32)
    mask = input_ids == image_token_id
    for b in range(B):
        if example_idx[b] < 0:
            mask[b] = False
            continue
        f = feats[example_idx[b]]
        pos = np.nonzero(mask[b])[0]
        if f is None or len(pos) != f.shape[0]:
            raise ValueError(f"row {b}: {len(pos)} image placeholders but {0 if f is None else f.shape[0]} features")
        emb[b, pos] = f
    return emb, mask


def curriculum(config: ConfigDict) -> CurriculumConfig:
    """The CurriculumConfig of config.coconut_mode + config.coconut (ablation included)."""
    c = config.coconut
    return CurriculumConfig(mode=config.coconut_mode, ablation=str(c.get("ablation", "none") or "none"),
                            c_thought=int(c.c_thought), epochs_per_stage=int(c.epochs_per_stage),
                            max_latent_stage=int(c.max_latent_stage), pad_latent_to_max=bool(c.pad_latent_to_max),
                            seed=int(config.seed))


# ------------------------------------------------------------------------- train
MM_KEYS = tuple(BATCH_KEYS) + ("embeds_override", "embeds_override_mask")
_MM_STEPS: dict[tuple, Any] = {}  # compiled steps shared by runs in one process


class MMTrainer(Trainer):
    """latent_jax.train.loop.Trainer (sharded state, optimizer reset) whose step also takes the
    image/video embeddings (`embeds_override`, `embeds_override_mask`) of each batch."""

    def place_batch(self, arrays: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, np.ndim(arrays[k])),
                                                          np.asarray(arrays[k])) for k in MM_KEYS}

    def mm_step(self, state: dict, cb, geom: tuple[int, int], pad_id: int, feats: list, image_token_id: int):
        """One optimizer step on a CoconutBatch re-padded to `geom`, with its rows' features."""
        arrays = repad(cb.arrays, cb.latent_start, geom[0], geom[1], pad_id)
        arrays["embeds_override"], arrays["embeds_override_mask"] = overrides(
            arrays["input_ids"], cb.example_idx, feats, image_token_id, self.mcfg.hidden_size)
        key = (geom[0], cb.num_latent, bool(cb.feedback))
        ckey = (self.mcfg, self.tx_key, self.mesh, self.remat, self.thought_norm, key)
        fn = _MM_STEPS.get(ckey)
        if fn is None:
            fn = _MM_STEPS[ckey] = self._make_mm_step(*key)
        return fn(state, self.place_batch(arrays))

    def _make_mm_step(self, latent_start: int, num_latent: int, feedback: bool):
        step = self.train_step_fn(latent_start, num_latent, feedback)  # the text trainer's step
        sh = self.shardings(self._state_example)
        bsh = {k: batch_sharding(self.mesh, 3 if k == "embeds_override" else 2) for k in MM_KEYS}
        return jax.jit(step, in_shardings=(sh, bsh), out_shardings=(sh, replicated(self.mesh)), donate_argnums=0)


def train(config: ConfigDict, workdir: str, cfg: VLMConfig, lm: dict, tok, ids, cc: CurriculumConfig,
          train_ex: list, train_feats: list, mesh, writer: MetricsWriter) -> dict:
    """The curriculum over config.num_epochs, resuming from workdir/checkpoints. Returns
    {params, stage, history} or, when stopped at config.max_steps, {stopped, step, history}."""
    from latent_jax.train.checkpoint import TrainCheckpointer

    B = int(config.batch_size)
    bucket = int(config.get("bucket", 16))
    n_epochs = int(config.num_epochs)
    steps_per_epoch = -(-len(train_ex) // B)
    tx = make_optimizer(lm, config.optim, n_epochs * steps_per_epoch)
    tx_key = json.dumps([config.optim.to_dict(), n_epochs * steps_per_epoch], sort_keys=True, default=str)
    trainer = MMTrainer(config, cfg.text, tx, mesh, tx_key=tx_key)
    state = trainer.init_state(lm)
    ckpt = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep_best=int(config.get("keep_best", 1) or 1),
                             best_metric="loss", mode="min")
    start_epoch, start_batch, history, partial = 0, 0, [], []
    if ckpt.latest_step() is not None:
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, extra = ckpt.restore_latest(template)
        start_epoch, start_batch = int(extra["next_epoch"]), int(extra.get("next_batch", 0))
        history, partial = list(extra.get("history", [])), list(extra.get("epoch_losses", []))
        print(f"resumed from step {int(state['step'])} (epoch {start_epoch}, batch {start_batch})", flush=True)

    def save(next_epoch: int, next_batch: int, losses: list) -> None:
        metrics = {"loss": float(np.mean(losses)) if losses else float("inf")}
        ckpt.save(int(state["step"]), state, metrics, {"next_epoch": next_epoch, "next_batch": next_batch,
                                                   "history": history, "epoch_losses": losses})
        ckpt.wait()

    reset_opt = bool(config.optim.get("reset_on_stage_change", False))
    max_steps = int(config.get("max_steps", 0) or 0)
    ckpt_every = int(config.get("checkpoint_every_steps", 0) or 0)
    log_every = max(1, int(config.log_every))
    stage = scheduled_stage(max(0, min(start_epoch, n_epochs) - 1), cc)
    for epoch in range(start_epoch, n_epochs):
        stage = scheduled_stage(epoch, cc)
        first = start_batch if epoch == start_epoch else 0
        losses = partial if epoch == start_epoch else []
        if reset_opt and epoch > 0 and first == 0 and stage != scheduled_stage(epoch - 1, cc):
            state = trainer.reset_optimizer(state)
        geom = train_geometry(train_ex, epoch, cc, ids, bucket)
        order = np.random.default_rng([int(config.seed), epoch]).permutation(len(train_ex))
        for bi, s in enumerate(range(0, len(order), B)):
            if bi < first:
                continue
            samples = [train_sample(train_ex[i], epoch, cc, ids) for i in order[s : s + B]]
            cb = collate_train(samples, B, tok.pad_id, bucket=bucket, feedback=cc.feedback, stage=stage)
            state, m = trainer.mm_step(state, cb, geom, tok.pad_id, train_feats, cfg.image_token_id)
            losses.append(float(m["loss"]))
            gstep = int(state["step"])
            if gstep % log_every == 0:
                writer.write(gstep, {"loss": float(m["loss"]), "token_accuracy": float(m["token_accuracy"])}, "train/")
            if max_steps and gstep >= max_steps:
                save(epoch, bi + 1, losses)
                ckpt.close()
                return {"stopped": True, "step": gstep, "history": history}
            if ckpt_every and gstep % ckpt_every == 0:
                save(epoch, bi + 1, losses)
        writer.write(int(state["step"]), {"epoch_loss": float(np.mean(losses)), "stage": stage}, "train/")
        history.append({"epoch": epoch, "stage": stage, "loss": float(np.mean(losses))})
        save(epoch + 1, 0, losses)
    ckpt.close()
    return {"params": state["params"], "stage": stage, "history": history}


# --------------------------------------------------------------------------- run
def run(config: ConfigDict, workdir: str) -> dict:
    """Train (config.mode == 'train') and evaluate a multimodal Coconut model; returns results."""
    from latent_jax.models.hf_vlm import load_vlm, save_vlm

    t0 = time.time()
    if config.get("smoke"):
        _ensure_smoke_fixtures(config, workdir)
    d = config.data
    if d.dataset == "cinepile":
        from latent_jax.data.cinepile import check_scorer

        check_scorer(config.eval.get("scorer", "official"))
    _require(config.model.path, "model.path", MODEL_HINTS.get(config.model.get("family", ""), MODEL_HINTS["internvl"]))
    if not is_hub_name(d.path):
        _require(d.path, "data.path", "python -m latent_jax.data.cinepile prepare --root DIR"
                 if d.dataset == "cinepile" else "the A-OKVQA v1p0 JSON directory")
    cfg, params = load_vlm(config.model.path)
    tok = load_tokenizer(config.model.path)
    ids = add_coconut_tokens(tok)
    lm = params["language_model"]
    text_cfg = cfg.text
    if tok.vocab_size > text_cfg.vocab_size:
        lm, text_cfg = resize_embeddings(lm, text_cfg, tok.vocab_size)
        cfg = cfg.replace(text=text_cfg)
    params = dict(params, language_model=lm)
    feats = FeatureCache(cfg, params, config)
    cc = curriculum(config)
    writer = MetricsWriter(workdir, config.get("wandb_project", ""), config.to_dict())

    eval_items, eval_stats = load_items(config, d.eval_split)
    if d.get("max_eval"):
        eval_items = eval_items[: int(d.max_eval)]
    eval_ex, eval_feats = tokenize_items(eval_items, tok, feats, cfg.image_token_id)
    stage = 0
    history = []
    mesh = make_mesh(dict(config.mesh))
    if config.mode == "train":
        train_items, train_stats = load_items(config, d.train_split)
        if d.get("max_train"):
            train_items = train_items[: int(d.max_train)]
        if not train_items:
            raise ValueError(f"no training examples in {d.path} ({train_stats}); check the clips / filters")
        train_ex, train_feats = tokenize_items(train_items, tok, feats, cfg.image_token_id)
        out = train(config, workdir, cfg, lm, tok, ids, cc, train_ex, train_feats, mesh, writer)
        if out.get("stopped"):
            writer.close()
            return out
        lm, stage, history = out["params"], out["stage"], out["history"]
        params = dict(params, language_model=lm)

    res = evaluate(config, cfg, lm, tok, ids, cc, stage, eval_items, eval_ex, eval_feats, workdir, mesh)
    res.update(eval_data=eval_stats, history=history, mode=config.coconut_mode, seconds=round(time.time() - t0, 1))
    if feats.tokens_before:
        from latent_jax.data.hico import compression_ratio

        res["video_tokens"] = {"before": feats.tokens_before, "after": feats.tokens_after,
                               "compression_ratio": compression_ratio(feats.tokens_before, feats.tokens_after)}
    writer.write(0, {"accuracy": res["accuracy"]}, "eval/")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    if config.mode == "train" and config.get("save_model"):
        save_vlm(jax.device_get(params), cfg, os.path.join(workdir, "final_model"), tokenizer_dir=config.model.path)
    writer.close()
    print(json.dumps({k: res[k] for k in ("accuracy", "n") if k in res}))
    return res


def evaluate(config, cfg, lm, tok, ids, cc, stage, items, exs, feats, workdir, mesh=None) -> dict:
    """Generate for every eval example (batched, KV cached, params on `mesh`; every batch
    re-padded to one geometry, so one compiled program) and score with the dataset's rules."""
    from latent_jax.parallel import param_shardings

    e = config.eval
    B = int(config.batch_size)
    bucket = int(config.get("bucket", 16))
    if mesh is not None:
        lm = jax.device_put(lm, param_shardings(lm, mesh))
    eval_stage = int(e.stage) if e.get("stage", -1) >= 0 else max(stage, cc.max_latent_stage if cc.mode == "coconut" else 0)
    sp = SamplingParams.make(float(e.temperature), float(e.top_p))
    stop = jnp.asarray([tok.eos_id], jnp.int32)
    records = []
    rng = jax.random.PRNGKey(int(config.seed))
    geom = eval_geometry(exs, eval_stage, cc, ids, bucket) if exs else None
    thought_norm = check_thought_norm(str(config.get("thought_norm", "none")))
    for s in range(0, len(exs), B):
        prompts = [eval_prompt(x, eval_stage, cc, ids) for x in exs[s : s + B]]
        eb = collate_eval(prompts, B, tok.pad_id, bucket=bucket, feedback=cc.feedback, stage=eval_stage)
        a = repad(eb.arrays, eb.latent_start, geom[0], geom[1], tok.pad_id)
        emb, m = overrides(a["input_ids"], eb.example_idx, feats, cfg.image_token_id, cfg.text.hidden_size)
        rng, k = jax.random.split(rng)
        out = coconut_generate(
            lm, jnp.asarray(a["input_ids"]), jnp.asarray(a["attention_mask"]),
            jnp.asarray(a["latent_mask"]), k, sp, stop, config=cfg.text, latent_start=geom[0],
            num_latent=eb.num_latent, max_new_tokens=int(e.max_new_tokens), pad_id=tok.pad_id,
            feedback=bool(eb.feedback), thought_norm=thought_norm, embeds_override=jnp.asarray(emb),
            embeds_override_mask=jnp.asarray(m))
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        for b, p in enumerate(prompts):
            it = items[p.idx]
            text = tok.decode(toks[b, : lens[b]], skip_special_tokens=True)
            records.append(score_item(config, it, text))
    with open(os.path.join(workdir, "predictions.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if config.data.dataset == "cinepile":
        from latent_jax.data.cinepile import results
    else:
        from latent_jax.data.aokvqa import results
    out = results(records)
    out["eval_stage"] = eval_stage
    if config.data.dataset == "cinepile":
        out["scorer"] = config.eval.get("scorer", "official")
    return out


def score_item(config: ConfigDict, it: MMItem, text: str) -> dict:
    r = it.row
    if config.data.dataset == "cinepile":
        from latent_jax.data.cinepile import score_response

        return {"question": r["question"], "response": text, "answer": it.answer,
                "correct": score_response(text, r["answer_key_position"], r["answer_key"],
                                          config.eval.get("scorer", "official")),
                "question_category": r.get("question_category"), "hard_split": r.get("hard_split"),
                "visual_reliance": r.get("visual_reliance"), "video": it.media[1] is not None}
    from latent_jax.data.aokvqa import direct_answer_accuracy, mc_correct

    return {"question_id": r.get("question_id"), "question": r["question"], "response": text, "answer": it.answer,
            "mc_correct": mc_correct(text, r), "da_accuracy": direct_answer_accuracy(text, r)}
