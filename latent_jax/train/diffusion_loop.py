"""Workflow "diffusion": train or fine-tune a masked-diffusion LM (LLaDA / MDLM objective).

    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm            # toy task
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.data.task=text --config.data.path=corpus.txt                                 # pre-training
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.model.path=/models/Llama --config.data.task=sft --config.data.path=pairs.jsonl  # SFT fine-tune

The loss is `decoding.diffusion.masked_diffusion_loss` (t ~ U(0,1), each token masked with
p = (1 - eps) t + eps, masked CE / p); the SFT variant (task toy or sft) never masks the
prompt. The decoder runs bidirectionally (diffusion.causal False) unless configured
otherwise. Evaluation decodes held-out answers with `diffusion_generate` and reports token
accuracy. Writes metrics.jsonl / TensorBoard, a loss plot, and the final model as a
latent_jax checkpoint in WORKDIR/model (loadable by the generation CLI:
`--strategy diffusion --mask-id ID`).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from latent_jax.decoding.diffusion import DiffusionOptions, diffusion_generate, masked_diffusion_loss
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import init_params

TASKS = ("toy", "text", "sft")
_MODEL_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "dtype", "param_dtype",
                 "scan_layers", "remat_policy")

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
    valid = np.zeros_like(ids)
    pm = np.zeros_like(ids)
    for i, (p, a) in enumerate(rows):
        s = (p + a)[:seq_len]
        ids[i, : len(s)] = s
        valid[i, : len(s)] = 1
        pm[i, : min(len(p), seq_len)] = 1
    return ids, valid, pm


def _build(config: ConfigDict, workdir: str, rng):
    """(model config, params, train arrays, eval arrays, mask_id, prompt_len for toy eval)."""
    data = config.data
    task = data.task
    if task not in TASKS:
        raise ValueError(f"data.task={task!r}; use one of {', '.join(TASKS)}")
    d = config.diffusion
    prompt_len = None
    if task == "toy":
        ids, prompt_len = toy_examples(data.num_train + data.num_eval, data.num_digits, data.base, config.seed)
        valid = np.ones_like(ids)
        pm = np.zeros_like(ids)
        pm[:, :prompt_len] = 1
        vocab = TOY_DIGIT0 + data.base
    elif task == "text":
        from latent_jax.data.text_tokens import BYTE_VOCAB, lm_windows, load_tokens

        tokdir = data.get("tokenizer_dir", "") or config.model.path
        toks = load_tokens(data.path, tokdir)
        ids = lm_windows(toks, data.seq_len - 1)
        valid = np.ones_like(ids)
        pm = None
        vocab = BYTE_VOCAB + 1 if not tokdir else int(toks.max()) + 1
    else:
        tokdir = data.get("tokenizer_dir", "") or config.model.path
        ids, valid, pm = _sft_rows(data.path, tokdir, data.seq_len)
        vocab = int(ids.max()) + 1
    if config.model.path:
        from latent_jax.train.checkpoint import load_any

        mcfg, params = load_any(config.model.path)
        mcfg = mcfg.replace(dtype=config.model.dtype)
    else:
        extra = 1 if task == "text" and d.mask_id < 0 else 0  # a fresh [MASK] id after the byte vocabulary
        kw = {k: config.model[k] for k in _MODEL_FIELDS if k in config.model}
        mcfg = ModelConfig(vocab_size=max(vocab + extra, int(d.mask_id) + 1), pad_token_id=0, eos_token_id=(), **kw)
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
    tr, ev = perm[n_eval:], perm[:n_eval]
    split = lambda a: (None, None) if a is None else (a[tr], a[ev])
    (ids_tr, ids_ev), (v_tr, v_ev), (pm_tr, pm_ev) = split(ids), split(valid), split(pm)
    return mcfg, params, (ids_tr, v_tr, pm_tr), (ids_ev, v_ev, pm_ev), mask_id, prompt_len


def evaluate_answers(params, mcfg: ModelConfig, ids: np.ndarray, prompt_len: int, mask_id: int,
                     causal: bool, steps: int | None = None, threshold: float | None = None) -> dict:
    """Decode the answers of fixed-length SFT rows (ids (n, P + A), prompt = first P tokens)
    by masked diffusion; token accuracy and exact-match rate against the references."""
    A = ids.shape[1] - prompt_len
    opts = DiffusionOptions(steps=steps or A, gen_length=A, block_length=A, mask_id=mask_id, causal=causal,
                            threshold=threshold)
    prompts = ids[:, :prompt_len]
    out = diffusion_generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0), config=mcfg, opts=opts)
    pred = np.asarray(out.tokens)
    ref = ids[:, prompt_len:]
    return {"answer_token_acc": float(np.mean(pred == ref)), "answer_exact": float(np.mean(np.all(pred == ref, 1))),
            "decode_forward_passes": int(out.forward_passes)}


def run(config: ConfigDict, workdir: str) -> dict:
    """Train (config.mode == 'train') or only evaluate ('eval') a masked-diffusion LM."""
    import optax
    from tqdm import tqdm

    from latent_jax.train.checkpoint import save_model
    from latent_jax.train.metrics import MetricsWriter, plot_series, read_metrics
    from latent_jax.train.optim import make_optimizer

    rng = jax.random.PRNGKey(config.seed)
    rng, init_rng = jax.random.split(rng)
    mcfg, params, (ids_tr, v_tr, pm_tr), (ids_ev, v_ev, pm_ev), mask_id, prompt_len = _build(config, workdir, init_rng)
    d = config.diffusion
    causal = bool(d.causal)
    sft = pm_tr is not None and d.objective == "sft"
    if d.objective not in ("sft", "pretrain"):
        raise ValueError(f"diffusion.objective={d.objective!r}; use 'sft' or 'pretrain'")
    steps = int(config.max_steps)
    writer = MetricsWriter(workdir, config.get("wandb_project", ""), config.to_dict())

    def loss_fn(p, ids, valid, pm, key):
        return masked_diffusion_loss(p, ids, valid, key, config=mcfg, mask_id=mask_id,
                                     prompt_mask=pm if sft else None, eps=float(d.eps), causal=causal)

    summary: dict = {"task": config.data.task, "mask_id": mask_id, "causal": causal, "objective": d.objective}
    if config.mode == "train":
        tx = make_optimizer(params, config.optim, steps)
        opt_state = tx.init(params)

        @jax.jit
        def train_step(p, o, ids, valid, pm, key):
            (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(p, ids, valid, pm, key)
            upd, o = tx.update(g, o, p)
            return optax.apply_updates(p, upd), o, m

        eval_loss = jax.jit(lambda p, ids, valid, pm, key: loss_fn(p, ids, valid, pm, key)[1])
        pm_tr_ = pm_tr if pm_tr is not None else np.zeros_like(ids_tr)
        pm_ev_ = pm_ev if pm_ev is not None else np.zeros_like(ids_ev)
        rs = np.random.RandomState(config.seed)
        B = int(config.batch_size)
        t0 = time.time()
        for s in tqdm(range(steps), desc="diffusion train", disable=not config.get("progress", True)):
            idx = rs.randint(0, len(ids_tr), size=B)
            rng, key = jax.random.split(rng)
            params, opt_state, m = train_step(params, opt_state, ids_tr[idx], v_tr[idx], pm_tr_[idx], key)
            if s % int(config.log_every) == 0 or s == steps - 1:
                writer.write(s, {k: float(v) for k, v in m.items()}, prefix="train/")
            if config.eval_every and ((s + 1) % int(config.eval_every) == 0 or s == steps - 1):
                n = min(len(ids_ev), B * 4)
                em = eval_loss(params, ids_ev[:n], v_ev[:n], pm_ev_[:n], jax.random.PRNGKey(s))
                row = {k: float(v) for k, v in em.items()}
                if prompt_len is not None:
                    row.update(evaluate_answers(params, mcfg, ids_ev, prompt_len, mask_id, causal))
                writer.write(s, row, prefix="eval/")
        summary["train_seconds"] = time.time() - t0
        save_model(os.path.join(workdir, "model"), params, mcfg,
                   tokenizer_dir=config.model.path if config.model.path else None)
        rows = read_metrics(workdir)
        tr = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        if tr:
            plot_series(os.path.join(workdir, "loss.png"), {"train loss": tuple(zip(*tr))}, "step", "loss")
    if prompt_len is not None:
        summary.update(evaluate_answers(params, mcfg, ids_ev, prompt_len, mask_id, causal))
        summary["chance_token_acc"] = 1.0 / config.data.base
    writer.write(steps, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, prefix="final/")
    writer.close()
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
