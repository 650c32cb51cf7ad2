"""GRPO rollout speed: latent_jax's jitted KV-cached generator vs transformers `generate`, and
the share of a GRPO step spent in rollout vs update.

A Llama-style model is initialised randomly in transformers, saved as safetensors and loaded
by latent_jax (the same weights). `--prompts` prompts of `--prompt-len` tokens are each
repeated `--group` times (as TRL's GRPOTrainer repeats prompts for its groups), and both sides
sample `--new-tokens` tokens per row at temperature 1 with no top-k / top-p and no early stop
(transformers: do_sample, top_k=0, min_new_tokens = max_new_tokens; latent_jax: no stop
tokens). Reported: rollout tokens/s (all sampled tokens / wall time, median of --repeats after
one warm-up; compilation excluded for JAX) and the ratio latent_jax / transformers. Then one
GRPO step on latent_jax (rollout, rewards, advantages, a jitted update of the clipped objective
through completion_logprobs) is timed and split into rollout and update.

    python benchmarks/rl.py                          # the embedded default's size (2 x 128)
    python benchmarks/rl.py --hidden 768 --layers 12 --heads 12 --mlp 2048 --vocab 32000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_model_args, build_llama, load_torch_llama, pin_threads  # noqa: E402

_THREADS = pin_threads()  # before jax, numpy and torch start their thread pools

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def bench_torch(model_dir: str, ids: np.ndarray, new: int, repeats: int) -> dict:
    m, dev = load_torch_llama(model_dir)
    x = torch.tensor(ids, dtype=torch.long, device=dev)
    mask = torch.ones_like(x)
    times = []
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first run warms up
            torch.manual_seed(r)
            t0 = time.perf_counter()
            out = m.generate(input_ids=x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
            if r:
                times.append(time.perf_counter() - t0)
    assert out.shape[1] - ids.shape[1] == new
    s = statistics.median(times)
    return dict(seconds=s, tokens_per_s=ids.shape[0] * new / s)


def bench_jax(model_dir: str, prompts: np.ndarray, group: int, new: int, repeats: int) -> dict:
    from latent_jax.models.hf import load_hf
    from latent_jax.rl.grpo import group_advantages, grpo_objective
    from latent_jax.rl.rollout import completion_logprobs, rollout, sequence_arrays
    import optax

    cfg, params = load_hf(model_dir)
    params = jax.device_put(jax.tree.map(jnp.asarray, params))
    arrays = {"input_ids": prompts, "attention_mask": np.ones_like(prompts),
              "latent_mask": np.zeros(prompts.shape, bool)}
    kw = dict(config=cfg, group_size=group, max_new_tokens=new, stop_ids=(), temperature=1.0)
    t0 = time.perf_counter()
    ro = rollout(params, arrays, 0, 0, jax.random.PRNGKey(0), **kw)  # compiles
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        ro = rollout(params, arrays, 0, 0, jax.random.PRNGKey(r + 1), **kw)  # returns host arrays: complete
        times.append(time.perf_counter() - t0)
    assert ro.tokens.shape == (prompts.shape[0] * group, new) and int(ro.lengths.min()) == new
    roll_s = statistics.median(times)

    # one GRPO update on that rollout (toy reward: completions whose first token is even)
    tx = optax.adamw(1e-4)
    P = prompts.shape[1]

    @jax.jit
    def update(p, opt, batch, adv):
        def loss(p):
            lp = completion_logprobs(p, batch, config=cfg, latent_start=0, num_latent=0, prompt_len=P)
            return grpo_objective(lp, jax.lax.stop_gradient(lp), adv, batch["completion_mask"])[0]

        lval, g = jax.value_and_grad(loss)(p)
        u, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, u), opt, lval

    def host_side(ro):
        reward = (ro.tokens[:, 0] % 2 == 0).astype(np.float32)
        return {k: jnp.asarray(v) for k, v in sequence_arrays(ro).items()}, group_advantages(jnp.asarray(reward), group)

    opt = tx.init(params)
    batch, adv = host_side(ro)
    jax.block_until_ready(update(params, opt, batch, adv))  # compiles
    upd = []
    for r in range(repeats):
        t0 = time.perf_counter()
        batch, adv = host_side(ro)
        jax.block_until_ready(update(params, opt, batch, adv))
        upd.append(time.perf_counter() - t0)
    upd_s = statistics.median(upd)
    return dict(seconds=roll_s, tokens_per_s=ro.tokens.size / roll_s, compile_s=compile_s, update_s=upd_s,
                rollout_share=roll_s / (roll_s + upd_s))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    add_model_args(p, hidden=128, layers=2, heads=8, mlp=256, vocab=64)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as d:
        build_llama(d, args, max_positions=1024)
        from latent_jax.models.config import ModelConfig

        n_params = ModelConfig.from_hf(d).num_params()
        rng = np.random.default_rng(0)
        prompts = rng.integers(3, args.vocab, size=(args.prompts, args.prompt_len)).astype(np.int32)
        print(f"model: llama-style {n_params / 1e6:.2f}M params, float32; jax on {jax.devices()[0].platform}, torch "
              f"{torch.__version__} threads={torch.get_num_threads()}; {args.prompts} prompts x group {args.group}, "
              f"prompt {args.prompt_len}, {args.new_tokens} sampled tokens, median of {args.repeats}", flush=True)
        t0c, t0w = time.process_time(), time.perf_counter()
        j = bench_jax(d, prompts, args.group, args.new_tokens, args.repeats)
        t = bench_torch(d, np.repeat(prompts, args.group, axis=0), args.new_tokens, args.repeats)
        print(f"rollout tokens/s   latent_jax {j['tokens_per_s']:10.0f}   transformers generate {t['tokens_per_s']:10.0f}"
              f"   ratio {j['tokens_per_s'] / t['tokens_per_s']:.2f}x   (jax compile {j['compile_s']:.1f}s)")
        print(f"GRPO step (latent_jax): rollout {j['seconds'] * 1e3:.1f} ms, update {j['update_s'] * 1e3:.1f} ms -> "
              f"rollout share {100 * j['rollout_share']:.0f}%")
        print(f"(benchmark total: {time.perf_counter() - t0w:.0f}s wall, {time.process_time() - t0c:.0f}s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
