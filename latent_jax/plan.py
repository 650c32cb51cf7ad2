"""Plan a real-size Coconut training run without the hardware.

    python -m latent_jax.plan --config=configs/hf/phi4_multimodal.json --devices 16 \
        --mesh data=1,fsdp=16,tensor=1 --chip v4 --batch 16 --seq 2048 --latent 3

Builds the model's shapes from an HF config.json alone (text LMs: Mistral, Llama, Qwen2, Phi-3;
VLMs: Phi-4-multimodal, InternVL3; no weights: params are jax.ShapeDtypeStruct), shards them
with the library's rules (latent_jax.parallel) on `--devices` fake CPU devices, AOT-lowers under
parallel.use_mesh (so the decoder's activation constraints apply) and compiles the Coconut train
step (latent.coconut.coconut_loss, value_and_grad, AdamW update; bf16 compute, fp32 master
params and moments, per-layer remat, scanned layers), and prints
per-device bytes of params, optimizer state and the compiled step's temporaries
(compiled.memory_analysis()), FLOPs per step (compiled.cost_analysis(), with the 6·N·tokens
estimate beside it), whether it fits the chip's HBM, and the step time at 50% MFU.

For a VLM the vision tower is frozen in the multimodal Coconut workflow (its features are
computed once and spliced into the token embeddings), so the step trains the language model on
`--seq` tokens of which `--media-tokens` are spliced features; the tower's weights are listed
apart (they sit in HBM during feature extraction only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_jax.latent.coconut import coconut_loss
from latent_jax.models.config import HF_CONFIG_FIX, ModelConfig, read_json_object
from latent_jax.models.decoder import init_params
from latent_jax.models.hf_vlm import VLM_MODEL_TYPES, vlm_config_from_hf
from latent_jax.models.multimodal import init_vlm_params
from latent_jax.parallel import batch_sharding, make_mesh, param_shardings, replicated, use_mesh
from latent_jax.train.trainer import quiet_xla_logs

# chip: (HBM bytes per device, peak dense bf16 FLOP/s per device, what a device is)
CHIPS = {
    "v4": (32 * 2**30, 275e12, "TPU v4 chip (v4-N: N/2 chips)"),
    "v5e": (16 * 2**30, 197e12, "TPU v5e chip"),
    "v5p": (95 * 2**30, 459e12, "TPU v5p chip (v5p-N: N/2 chips)"),
    "v6e": (32 * 2**30, 918e12, "TPU v6e chip"),
    "h100": (80 * 10**9, 989e12, "NVIDIA H100 SXM"),
    "h200": (141 * 10**9, 989e12, "NVIDIA H200 SXM"),
    "a100": (80 * 10**9, 312e12, "NVIDIA A100 80GB"),
}
GiB = 2**30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latent_jax.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="HF config.json (or a directory holding one)")
    p.add_argument("--devices", type=int, required=True, help="number of devices (chips) of the slice")
    p.add_argument("--mesh", default="", help="data=..,fsdp=..,tensor=.. (default: fsdp over all devices)")
    p.add_argument("--chip", default="v4", choices=sorted(CHIPS))
    p.add_argument("--batch", type=int, default=0, help="global batch (default: one example per device)")
    p.add_argument("--seq", type=int, default=1024, help="tokens per example (question + thoughts + answer)")
    p.add_argument("--latent", type=int, default=3, help="continuous thoughts per example")
    p.add_argument("--latent-start", type=int, default=0, help="index of the first thought (default: seq - 64 - latent)")
    p.add_argument("--media-tokens", type=int, default=0, help="spliced vision-feature tokens per example (VLMs)")
    p.add_argument("--remat", default="full", choices=("none", "full", "dots", "dots_no_batch"))
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="master params and AdamW moments (compute is bf16 either way)")
    p.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (scaling experiments)")
    p.add_argument("--no-activation-sharding", action="store_true",
                   help="trace without the mesh, so the decoder's activation constraints are off (for comparison)")
    p.add_argument("--json", default="", help="also write the plan as JSON here")
    p.add_argument("--verbose", action="store_true",
                   help="keep XLA's C++ log lines (e.g. its 'Very slow compile?' banner on real-size programs)")
    return p


def _mesh_shape(spec: str, n: int) -> dict:
    if not spec:
        return {"data": 1, "fsdp": n, "tensor": 1}
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in ("data", "fsdp", "tensor") or not v.strip().lstrip("-").isdigit():
            raise SystemExit(f"error: --mesh {spec!r}: use data=A,fsdp=B,tensor=C (integers, -1 = the rest)")
        out[k] = int(v)
    return out


def load_model_config(path: str):
    """(text ModelConfig, VLMConfig or None) from an HF config.json or a directory holding one."""
    cpath = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(cpath):
        raise SystemExit(f"error: --config {path}: no config.json there; pass an HF config.json "
                         "(configs/hf/ has Phi-4-multimodal, InternVL3 and Mistral)")
    d = read_json_object(cpath, HF_CONFIG_FIX)
    if d.get("model_type") in VLM_MODEL_TYPES:
        v = vlm_config_from_hf(d)
        return v.text, v
    return ModelConfig.from_hf(d), None


def _bytes_per_device(tree, shardings) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(x.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def _count(tree) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(tree))


def make_plan(args, devices=None) -> dict:
    """The plan (a JSON-able dict) for parsed `args` (build_parser()) on `devices` (default: all)."""
    n = args.devices
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != n:
        raise SystemExit(f"error: {len(devices)} devices visible, --devices {n}; run the plan in a fresh "
                         "process (it sets XLA_FLAGS=--xla_force_host_platform_device_count before jax starts)")
    text, vlm = load_model_config(args.config)
    cfg = text.replace(dtype="bfloat16", param_dtype=args.param_dtype, scan_layers=True, remat_policy=args.remat)
    if args.layers:
        w = tuple(cfg.layer_windows)
        cfg = cfg.replace(num_hidden_layers=args.layers, layer_windows=(w * args.layers)[:args.layers])
    mesh = make_mesh(_mesh_shape(args.mesh, n), devices)
    B = args.batch or n
    T, L = args.seq, args.latent
    P = args.latent_start or (T - 64 - L if T > 128 + L else T // 2)
    if P + L > T:
        raise SystemExit(f"error: --latent-start {P} + --latent {L} > --seq {T}")
    batch_axes = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if B % batch_axes:
        raise SystemExit(f"error: --batch {B} does not split over data x fsdp = {batch_axes} devices")

    params = jax.eval_shape(lambda: init_params(cfg, 0))
    p_sh = param_shardings(params, mesh)
    tx = optax.adamw(1e-5, weight_decay=0.0)
    opt = jax.eval_shape(tx.init, params)
    o_sh = param_shardings(opt, mesh)
    D = cfg.hidden_size
    batch = {
        "input_ids": jax.ShapeDtypeStruct((B, T), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((B, T), jnp.int32),
        "labels": jax.ShapeDtypeStruct((B, T), jnp.int32),
        "latent_mask": jax.ShapeDtypeStruct((B, T), jnp.bool_),
    }
    if args.media_tokens:
        batch["embeds_override"] = jax.ShapeDtypeStruct((B, T, D), jnp.bfloat16)
        batch["embeds_override_mask"] = jax.ShapeDtypeStruct((B, T), jnp.bool_)
    b_sh = {k: batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}

    def step(params, opt_state, batch):
        def loss_fn(p):
            return coconut_loss(p, batch, config=cfg, latent_start=P, num_latent=L, remat_thoughts=True)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    jitted = jax.jit(step, in_shardings=(p_sh, o_sh, b_sh), out_shardings=(p_sh, o_sh, replicated(mesh)),
                     donate_argnums=(0, 1))
    # traced under the mesh: the decoder pins hidden states to the batch axes (parallel.constrain)
    constrained = not args.no_activation_sharding
    with use_mesh(mesh) if constrained else contextlib.nullcontext():
        lowered = jitted.lower(params, opt, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_dev = float((cost or {}).get("flops", 0.0))

    n_params = _count(params)
    emb = cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2)
    tokens = B * T
    # 6 N per token (forward 2N + backward 4N) on the non-embedding weights and the LM head,
    # the attention scores (12 L T D per token for QK^T and AV, forward + backward), and the
    # thoughts: each is one more decoder pass over one position, so ~the same per-token cost
    # the embedding lookup is a gather (no FLOPs); a tied LM head is a matmul with the same weights
    n_matmul = n_params - cfg.vocab_size * D + (cfg.vocab_size * D if cfg.tie_word_embeddings else 0)
    est = 6 * n_matmul * tokens + 12 * cfg.num_hidden_layers * T * D * tokens / 2
    if args.remat != "none":
        est *= 8 / 6  # remat recomputes the forward once
    hbm, peak, chip_desc = CHIPS[args.chip]
    p_bytes = _bytes_per_device(params, p_sh)
    o_bytes = _bytes_per_device(opt, o_sh)
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    args_b = int(getattr(mem, "argument_size_in_bytes", 0))
    out_b = int(getattr(mem, "output_size_in_bytes", 0))
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    peak_bytes = args_b + out_b - alias + temp + code
    # XLA's cost analysis counts a while-loop body once (scanned layers, the thought scan), so
    # the step time uses the analytic count; the compiled count is printed for reference
    total_flops = est
    plan = {
        "config": args.config, "model_type": vlm.family if vlm else cfg.model_type,
        "params": n_params, "embedding_params": emb,
        "vision_params": _vision_params(vlm) if vlm else 0,
        "devices": n, "mesh": {k: int(v) for k, v in mesh.shape.items()}, "chip": args.chip, "chip_desc": chip_desc,
        "global_batch": B, "seq": T, "latent": L, "latent_start": P, "media_tokens": args.media_tokens,
        "layers": cfg.num_hidden_layers, "activation_sharding": constrained,
        "remat": args.remat, "param_dtype": args.param_dtype, "compute_dtype": "bfloat16",
        "bytes_per_device": {"params": p_bytes, "optimizer": o_bytes, "arguments": args_b, "outputs": out_b,
                             "aliased": alias, "temporaries": temp, "code": code, "peak": peak_bytes},
        "hbm_bytes": hbm, "fits": peak_bytes <= 0.95 * hbm,
        "flops_per_step_compiled": flops_dev * n if flops_dev else None, "flops_per_step_6N": est,
        "step_time_at_50pct_mfu_s": total_flops / (n * peak * 0.5),
        "tokens_per_s_at_50pct_mfu": tokens / (total_flops / (n * peak * 0.5)),
        "compile_s": compile_s,
    }
    return plan


def _vision_params(vlm) -> int:
    try:
        full = jax.eval_shape(lambda: init_vlm_params(vlm, 0))
    except Exception:  # noqa: BLE001 - the count is informative only
        return 0
    return _count({k: v for k, v in full.items() if k != "text" and k != "language_model"}) if isinstance(full, dict) else 0


def format_plan(p: dict) -> str:
    b = p["bytes_per_device"]
    g = lambda x: f"{x / GiB:8.2f} GiB" if x >= 2**28 else f"{x / 2**20:8.2f} MiB"  # noqa: E731
    lines = [
        f"plan: {p['model_type']} from {p['config']}",
        f"  params {p['params'] / 1e9:.4g} B (embeddings {p['embedding_params'] / 1e9:.4g} B)"
        + (f"; frozen vision tower + projector {p['vision_params'] / 1e9:.4g} B, not in the step" if p["vision_params"] else ""),
        f"  {p['devices']} x {p['chip_desc']}, mesh {p['mesh']}, global batch {p['global_batch']} x {p['seq']} tokens, "
        f"{p['latent']} thoughts at {p['latent_start']}"
        + (f", {p['media_tokens']} media tokens" if p["media_tokens"] else ""),
        f"  remat {p['remat']}, params/moments {p['param_dtype']}, compute {p['compute_dtype']}",
        "  per device:",
        f"    params        {g(b['params'])}",
        f"    optimizer     {g(b['optimizer'])}",
        f"    temporaries   {g(b['temporaries'])}   (activations, gradients, collectives: compiled memory_analysis)",
        f"    peak          {g(b['peak'])}   (arguments + outputs - donated + temporaries + code)",
        f"    HBM           {g(p['hbm_bytes'])}   -> {'fits' if p['fits'] else 'DOES NOT FIT'}",
        f"  FLOPs/step     {p['flops_per_step_6N']:.3e} (6N + attention, with remat's recompute); compiled "
        f"cost_analysis x devices {p['flops_per_step_compiled'] or 0:.3e} (XLA counts each loop body once)",
        f"  step time at 50% MFU: {p['step_time_at_50pct_mfu_s']:.3f} s "
        f"({p['tokens_per_s_at_50pct_mfu']:.0f} tokens/s)   [compiled in {p['compile_s']:.0f} s]",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.devices < 1:
        raise SystemExit("error: --devices must be >= 1")
    # N fake CPU devices stand in for the slice (read when jax's backend starts, at the first
    # jax.devices(); make_plan checks that it took)
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count"))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    if not args.verbose:  # a real-size compile takes minutes; XLA's banner about it is no error
        quiet_xla_logs()
    plan = make_plan(args)
    print(format_plan(plan))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
