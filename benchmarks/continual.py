"""Cost of continual backprop per training step: the same jitted train step (forward,
backward, AdamW) with and without continual backprop (utility / age tracking every step,
replacement when due), same weights, same batches, one process.

    python benchmarks/continual.py [--steps 200] [--rounds 5] [--threads N]

Setups: the digits demo's MLP (64-128-128-10, batch 16), the paper's permuted-MNIST network
width (784-2000-2000-2000-10, batch 32), and a decoder LM (configs/base.py's sizes: 4 layers,
hidden 128, MLP 512, batch 8 x 128 tokens). Continual backprop runs with the paper's
replacement_rate 1e-4, maturity 100, so replacements happen during the timed steps. The two
sides alternate for --rounds rounds (the machine may be shared); the median per-step wall
and CPU times and their ratio (continual / plain) are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.threads import pin_xla_threads  # noqa: E402

pin_xla_threads()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from latent_jax.train import continual as C  # noqa: E402


class MLP(nn.Module):
    sizes: tuple

    @nn.compact
    def __call__(self, x):
        hs = {}
        for i, n in enumerate(self.sizes[1:-1]):
            x = nn.relu(nn.Dense(n, name=f"h{i}")(x))
            hs[f"h{i}"] = x
        return nn.Dense(self.sizes[-1], name="out")(x), hs


def mlp_setup(sizes, batch):
    net = MLP(tuple(sizes))
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, sizes[0])))["params"]
    names = [f"h{i}" for i in range(len(sizes) - 2)] + ["out"]
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch))
               for _ in range(8)]

    def loss(p, b):
        logits, hs = net.apply({"params": p}, b[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean(), hs

    return params, C.dense_chain(params, names), loss, batches


def lm_setup(batch, length):
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import Decoder, init_params

    cfg = tiny_config("llama", vocab_size=512, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=32)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(3, 512, size=(batch, length)).astype(np.int32), None) for _ in range(8)]

    def loss(p, b):
        out, inter = Decoder(cfg).apply({"params": p}, b[0], mutable=["intermediates"])
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], b[0][:, 1:]).mean()
        return ce, C.activations_from_intermediates(inter["intermediates"])

    return params, C.find_mlp_layers(params), loss, batches


def make_step(loss, tx, cbp: bool):
    def step(params, opt, b):
        if cbp:
            (l, acts), g = jax.value_and_grad(loss, has_aux=True)(params, b)
            u, opt = tx.update(g, opt, params, activations=acts)
        else:
            l, g = jax.value_and_grad(lambda p: loss(p, b)[0])(params)  # activations unused: XLA drops them
            u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, l

    return jax.jit(step, donate_argnums=(0, 1))


def time_side(step, params, opt, batches, n):
    params, opt, l = step(params, opt, batches[0])  # compile
    jax.block_until_ready(l)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        params, opt, l = step(params, opt, batches[i % len(batches)])
    jax.block_until_ready((params, l))
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n, params, opt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated setup names (digits_mlp, paper_mlp, decoder_lm)")
    a = ap.parse_args()
    setups = {
        "digits_mlp": lambda: mlp_setup((64, 128, 128, 10), 16),
        "paper_mlp": lambda: mlp_setup((784, 2000, 2000, 2000, 10), 32),
        "decoder_lm": lambda: lm_setup(8, 128),
    }
    only = [s for s in a.only.split(",") if s] or list(setups)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {a.steps} steps x {a.rounds} rounds per side")
    print(f"{'setup':12s} {'plain ms':>9s} {'cbp ms':>9s} {'wall ratio':>10s} {'cpu ratio':>9s} {'replaced':>8s}")
    for name in only:
        params, layers, loss, batches = setups[name]()
        plain_tx = optax.adamw(1e-3)
        cbp_tx = C.continual_backprop(optax.adamw(1e-3), layers,
                                      C.CBPConfig(replacement_rate=1e-4, maturity_threshold=100, decay_rate=0.99))
        sides = {"plain": (make_step(loss, plain_tx, False), plain_tx),
                 "cbp": (make_step(loss, cbp_tx, True), cbp_tx)}
        state = {k: (jax.tree.map(jnp.copy, params), tx.init(params)) for k, (_, tx) in sides.items()}
        res = {k: [] for k in sides}
        for _ in range(a.rounds):
            for k, (step, _) in sides.items():
                w, c, p, o = time_side(step, *state[k], batches, a.steps)
                state[k] = (p, o)
                res[k].append((w, c))
        med = {k: np.median(np.asarray(v), axis=0) for k, v in res.items()}
        replaced = int(C.cbp_state(state["cbp"][1]).replaced)
        print(f"{name:12s} {med['plain'][0] * 1e3:9.3f} {med['cbp'][0] * 1e3:9.3f} "
              f"{med['cbp'][0] / med['plain'][0]:10.3f} {med['cbp'][1] / med['plain'][1]:9.3f} {replaced:8d}",
              flush=True)


if __name__ == "__main__":
    main()
