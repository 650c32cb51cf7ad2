"""Plan a real-size Coconut training run without the hardware.

    python -m latent_jax.plan --config=configs/hf/phi4_multimodal.json --devices 16 \
        --mesh data=1,fsdp=16,tensor=1 --chip v4 --batch 16 --seq 2048 --latent 3

Builds the model's shapes from an HF config.json alone (text LMs: Mistral, Llama, Qwen2, Phi-3;
VLMs: Phi-4-multimodal, InternVL3; no weights: params are jax.ShapeDtypeStruct), shards them
with the library's rules (latent_jax.parallel) on `--devices` fake CPU devices, AOT-lowers under
parallel.use_mesh (so the decoder's activation constraints apply) and compiles the Coconut train
step (latent.coconut.coconut_loss, value_and_grad, AdamW update; bf16 compute, fp32 master
params and moments, per-layer remat, scanned layers; --ce-chunk N applies the LM head and the
loss over chunks of N positions, as config model.ce_chunk; --mu-dtype bfloat16 halves the first
moment, as optim.mu_dtype; --attention chooses the attention path, config model.attention: by default the query-chunked
XLA path, the CPU stand-in for the chip's fused kernel, which like it never holds a (T, keys)
score array; --attention xla materialises the scores), and prints per-device bytes of params, optimizer state and the
compiled step's temporaries (compiled.memory_analysis()), the buffers live at the step's peak
summed by kind (params, optimizer, weight copies, gradients, logits, attention, per-layer
stacks, ...: XLA's own live-range and buffer-assignment dumps of the compile, so a user sees
what to change), FLOPs per step (the 6·N·tokens count, remat's recompute on the layers only, the
LM head once; compiled.cost_analysis() beside it), whether it fits the chip's HBM, and the step
time at 50% MFU.

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
import re
import sys
import tempfile
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
    p.add_argument("--mu-dtype", default="", choices=("", "float32", "bfloat16"),
                   help="AdamW's first moment (config optim.mu_dtype; default: the param dtype)")
    p.add_argument("--ce-chunk", type=int, default=0,
                   help="LM head + cross-entropy over chunks of this many positions (config model.ce_chunk; 0 = off)")
    p.add_argument("--attention", default="chunked", choices=("xla", "chunked"),
                   help="config model.attention: chunked (default) = the query-chunked XLA path, the CPU stand-in for "
                        "the chip's fused kernel (splash / cuDNN, what auto picks there; their memory is at most "
                        "chunked's); xla = the scores of every head at once (the plans before issue 24 item 3)")
    p.add_argument("--attention-chunk", type=int, default=512, help="config model.attention_chunk: queries per block")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the peak breakdown (it reads XLA's buffer assignment from a dump of the compile)")
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
    cfg = text.replace(dtype="bfloat16", param_dtype=args.param_dtype, scan_layers=True, remat_policy=args.remat,
                       ce_chunk=args.ce_chunk, attention=args.attention, attention_chunk=args.attention_chunk)
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
    tx = optax.adamw(1e-5, weight_decay=0.0, mu_dtype=jnp.dtype(args.mu_dtype) if args.mu_dtype else None)
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
    with tempfile.TemporaryDirectory(prefix="latent_jax_plan_") as dump:
        # XLA's own account of the buffers live at the step's peak (its live-range dump), for the
        # breakdown; the dump options are per-compile (never the process's XLA_FLAGS)
        # (and the partitioned module, for the dtypes FSDP gathers in, before XLA:CPU's float normalization)
        opts = {} if args.no_breakdown else {"xla_dump_to": dump, "xla_dump_hlo_module_re": ".*step.*",
                                             "xla_dump_hlo_pass_re": "spmd-partitioning"}
        cache_on = jax.config.jax_enable_compilation_cache
        if opts:  # a persistent-cache hit would skip the compile, and with it the dump
            jax.config.update("jax_enable_compilation_cache", False)
        try:
            compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", cache_on)
        breakdown = None if args.no_breakdown else peak_breakdown(dump, params, cfg)
        gathers = None if args.no_breakdown else partitioned_gathers(dump)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_dev = float((cost or {}).get("flops", 0.0))

    n_params = _count(params)
    emb = cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2)
    tokens = B * T
    # 6 N per token (forward 2N + backward 4N) on the decoder layers' weights, plus the attention
    # scores (12 L T D per token for QK^T and AV, forward + backward, halved by the causal mask);
    # the thoughts are one more decoder pass over one position each, so the same per-token cost.
    # remat recomputes the layers' forward once (8 N). The LM head (V x D; a tied head is a matmul
    # with the embedding) is outside the layers' remat: 6 V D per token, or 8 V D when the chunked
    # loss recomputes it in the backward. The embedding lookup is a gather (no FLOPs).
    n_head = cfg.vocab_size * D
    n_layers = n_params - emb
    est_layers = 6 * n_layers * tokens + 12 * cfg.num_hidden_layers * T * D * tokens / 2
    if args.remat != "none":
        est_layers *= 8 / 6
    est_head = (8 if cfg.ce_chunk and cfg.ce_chunk < T - 1 else 6) * n_head * tokens
    est = est_layers + est_head
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
        "remat": args.remat, "param_dtype": args.param_dtype, "mu_dtype": args.mu_dtype or args.param_dtype,
        "compute_dtype": "bfloat16", "ce_chunk": cfg.ce_chunk, "attention": cfg.attention,
        "attention_chunk": cfg.attention_chunk,
        "bytes_per_device": {"params": p_bytes, "optimizer": o_bytes, "arguments": args_b, "outputs": out_b,
                             "aliased": alias, "temporaries": temp, "code": code, "peak": peak_bytes},
        "peak_breakdown": breakdown, "partitioned_all_gathers": gathers,
        "hbm_bytes": hbm, "fits": peak_bytes <= 0.95 * hbm,
        "flops_per_step_compiled": flops_dev * n if flops_dev else None, "flops_per_step_6N": est,
        "flops_per_step_lm_head": est_head,
        "step_time_at_50pct_mfu_s": total_flops / (n * peak * 0.5),
        "tokens_per_s_at_50pct_mfu": tokens / (total_flops / (n * peak * 0.5)),
        "compile_s": compile_s,
    }
    return plan


# what a buffer live at the step's peak holds, in the order the tests are applied (peak_breakdown)
KINDS = {
    "params": "params (fp32 master weights, sharded)",
    "optimizer": "optimizer state (AdamW moments)",
    "batch": "the batch",
    "weights": "weight copies: FSDP all-gathers, bf16 casts",
    "grads": "weight gradients (and their reductions)",
    "update": "optimizer update temporaries, gradient accumulators",
    "logits": "LM head: logits over the vocabulary, their gradients",
    "attention": "attention: scores, probabilities, K/V",
    "layers": "per-layer stacks: saved layer inputs, K/V outputs",
    "mlp": "MLP activations",
    "other": "other activations",
}
_VALUE = re.compile(r"value: <\d+ (\S+?)(\{[\d,]*\})?(?: \(phi\))? @\d+> \(size=(\d+),offset=\d+\): (\S+)")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMP = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{\s*$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OPERAND = re.compile(r"%([\w.\-]+)")
_DIMS = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")


def _read(dump: str, suffix: str, anywhere: bool = False) -> str:
    """The step's dump file whose name ends with `suffix` (holds it, with anywhere=True)."""
    names = [f for f in os.listdir(dump) if (suffix in f if anywhere else f.endswith(suffix)) and "jit_step" in f]
    if not names:
        raise FileNotFoundError(suffix)
    with open(os.path.join(dump, sorted(names)[-1])) as f:
        return f.read()


