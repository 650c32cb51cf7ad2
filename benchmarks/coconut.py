"""Coconut: scan + KV-cache training step vs the original multi-pass forward, and batched
KV-cached generation vs batch-1 uncached generation (the original's), same weights.

    python benchmarks/coconut.py [--layers 4 --hidden 256 --batch 8 --latents 6 --gen-batch 16]

Prints times and ratios (naive / ours) and the compiled temporary memory of both training
steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from latent_jax.decoding.sampling import SamplingParams  # noqa: E402
from latent_jax.latent.coconut import (  # noqa: E402
    coconut_generate,
    coconut_loss,
    masked_cross_entropy,
    naive_coconut_logits,
    naive_generate_one,
)
from latent_jax.models.config import tiny_config  # noqa: E402
from latent_jax.models.decoder import init_params  # noqa: E402

LAT, START, END, EOS = 3, 4, 5, 2


def make_batch(B, q_len, n, ans_len, vocab, rng, with_answer=True):
    """Rows with different question lengths and latent counts, aligned at the first latent."""
    qs = [rng.integers(10, vocab, size=int(rng.integers(q_len // 2, q_len + 1))).tolist() + [START] for _ in range(B)]
    ks = [n - (i % 3) if i % 3 < n else n for i in range(B)]
    ans = [rng.integers(10, vocab, size=ans_len).tolist() + [EOS] if with_answer else [] for _ in range(B)]
    P = max(len(q) for q in qs)
    rest = max(k + 1 + len(a) for k, a in zip(ks, ans)) - n
    T = P + n + rest
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    lat = np.zeros((B, T), bool)
    lab = np.full((B, T), -100, np.int32)
    for b, (q, k, a) in enumerate(zip(qs, ks, ans)):
        seq = q + [LAT] * k + [END] + a
        o = P - len(q)
        ids[b, o : o + len(seq)] = seq
        mask[b, o : o + len(seq)] = 1
        lat[b, P : P + k] = True
        lab[b, P + k + 1 : o + len(seq)] = a
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    batch = {k: jnp.asarray(v) for k, v in dict(input_ids=ids, attention_mask=mask, latent_mask=lat, labels=lab,
                                                    position_ids=pos).items()}
    prompts = [q + [LAT] * k + [END] for q, k in zip(qs, ks)]
    return batch, P, n, prompts


def timeit(fn, reps):
    fn()  # compile / warm up
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def temp_bytes(jitted, *args):
    try:
        return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--question", type=int, default=96)
    ap.add_argument("--latents", type=int, default=6)
    ap.add_argument("--answer", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    a = ap.parse_args()
    cfg = tiny_config("llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
                      num_key_value_heads=max(1, a.hidden // 64), head_dim=64, eos_token_id=(EOS,))
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    print(f"device: {jax.devices()[0].device_kind}  model: {a.layers} layers, hidden {a.hidden}, "
          f"{cfg.num_params() / 1e6:.1f}M params")

    # ------------------------------------------------------------------ training step
    batch, P, n, _ = make_batch(a.batch, a.question, a.latents, a.answer, a.vocab, rng)
    print(f"train batch {tuple(batch['input_ids'].shape)}, {n} thought columns at {P}")
    scan_step = jax.jit(jax.value_and_grad(
        lambda p, b: coconut_loss(p, b, config=cfg, latent_start=P, num_latent=n)[0]))
    naive_step = jax.jit(jax.value_and_grad(
        lambda p, b: masked_cross_entropy(naive_coconut_logits(
            p, b["input_ids"], b["attention_mask"], b["latent_mask"], b["position_ids"], config=cfg,
            num_passes=n), b["labels"])[0]))
    ls, _ = scan_step(params, batch)
    ln, _ = naive_step(params, batch)
    t_scan = timeit(lambda: jax.block_until_ready(scan_step(params, batch)), a.reps)
    t_naive = timeit(lambda: jax.block_until_ready(naive_step(params, batch)), a.reps)
    print(f"loss scan {float(ls):.6f}  naive {float(ln):.6f}")
    print(f"train step (loss + grads): scan+cache {1e3 * t_scan:.1f} ms, naive {n + 1}-pass {1e3 * t_naive:.1f} ms, "
          f"ratio naive/scan = {t_naive / t_scan:.2f}x")
    ms, mn = temp_bytes(scan_step, params, batch), temp_bytes(naive_step, params, batch)
    if ms and mn:
        print(f"compiled temp memory: scan {ms / 2**20:.1f} MiB, naive {mn / 2**20:.1f} MiB, ratio {mn / ms:.2f}x")

    # ------------------------------------------------------------------ generation
    gb, P, n, prompts = make_batch(a.gen_batch, a.question, a.latents, 0, a.vocab, rng, with_answer=False)
    stop = jnp.asarray([], jnp.int32)  # no stop: every row generates new_tokens tokens
    sp = SamplingParams.make(0.0)

    def batched():
        return jax.block_until_ready(coconut_generate(
            params, gb["input_ids"], gb["attention_mask"], gb["latent_mask"], jax.random.PRNGKey(0), sp, stop,
            config=cfg, latent_start=P, num_latent=n, max_new_tokens=a.new_tokens))

    out = batched()
    t_b = timeit(batched, max(1, a.reps // 2))

    def one_by_one():
        return [naive_generate_one(params, p, LAT, config=cfg, max_new_tokens=a.new_tokens) for p in prompts]

    ref = one_by_one()  # warm-up compiles every length bucket
    t0 = time.perf_counter()
    one_by_one()
    t_n = time.perf_counter() - t0
    toks = np.asarray(out.tokens)
    agree = np.mean([toks[i].tolist() == ref[i] for i in range(len(prompts))])
    total = a.gen_batch * a.new_tokens
    print(f"generation of {a.gen_batch} x {a.new_tokens} tokens: batched+cached {t_b:.3f} s "
          f"({total / t_b:.0f} tok/s), batch-1 uncached {t_n:.3f} s ({total / t_n:.0f} tok/s), "
          f"ratio = {t_n / t_b:.1f}x; identical greedy outputs: {100 * agree:.0f}%")


if __name__ == "__main__":
    main()
