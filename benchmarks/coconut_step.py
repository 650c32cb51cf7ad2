"""Micro-benchmark: one jitted Coconut train step (coconut_loss + value_and_grad + AdamW) at
the embedded default's shape (benchmarks/coconut.py's default batch), JAX only.

    taskset -c 1 python benchmarks/coconut_step.py --threads 1 [--latents 2] [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.environ.get("LJ_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--latents", type=int, default=4)
ap.add_argument("--question", type=int, default=66)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--feedback", type=int, default=1, help="0: thoughts as ordinary tokens (one pass)")
ap.add_argument("--hlo", default="", help="write the compiled HLO here")
a = ap.parse_args()
sys.argv = sys.argv[:1] + ["--threads", str(a.threads)]

from threads import pin_xla_threads  # noqa: E402

pin_xla_threads()
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import latent_jax.models.layers  # noqa: E402,F401  (from LJ_ROOT, before benchmarks/coconut.py edits sys.path)
from coconut import make_batch  # noqa: E402
from latent_jax.latent.coconut import coconut_loss  # noqa: E402
from latent_jax.models.decoder import init_params  # noqa: E402
from latent_jax.testing import tiny_config  # noqa: E402

cfg = tiny_config("llama", vocab_size=48, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=8, head_dim=16, eos_token_id=(2,))
params = init_params(cfg, 0)
batch, P, n, _ = make_batch(a.batch, a.question, a.latents, 8, 48, np.random.default_rng(0))
tx = optax.adamw(1e-4, weight_decay=0.01)


def step(p, o, b):
    loss, g = jax.value_and_grad(lambda q: coconut_loss(q, b, config=cfg, latent_start=P, num_latent=n,
                                                                    feedback=bool(a.feedback))[0])(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss


j = jax.jit(step)
o = tx.init(params)
if a.hlo:
    open(a.hlo, "w").write(j.lower(params, o, batch).compile().as_text())
losses = []
p_, o_ = params, o
for _ in range(2):
    p_, o_, l_ = j(p_, o_, batch)
    losses.append(float(l_))
ts, cs = [], []
for _ in range(a.reps):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(j(params, o, batch))
    ts.append(time.perf_counter() - t)
    cs.append(time.process_time() - c)
import latent_jax; print(os.path.dirname(latent_jax.__file__), end=" ")
print(f"batch {tuple(batch['input_ids'].shape)} P={P} n={n}: step median {1e3 * statistics.median(ts):.1f} ms "
      f"min {1e3 * min(ts):.1f} ms, CPU median {1e3 * statistics.median(cs):.1f} ms; losses {losses[0]:.6f} {losses[1]:.6f}")
