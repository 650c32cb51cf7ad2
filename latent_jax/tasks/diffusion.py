"""Workflow "diffusion": train or fine-tune a masked-diffusion LM (LLaDA / MDLM objective) as a
task of the one Trainer.

    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm            # toy task
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.data.task=text --config.data.path=corpus.txt                                 # pre-training
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.model.path=/models/Llama --config.data.task=sft --config.data.path=pairs.jsonl  # SFT fine-tune

The loss is `decoding.diffusion.masked_diffusion_loss` (t ~ U(0,1), each token masked with
p = (1 - eps) t + eps, masked CE / p); the SFT variant (task toy or sft) never masks the
prompt. The decoder runs bidirectionally (diffusion.causal False) unless configured
otherwise. Evaluation decodes held-out answers with `diffusion_generate` and reports token
accuracy. Training runs config.train_steps steps, evaluated every config.eval_every_steps
(one Trainer epoch; 0 = at the end); batch i is a function of (seed, step), so a resumed run
(config.max_steps interrupts) repeats an uninterrupted one. Writes metrics.jsonl /
TensorBoard, a loss plot, results.json, training checkpoints, and the best model (toy / SFT:
answer token accuracy; text: eval loss) as a latent_jax checkpoint in WORKDIR/model (loadable
by the generation CLI: `--strategy diffusion --mask-id ID`).
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from ml_collections import ConfigDict

from latent_jax.decoding.diffusion import (
    DiffusionOptions,
    diffusion_generate,
    masked_diffusion_loss,
)
from latent_jax.data.text_tokens import BYTE_VOCAB, lm_windows, load_tokens
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import init_params
from latent_jax.models.io import load_any, save_model
from latent_jax.parallel import to_host
from latent_jax.tasks.common import load_model, model_config_from
from latent_jax.train.metrics import plot_series, read_metrics
from latent_jax.train.trainer import Batch, IndexedBatches, Task, Trainer, check_mode, quiet_logs, write_json

TASKS = ("toy", "text", "sft")

# toy task vocabulary: 0 pad, 1 bos, 2 sep, 3 mask, digits from 4
TOY_PAD, TOY_BOS, TOY_SEP, TOY_MASK, TOY_DIGIT0 = 0, 1, 2, 3, 4


def toy_examples(n: int, num_digits: int = 6, base: int = 10, seed: int = 0) -> tuple[np.ndarray, int]:
    """SFT toy task: prompt [bos, d_1..d_n, sep], answer the digits reversed and each plus one
    mod base: ((d_{n+1-i} + 1) mod base)_i. Returns
    (ids (n, 2 num_digits + 2), prompt_length)."""
    rs = np.random.RandomState(seed)
    d = rs.randint(0, base, size=(n, num_digits))
    ans = (d[:, ::-1] + 1) % base
    ids = np.concatenate([np.full((n, 1), TOY_BOS), d + TOY_DIGIT0, np.full((n, 1), TOY_SEP), ans + TOY_DIGIT0], 1)
    return ids.astype(np.int32), num_digits + 2


def _sft_rows(path: str, tokenizer_dir: str, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (ids, valid, prompt_mask) from a JSONL of {"prompt": ..., "response": ...}."""
    from transformers import AutoTokenizer

    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.path={path!r} is not a file; point it at a JSONL of prompt/response rows")
    if not tokenizer_dir:
        raise ValueError("data.task=sft needs a tokenizer: set model.path (or data.tokenizer_dir) to an HF directory")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if "prompt" not in r or "response" not in r:
                raise ValueError(f'{path} line {n} needs "prompt" and "response" fields')
            p = tok(r["prompt"])["input_ids"]
            a = tok(r["response"], add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
            rows.append((p, a))
    ids = np.zeros((len(rows), seq_len), np.int32)
    valid, pm = np.zeros_like(ids), np.zeros_like(ids)
    for i, (p, a) in enumerate(rows):
        s = (p + a)[:seq_len]
        ids[i, : len(s)] = s
        valid[i, : len(s)] = 1
        pm[i, : min(len(p), seq_len)] = 1
    return ids, valid, pm


def _build(config: ConfigDict, rng):
    """(model config, params, train rows, eval rows, mask_id, prompt_len for toy eval); rows
    are dicts of ids, valid and prompt_mask arrays."""
    data, d = config.data, config.diffusion
    task, tokdir = data.task, data.tokenizer_dir or config.model.path
    if task not in TASKS:
        raise ValueError(f"data.task={task!r}; use one of {', '.join(TASKS)}")
    prompt_len = None
    if task == "toy":
        ids, prompt_len = toy_examples(data.num_train + data.num_eval, data.num_digits, data.base, config.seed)
        valid, pm = np.ones_like(ids), np.zeros_like(ids)
        pm[:, :prompt_len] = 1
        vocab = TOY_DIGIT0 + data.base
    elif task == "text":
        toks = load_tokens(data.path, tokdir)
        ids = lm_windows(toks, data.seq_len - 1)
        valid, pm = np.ones_like(ids), np.zeros_like(ids)  # pretraining: no prompt
        vocab = BYTE_VOCAB + 1 if not tokdir else int(toks.max()) + 1
    else:
        ids, valid, pm = _sft_rows(data.path, tokdir, data.seq_len)
        vocab = int(ids.max()) + 1
    if config.model.path:
        mcfg, params = load_model(config)
    else:
        extra = 1 if task == "text" and d.mask_id < 0 else 0  # a fresh [MASK] id after the byte vocabulary
        mcfg = model_config_from(config.model, max(vocab + extra, int(d.mask_id) + 1), pad_token_id=0, eos_token_id=())
        params = init_params(mcfg, rng)
    mask_id = int(d.mask_id)
    if mask_id < 0:
        mask_id = TOY_MASK if task == "toy" else mcfg.vocab_size - 1
    if not 0 <= mask_id < mcfg.vocab_size:
        raise ValueError(f"diffusion.mask_id={mask_id} is outside the model vocabulary [0, {mcfg.vocab_size})")
    if mcfg.vocab_size < vocab:
        raise ValueError(f"the data uses token ids up to {vocab - 1} but the model vocabulary is {mcfg.vocab_size}")
    n_eval = data.num_eval if task == "toy" else max(1, int(round(len(ids) * data.eval_fraction)))
    n_eval = min(n_eval, len(ids) - 1)
    perm = np.random.RandomState(config.seed).permutation(len(ids))
    rows = {"ids": ids, "valid": valid, "prompt_mask": pm}
    train, evals = ({k: a[idx] for k, a in rows.items()} for idx in (perm[n_eval:], perm[:n_eval]))
    return mcfg, params, train, evals, mask_id, prompt_len


def evaluate_answers(params, mcfg: ModelConfig, ids: np.ndarray, prompt_len: int, mask_id: int, causal: bool) -> dict:
    """Decode the answers of fixed-length SFT rows (ids (n, P + A), prompt = first P tokens)
    by masked diffusion, one token per step; token accuracy and exact-match rate against the references."""
    A = ids.shape[1] - prompt_len
    opts = DiffusionOptions(steps=A, gen_length=A, block_length=A, mask_id=mask_id, causal=causal)
    prompts = ids[:, :prompt_len]
    out = diffusion_generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0), config=mcfg, opts=opts)
    pred = to_host(out.tokens)  # gathered when sharded across processes
    ref = ids[:, prompt_len:]
    return {"answer_token_acc": float(np.mean(pred == ref)), "answer_exact": float(np.mean(np.all(pred == ref, 1))),
            "decode_forward_passes": int(out.forward_passes)}


