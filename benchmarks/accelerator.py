"""One accelerator check (issue 24 item 6): every GPU / TPU figure from one call, one table.

    benchmarks/accelerator.sh               # one GPU (H100: <= 8 minutes) or one TPU host
    benchmarks/accelerator.sh --smoke       # CPU, toy sizes: the same code paths in about a minute

Rows, in this order (cheapest and most decisive first; a row that would start after the time
budget is reported as skipped):

1. attention parity: the fused path `auto` picks on this backend (cuDNN on GPU, Pallas splash on
   TPU; on CPU the chunked path and splash in interpret mode) against the xla path, on Coconut's
   training loss (question cache + thoughts + answer, left-padded rows, a sliding-window layer)
   and its gradients. Both sides run in the compute dtype; the reference is the xla path in
   float32, and the fused path passes when its error is within 2x the xla path's own (+ a floor).
2. MFU of the 1.1B decoder (TinyLlama's shape) in bf16: benchmarks/mfu.py's measurement (8 x 2048
   tokens per device, dots remat, scanned layers, model.attention auto).
3. A Coconut train step of a 2-layer model of Phi-4-multimodal's text shape (configs/hf/
   phi4_multimodal.json: hidden 3072, 24 heads, 8 KV heads, vocabulary 200064, tied): coconut_loss +
   AdamW, 8 x 1024 tokens, 3 thoughts; step time, tokens/s and MFU (model FLOPs: 6N per token on
   the layers and the LM head, plus attention).
4. Decode tokens/s at batch 1 and 8 against transformers on the same device: benchmarks/decode.py's
   110M Llama-style model in bf16, greedy, 128-token prompts, 64 new tokens (prefill excluded).

Model FLOPs follow benchmarks/mfu.py (PaLM appendix B); peaks are the published dense bf16 ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from latent_jax.latent.coconut import coconut_loss  # noqa: E402
from latent_jax.models.attention import resolve_attention  # noqa: E402
from latent_jax.models.decoder import init_params  # noqa: E402
from latent_jax.plan import load_model_config  # noqa: E402
from latent_jax.testing import tiny_config  # noqa: E402

ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------------------ parity
def coconut_batch(B: int, T: int, n: int, vocab: int, seed: int = 0):
    """A Coconut batch of B rows, T tokens, n thoughts at P = T // 2: row b left-padded by 2b
    tokens, every thought slot a latent, the answer half labelled."""
    rng = np.random.default_rng(seed)
    P = T // 2
    ids = rng.integers(3, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    for b in range(B):
        mask[b, :min(2 * b, P - 2)] = 0
    lat = np.zeros((B, T), bool)
    lat[:, P:P + n] = True
    labels = np.where((np.arange(T) > P + n) & (mask > 0), ids, -100).astype(np.int32)
    return dict(input_ids=ids, attention_mask=mask, latent_mask=lat, labels=labels), P


def parity(impls: list[str], smoke: bool) -> list[dict]:
    """Each of `impls` against the xla path on Coconut's loss and gradients (see the module
    docstring): the largest absolute difference to the float32 xla reference, beside the xla
    path's own in the compute dtype."""
    on_cpu = jax.default_backend() == "cpu"
    dtype = "float32" if on_cpu else "bfloat16"
    T = 64 if smoke else 512
    cfg = tiny_config("qwen2", vocab_size=256, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, layer_windows=(0, T // 4), max_position_embeddings=2 * T,
                      initializer_range=0.1, attention_chunk=16 if smoke else 128)
    params = init_params(cfg, 0)
    batch, P = coconut_batch(4, T, 3, cfg.vocab_size)

    def run(c):
        f = lambda p: coconut_loss(p, batch, config=c, latent_start=P, num_latent=3)[0]  # noqa: E731
        loss, g = jax.jit(jax.value_and_grad(f))(params)
        return jax.tree.map(lambda x: np.asarray(x, np.float32), (loss, g))

    ref = run(cfg.replace(attention="xla"))
    base = ref if dtype == "float32" else run(cfg.replace(attention="xla", dtype=dtype))
    err = lambda a: max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(ref)))  # noqa: E731
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(ref))
    e_xla = err(base)
    out = []
    for impl in impls:
        e = err(run(cfg.replace(attention=impl, dtype=dtype)))
        out.append(dict(impl=impl, dtype=dtype, err=e, err_xla=e_xla, scale=scale, ok=bool(e <= 2 * e_xla + 1e-5 * scale),
                        T=T))
    return out


