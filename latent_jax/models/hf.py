"""Hugging Face <-> latent_jax parameter conversion.

The only family-specific code in the library: name maps and tensor transforms between a
transformers state dict (torch layout, `weight` is (out, in)) and the decoder's param
pytree (flax layout, `kernel` is (in, out)). Only safetensors are read (never pickle).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import numpy as np

from latent_jax.models.config import HF_CONFIG_FIX, ConfigError, ModelConfig, read_json_object
from latent_jax.models.decoder import init_params
from latent_jax.models.safetensors_np import SafetensorsError, cast_for_save, load_file, save_file

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


class WeightsError(ValueError):
    """Missing, unexpected or mis-shaped weights."""


def _layer_map(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], bool]]:
    """(HF suffix under model.layers.N., flax path under the layer, is_kernel) for one layer."""
    m: list[tuple[str, tuple[str, ...], bool]] = [
        ("input_layernorm.weight", ("input_layernorm", "scale"), False),
        ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), False),
        ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), True),
        ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), True),
    ]
    if cfg.o_bias:
        m.append(("self_attn.o_proj.bias", ("self_attn", "o_proj", "bias"), False))
    projs = ["qkv_proj"] if cfg.fused_qkv else ["q_proj", "k_proj", "v_proj"]
    for p in projs:
        m.append((f"self_attn.{p}.weight", ("self_attn", p, "kernel"), True))
        if cfg.attention_bias:
            m.append((f"self_attn.{p}.bias", ("self_attn", p, "bias"), False))
    mlps = ["gate_up_proj"] if cfg.fused_gate_up else ["gate_proj", "up_proj"]
    for p in mlps:
        m.append((f"mlp.{p}.weight", ("mlp", p, "kernel"), True))
    if cfg.mlp_bias:
        for p in mlps + ["down_proj"]:
            m.append((f"mlp.{p}.bias", ("mlp", p, "bias"), False))
    return m


def _set(tree: dict, path: Iterable[str], value) -> None:
    path = list(path)
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path: Iterable[str]):
    for k in path:
        tree = tree[k]
    return tree


def expected_shapes(cfg: ModelConfig, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for `cfg` (torch layout)."""
    import jax

    shapes = jax.eval_shape(lambda: init_params(cfg.replace(scan_layers=False), 0))
    shapes = jax.tree.map(lambda s: np.empty(s.shape, np.float32), shapes)
    return {k: v.shape for k, v in params_to_hf(shapes, cfg.replace(scan_layers=False), prefix).items()}


