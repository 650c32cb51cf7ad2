"""The streaming workflow: train a model on a stop / noise mix and evaluate it as a stream.

    python -m latent_jax.main --config=configs/streaming_demo.py --workdir runs/stream
    python -m latent_jax.main --config=configs/streaming_demo.py:smoke --workdir /tmp/stream_smoke

Training data: synthetic video streams (latent_jax.data.streaming.synthetic_streams: frame
tokens of a changing colour, queries about the current / last three colours) with
`data.n_stop` interruptions and `data.n_noise` non-query statements mixed in
(mix_stop_noise). The loss is next-token cross-entropy on the replies (and their end
tokens). Evaluation replays a held-out mix through a StreamSession (incremental ingestion,
respond until the end token, the model's own replies kept in the cache) and reports, per
category, the rate of correct silence on noise turns, of immediate stops on interruptions
and of exact answers on queries. results.json holds the rates; the model (with its
tokenizer) is saved to workdir/best_model for `python -m latent_jax.stream`.
"""

from __future__ import annotations

import os
import random
import time

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from latent_jax.data.streaming import (
    CHAT_TEMPLATES,
    mix_stop_noise,
    render,
    replies,
    synthetic_streams,
    tokenize,
    vocabulary_texts,
)
from latent_jax.data.tokenizer import train_tokenizer
from latent_jax.decoding.streaming import StreamOptions, StreamSession
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder, init_params
from latent_jax.models.io import save_model
from latent_jax.models.lm_head import next_token_stats
from latent_jax.parallel import to_host
from latent_jax.tasks.common import execution_fields
from latent_jax.train.trainer import Batch, IndexedBatches, Task, Trainer, quiet_logs, write_json

CATEGORIES = ("query", "noise", "stop")


def build_tokenizer(workdir: str):
    d = os.path.join(workdir, "tokenizer")
    return train_tokenizer(vocabulary_texts(), d, vocab_size=256, add_latent_tokens=False, kind="whitespace"), d