# ------------------------------------------------------------------------- Coconut step
def coconut_step(smoke: bool, steps: int) -> dict:
    """A Coconut train step (coconut_loss + AdamW) of a 2-layer Phi-4-MM-shaped model."""
    from mfu import measured_cpu_peak, peak_flops

    text, _ = load_model_config(os.path.join(ROOT, "configs", "hf", "phi4_multimodal.json"))
    if smoke:
        text = text.replace(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, vocab_size=512)
    cfg = text.replace(num_hidden_layers=2, layer_windows=tuple(text.layer_windows[:2]), dtype="bfloat16",
                       param_dtype="float32", scan_layers=True, remat_policy="none" if smoke else "full")
    B, T, n = (2, 64, 3) if smoke else (8, 1024, 3)
    P = T - 64 - n if T > 128 else T // 2
    params = init_params(cfg, 0)
    batch, _ = coconut_batch(B, T, n, cfg.vocab_size)
    batch["labels"] = np.where(np.arange(T) > P + n, batch["input_ids"], -100).astype(np.int32)
    tx = optax.adamw(1e-5)
    opt = tx.init(params)

    def step(p, o, b):
        (loss, _), g = jax.value_and_grad(
            lambda q: coconut_loss(q, b, config=cfg, latent_start=P, num_latent=n, remat_thoughts=True),
            has_aux=True)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    j = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    c = j.lower(params, opt, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        params, opt, loss = c(params, opt, batch)
    jax.block_until_ready(loss)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt, loss = c(params, opt, batch)
        jax.block_until_ready(loss)
        ts.append(time.perf_counter() - t0)
    dt = statistics.median(ts)
    n_all = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    tokens = B * T
    # 6N per token on every matmul weight (the tied embedding is the LM head) + causal attention
    flops = 6 * n_all * tokens + 6 * cfg.num_hidden_layers * T * cfg.num_attention_heads * cfg.head_dim * tokens
    peak, _ = peak_flops(jax.devices()[0])
    if peak is None:
        peak = measured_cpu_peak(jnp.bfloat16)
    if not np.isfinite(float(loss)):
        raise SystemExit("error: the Coconut step's loss is not finite")
    return dict(step_s=dt, tokens_per_s=tokens / dt, mfu=flops / dt / peak, params=n_all, B=B, T=T, n=n,
                compile_s=compile_s, attention=resolve_attention(cfg, q_len=T - P - n, kv_len=T))


# ------------------------------------------------------------------------------ decode
def decode_rows(smoke: bool, batches: list[int], repeats: int) -> list[dict]:
    """benchmarks/decode.py's two sides on one random Llama-style model: tokens/s per batch size."""
    import decode as dec  # noqa: E402  (imports torch)

    args = argparse.Namespace(vocab=512, hidden=64, layers=2, heads=4, kv_heads=None, mlp=128) if smoke else \
        argparse.Namespace(vocab=32000, hidden=768, layers=12, heads=12, kv_heads=None, mlp=2048)
    prompt, new = (16, 8) if smoke else (128, 64)
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        dec.build_llama(d, args)
        rng = np.random.default_rng(0)
        for b in batches:
            ids = rng.integers(3, args.vocab, size=(b, prompt)).astype(np.int32)
            t = dec.bench_torch(d, ids, new, dtype, repeats)
            j = dec.bench_jax(d, ids, new, dtype, repeats)
            rows.append(dict(batch=b, jax_tokens_per_s=j["tokens_per_s"], torch_tokens_per_s=t["tokens_per_s"],
                             ratio=j["tokens_per_s"] / t["tokens_per_s"],
                             same_tokens=float((t["tokens"] == j["tokens"]).mean()), dtype=dtype, prompt=prompt,
                             new=new, torch_device=dec.torch.device("cuda" if dec.torch.cuda.is_available() else "cpu").type))
    return rows


# ------------------------------------------------------------------------------- table
# seconds a row may take on one H100 (compiles included): a row starts only while this much of the
# budget is left, so the table is complete within it
RESERVE_S = {"parity": 40, "mfu": 120, "coconut": 120, "decode": 120}


def _count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on any backend (checks the code paths)")
    ap.add_argument("--budget-s", type=float, default=470.0,
                    help="the whole check's time: a row starts only while its reserve (RESERVE_S) is left")
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: parity, mfu, coconut, decode")
    ap.add_argument("--json-out", default="")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    skip = {s for s in a.skip.split(",") if s}
    backend = jax.default_backend()
    dev = jax.devices()[0]
    fused = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(backend)
    results: dict = {"device": f"{jax.device_count()} x {dev.device_kind}", "backend": backend, "smoke": a.smoke}
    failed = []
    print(f"accelerator check: {results['device']} ({backend}), jax {jax.__version__}"
          f"{', smoke sizes' if a.smoke else ''}", flush=True)
    print("| check | setting | result | verdict |\n|---|---|---|---|", flush=True)

    def row(*cells):  # printed as it completes: a stopped run keeps its finished rows
        print("| " + " | ".join(cells) + " |", flush=True)
        if cells[3] == "FAIL":
            failed.append(cells[0])

    def section(name, fn):
        if name in skip:
            return None
        if time.perf_counter() - t_start + (0 if a.smoke else RESERVE_S[name]) > a.budget_s:
            row(name, "", "skipped: not enough of the time budget left", "")
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - one failing row must not hide the others
            row(name, "", f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", "FAIL")
            results[name] = {"error": repr(e)}
            return None
        results[name] = out
        results[name + "_s"] = time.perf_counter() - t0
        return out

    for r in section("parity", lambda: parity([fused] if fused else ["chunked", "splash"], a.smoke)) or []:
        row(f"attention parity: {r['impl']} vs xla", f"Coconut loss + grads, {r['dtype']}, T={r['T']}, padding, window, "
            "question cache + thoughts", f"max abs diff {r['err']:.2e} (xla in {r['dtype']}: {r['err_xla']:.2e}; "
            f"values up to {r['scale']:.2g})", "ok" if r["ok"] else "FAIL")
    r = section("mfu", lambda: __import__("mfu").measure("tiny" if a.smoke else "1b", batch=2 if a.smoke else 0,
                                                          seq=64 if a.smoke else 0, steps=2 if a.smoke else 5))
    if r:
        row("MFU, decoder bf16", f"{_count(r['n_params'])} ({r['layers']} x {r['hidden']}), {r['batch']} x {r['seq']} "
            f"tokens, remat {r['remat']}", f"{r['step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s",
            f"MFU {100 * r['mfu']:.1f}% of {r['peak'] / 1e12:.3g} TFLOP/s ({r['peak_label']})")
    r = section("coconut", lambda: coconut_step(a.smoke, 2 if a.smoke else 5))
    if r:
        row("Coconut step, 2-layer Phi-4-MM shape", f"{_count(r['params'])}, {r['B']} x {r['T']} tokens, {r['n']} "
            f"thoughts, attention {r['attention']}", f"{r['step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s",
            f"MFU {100 * r['mfu']:.1f}%")
    r = section("decode", lambda: decode_rows(a.smoke, [1, 8], 1 if a.smoke else 3))
    for d in r or []:
        row(f"decode, batch {d['batch']}", f"{'toy' if a.smoke else '110M'} llama, {d['dtype']}, prompt {d['prompt']}, "
            f"{d['new']} new, greedy", f"latent_jax {d['jax_tokens_per_s']:,.0f} tok/s, transformers "
            f"({d['torch_device']}) {d['torch_tokens_per_s']:,.0f} tok/s",
            f"x{d['ratio']:.2f}, same tokens {100 * d['same_tokens']:.0f}%")
    results["wall_s"] = time.perf_counter() - t_start
    print(f"({results['wall_s']:.0f} s{'; FAILED: ' + ', '.join(failed) if failed else ''})", flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
