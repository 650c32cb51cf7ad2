"""Training MFU: model FLOPs per step / step time / peak FLOP/s of the chips, for a decoder
LM trained with latent_jax's own pieces (Decoder, next-token cross-entropy, optax.adamw,
parallel.param_shardings over all local devices), bf16 compute with fp32 master params.

    python benchmarks/mfu.py                    # accelerator: a ~1.1B Llama-shaped decoder
    python benchmarks/mfu.py --size tiny        # what CPU runs by default
    python benchmarks/mfu.py --batch 8 --seq 2048 --remat dots --steps 10

Model FLOPs are counted as in the PaLM paper's MFU (Chowdhery et al. 2022, appendix B):
6 N per token for the weight matmuls (N = non-embedding params + the LM head) plus
6 L T D per token for causal attention scores and values (half of 12 L T D), forward and
backward; remat recomputation is not counted (that is hardware FLOPs, not model FLOPs).
The compiled step's own count (cost_analysis) is printed beside it; XLA counts a loop body
once, so with scanned layers it is about one layer's share (use --scan 0 to compare).

Peak FLOP/s per chip (dense bf16) comes from the device kind (H100/H200 989 TFLOP/s,
A100 312, TPU v4 275, v5e 197, v5p 459, v6e 918). On CPU there is no published peak: the
script measures one with a large matmul in the same dtype and reports MFU against that
(labelled 'measured peak'). Goal on an H100/H200: >= 50% (MaxText reports about 50% for
Llama2-7B); on CPU the figure only shows the script runs end to end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from latent_jax.testing import tiny_config  # noqa: E402
from latent_jax.models.decoder import Decoder, init_params  # noqa: E402
from latent_jax.parallel import batch_sharding, make_mesh, param_shardings, replicated, use_mesh  # noqa: E402

PEAKS = [  # (substring of device_kind, peak dense bf16 FLOP/s per device)
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6", 918e12),
]

SIZES = {  # name: (hidden, intermediate, layers, heads, kv heads, vocab)
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape
    "tiny": (256, 688, 4, 4, 2, 4096),
}


def peak_flops(device) -> tuple[float | None, str]:
    kind = getattr(device, "device_kind", str(device))
    for sub, peak in PEAKS:
        if sub.lower() in kind.lower():
            return peak, kind
    return None, kind


def measured_cpu_peak(dtype, n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of one large matmul on the default device (the CPU stand-in for a peak)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        t.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(t))


def measure(size: str, batch: int = 0, seq: int = 0, steps: int = 5, remat: str = "", scan: bool = True,
            mesh_spec: str = "", attention: str = "auto") -> dict:
    """Train `steps` timed steps (after 2 warm-up steps) of the `size` decoder on all local devices
    and return the figures the table prints (step_s, tokens_per_s, model_flops, hw_flops, mfu, ...)."""
    on_cpu = jax.default_backend() == "cpu"
    D, F, L, H, KV, V = SIZES[size]
    n_dev = jax.device_count()
    B = batch or n_dev * (2 if on_cpu else 8)
    T = seq or (128 if on_cpu else 2048)
    remat = remat or ("none" if on_cpu else "dots")
    cfg = tiny_config("llama", vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=KV, head_dim=D // H, max_position_embeddings=T,
                      dtype="bfloat16", param_dtype="float32", scan_layers=bool(scan), remat_policy=remat,
                      attention=attention)
    shape = {"data": 1, "fsdp": n_dev, "tensor": 1}
    if mesh_spec:
        shape = {k: int(v) for k, v in (p.split("=") for p in mesh_spec.split(","))}
    mesh = make_mesh(shape)
    params = init_params(cfg, 0)
    p_sh = param_shardings(params, mesh)
    params = jax.device_put(params, p_sh)
    tx = optax.adamw(1e-4)
    opt = tx.init(params)
    o_sh = param_shardings(opt, mesh)
    opt = jax.device_put(opt, o_sh)
    model = Decoder(cfg)

    def loss_fn(p, ids):
        out = model.apply({"params": p}, ids, attention_mask=jnp.ones_like(ids),
                          positions=jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape))
        logits = out.logits[:, :-1].astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, -1)
        gold = jnp.take_along_axis(logits, ids[:, 1:, None], -1)[..., 0]
        return jnp.mean(lse - gold)

    def step(p, o, ids):
        loss, g = jax.value_and_grad(loss_fn)(p, ids)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    ids_sh = batch_sharding(mesh, 2)
    jstep = jax.jit(step, in_shardings=(p_sh, o_sh, ids_sh), out_shardings=(p_sh, o_sh, replicated(mesh)),
                    donate_argnums=(0, 1))
    ids = jax.device_put(np.random.default_rng(0).integers(0, V, (B, T), dtype=np.int32), ids_sh)
    with use_mesh(mesh):  # the decoder's activation constraints, as the Trainer traces its step
        compiled = jstep.lower(params, opt, ids).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hw_flops = float((cost or {}).get("flops", 0.0)) * n_dev

    for _ in range(2):  # warm-up
        params, opt, loss = compiled(params, opt, ids)
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt, loss = compiled(params, opt, ids)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_matmul = n_params - V * D + (V * D if cfg.tie_word_embeddings else 0)  # the embedding gather is free
    tokens = B * T
    model_flops = 6 * n_matmul * tokens + 6 * L * T * D * tokens
    peak, kind = peak_flops(jax.devices()[0])
    label = "published peak"
    if peak is None:
        peak, label = measured_cpu_peak(jnp.bfloat16), "measured peak (1024^2 bf16 matmul)"
    if not math.isfinite(float(loss)):
        raise SystemExit("error: the loss is not finite")
    return dict(step_s=dt, tokens_per_s=tokens / dt, model_flops=model_flops, hw_flops=hw_flops,
                mfu=model_flops / dt / (peak * n_dev), peak=peak, peak_label=label, kind=kind, n_dev=n_dev,
                n_params=n_params, batch=B, seq=T, remat=remat, scan=bool(scan), layers=L, hidden=D, vocab=V,
                mesh=dict(mesh.shape), steps=steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    on_cpu = jax.default_backend() == "cpu"
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny" if on_cpu else "1b")
    ap.add_argument("--batch", type=int, default=0, help="global batch (default: 2 per device on CPU, 8 per device else)")
    ap.add_argument("--seq", type=int, default=0, help="tokens per example (default 128 on CPU, 2048 else)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--remat", default="", help="none | full | dots | dots_no_batch (default: none on CPU, dots else)")
    ap.add_argument("--scan", type=int, default=1, help="scan the layers (1) or unroll them (0)")
    ap.add_argument("--mesh", default="", help="data=..,fsdp=..,tensor=.. (default: fsdp over all devices)")
    ap.add_argument("--attention", default="auto", help="model.attention: auto | xla | chunked | cudnn | splash")
    a = ap.parse_args()
    r = measure(a.size, a.batch, a.seq, a.steps, a.remat, bool(a.scan), a.mesh, a.attention)
    print(f"device: {r['n_dev']} x {r['kind']}  ({r['peak_label']} {r['peak'] / 1e12:.3g} TFLOP/s each)")
    print(f"model: {a.size} llama-shaped, {r['n_params'] / 1e9:.3f} B params ({r['layers']} x {r['hidden']}, vocab "
          f"{r['vocab']}), bf16 compute, fp32 params, remat {r['remat']}, scan {r['scan']}, attention {a.attention}; "
          f"mesh {r['mesh']}")
    print(f"batch {r['batch']} x {r['seq']} tokens, median of {a.steps} steps")
    print()
    print(f"| {'chip':<22} | step s | tokens/s | model TFLOP/step | compiled TFLOP/step | MFU |")
    print(f"|{'-' * 24}|--------|----------|------------------|---------------------|-----|")
    print(f"| {r['kind'][:22]:<22} | {r['step_s']:6.3f} | {r['tokens_per_s']:8.0f} | {r['model_flops'] / 1e12:16.3f} | "
          f"{r['hw_flops'] / 1e12:19.3f} | {100 * r['mfu']:.1f}% |")


if __name__ == "__main__":
    main()