def peak_breakdown(dump: str, params, cfg) -> dict | None:
    """The buffers live at the compiled step's peak, summed by kind (`KINDS`), from XLA's dump of
    the compile in `dump` (its live ranges at the peak, the buffer shapes, each instruction's
    op_name): {"live_bytes", "kinds": {kind: bytes}, "largest": [[value, shape, bytes, kind], ...]}.
    None when the dump lacks what this reads (another XLA version)."""
    try:
        live_txt = _read(dump, "-live-range.txt")
        values_txt = _read(dump, "-buffer-assignment.txt")
        hlo_txt = _read(dump, "cpu_after_optimizations.txt") if any(
            f.endswith("cpu_after_optimizations.txt") for f in os.listdir(dump)) else _read(dump, "after_optimizations.txt")
    except (FileNotFoundError, OSError):
        return None
    at = live_txt.find("(peak):")
    if at < 0:
        return None
    live = []
    for line in live_txt[at:].splitlines()[1:]:
        m = re.match(r"\s+(\S+): (\d+) bytes", line)
        if not m:
            break
        live.append((m.group(1), int(m.group(2))))
    shapes = {}
    for m in _VALUE.finditer(values_txt):
        shapes.setdefault(m.group(1) + (m.group(2) or "{}"), m.group(4))
    # each instruction's op_name (JAX's name stack: jvp(...) forward, transpose(...) backward); a
    # fusion without one takes its fused computation's, another instruction its first operand's
    own, calls, operands, comp_op = {}, {}, {}, {}
    comp = None
    for line in hlo_txt.splitlines():
        h = _COMP.match(line)
        if h:
            comp = h.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name = m.group(1)
        o = _OP_NAME.search(line)
        own[name] = o.group(1) if o else ""
        if own[name] and comp and (line.lstrip().startswith("ROOT") or comp not in comp_op):
            comp_op[comp] = own[name]
        c = _CALLS.search(line)
        if c:
            calls[name] = c.group(1)
        operands[name] = _OPERAND.findall(line[m.end():].split("),")[0])

    def op_name(name: str, depth: int = 0) -> str:
        if own.get(name):
            return own[name]
        if name in calls and comp_op.get(calls[name]):
            return comp_op[calls[name]]
        for o in operands.get(name, [])[:2] if depth < 6 else []:
            found = op_name(o, depth + 1)
            if found:
                return found
        return ""

    op_names = {name.split("{")[0]: op_name(name.split("{")[0]) for name, _ in live}
    # weight-shaped buffers: a param's whole shape, one layer's (scanned layers), or a shard of either
    wshapes = set()
    for x in jax.tree.leaves(params):
        full = tuple(int(d) for d in x.shape)
        for sh in (full, full[1:] if len(full) > 2 else full):
            wshapes.add(tuple(sorted(sh)))
            for i in range(len(sh)):
                for k in (2, 4, 8, 16, 32, 64):
                    if sh[i] % k == 0:
                        wshapes.add(tuple(sorted(sh[:i] + (sh[i] // k,) + sh[i + 1:])))
    L, V = cfg.num_hidden_layers, cfg.vocab_size

    def kind(name: str, shape: str) -> str:
        op = op_names.get(name.split("{")[0], "")
        if op.startswith("params["):
            return "params"
        if op.startswith("opt_state") or op.startswith("opt["):
            return "optimizer"
        if op.startswith("batch["):
            return "batch"
        m = _DIMS.match(shape)
        dims = tuple(int(d) for d in m.group(1).split(",") if d) if m else ()
        if len(dims) >= 2 and tuple(sorted(dims)) in wshapes:
            return "grads" if ("transpose(" in op or name.startswith(("all-reduce", "reduce-scatter"))) else (
                "weights" if "jvp(" in op else "update")
        if V in dims:
            return "logits"
        if "self_attn" in op:
            return "attention"
        if dims and dims[0] == L and len(dims) >= 3:
            return "layers"
        if "/mlp/" in op:
            return "mlp"
        return "other"

    kinds: dict[str, int] = {}
    rows = []
    for name, size in live:
        shape = shapes.get(name, "?")
        k = kind(name, shape)
        kinds[k] = kinds.get(k, 0) + size
        rows.append([name, shape, size, k])
    rows.sort(key=lambda r: -r[2])
    return {"live_bytes": sum(s for _, s in live), "kinds": kinds, "largest": rows[:12]}


_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
              "f64": 8, "s64": 8, "u64": 8}
_GATHER = re.compile(r"= (\w+)\[([\d,]*)\][^=\n]*? all-gather(?:-start)?\(")


def partitioned_gathers(dump: str) -> dict | None:
    """The all-gathers of the SPMD-partitioned step (before XLA:CPU's float normalization, which
    turns a bf16 all-gather into an fp32 one: its collectives and dot emitter take no bf16; TPU and
    GPU gather bf16 as it is): {dtype: [count, bytes of their results]}, each loop body counted
    once. What dtype FSDP gathers the weights in. None when the dump lacks the module."""
    try:
        txt = _read(dump, "after_spmd-partitioning", anywhere=True)
    except (FileNotFoundError, OSError):
        return None
    out: dict[str, list[int]] = {}
    for dt, dims in _GATHER.findall(txt):
        n = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) if dims else 1
        c = out.setdefault(dt, [0, 0])
        c[0] += 1
        c[1] += n * _HLO_BYTES.get(dt, 4)
    return out


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
        f"  remat {p['remat']}, params/moments {p['param_dtype']} (first moment {p['mu_dtype']}), compute "
        f"{p['compute_dtype']}, ce_chunk {p['ce_chunk'] or 'off'}, attention {p['attention']} "
        f"(blocks of {p['attention_chunk']} queries when chunked)",
        "  per device:",
        f"    params        {g(b['params'])}",
        f"    optimizer     {g(b['optimizer'])}",
        f"    temporaries   {g(b['temporaries'])}   (activations, gradients, collectives: compiled memory_analysis)",
        f"    peak          {g(b['peak'])}   (arguments + outputs - donated + temporaries + code)",
        f"    HBM           {g(p['hbm_bytes'])}   -> {'fits' if p['fits'] else 'DOES NOT FIT'}"
        f" ({100 * (1 - b['peak'] / p['hbm_bytes']):.0f}% headroom; the tool wants >= 5%)",
        f"  FLOPs/step     {p['flops_per_step_6N']:.3e} (6N + attention; remat's recompute on the layers, the LM head "
        f"{p['flops_per_step_lm_head']:.3e} counted once{' + its chunked recompute' if p['ce_chunk'] else ''}); compiled "
        f"cost_analysis x devices {p['flops_per_step_compiled'] or 0:.3e} (XLA counts each loop body once)",
        f"  step time at 50% MFU: {p['step_time_at_50pct_mfu_s']:.3f} s "
        f"({p['tokens_per_s_at_50pct_mfu']:.0f} tokens/s)   [compiled in {p['compile_s']:.0f} s]",
    ]
    bd = p.get("peak_breakdown")
    if bd:
        lines.append(f"  live at the step's peak (XLA buffer assignment, {g(bd['live_bytes']).strip()}), by kind:")
        for k, v in sorted(bd["kinds"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {g(v)}  {KINDS.get(k, k)}")
        ag = p.get("partitioned_all_gathers")
        if ag:
            lines.append("  all-gathers of the partitioned step (each loop body once; XLA:CPU then gathers bf16 as fp32): "
                         + ", ".join(f"{dt} {c} ({g(b).strip()})" for dt, (c, b) in sorted(ag.items())))
        lines.append("  largest buffers live at the peak:")
        for name, shape, size, k in bd["largest"][:6]:
            lines.append(f"    {g(size)}  {shape.split('{')[0]:<28} {k:<10} ({name})")
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