class DiffusionTask(Task):
    """Masked-diffusion LM for the Trainer: loss = masked_diffusion_loss with a key per step;
    evaluation = the eval loss (and, on fixed-length SFT rows, answers decoded by diffusion)."""

    name = "diffusion"

    def __init__(self, config: ConfigDict, workdir: str, mcfg: ModelConfig, train: dict, evals: dict, mask_id: int,
                 prompt_len: int | None):
        d = config.diffusion
        if d.objective not in ("sft", "pretrain"):
            raise ValueError(f"diffusion.objective={d.objective!r}; use 'sft' or 'pretrain'")
        self.config, self.workdir, self.mcfg, self.mask_id, self.prompt_len = config, workdir, mcfg, mask_id, prompt_len
        self.causal, self.eps, self.train, self.evals = bool(d.causal), float(d.eps), train, evals
        self.sft = config.data.task != "text" and d.objective == "sft"  # text rows have no prompt
        self.total, every = int(config.train_steps), int(config.eval_every_steps)
        self.spe = min(every, self.total) if every > 0 else self.total
        self.num_epochs = math.ceil(self.total / self.spe)
        self.best_metric, self.best_mode = ("answer_token_acc", "max") if prompt_len is not None else ("loss", "min")
        self._eval_loss = jax.jit(lambda p, b: self.loss_fn(p, b, None)[1])

    def compile_key(self):
        return ("diffusion", self.mcfg, self.mask_id, self.sft, self.eps, self.causal)

    def loss_fn(self, params, batch, static):
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), batch["step"][0])
        return masked_diffusion_loss(params, batch["ids"], batch["valid"], key, config=self.mcfg, mask_id=self.mask_id,
                                     prompt_mask=batch["prompt_mask"] if self.sft else None, eps=self.eps,
                                     causal=self.causal)

    def steps_per_epoch(self) -> int:
        return self.spe

    def train_batches(self, epoch, data_state):
        B = int(self.config.batch_size)

        def make(i):
            step = epoch * self.spe + i
            idx = np.random.default_rng([int(self.config.seed), step]).integers(0, len(self.train["ids"]), size=B)
            return Batch(None, {**{k: a[idx] for k, a in self.train.items()}, "step": np.full((B,), step, np.int32)})

        return IndexedBatches(min(self.spe, self.total - epoch * self.spe), make, data_state)

    def evaluate(self, trainer, params, epoch):
        n = min(len(self.evals["ids"]), int(self.config.batch_size) * 4)
        batch = {**{k: a[:n] for k, a in self.evals.items()}, "step": np.full((n,), -1, np.int32)}
        row = {k: float(x) for k, x in self._eval_loss(params, batch).items()}
        if self.prompt_len is not None:  # every held-out answer decoded
            ids = self.evals["ids"]
            row.update(evaluate_answers(params, self.mcfg, ids, self.prompt_len, self.mask_id, self.causal))
        return row, row[self.best_metric]

    def export(self, trainer, params):
        save_model(os.path.join(self.workdir, "model"), params, self.mcfg,  # Orbax saves each process's shards
                   tokenizer_dir=self.config.model.path or None)

    def finish(self, trainer, state, out):
        rows = read_metrics(self.workdir)
        tr = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        if tr:
            plot_series(os.path.join(self.workdir, "loss.png"), {"train loss": tuple(zip(*tr))}, "step", "loss")
        return out


def run(config: ConfigDict, workdir: str) -> dict:
    """Train (config.mode == 'train') or only evaluate ('eval') a masked-diffusion LM."""
    check_mode(config)
    quiet_logs(config)
    rng = jax.random.PRNGKey(config.seed)
    mcfg, params, train, evals, mask_id, prompt_len = _build(config, rng)
    task = DiffusionTask(config, workdir, mcfg, train, evals, mask_id, prompt_len)
    summary: dict = {"task": config.data.task, "mask_id": mask_id, "causal": task.causal,
                     "objective": config.diffusion.objective}
    if config.mode == "train":
        trainer = Trainer(config, task, workdir)
        out = trainer.fit(trainer.init_state(params, task.total), task.num_epochs)
        if out["stopped"]:
            return out
        summary.update(steps=out["step"], history=out["history"], best=out["best"])
        _, params = load_any(os.path.join(workdir, "model"))
    if prompt_len is not None:
        summary.update(evaluate_answers(params, mcfg, evals["ids"], prompt_len, mask_id, task.causal))
        summary["chance_token_acc"] = 1.0 / config.data.base
    write_json(os.path.join(workdir, "results.json"), summary)
    return summary
