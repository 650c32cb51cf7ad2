"""Decoding methods side by side, each against its baseline in one process, with ratios.

    python benchmarks/decoding.py                 # all three
    python benchmarks/decoding.py --only tova --new-tokens 2048

1. TOVA with a cache of 1/8 of the sequence length vs the full KV cache (plain generate):
   KV-cache bytes, compiled temporary memory, decode tokens/s.
2. Masked diffusion: Fast-dLLM threshold decoding vs the fixed schedule on a small model
   trained here with the masked-diffusion objective (toy task): forward passes, time per
   generated token, how many outputs changed, answer accuracy.
3. Typical acceptance (Medusa heads trained here, self-distilled) vs plain decoding:
   tokens per forward pass and wall time, greedy and sampled.
4. Tree verification (`--only tree`): the same heads' top-k candidate tree verified in one
   forward over the flattened tree (tree mask, tree position ids) vs as extra batch rows, vs
   a single chain and plain decoding: tokens per forward pass, tokens per second.

Compilation is excluded from every timing (each function runs once before it is timed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from latent_jax.decoding.sampling import SamplingParams, generate  # noqa: E402
from latent_jax.testing import tiny_config  # noqa: E402
from latent_jax.models.decoder import init_params  # noqa: E402

NO_STOP = np.zeros((0,), np.int32)


def _timed(fn, repeats: int = 1):
    out = jax.block_until_ready(fn())  # compile + warm
    t = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn())
    return out, (time.perf_counter() - t) / repeats


def _temp_bytes(jitted, *args, **kw) -> int | None:
    try:
        ma = jitted.lower(*args, **kw).compile().memory_analysis()
        return int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def bench_tova(args) -> dict:
    from latent_jax.decoding.tova import TovaOptions, tova_generate, tova_generate_jit

    cfg = tiny_config("llama", vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=8192)
    params = init_params(cfg, 0)
    B, T, N = args.batch, args.prompt_len, args.new_tokens
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, size=(B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    sp, rng = SamplingParams.make(), jax.random.PRNGKey(0)
    C = (T + N) // 8
    full, t_full = _timed(lambda: generate(params, ids, mask, rng, sp, NO_STOP, config=cfg, max_new_tokens=N))
    opts = TovaOptions(cache_size=C)
    tova, t_tova = _timed(lambda: tova_generate(params, ids, mask, rng, sp, NO_STOP, config=cfg, max_new_tokens=N,
                                                opts=opts))
    full_cache = B * (T + N) * cfg.num_hidden_layers * (2 * cfg.num_key_value_heads * cfg.head_dim * 4 + 4)
    tova_cache = tova.cache.nbytes()
    hw = jnp.full((B, cfg.num_hidden_layers, cfg.num_attention_heads), 1.0 / cfg.num_attention_heads)
    mem_full = _temp_bytes(generate, params, ids, mask, rng, sp, NO_STOP, config=cfg, max_new_tokens=N)
    mem_tova = _temp_bytes(tova_generate_jit, params, ids, mask, rng, sp, jnp.asarray(NO_STOP), hw, config=cfg,
                           max_new_tokens=N, opts=opts, top_k=0, pad_id=0, cache_size=C)
    same = int(np.sum(np.asarray(full.tokens) == np.asarray(tova.tokens)))
    r = {
        "seq_len": T + N, "cache_size": C, "batch": B,
        "full_cache_bytes": full_cache, "tova_cache_bytes": tova_cache,
        "cache_bytes_ratio_full_over_tova": full_cache / tova_cache,
        "full_compiled_bytes": mem_full, "tova_compiled_bytes": mem_tova,
        "full_tokens_per_s": B * N / t_full, "tova_tokens_per_s": B * N / t_tova,
        "tokens_per_s_ratio_tova_over_full": t_full / t_tova,
        "tokens_equal_to_full": f"{same}/{B * N}",
    }
    print("\n[TOVA 1/8 cache vs full cache]")
    for k, v in r.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    return r


def bench_diffusion(args) -> dict:
    from configs.diffusion_lm import get_config
    from latent_jax.decoding.diffusion import DiffusionOptions, diffusion_generate
    from latent_jax.models.io import load_any
    from latent_jax.tasks.diffusion import TOY_MASK, run, toy_examples

    c = get_config()
    c.train_steps, c.eval_every_steps, c.progress = args.diffusion_train_steps, 0, False
    c.data.num_digits = args.digits
    with tempfile.TemporaryDirectory() as wd:
        t0 = time.perf_counter()
        run(c, wd)
        train_s = time.perf_counter() - t0
        cfg, params = load_any(os.path.join(wd, "model"))
    ids, P = toy_examples(64, args.digits, seed=12345)
    prompts, ref = ids[:, :P], ids[:, P:]
    G = ref.shape[1]
    rows = {}
    outs = {}
    for name, th in [("fixed", None)] + [(f"threshold{t}", t) for t in args.thresholds]:
        o = DiffusionOptions(steps=G, gen_length=G, block_length=G // 2, mask_id=TOY_MASK, threshold=th)
        out, dt = _timed(lambda: diffusion_generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0),
                                                    config=cfg, opts=o), repeats=10)
        toks = np.asarray(out.tokens)
        us = np.asarray(out.unmask_step)
        outs[name] = toks
        rows[name] = {
            "forward_passes": int(out.forward_passes),  # for the whole batch (it waits for its slowest row)
            "row_forward_passes": float(np.mean([len(np.unique(u)) for u in us])),  # each row decoded alone
            "ms_per_token": 1e3 * dt / (G * len(prompts)),
            "answer_token_acc": float(np.mean(toks == ref)),
            "rows_changed_vs_fixed": int(np.sum(np.any(toks != outs["fixed"], axis=1))),
        }
    r = {"train_steps": args.diffusion_train_steps, "train_s": train_s, "gen_length": G, "block_length": G // 2,
         "rows": len(prompts)}
    for n, d in rows.items():
        r.update({f"{n}_{k}": v for k, v in d.items()})
        if n != "fixed":
            r[f"{n}_row_forward_pass_ratio_fixed_over_threshold"] = G / d["row_forward_passes"]
            r[f"{n}_time_per_token_ratio_fixed_over_threshold"] = rows["fixed"]["ms_per_token"] / d["ms_per_token"]
    print("\n[diffusion: threshold parallel decoding vs fixed schedule]")
    for k, v in r.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    return r


def bench_typical(args) -> dict:
    from latent_jax.decoding.speculative import acceptance_stats, init_heads, train_heads, typical_generate

    cfg = tiny_config("llama", vocab_size=64)
    params = init_params(cfg, 1)
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)  # a peaked random model
    rs = np.random.RandomState(0)
    prompts = rs.randint(3, 64, size=(1024 + args.batch, 4)).astype(np.int32)
    g = generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP,
                 config=cfg, max_new_tokens=28)
    corpus = np.concatenate([prompts, np.asarray(g.tokens)], axis=1)
    heads = train_heads(params, cfg, init_heads(cfg, 3, 0, base_params=params), corpus[:1024],
                        steps=args.head_steps, batch_size=32, learning_rate=1e-2)
    test = corpus[1024:, :4]
    mask = np.ones_like(test)
    N = args.typical_new_tokens
    r = {"new_tokens": N, "rows": len(test), "head_train_steps": args.head_steps}
    for name, temp in (("greedy", 0.0), ("sampled_t0.7", 0.7)):
        sp = SamplingParams.make(temp)
        plain, tp = _timed(lambda: generate(params, test, mask, jax.random.PRNGKey(1), sp, NO_STOP, config=cfg,
                                            max_new_tokens=N), repeats=3)
        spec, ts = _timed(lambda: typical_generate(params, heads, test, mask, jax.random.PRNGKey(1), sp, NO_STOP,
                                                   config=cfg, max_new_tokens=N), repeats=3)
        st = acceptance_stats(spec)
        r[f"{name}_plain_tokens_per_forward"] = N / (int(plain.steps) + 1)
        r[f"{name}_typical_tokens_per_forward"] = len(test) * N / (st["decode_forward_passes"] + len(test))
        r[f"{name}_mean_accepted_length"] = st["mean_accepted_length"]
        r[f"{name}_acceptance_rate"] = st["acceptance_rate"]
        r[f"{name}_plain_s"] = tp
        r[f"{name}_typical_s"] = ts
        r[f"{name}_wall_ratio_plain_over_typical"] = tp / ts
        if temp == 0:
            r["greedy_outputs_identical"] = bool(np.array_equal(np.asarray(plain.tokens), np.asarray(spec.tokens)))
    print("\n[typical acceptance (Medusa heads) vs plain decoding]")
    for k, v in r.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    return r


def _trained_heads(args):
    from latent_jax.decoding.speculative import init_heads, train_heads

    cfg = tiny_config("llama", vocab_size=64)
    params = init_params(cfg, 1)
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, params)  # a peaked random model
    rs = np.random.RandomState(0)
    prompts = rs.randint(3, 64, size=(1024 + args.batch, 4)).astype(np.int32)
    g = generate(params, prompts, np.ones_like(prompts), jax.random.PRNGKey(0), SamplingParams.make(), NO_STOP,
                 config=cfg, max_new_tokens=28)
    corpus = np.concatenate([prompts, np.asarray(g.tokens)], axis=1)
    heads = train_heads(params, cfg, init_heads(cfg, 3, 0, base_params=params), corpus[:1024],
                        steps=args.head_steps, batch_size=32, learning_rate=1e-2)
    return cfg, params, heads, corpus[1024:, :4]


def bench_tree(args) -> dict:
    from latent_jax.decoding.speculative import TypicalOptions, acceptance_stats, typical_generate

    cfg, params, heads, test = _trained_heads(args)
    mask = np.ones_like(test)
    N, sp = args.typical_new_tokens, SamplingParams.make()
    plain, tp = _timed(lambda: generate(params, test, mask, jax.random.PRNGKey(1), sp, NO_STOP, config=cfg,
                                        max_new_tokens=N), repeats=3)
    r = {"new_tokens": N, "rows": len(test), "tree_topk": args.tree_topk, "num_paths": args.num_paths,
         "plain_tokens_per_forward": 1.0, "plain_tokens_per_s": len(test) * N / tp}
    variants = {"chain": TypicalOptions(),
                "tree_batch_rows": TypicalOptions(tree_topk=args.tree_topk, num_paths=args.num_paths,
                                                  tree_attention=False),
                "tree_one_pass": TypicalOptions(tree_topk=args.tree_topk, num_paths=args.num_paths)}
    times = {}
    for name, opts in variants.items():
        out, t = _timed(lambda: typical_generate(params, heads, test, mask, jax.random.PRNGKey(1), sp, NO_STOP,
                                                 config=cfg, max_new_tokens=N, opts=opts), repeats=3)
        st = acceptance_stats(out)
        times[name] = t
        r[f"{name}_tokens_per_forward"] = st["mean_accepted_length"]
        r[f"{name}_tokens_per_s"] = len(test) * N / t
        r[f"{name}_equals_greedy"] = bool(np.array_equal(np.asarray(plain.tokens), np.asarray(out.tokens)))
    r["wall_ratio_batch_rows_over_one_pass"] = times["tree_batch_rows"] / times["tree_one_pass"]
    r["wall_ratio_plain_over_one_pass"] = tp / times["tree_one_pass"]
    print("\n[tree verification: one pass (tree mask) vs batch rows vs chain vs plain]")
    for k, v in r.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("tova", "diffusion", "typical", "tree"), default=None)
    p.add_argument("--tree-topk", type=int, default=2)
    p.add_argument("--num-paths", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=1984, help="TOVA: sequence length = prompt + new tokens")
    p.add_argument("--digits", type=int, default=8)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    p.add_argument("--diffusion-train-steps", type=int, default=400)
    p.add_argument("--head-steps", type=int, default=300)
    p.add_argument("--typical-new-tokens", type=int, default=64)
    args = p.parse_args()
    print(f"devices: {jax.devices()}")
    if args.only in (None, "tova"):
        bench_tova(args)
    if args.only in (None, "diffusion"):
        bench_diffusion(args)
    if args.only in (None, "typical"):
        bench_typical(args)
    if args.only in (None, "tree"):
        bench_tree(args)


if __name__ == "__main__":
    main()
