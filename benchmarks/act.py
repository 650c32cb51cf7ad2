"""Early-halting inference (lax.while_loop) against always running k_max steps (lax.scan),
same weights, same outputs.

    python benchmarks/act.py --workdir runs/digits_act        # a trained digits run (configs/mnist_act.py)
    python benchmarks/act.py                                  # random LM weights, halting head biased to halt early

Prints, per batch size: the recursion steps the while_loop ran (mean over batches), the
compute saved (1 - steps / k_max), the wall time of each path and the ratio
(always-k_max time / early-halting time). Both paths are checked to give the same logits.
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

from latent_jax.latent import act as A  # noqa: E402
from latent_jax.testing import tiny_config  # noqa: E402


def _digits_setup(workdir: str, preset: str):
    """(forward(params, batch, loop), params, batches, act config) of a trained digits run."""
    from configs.mnist_act import get_config
    from latent_jax.models import vision_tokens as vt
    from latent_jax.tasks.act import image_task
    from latent_jax.train.checkpoint import TrainCheckpointer

    config = get_config(preset)
    acfg = A.ACTConfig.from_dict(config.act)
    task = image_task(config, acfg, jax.random.PRNGKey(config.seed))
    ck = TrainCheckpointer(os.path.join(workdir, "checkpoints"))
    if ck.latest_step() is None:
        raise SystemExit(f"error: no checkpoint under {workdir}/checkpoints; train with configs/mnist_act.py first")
    state, _ = ck.restore(ck.latest_step())
    params = jax.tree.map(jnp.asarray, state["params"])
    vcfg = vt.VisionTokenConfig.from_dict(config.vision)
    mcfg = task.mcfg

    def forward(params, images, loop, acfg):
        emb = vt.image_inputs(params, images, vcfg, mcfg)
        return A.act_apply(params, mcfg, acfg, inputs_embeds=emb, loop=loop)

    images = np.concatenate([b["images"][b["valid"]] for b in task.eval_batches()])
    return forward, params, images, acfg


def _random_setup(args):
    mcfg = tiny_config("llama", vocab_size=512, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=args.hidden // 4)
    acfg = A.ACTConfig(k_max=args.k_max, tau=0.9, halting_bias_init=args.halting_bias, remat=False)
    params = A.init_params(mcfg, acfg, 0)

    def forward(params, ids, loop, acfg):
        return A.act_apply(params, mcfg, acfg, ids, loop=loop)

    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (args.examples, args.seq_len), 0, 512))
    return forward, params, ids, acfg


def _time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="", help="a digits run of configs/mnist_act.py (else random LM weights)")
    ap.add_argument("--preset", default="", help="the config preset the run used")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-batches", type=int, default=24, help="batches timed per batch size")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--k-max", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--halting-bias", type=float, default=0.0, help="random weights: halting head bias")
    args = ap.parse_args()

    if args.workdir:
        forward, params, data, acfg = _digits_setup(args.workdir, args.preset)
        what = f"trained digits ACT ({args.workdir})"
    else:
        forward, params, data, acfg = _random_setup(args)
        what = f"random LM h={args.hidden} L={args.layers} T={args.seq_len} halting bias {args.halting_bias}"
    acfg_inf = A.ACTConfig(**{**acfg.__dict__, "remat": False})
    f_while = jax.jit(lambda p, x: forward(p, x, "while", acfg_inf))
    f_scan = jax.jit(lambda p, x: forward(p, x, "scan", acfg_inf))
    print(f"ACT inference, {what}; k_max={acfg.k_max} tau={acfg.tau}; device={jax.devices()[0].device_kind}")
    print(f"{'batch':>6} {'steps run':>9} {'saved':>7} {'while s':>9} {'k_max s':>9} {'ratio':>7} {'max|dlogit|':>12}")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        n = min(len(data) // bs, args.max_batches)
        batches = [jnp.asarray(data[i * bs:(i + 1) * bs]) for i in range(n)]
        steps, diff = [], 0.0
        for b in batches:  # compile both, check equality, collect the steps run
            ow, os_ = f_while(params, b), f_scan(params, b)
            steps.append(int(ow.inner_steps))
            diff = max(diff, float(jnp.max(jnp.abs(ow.logits - os_.logits))))

        def run(f):
            for b in batches:
                out = f(params, b)
            jax.block_until_ready(out.logits)

        t_w = _time(lambda: run(f_while), args.reps)
        t_s = _time(lambda: run(f_scan), args.reps)
        mean_steps = float(np.mean(steps))
        print(f"{bs:>6} {mean_steps:>9.2f} {1 - mean_steps / acfg.k_max:>7.1%} {t_w:>9.3f} {t_s:>9.3f} "
              f"{t_s / t_w:>6.2f}x {diff:>12.2e}")


if __name__ == "__main__":
    main()
