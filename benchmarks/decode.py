"""Decode speed: latent_jax vs transformers PyTorch on the same ~110M-parameter weights.

A Llama-style model (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000, tied
embeddings) is initialised randomly in transformers, saved as safetensors and loaded by
latent_jax. For each batch size both sides prefill the same prompts and greedily decode the
same number of tokens (no early stop). Reported: prefill latency (s) and decode tokens/s
(new tokens after the first, across the batch, divided by decode time; compilation excluded
for JAX, one warm-up run for both), and the ratios latent_jax / torch; then a roofline per
decode step: bytes read and FLOPs per step against the read bandwidth and GEMM rate numpy
measures on the same machine and threads (benchmarks/common.py), and the step time floor.

    python benchmarks/decode.py --threads 1          # CPU, float32, batch 1 and 8, one thread per side
    python benchmarks/decode.py                      # each library's default threads
    python benchmarks/decode.py --dtype bfloat16     # on a GPU (launch/gpu.sh bench)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_model_args, build_llama, load_torch_llama, machine_limits, pin_threads  # noqa: E402

_THREADS = pin_threads()  # before jax, numpy and torch start their thread pools

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def bench_torch(model_dir: str, ids: np.ndarray, new: int, dtype: str, repeats: int) -> dict:
    m, dev = load_torch_llama(model_dir, dtype)
    x = torch.tensor(ids, dtype=torch.long, device=dev)
    mask = torch.ones_like(x)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    pre, gen = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):  # first run warms up
            sync()
            t0 = time.perf_counter()
            m(input_ids=x, attention_mask=mask, use_cache=True)
            sync()
            t1 = time.perf_counter()
            out = m.generate(input_ids=x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)
            sync()
            t2 = time.perf_counter()
            if r:
                pre.append(t1 - t0)
                gen.append(t2 - t1)
    prefill = statistics.median(pre)
    decode_s = statistics.median(gen) - prefill
    tokens = out[:, ids.shape[1]:].cpu().numpy()
    return dict(prefill_s=prefill, decode_s=decode_s, tokens_per_s=ids.shape[0] * (new - 1) / decode_s, tokens=tokens)


def bench_jax(model_dir: str, ids: np.ndarray, new: int, dtype: str, repeats: int) -> dict:
    from latent_jax.decoding.sampling import SamplingParams, decode, prefill
    from latent_jax.models.hf import load_hf

    cfg, params = load_hf(model_dir, dtype=dtype, param_dtype=dtype)
    params = jax.device_put(jax.tree.map(jnp.asarray, params))
    x = jnp.asarray(ids)
    mask = jnp.ones_like(x)
    sp = SamplingParams.make()
    stops = jnp.zeros((0,), jnp.int32)
    rng = jax.random.PRNGKey(0)
    static = dict(config=cfg, max_new_tokens=new, top_k=0, pad_id=0)
    t0 = time.perf_counter()
    pre_c = prefill.lower(params, x, mask, rng, sp, stops, cache_dtype=None, **static).compile()
    state = pre_c(params, x, mask, rng, sp, stops)
    dec_c = decode.lower(params, state, sp, stops, **static).compile()
    compile_s = time.perf_counter() - t0
    pre, dec = [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        state = jax.block_until_ready(pre_c(params, x, mask, rng, sp, stops))
        t1 = time.perf_counter()
        out = jax.block_until_ready(dec_c(params, state, sp, stops))
        t2 = time.perf_counter()
        if r:
            pre.append(t1 - t0)
            dec.append(t2 - t1)
    prefill_s = statistics.median(pre)
    decode_s = statistics.median(dec)
    assert int(out.steps) == new - 1
    return dict(prefill_s=prefill_s, decode_s=decode_s, tokens_per_s=ids.shape[0] * (new - 1) / decode_s,
                compile_s=compile_s, tokens=np.asarray(out.tokens))


def step_cost(cfg, batch: int, slots: float, itemsize: int) -> dict:
    """Bytes read and FLOPs of one decode step (one new token per row): every weight once (the
    tied embedding is the LM head), K and V of `slots` cache slots per layer and row; FLOPs of
    the matmuls (2 x batch x matrix parameters) and of attention (QK and PV over the slots)."""
    n = cfg.num_params()
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * slots * cfg.head_dim
    attn_flops = 4 * cfg.num_hidden_layers * batch * cfg.num_attention_heads * slots * cfg.head_dim
    return dict(bytes=(n + kv) * itemsize, flops=2 * batch * (n - norms) + attn_flops)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    add_model_args(p, hidden=768, layers=12, heads=12, mlp=2048, vocab=32000, kv_heads=True)
    p.add_argument("--json-out", default="", help="also write the results here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as d:
        build_llama(d, args)
        from latent_jax.models.config import ModelConfig

        mcfg = ModelConfig.from_hf(d)
        n_params = mcfg.num_params()
        dev = jax.devices()[0]
        print(f"model: llama-style {n_params / 1e6:.0f}M params, {args.dtype}; jax on {dev.platform} "
              f"({dev.device_kind}), torch {torch.__version__} threads={torch.get_num_threads()}; "
              f"prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}")
        rows = []
        rng = np.random.default_rng(0)
        for b in [int(v) for v in args.batch.split(",")]:
            ids = rng.integers(3, args.vocab, size=(b, args.prompt_len)).astype(np.int32)
            t = bench_torch(d, ids, args.new_tokens, args.dtype, args.repeats)
            j = bench_jax(d, ids, args.new_tokens, args.dtype, args.repeats)
            same = float((t["tokens"] == j["tokens"]).mean())
            rows.append(dict(
                batch=b,
                torch_prefill_s=t["prefill_s"], jax_prefill_s=j["prefill_s"],
                prefill_speedup=t["prefill_s"] / j["prefill_s"],
                torch_tokens_per_s=t["tokens_per_s"], jax_tokens_per_s=j["tokens_per_s"],
                decode_speedup=j["tokens_per_s"] / t["tokens_per_s"],
                jax_compile_s=j["compile_s"], greedy_token_agreement=same,
                torch_step_s=t["decode_s"] / (args.new_tokens - 1), jax_step_s=j["decode_s"] / (args.new_tokens - 1),
            ))
    limits = machine_limits()  # after both sides, so that numpy's BLAS threads never overlap them
    hdr = f"{'batch':>5} {'prefill torch':>14} {'prefill jax':>12} {'x':>6} {'decode tok/s torch':>19} {'jax':>9} {'x':>6} {'same tokens':>11}"
    print(hdr)
    for r in rows:
        print(f"{r['batch']:>5} {r['torch_prefill_s'] * 1e3:>12.1f}ms {r['jax_prefill_s'] * 1e3:>10.1f}ms "
              f"{r['prefill_speedup']:>6.2f} {r['torch_tokens_per_s']:>19.1f} {r['jax_tokens_per_s']:>9.1f} "
              f"{r['decode_speedup']:>6.2f} {r['greedy_token_agreement']:>11.2f}")
    # roofline: what one decode step must read and compute vs what this machine does (numpy)
    item = jnp.dtype(args.dtype).itemsize
    print(f"roofline, per decode step (numpy on this machine, same threads: read {limits['read_gbs']:.1f} GB/s "
          f"(GEMV), copy {limits['copy_gbs']:.1f} GB/s (read+write), GEMM {limits['gemm_gflops']:.0f} GFLOP/s):")
    print(f"{'batch':>5} {'side':>10} {'step':>9} {'MB read':>8} {'GB/s':>6} {'% read bw':>9} {'GFLOP':>6} "
          f"{'GFLOP/s':>8} {'% GEMM':>7} {'floor':>9} {'torch/floor':>11}")
    for r in rows:
        b, T, n = r["batch"], args.prompt_len, args.new_tokens
        # latent_jax attends over every slot of its static cache; transformers' cache grows
        for side, step, slots in (("torch", r["torch_step_s"], T + n / 2), ("latent_jax", r["jax_step_s"], T + n)):
            c = step_cost(mcfg, b, slots, item)
            gbs, gfs = c["bytes"] / step / 1e9, c["flops"] / step / 1e9
            floor = max(c["bytes"] / (limits["read_gbs"] * 1e9), c["flops"] / (limits["gemm_gflops"] * 1e9))
            print(f"{b:>5} {side:>10} {step * 1e3:>7.1f}ms {c['bytes'] / 1e6:>8.0f} {gbs:>6.1f} "
                  f"{100 * gbs / limits['read_gbs']:>8.0f}% {c['flops'] / 1e9:>6.2f} {gfs:>8.1f} "
                  f"{100 * gfs / limits['gemm_gflops']:>6.0f}% {floor * 1e3:>7.1f}ms {r['torch_step_s'] / floor:>10.2f}x")
            r[f"{'jax' if side == 'latent_jax' else 'torch'}_achieved_gbs"] = gbs
        r.update(limits)
    print("(floor: the larger of bytes / read bandwidth and FLOPs / GEMM rate, a lower bound on the step; "
          "torch/floor: the decode speedup over torch if a step took only that)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