def encode_samples(samples, tok, template, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (ids, mask, targets) (N, max_len); targets mark reply tokens."""
    enc = lambda t: tok.encode(t)
    N = len(samples)
    ids = np.full((N, max_len), tok.pad_id, np.int32)
    mask = np.zeros((N, max_len), np.int32)
    tgt = np.zeros((N, max_len), np.int32)
    for i, s in enumerate(samples):
        x, y = tokenize(render(s["messages"], template), enc)
        if len(x) > max_len:
            raise ValueError(f"a stream of {len(x)} tokens exceeds data.max_len={max_len}; raise data.max_len")
        ids[i, : len(x)], mask[i, : len(x)], tgt[i, : len(y)] = x, 1, y
    return ids, mask, tgt


def reply_loss(params, config: ModelConfig, ids, mask, tgt):
    """Mean next-token cross-entropy over reply tokens, and their accuracy (the LM head inside
    the loss, over chunks of config.ce_chunk positions)."""
    hidden = Decoder(config).apply({"params": params}, ids, attention_mask=mask).hidden
    labels, w = ids[:, 1:], tgt[:, 1:].astype(jnp.float32)
    logp, argmax = next_token_stats(params, config, hidden, ids)
    nll = -logp
    n = jnp.maximum(jnp.sum(w), 1.0)
    acc = jnp.sum((argmax == labels) * w) / n
    return jnp.sum(nll * w) / n, {"token_accuracy": acc}


def evaluate_streams(session: StreamSession, samples, tok, template) -> dict:
    """Replay each sample through `session` (reset per sample): every non-reply part is
    ingested, every reply is decoded by the session and scored; the model's own reply stays
    in the cache. Returns {category: rate, category_n: count, examples: [...]}."""
    enc = lambda t: tok.encode(t)
    hits = {c: 0 for c in CATEGORIES}
    counts = {c: 0 for c in CATEGORIES}
    examples = []
    for s in samples:
        session.reset()
        want = dict(replies(s))
        pending: list[int] = []
        for i, m in enumerate(s["messages"]):
            if i not in want:
                pending += tokenize(render([m], template), enc)[0]
                continue
            pending += enc(template.assistant_prefix)
            session.ingest(pending)
            pending = enc(template.after_end) if template.after_end.strip() else []
            reply = session.respond()[0]
            kind = m.get("kind", "query")
            if kind in ("noise", "stop"):
                ok = session.is_silence(reply)
            else:
                ok = session.strip(reply) == enc(m["content"]) and len(session.strip(reply)) < len(reply)
            hits[kind] += int(ok)
            counts[kind] += 1
            if len(examples) < 12:
                examples.append({"kind": kind, "user": s["messages"][i - 1]["content"], "want": m["content"],
                                 "got": tok.decode(session.strip(reply)), "silent": session.is_silence(reply),
                                 "correct": bool(ok)})
    out = {c: hits[c] / counts[c] if counts[c] else float("nan") for c in CATEGORIES}
    out.update({f"{c}_n": counts[c] for c in CATEGORIES})
    out["examples"] = examples
    return out


class StreamTask(Task):
    name = "streaming"
    best_metric = "mean_rate"
    best_mode = "max"

    def __init__(self, config: ConfigDict, workdir: str):
        self.c, self.workdir = config, workdir
        d = config.data
        self.template = CHAT_TEMPLATES[d.template]
        self.tok, self.tok_dir = build_tokenizer(workdir)
        m = config.model
        self.mcfg = ModelConfig(
            model_type=m.model_type, vocab_size=self.tok.vocab_size, hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
            head_dim=m.head_dim, max_position_embeddings=m.max_position_embeddings, rms_norm_eps=1e-5,
            bos_token_id=self.tok.bos_id, eos_token_id=tuple(self.tok.encode(self.template.end)),
            pad_token_id=self.tok.pad_id, dtype=m.dtype, param_dtype=m.param_dtype, **execution_fields(m))
        base = synthetic_streams(int(d.n_train), seed=int(config.seed), turns=int(d.turns))
        self.train = mix_stop_noise(base, int(d.n_stop), int(d.n_noise), seed=int(config.seed))
        held = synthetic_streams(int(d.n_eval), seed=int(config.seed) + 1000, turns=int(d.turns))
        # the held-out mix always has all three categories, whatever the training mix
        self.eval = mix_stop_noise(held, int(d.n_eval_each), int(d.n_eval_each), seed=int(config.seed) + 1000)
        self.arrays = encode_samples(self.train, self.tok, self.template, int(d.max_len))
        self.B = int(config.batch_size)
        stop = self.mcfg.eos_token_id
        self.session = StreamSession(
            init_params(self.mcfg, 0), self.mcfg,
            StreamOptions(max_slots=int(config.stream.max_slots), policy=config.stream.policy,
                          sink=int(config.stream.sink), max_new_tokens=int(config.stream.max_new_tokens),
                          min_chunk=8, max_chunk=32), stop_ids=list(stop), pad_id=self.tok.pad_id)

    def compile_key(self):
        return ("streaming", self.mcfg)

    def loss_fn(self, params, batch, static):
        return reply_loss(params, self.mcfg, batch["ids"], batch["mask"], batch["tgt"])

    def steps_per_epoch(self) -> int:
        return len(self.train) // self.B

    def train_batches(self, epoch, data_state):
        order = np.random.default_rng([int(self.c.seed), epoch]).permutation(len(self.train))
        ids, mask, tgt = self.arrays

        def make(i):
            sel = order[i * self.B:(i + 1) * self.B]
            return Batch(static=ids.shape[1], arrays={"ids": ids[sel], "mask": mask[sel], "tgt": tgt[sel]})

        return IndexedBatches(self.steps_per_epoch(), make, data_state)

    def rates(self, params) -> dict:
        self.session.params = params
        return evaluate_streams(self.session, self.eval, self.tok, self.template)

    def evaluate(self, trainer, params, epoch):
        r = self.rates(to_host(params))
        metrics = {c: r[c] for c in CATEGORIES}
        metrics["mean_rate"] = float(np.mean([r[c] for c in CATEGORIES]))
        self.last = r
        return metrics, metrics["mean_rate"]

    def export(self, trainer, params):
        path = save_model(os.path.join(self.workdir, "best_model"), params, self.mcfg, self.tok_dir)
        write_json(os.path.join(path, "stream.json"), {"template": self.template.name})


def run(config: ConfigDict, workdir: str) -> dict:
    """Train on the mix, evaluate as a stream; returns (and writes) results.json's dict."""
    quiet_logs(config)
    t_wall, t_cpu = time.time(), time.process_time()
    random.seed(int(config.seed))
    task = StreamTask(config, workdir)
    trainer = Trainer(config, task, workdir)
    before = task.rates(init_params(task.mcfg, int(config.seed)))
    state = trainer.init_state(init_params(task.mcfg, int(config.seed)),
                               task.steps_per_epoch() * int(config.num_epochs))
    out = trainer.fit(state)
    last = getattr(task, "last", None) or task.rates(to_host(state["params"]))
    res = {
        "workflow": "streaming", "train_samples": len(task.train), "n_stop": int(config.data.n_stop),
        "n_noise": int(config.data.n_noise), "eval_samples": len(task.eval),
        "rates": {c: last[c] for c in CATEGORIES}, "counts": {c: last[f"{c}_n"] for c in CATEGORIES},
        "rates_untrained": {c: before[c] for c in CATEGORIES}, "examples": last["examples"],
        "history": out.get("history", []), "steps": out.get("step"),
        "wall_s": time.time() - t_wall, "cpu_s": time.process_time() - t_cpu,
        "model": os.path.join(workdir, "best_model"),
    }
    write_json(os.path.join(workdir, "results.json"), res)
    print("stream rates (held-out): " + "  ".join(f"{c} {last[c]:.3f} (n={last[c + '_n']})" for c in CATEGORIES)
          + f"   [{res['wall_s']:.0f}s wall, {res['cpu_s']:.0f}s CPU]", flush=True)
    return res
