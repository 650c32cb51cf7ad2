"""Decode speed: latent_jax vs transformers PyTorch on the same ~110M-parameter weights.

A Llama-style model (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000, tied
embeddings) is initialised randomly in transformers, saved as safetensors and loaded by
latent_jax. For each batch size both sides prefill the same prompts and greedily decode the
same number of tokens (no early stop). Reported: prefill latency (s) and decode tokens/s
(new tokens after the first, across the batch, divided by decode time; compilation excluded
for JAX, one warm-up run for both), and the ratios latent_jax / torch.

    python benchmarks/decode.py                      # CPU, float32, batch 1 and 8
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

from threads import pin_xla_threads  # noqa: E402  (benchmarks/threads.py, before jax)

_THREADS = pin_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

if _THREADS:
    torch.set_num_threads(_THREADS)


def build_model(out_dir: str, args) -> None:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg)
    m.save_pretrained(out_dir, safe_serialization=True)


def bench_torch(model_dir: str, ids: np.ndarray, new: int, dtype: str, repeats: int) -> dict:
    import transformers

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=tdt, attn_implementation="sdpa").to(dev).eval()
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=12)
    p.add_argument("--mlp", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both sides (0 = library defaults)")
    p.add_argument("--json-out", default="", help="also write the results here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as d:
        build_model(d, args)
        from latent_jax.models.config import ModelConfig

        n_params = ModelConfig.from_hf(d).num_params()
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
            ))
    hdr = f"{'batch':>5} {'prefill torch':>14} {'prefill jax':>12} {'x':>6} {'decode tok/s torch':>19} {'jax':>9} {'x':>6} {'same tokens':>11}"
    print(hdr)
    for r in rows:
        print(f"{r['batch']:>5} {r['torch_prefill_s'] * 1e3:>12.1f}ms {r['jax_prefill_s'] * 1e3:>10.1f}ms "
              f"{r['prefill_speedup']:>6.2f} {r['torch_tokens_per_s']:>19.1f} {r['jax_tokens_per_s']:>9.1f} "
              f"{r['decode_speedup']:>6.2f} {r['greedy_token_agreement']:>11.2f}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
