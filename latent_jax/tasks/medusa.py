"""Workflow "medusa": Medusa draft heads trained on a frozen base model, as a task of the one
Trainer (configs/medusa_heads.py).

The train state's params are the heads only; the frozen base model is a Trainer constant
(trainer.const["base"]: no updates, no optimizer state, not in the checkpoints, which stay
the heads' size; a resumed run loads the base again from config.model.path); the loss is
decoding.speculative.heads_loss on the base model's final hidden states.
data.task: "self_distill" (the base model's own greedy continuations of random prompts,
Medusa-2's recipe when no chat data is at hand) or "text" (windows of a local .txt/.npy/.bin
file via data.text_tokens). Training runs config.train_steps steps (batch i a function of
(seed, step), so config.max_steps interrupts and resumes exactly), then greedy typical
decoding on held-out prompts scores the heads (mean accepted length, the best metric); the
heads are saved to WORKDIR/heads for `python -m latent_jax.generate --strategy typical`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ml_collections import ConfigDict

from latent_jax.decoding.sampling import SamplingParams, generate
from latent_jax.decoding.speculative import (
    acceptance_stats,
    base_hidden,
    heads_loss,
    init_heads,
    save_heads,
    typical_generate,
)
from latent_jax.data.text_tokens import lm_windows, load_tokens
from latent_jax.models.config import ModelConfig
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params
from latent_jax.parallel import to_host
from latent_jax.paths import barrier, is_primary
from latent_jax.tasks.common import load_model
from latent_jax.train.trainer import Batch, IndexedBatches, Task, Trainer, write_json


def sequences(config: ConfigDict, params: dict, mcfg: ModelConfig) -> np.ndarray:
    """(n, seq_len) training + held-out token sequences of config.data.task."""
    d = config.data
    rs = np.random.RandomState(config.seed)
    n_all = int(d.num_sequences) + int(d.num_eval)
    if d.task == "self_distill":
        lo = 3 if mcfg.vocab_size > 8 else 0
        prompts = rs.randint(lo, mcfg.vocab_size, size=(n_all, int(d.prompt_len))).astype(np.int32)
        none = np.zeros((0,), np.int32)
        outs = []
        for i in range(0, n_all, 64):
            p = prompts[i:i + 64]
            g = generate(params, p, np.ones_like(p), jax.random.PRNGKey(i), SamplingParams.make(), none, config=mcfg,
                         max_new_tokens=int(d.seq_len) - int(d.prompt_len))
            outs.append(np.concatenate([p, np.asarray(g.tokens)], axis=1))
        return np.concatenate(outs)
    if d.task == "text":
        seqs = lm_windows(load_tokens(d.path, d.tokenizer_dir or config.model.path), int(d.seq_len) - 1)
        if int(seqs.max()) >= mcfg.vocab_size:
            raise ValueError(f"{d.path} has token ids >= the model vocabulary {mcfg.vocab_size}; set data.tokenizer_dir")
        return seqs[rs.permutation(len(seqs))][:n_all]
    raise ValueError(f"data.task={d.task!r}; use 'self_distill' or 'text'")


class MedusaTask(Task):
    """Draft heads for the Trainer: loss = heads_loss over the frozen base's hidden states;
    evaluation = greedy typical decoding of held-out prompts; export = WORKDIR/heads."""

    name = "medusa"
    best_metric = "mean_accepted_length"

    def __init__(self, config: ConfigDict, workdir: str, mcfg: ModelConfig, train: np.ndarray, held: np.ndarray):
        self.config, self.workdir, self.mcfg, self.train, self.held = config, workdir, mcfg, train, held
        self.decay = float(config.heads.decay)
        self.total = int(config.train_steps)

    def compile_key(self):
        return ("medusa", self.mcfg, self.decay)

    def loss_fn(self, params, batch, static):
        valid = batch["valid"]
        hidden = base_hidden(params["base"], batch["ids"], valid, self.mcfg)
        return heads_loss(params["heads"], hidden, batch["ids"], valid.astype(bool), self.decay)

    def steps_per_epoch(self) -> int:
        return self.total

    def train_batches(self, epoch, data_state):
        B = int(self.config.batch_size)

        def make(i):
            ids = self.train[np.random.default_rng([int(self.config.seed), i]).integers(0, len(self.train), size=B)]
            return Batch(None, {"ids": ids, "valid": np.ones_like(ids)})

        return IndexedBatches(self.total, make, data_state)

    def evaluate(self, trainer, params, epoch):
        prompts = self.held[:, : int(self.config.data.prompt_len)]
        out = typical_generate(trainer.const["base"], params["heads"], prompts, np.ones_like(prompts),
                               jax.random.PRNGKey(0), SamplingParams.make(), np.zeros((0,), np.int32),
                               config=self.mcfg, max_new_tokens=self.held.shape[1] - prompts.shape[1])
        stats = acceptance_stats(out)
        return stats, stats["mean_accepted_length"]

    def export(self, trainer, params):
        heads = to_host(params["heads"])  # every process (a collective when sharded across processes)
        if is_primary():  # one writer of the safetensors file
            save_heads(os.path.join(self.workdir, "heads"), heads,
                       {"decay": self.decay, "base_model": self.config.model.path})
        barrier("medusa:export")


def run(config: ConfigDict, workdir: str) -> dict:
    """Train heads on the base model of config.model.path (or a random tiny one) and report
    their greedy acceptance on held-out prompts; returns the summary (also results.json)."""
    if config.model.path:
        mcfg, params = load_model(config)
    else:  # a random base model (smoke tests)
        mcfg = tiny_config(config.model.model_type, vocab_size=int(config.model.vocab_size))
        params = init_params(mcfg, config.seed)
    seqs = sequences(config, params, mcfg)
    n_eval = min(int(config.data.num_eval), len(seqs) - 1)
    task = MedusaTask(config, workdir, mcfg, seqs[n_eval:], seqs[:n_eval])
    heads = init_heads(mcfg, int(config.heads.num_heads), config.seed, base_params=params)
    trainer = Trainer(config, task, workdir)
    state = trainer.init_state({"heads": heads}, task.total, const={"base": params})
    out = trainer.fit(state, num_epochs=1)
    if out["stopped"]:
        return out
    summary = {"heads_path": os.path.join(workdir, "heads"), **out["history"][-1], "steps": out["step"]}
    write_json(os.path.join(workdir, "results.json"), summary)
    return summary
