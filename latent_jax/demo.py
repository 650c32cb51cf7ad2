"""The conversion + generation round trip (workflow "roundtrip", configs/roundtrip.py).

For each model (tiny random HF models of every family built on the spot, or the local HF
directory in config.model.path): HF -> Orbax checkpoint -> HF directory; the re-exported
model is loaded by transformers and its logits compared with the original's and with
latent_jax's on the Orbax checkpoint; a few prompts are generated greedily with the KV cache
and compared with transformers generate(). Prints a table and writes results.json.

Without torch (a runtime install: torch is only for tests, benchmarks and PyTorch export), the
reference logits are latent_jax's on the source HF directory, the export is read back by
latent_jax, and generation is not compared (results.json says which reference was used).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np

from latent_jax.convert import hf_to_orbax, orbax_to_hf
from latent_jax.decoding.sampling import left_pad
from latent_jax.decoding.strategies import get_strategy
from latent_jax.generate import load_tokenizer
from latent_jax.models.config import SUPPORTED_MODEL_TYPES
from latent_jax.models.decoder import Decoder
from latent_jax.models.io import load_any
from latent_jax.testing import make_tiny_hf, make_tiny_tokenizer


def _torch_model(d: str):
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def _jax_logits(path: str, ids, mask) -> np.ndarray:
    config, params = load_any(path)
    return np.asarray(Decoder(config).apply({"params": params}, ids, attention_mask=mask).logits)


def torch_available() -> bool:
    """Whether the transformers PyTorch classes can serve as the reference."""
    return importlib.util.find_spec("torch") is not None


def _roundtrip_one(name: str, hf_dir: str, workdir: str, rt) -> dict:
    has_torch = torch_available()
    t0 = time.perf_counter()
    ckpt = hf_to_orbax(hf_dir, os.path.join(workdir, "orbax", name))
    export = orbax_to_hf(ckpt, os.path.join(workdir, "hf_export", name), dtype=rt.export_dtype)
    convert_s = time.perf_counter() - t0

    config, params = load_any(ckpt)
    tok = load_tokenizer(ckpt)
    texts = list(rt.prompts)
    if tok is not None:
        prompts = [list(tok(t)["input_ids"]) or [config.bos_token_id or 1] for t in texts]
    else:  # no tokenizer: byte values clipped to the vocabulary stand in for tokens
        prompts = [[b % config.vocab_size for b in t.encode()] for t in texts]
    ids, mask = left_pad(prompts, config.pad_token_id or 0)

    if has_torch:
        import torch

        src_m, exp_m = _torch_model(hf_dir), _torch_model(export)
        with torch.no_grad():
            ti, tm = torch.tensor(ids).long(), torch.tensor(mask)
            ref = src_m(input_ids=ti, attention_mask=tm).logits.numpy()
            back = exp_m(input_ids=ti, attention_mask=tm).logits.numpy()
    else:  # no transformers reference: latent_jax on the source directory and on the export
        ref, back = _jax_logits(hf_dir, ids, mask), _jax_logits(export, ids, mask)
    ours = np.asarray(Decoder(config).apply({"params": params}, ids, attention_mask=mask).logits)
    valid = mask.astype(bool)
    diff_export = float(np.abs(ref - back)[valid].max())
    diff_jax = float(np.abs(ref - ours)[valid].max())

    args = argparse.Namespace(strategy="greedy", temperature=0.0, top_k=0, top_p=1.0, seed=0,
                              stop_ids=[], max_new_tokens=int(rt.max_new_tokens), batch_size=len(prompts))
    gen = get_strategy("greedy").run_cli(params, config, tok, prompts, args)
    match = None
    if rt.check_generation and has_torch:
        with torch.no_grad():
            g = exp_m.generate(input_ids=ti, attention_mask=tm, max_new_tokens=int(rt.max_new_tokens),
                               do_sample=False, eos_token_id=None, pad_token_id=config.pad_token_id or 0)
        hf_new = g.numpy()[:, ids.shape[1]:].tolist()
        match = all(r["output_ids"] == h for r, h in zip(gen, hf_new))
    tps = [r["tokens_per_s"] for r in gen if r["tokens_per_s"]]
    tol = float(rt.logit_tolerance)
    return dict(
        model=name,
        model_type=config.model_type,
        reference="transformers" if has_torch else "latent_jax (torch not installed)",
        params=int(sum(np.size(x) for x in __import__("jax").tree.leaves(params))),
        hf_dir=hf_dir,
        orbax_ckpt=ckpt,
        hf_export=export,
        convert_s=round(convert_s, 3),
        max_logit_diff_export_vs_source=diff_export,
        max_logit_diff_jax_vs_source=diff_jax,
        logits_ok=bool(diff_export <= tol and diff_jax <= tol) if rt.export_dtype == "float32" else diff_jax <= tol,
        generation_matches_transformers=match,
        decode_tokens_per_s=round(float(np.mean(tps)), 1) if tps else None,
        samples=[dict(prompt=t, output_ids=r["output_ids"], text=r["text"]) for t, r in zip(texts, gen)],
    )


def run(config, workdir: str) -> dict:
    """Run the round trip for config.roundtrip (see configs/roundtrip.py); returns the results."""
    import jax
    from tqdm import tqdm

    jax.config.update("jax_default_matmul_precision", "highest")  # parity is about the model, not XLA defaults
    rt = config.roundtrip
    os.makedirs(workdir, exist_ok=True)
    if config.model.path:
        if not os.path.isdir(config.model.path):
            raise FileNotFoundError(f"config.model.path={config.model.path} is not a directory; pass a local HF model directory")
        todo = [(os.path.basename(os.path.normpath(config.model.path)), config.model.path)]
    else:
        fams = [f.strip() for f in str(rt.families).split(",") if f.strip()]
        bad = [f for f in fams if f not in SUPPORTED_MODEL_TYPES]
        if bad:
            raise ValueError(f"config.roundtrip.families has {bad}; valid: {', '.join(SUPPORTED_MODEL_TYPES)}")
        todo = []
        for f in fams:
            d = os.path.join(workdir, "hf_source", f)
            make_tiny_hf(f, d, seed=int(config.seed), initializer_range=0.2)
            make_tiny_tokenizer(d)
            todo.append((f"tiny-{f}", d))
    if not torch_available():
        print("torch is not installed: logits are checked against latent_jax on the source directory and greedy "
              "generation is not compared with transformers (pip install torch==2.13.0 for the transformers check)")
    rows = [_roundtrip_one(name, d, workdir, rt) for name, d in tqdm(todo, desc="round trip", unit="model")]
    out = dict(workflow="roundtrip", models=rows, all_ok=all(r["logits_ok"] and r["generation_matches_transformers"] is not False for r in rows))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    _print_table(rows)
    print(f"results: {os.path.join(workdir, 'results.json')}  all_ok={out['all_ok']}")
    return out


def _print_table(rows: list[dict]) -> None:
    head = ("model", "params", "|dlogit| export", "|dlogit| jax", "greedy == HF", "decode tok/s")
    lines = [
        (r["model"], f"{r['params']:,}", f"{r['max_logit_diff_export_vs_source']:.2e}",
         f"{r['max_logit_diff_jax_vs_source']:.2e}", str(r["generation_matches_transformers"]),
         str(r["decode_tokens_per_s"]))
        for r in rows
    ]
    w = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("  ".join("-" * n for n in w))
    for x in lines:
        print("  ".join(v.ljust(w[i]) for i, v in enumerate(x)))
    for r in rows:
        for s in r["samples"][:2]:
            print(f"  {r['model']}: {s['prompt']!r} -> {s['text']!r}")