def hf_to_params(
    state: dict[str, np.ndarray], cfg: ModelConfig, prefix: str = "model.", strict: bool = True
) -> dict:
    """Build the decoder param pytree from an HF state dict (numpy arrays, torch layout)."""
    want = expected_shapes(cfg, prefix)
    missing = [k for k in want if k not in state]
    if missing:
        raise WeightsError(
            f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}; is config.json for these weights?"
        )
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise WeightsError(
                f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)} vs config {shape}; "
                "config.json does not describe these weights"
            )
    if strict:
        ignorable = (f"{prefix}rotary_emb.", "lm_head.weight")
        extra = [k for k in state if k not in want and not k.startswith(ignorable) and k.startswith(prefix)]
        if extra:
            raise WeightsError(f"checkpoint has {len(extra)} unexpected tensors, e.g. {extra[0]}")
    import jax.numpy as jnp

    dtype = jnp.dtype(cfg.param_dtype)

    def conv(x, kernel):
        x = np.asarray(x)
        return np.ascontiguousarray((x.T if kernel else x).astype(dtype))

    params: dict = {}
    _set(params, ("embed_tokens", "embedding"), conv(state[f"{prefix}embed_tokens.weight"], False))
    _set(params, ("norm", "scale"), conv(state[f"{prefix}norm.weight"], False))
    if not cfg.tie_word_embeddings:
        _set(params, ("lm_head", "kernel"), conv(state["lm_head.weight"], True))
    lmap = _layer_map(cfg)
    layers = []
    for i in range(cfg.num_hidden_layers):
        layer: dict = {}
        for suffix, path, kernel in lmap:
            _set(layer, path, conv(state[f"{prefix}layers.{i}.{suffix}"], kernel))
        layers.append(layer)
    if cfg.scan_layers:
        import jax

        params["layers"] = {"layer": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    else:
        for i, layer in enumerate(layers):
            params[f"layers_{i}"] = layer
    return params


def params_to_hf(params: dict, cfg: ModelConfig, prefix: str = "model.") -> dict[str, np.ndarray]:
    """The inverse of hf_to_params: an HF state dict (numpy, torch layout)."""

    def conv(x, kernel):
        x = np.asarray(x)
        return np.ascontiguousarray(x.T if kernel else x)

    out: dict[str, np.ndarray] = {}
    out[f"{prefix}embed_tokens.weight"] = conv(params["embed_tokens"]["embedding"], False)
    out[f"{prefix}norm.weight"] = conv(params["norm"]["scale"], False)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = conv(params["lm_head"]["kernel"], True)
    for i in range(cfg.num_hidden_layers):
        if cfg.scan_layers:
            layer = _index_tree(params["layers"]["layer"], i)
        else:
            layer = params[f"layers_{i}"]
        for suffix, path, kernel in _layer_map(cfg):
            out[f"{prefix}layers.{i}.{suffix}"] = conv(_get(layer, path), kernel)
    return out


def _index_tree(tree, i):
    if isinstance(tree, dict):
        return {k: _index_tree(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]


# ------------------------------------------------------------------------- files
def read_safetensors_dir(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: model.safetensors, or shards listed in
    model.safetensors.index.json, as numpy arrays in their stored dtype (bf16 stays bf16, as
    ml_dtypes.bfloat16). Read with numpy alone: torch is not needed."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        weight_map = read_json_object(index, HF_CONFIG_FIX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index} has no weight_map object; {HF_CONFIG_FIX}")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path)):
            raise WeightsError(
                f"{path} has only pickle weights (.bin/.pt); latent_jax reads safetensors only: re-save with "
                "model.save_pretrained(dir, safe_serialization=True)"
            )
        raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {path}")
    state: dict[str, np.ndarray] = {}
    for fn in files:
        fp = os.path.join(path, fn)
        if not os.path.exists(fp):
            raise WeightsError(f"shard {fn} listed in the index is missing from {path}")
        try:
            state.update(load_file(fp))
        except (SafetensorsError, OSError) as e:  # truncated, random bytes, not safetensors at all
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{fp} is not a readable safetensors file ({why}); re-download it or re-save the "
                               "model with save_pretrained(dir, safe_serialization=True)") from None
    return state


def load_hf(path: str, **config_overrides) -> tuple[ModelConfig, dict]:
    """(config, params) from a local HF model directory (config.json + safetensors)."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path} is not a directory; pass a local Hugging Face model directory")
    cfg = ModelConfig.from_hf(path, **config_overrides)
    state = read_safetensors_dir(path)
    return cfg, hf_to_params(state, cfg)


def save_hf(
    params: dict,
    cfg: ModelConfig,
    out_dir: str,
    tokenizer_dir: str | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Write safetensors (sharded with an index past max_shard_bytes) + config.json (+ tokenizer
    and generation_config) that transformers' AutoModelForCausalLM.from_pretrained loads."""
    os.makedirs(out_dir, exist_ok=True)
    state = params_to_hf(params, cfg)
    dtype_name = dtype or ("float32" if cfg.param_dtype == "float32" else cfg.param_dtype)
    tensors = {k: cast_for_save(v, dtype_name) for k, v in state.items()}
    shards: list[dict] = [{}]
    size = 0
    for k, t in tensors.items():
        nb = t.nbytes
        if shards[-1] and size + nb > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nb
    tmp = out_dir + ".tmp-write"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        wmap = {}
        n = len(shards)
        for i, sh in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file(sh, os.path.join(tmp, fn), metadata={"format": "pt"})
            wmap.update({k: fn for k in sh})
        total = sum(t.nbytes for t in tensors.values())
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=1)
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = dtype_name
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=1)
    if tokenizer_dir:
        copy_tokenizer_files(tokenizer_dir, tmp)
    if not os.path.exists(os.path.join(tmp, "generation_config.json")):
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf_cfg.get("eos_token_id"),
               "pad_token_id": cfg.pad_token_id}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=1)
    # move into place file by file; out_dir's other files (a README, say) are kept
    for fn in os.listdir(tmp):
        os.replace(os.path.join(tmp, fn), os.path.join(out_dir, fn))
    shutil.rmtree(tmp, ignore_errors=True)


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    copied = []
    for fn in TOKENIZER_FILES:
        p = os.path.join(src, fn)
        if os.path.exists(p):
            shutil.copy2(p, os.path.join(dst, fn))
            copied.append(fn)
    return copied
