"""Hugging Face <-> latent_jax conversion for the vision-language families.

- InternVL3 (`InternVLForConditionalGeneration`, model_type "internvl", Qwen2 text model)
- Phi-4-multimodal (`Phi4MultimodalForCausalLM`, model_type "phi4_multimodal", Phi-3 text
  model). The vision LoRA the released checkpoint ships is merged into the language-model
  weights at load: either in-checkpoint PEFT-style tensors (`<name>.base_layer.weight` +
  `<name>.lora_A.vision.weight` / `lora_B.vision.weight`, scale lora_alpha / r from
  config.json's `vision_lora`) or a PEFT adapter directory (`vision-lora/` next to the
  weights, or `vision_lora=DIR`). Speech LoRA and the audio tower are not ported.

The text model's tensors go through latent_jax.models.hf (the one name map for decoders);
this module adds only the vision tower and projector names.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from latent_jax.models.config import CHECKPOINT_FIX, HF_CONFIG_FIX, ConfigError, ModelConfig, read_json_object
from latent_jax.models.hf import WeightsError, copy_tokenizer_files, hf_to_params, params_to_hf, read_safetensors_dir
from latent_jax.models.io import (MODEL_CONFIG_FILE, CheckpointError, cast_params, is_model_checkpoint, quiet_orbax,
                                  read_model_config, resolve_checkpoint, restore_params, save_model)
from latent_jax.models.multimodal import VLMConfig
from latent_jax.models.safetensors_np import cast_for_save, load_file, save_file
from latent_jax.models.vision import VisionConfig

VLM_MODEL_TYPES = {"internvl": "internvl", "phi4_multimodal": "phi4mm"}
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
_PHI4_IMG = "model.embed_tokens_extend.image_embed."
_IVL_VIS = "model.vision_tower."
_IVL_PROJ = "model.multi_modal_projector."


def is_vlm_dir(path: str) -> bool:
    """True when path/config.json describes a supported vision-language model."""
    p = os.path.join(path, "config.json")
    if not os.path.exists(p):
        return False
    mt = read_json_object(p, HF_CONFIG_FIX).get("model_type")
    if mt in ("phi4mm",):
        return True
    return mt in VLM_MODEL_TYPES


def _pair(x) -> int:
    if isinstance(x, (list, tuple)):
        if x[0] != x[1]:
            raise ConfigError(f"non-square image/patch size {x} is not supported")
        return int(x[0])
    return int(x)


# ------------------------------------------------------------------- configs
def vlm_config_from_hf(cfg: dict | str) -> VLMConfig:
    """VLMConfig from an HF config dict, config.json path or model directory."""
    if not isinstance(cfg, dict):
        path = os.path.join(cfg, "config.json") if os.path.isdir(cfg) else cfg
        if not os.path.exists(path):
            raise ConfigError(f"no config.json at {path}; pass a Hugging Face model directory")
        cfg = read_json_object(path, HF_CONFIG_FIX)
    cfg = dict(cfg)
    mt = cfg.get("model_type")
    if mt == "phi4mm":
        raise ConfigError(
            "this is the original trust_remote_code Phi-4-multimodal layout (model_type phi4mm); convert it to the "
            "transformers layout first (transformers' convert_phi4_multimodal_weights_to_hf.py) and pass that directory"
        )
    if mt not in VLM_MODEL_TYPES:
        raise ConfigError(f"model_type={mt!r} is not a vision-language family; supported: {', '.join(VLM_MODEL_TYPES)}")
    vc = dict(cfg.get("vision_config") or {})
    if mt == "internvl":
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise ConfigError("only vision_feature_select_strategy='default' (drop CLS) is supported")
        if not vc.get("use_absolute_position_embeddings", True):
            raise ConfigError("InternViT without absolute position embeddings is not supported")
        fl = cfg.get("vision_feature_layer", -1)
        if isinstance(fl, list):
            raise ConfigError("a list vision_feature_layer is not supported; use one layer index")
        vision = VisionConfig(
            kind="internvit",
            hidden_size=vc.get("hidden_size", 1024),
            intermediate_size=vc.get("intermediate_size", 4096),
            num_hidden_layers=vc.get("num_hidden_layers", 24),
            num_attention_heads=vc.get("num_attention_heads", 16),
            num_channels=vc.get("num_channels", 3),
            image_size=_pair(vc.get("image_size", 448)),
            patch_size=_pair(vc.get("patch_size", 14)),
            hidden_act=vc.get("hidden_act", "gelu"),
            layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
            norm_type=vc.get("norm_type", "layer_norm"),
            use_qk_norm=bool(vc.get("use_qk_norm", False)),
            attention_bias=bool(vc.get("attention_bias", False)),
            layer_scale_init_value=vc.get("layer_scale_init_value", 0.1),
            use_mean_pooling=bool(vc.get("use_mean_pooling", True)),
            feature_layer=int(fl),
            hf_extra_json=json.dumps(vc, sort_keys=True),
        )
        tc = dict(cfg.get("text_config") or {})
        tc.setdefault("model_type", "qwen2")
        text = ModelConfig.from_hf(tc, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))
        extra = {k: v for k, v in cfg.items() if k not in ("vision_config", "text_config")}
        return VLMConfig(
            family="internvl",
            text=text,
            vision=vision,
            image_token_id=int(cfg.get("image_token_id", 151667)),
            downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            hf_extra_json=json.dumps(extra, sort_keys=True),
        )
    # phi4_multimodal: the top level is the Phi-3 text config
    vision = VisionConfig(
        kind="siglip",
        hidden_size=vc.get("hidden_size", 1152),
        intermediate_size=vc.get("intermediate_size", 4304),
        num_hidden_layers=vc.get("num_hidden_layers", 27),
        num_attention_heads=vc.get("num_attention_heads", 16),
        num_channels=vc.get("num_channels", 3),
        image_size=_pair(vc.get("image_size", 448)),
        patch_size=_pair(vc.get("patch_size", 14)),
        hidden_act=vc.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        attention_bias=True,
        feature_layer=int(vc.get("feature_layer", -2)),
        hf_extra_json=json.dumps(vc, sort_keys=True),
    )
    if vc.get("crop_size", vision.image_size) != vision.image_size:
        raise ConfigError("phi4 vision crop_size must equal image_size")
    tc = {k: v for k, v in cfg.items() if k not in ("vision_config", "audio_config")}
    tc["model_type"] = "phi3"
    tc.pop("auto_map", None)
    text = ModelConfig.from_hf(tc)
    extra = {"audio_config": cfg.get("audio_config"), "vision_lora": cfg.get("vision_lora"),
             "speech_lora": cfg.get("speech_lora")}
    return VLMConfig(
        family="phi4mm",
        text=text,
        vision=vision,
        image_token_id=int(vc.get("image_token_id", 200010)),
        hf_extra_json=json.dumps({k: v for k, v in extra.items() if v is not None}, sort_keys=True),
    )


def vlm_config_to_hf(cfg: VLMConfig) -> dict:
    """An HF config dict that transformers loads as the matching class."""
    v = cfg.vision
    text = cfg.text.to_hf()
    text.pop("architectures", None)
    vextra = json.loads(v.hf_extra_json)
    extra = json.loads(cfg.hf_extra_json)
    common = dict(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        num_channels=v.num_channels,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act=v.hidden_act,
        layer_norm_eps=v.layer_norm_eps,
    )
    if cfg.family == "internvl":
        vextra.update(common, model_type="internvl_vision", norm_type=v.norm_type, use_qk_norm=v.use_qk_norm,
                      attention_bias=v.attention_bias, layer_scale_init_value=v.layer_scale_init_value,
                      use_mean_pooling=v.use_mean_pooling, use_absolute_position_embeddings=True)
        vextra["image_size"] = [v.image_size, v.image_size]
        vextra["patch_size"] = [v.patch_size, v.patch_size]
        text.pop("tie_word_embeddings", None)
        out = dict(extra)
        out.update(
            architectures=["InternVLForConditionalGeneration"],
            model_type="internvl",
            text_config=text,
            vision_config=vextra,
            image_token_id=cfg.image_token_id,
            downsample_ratio=cfg.downsample_ratio,
            projector_hidden_act=cfg.projector_hidden_act,
            vision_feature_layer=v.feature_layer,
            vision_feature_select_strategy="default",
            tie_word_embeddings=cfg.text.tie_word_embeddings,
        )
        return out
    vextra.update(common, model_type="phi4_multimodal_vision", crop_size=v.image_size,
                  image_token_id=cfg.image_token_id, feature_layer=v.feature_layer)
    out = dict(text)
    out.update(architectures=["Phi4MultimodalForCausalLM"], model_type="phi4_multimodal", vision_config=vextra)
    out.pop("sliding_window", None) if out.get("sliding_window") is None else None
    if extra.get("audio_config") is not None:
        out["audio_config"] = extra["audio_config"]
    return out


# ------------------------------------------------------------------ name map
def _vision_map(cfg: VLMConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF name, flax path, transform) for the tower and projector. transform: k = linear kernel
    (transpose), c = conv kernel (flatten + transpose), f = flatten to 1-D, '' = as is."""
    v = cfg.vision
    m: list[tuple[str, tuple[str, ...], str]] = []
    T = ("vision_tower",)
    if cfg.family == "internvl":
        e = _IVL_VIS + "embeddings."
        m += [
            (e + "cls_token", T + ("cls_token",), ""),
            (e + "position_embeddings", T + ("pos_embed",), ""),
            (e + "patch_embeddings.projection.weight", T + ("patch_embed", "proj", "kernel"), "c"),
            (e + "patch_embeddings.projection.bias", T + ("patch_embed", "proj", "bias"), ""),
        ]
        for i in range(v.layers_needed):
            p = f"{_IVL_VIS}encoder.layer.{i}."
            L = T + (f"layers_{i}",)
            m += [(p + "lambda_1", L + ("lambda_1",), ""), (p + "lambda_2", L + ("lambda_2",), "")]
            for hf_n, fx in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")):
                m.append((p + f"attention.{hf_n}.weight", L + ("attn", fx, "kernel"), "k"))
                if v.attention_bias:
                    m.append((p + f"attention.{hf_n}.bias", L + ("attn", fx, "bias"), ""))
            m += [
                (p + "attention.projection_layer.weight", L + ("attn", "out_proj", "kernel"), "k"),
                (p + "attention.projection_layer.bias", L + ("attn", "out_proj", "bias"), ""),
                (p + "mlp.fc1.weight", L + ("mlp", "fc1", "kernel"), "k"),
                (p + "mlp.fc1.bias", L + ("mlp", "fc1", "bias"), ""),
                (p + "mlp.fc2.weight", L + ("mlp", "fc2", "kernel"), "k"),
                (p + "mlp.fc2.bias", L + ("mlp", "fc2", "bias"), ""),
            ]
            if v.use_qk_norm:
                m += [(p + "attention.q_norm.weight", L + ("attn", "q_norm", "scale"), ""),
                      (p + "attention.k_norm.weight", L + ("attn", "k_norm", "scale"), "")]
            for hf_n, fx in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
                m.append((p + f"{hf_n}.weight", L + (fx, "scale"), ""))
                if v.norm_type == "layer_norm":
                    m.append((p + f"{hf_n}.bias", L + (fx, "bias"), ""))
        if v.feature_layer == -1 and not v.use_mean_pooling:
            m += [(_IVL_VIS + "layernorm.weight", T + ("final_norm", "scale"), ""),
                  (_IVL_VIS + "layernorm.bias", T + ("final_norm", "bias"), "")]
        P = ("projector",)
        m += [
            (_IVL_PROJ + "layer_norm.weight", P + ("layer_norm", "scale"), ""),
            (_IVL_PROJ + "layer_norm.bias", P + ("layer_norm", "bias"), ""),
            (_IVL_PROJ + "linear_1.weight", P + ("linear_1", "kernel"), "k"),
            (_IVL_PROJ + "linear_1.bias", P + ("linear_1", "bias"), ""),
            (_IVL_PROJ + "linear_2.weight", P + ("linear_2", "kernel"), "k"),
            (_IVL_PROJ + "linear_2.bias", P + ("linear_2", "bias"), ""),
        ]
        return m
    e = _PHI4_IMG + "img_processor.embeddings."
    m += [
        (e + "patch_embedding.weight", T + ("patch_embed", "proj", "kernel"), "c"),
        (e + "patch_embedding.bias", T + ("patch_embed", "proj", "bias"), ""),
        (e + "position_embedding.weight", T + ("pos_embed", "embedding"), ""),
    ]
    for i in range(v.layers_needed):
        p = f"{_PHI4_IMG}img_processor.encoder.layers.{i}."
        L = T + (f"layers_{i}",)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            m += [(p + f"self_attn.{n}.weight", L + ("attn", n, "kernel"), "k"),
                  (p + f"self_attn.{n}.bias", L + ("attn", n, "bias"), "")]
        for n in ("fc1", "fc2"):
            m += [(p + f"mlp.{n}.weight", L + ("mlp", n, "kernel"), "k"), (p + f"mlp.{n}.bias", L + ("mlp", n, "bias"), "")]
        for hf_n, fx in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
            m += [(p + f"{hf_n}.weight", L + (fx, "scale"), ""), (p + f"{hf_n}.bias", L + (fx, "bias"), "")]
    P = ("projector",)
    m += [
        (_PHI4_IMG + "sub_img_feature_extensor", P + ("sub_newline",), "f"),
        (_PHI4_IMG + "global_img_feature_extensor", P + ("global_sep",), "f"),
        (_PHI4_IMG + "img_projection_up.weight", P + ("up", "kernel"), "k"),
        (_PHI4_IMG + "img_projection_up.bias", P + ("up", "bias"), ""),
        (_PHI4_IMG + "img_projection_down.weight", P + ("down", "kernel"), "k"),
        (_PHI4_IMG + "img_projection_down.bias", P + ("down", "bias"), ""),
    ]
    return m


def _text_prefix(cfg: VLMConfig) -> str:
    return "model.language_model." if cfg.family == "internvl" else "model."


def _set(tree: dict, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path):
    for k in path:
        tree = tree[k]
    return tree


def normalize_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the on-disk llava-style InternVL names (`language_model.model.*`, `vision_tower.*`,
    `multi_modal_projector.*`, `language_model.lm_head.*`) to the module names transformers
    uses at run time (`model.language_model.*`, ...). Other names pass through."""
    out = {}
    for k, v in state.items():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith("language_model.lm_head."):
            k = k[len("language_model."):]
        elif k.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")):
            k = "model." + k
        out[k] = v
    return out


def vlm_hf_to_params(state: dict[str, np.ndarray], cfg: VLMConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """(params, unused): the VLM param tree from an HF state dict, and the tensors latent_jax
    does not use (audio tower, vision layers past the feature layer, pooling head), kept so
    an export can write them back."""
    import jax.numpy as jnp

    if cfg.family == "internvl":
        state = normalize_keys(state)

    dtype = jnp.dtype(cfg.text.param_dtype)
    prefix = _text_prefix(cfg)
    if cfg.family == "internvl" and "lm_head.weight" not in state and not cfg.text.tie_word_embeddings:
        raise WeightsError("checkpoint lacks lm_head.weight but tie_word_embeddings is false; fix config.json")
    text_state = {k: v for k, v in state.items() if k.startswith(prefix) or k == "lm_head.weight"}
    if cfg.family == "phi4mm":
        text_state = {k: v for k, v in text_state.items() if not k.startswith("model.embed_tokens_extend.")}
    params = {"language_model": hf_to_params(text_state, cfg.text, prefix=prefix, strict=False)}
    used = set(text_state)
    if cfg.text.tie_word_embeddings:
        used.add("lm_head.weight")
    v = cfg.vision
    for name, path, tf in _vision_map(cfg):
        if name not in state:
            raise WeightsError(f"checkpoint lacks {name}; is config.json for these weights?")
        x = np.asarray(state[name])
        if tf == "k":
            x = x.T
        elif tf == "c":
            x = x.reshape(x.shape[0], -1).T
        elif tf == "f":
            x = x.reshape(-1)
        _set(params, path, np.ascontiguousarray(x.astype(dtype)))
        used.add(name)
    if cfg.family == "internvl":
        want = (1, v.patches_per_side**2 + 1, v.hidden_size)
        got = params["vision_tower"]["pos_embed"].shape
        if tuple(got) != want:
            raise WeightsError(f"vision position embeddings {tuple(got)} do not match image_size/patch_size {want}")
    unused = {k: np.asarray(x) for k, x in state.items() if k not in used and "rotary_emb" not in k}
    return params, unused


def vlm_params_to_hf(params: dict, cfg: VLMConfig) -> dict[str, np.ndarray]:
    """The inverse of vlm_hf_to_params (without the unused tensors)."""
    out = params_to_hf(params["language_model"], cfg.text, prefix=_text_prefix(cfg))
    v = cfg.vision
    for name, path, tf in _vision_map(cfg):
        x = np.asarray(_get(params, path))
        if tf == "k":
            x = x.T
        elif tf == "c":
            x = x.T.reshape(x.shape[1], v.num_channels, v.patch_size, v.patch_size)
        elif tf == "f":
            x = x.reshape((1, 1, -1) if name.endswith("global_img_feature_extensor") else (1, 1, 1, -1))
        out[name] = np.ascontiguousarray(x)
    return out


# ---------------------------------------------------------------------- LoRA
def merge_lora(state: dict[str, np.ndarray], hf_cfg: dict, adapter_dir: str | None = None) -> dict[str, np.ndarray]:
    """Merge Phi-4-MM's vision LoRA into the base weights (W + lora_alpha / r * B @ A).

    Handles in-checkpoint tensors (`X.base_layer.weight`, `X.lora_A.vision.weight`,
    `X.lora_B.vision.weight`; speech adapters are dropped) and PEFT adapter directories
    (adapter_config.json + adapter_model.safetensors)."""
    state = dict(state)
    lora_cfg = hf_cfg.get("vision_lora") or {}
    bases = [k for k in state if ".base_layer." in k]
    for k in bases:
        name = k.replace(".base_layer.", ".")
        w = state.pop(k).astype(np.float32)
        stem = k[: k.index(".base_layer.")]
        a = state.pop(f"{stem}.lora_A.vision.weight", None)
        b = state.pop(f"{stem}.lora_B.vision.weight", None)
        for extra in [x for x in state if x.startswith(stem + ".lora_")]:
            state.pop(extra)  # speech adapter and anything else
        if a is not None and b is not None:
            if not lora_cfg.get("r"):
                raise WeightsError("vision LoRA tensors found but config.json has no vision_lora {r, lora_alpha}")
            scale = float(lora_cfg.get("lora_alpha", lora_cfg["r"])) / float(lora_cfg["r"])
            w = w + scale * (b.astype(np.float32) @ a.astype(np.float32))
        state[name] = w
    if adapter_dir:
        cpath = os.path.join(adapter_dir, "adapter_config.json")
        wpath = os.path.join(adapter_dir, "adapter_model.safetensors")
        if not (os.path.exists(cpath) and os.path.exists(wpath)):
            raise WeightsError(f"{adapter_dir} is not a PEFT adapter (needs adapter_config.json + adapter_model.safetensors)")
        with open(cpath) as f:
            ac = json.load(f)
        ad = load_file(wpath)
        scale = float(ac.get("lora_alpha", ac["r"])) / float(ac["r"])
        n = 0
        for k in ad:
            if not k.endswith("lora_A.weight"):
                continue
            stem = k[: -len(".lora_A.weight")]
            name = stem.removeprefix("base_model.model.") + ".weight"
            if name not in state:
                raise WeightsError(f"adapter targets {name}, which the checkpoint does not have")
            b = ad[stem + ".lora_B.weight"].astype(np.float32)
            state[name] = state[name].astype(np.float32) + scale * (b @ ad[k].astype(np.float32))
            n += 1
        if n == 0:
            raise WeightsError(f"no lora_A/lora_B tensors in {wpath}")
    return state


# ------------------------------------------------------------------ load/save
def load_vlm(path: str, vision_lora: str | None = None, return_unused: bool = False, **text_overrides):
    """(config, params) — or (config, params, unused) — from a local HF VLM directory.

    Phi-4-MM: the vision LoRA is merged (see merge_lora); `vision_lora` defaults to
    path/vision-lora when that directory exists."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path} is not a directory; pass a local Hugging Face model directory")
    cpath = os.path.join(path, "config.json")
    if not os.path.exists(cpath):
        raise ConfigError(f"{path} has no config.json; pass a Hugging Face model directory (config.json + "
                          "model.safetensors, as save_pretrained writes it)")
    hf_cfg = read_json_object(cpath, HF_CONFIG_FIX)
    cfg = vlm_config_from_hf(hf_cfg)
    if text_overrides:
        cfg = cfg.replace(text=cfg.text.replace(**text_overrides))
    state = read_safetensors_dir(path)
    if cfg.family == "phi4mm":
        if vision_lora is None and os.path.isdir(os.path.join(path, "vision-lora")):
            vision_lora = os.path.join(path, "vision-lora")
        state = merge_lora(state, hf_cfg, vision_lora)
    params, unused = vlm_hf_to_params(state, cfg)
    return (cfg, params, unused) if return_unused else (cfg, params)


def save_vlm(
    params: dict,
    cfg: VLMConfig,
    out_dir: str,
    unused: dict[str, np.ndarray] | None = None,
    tokenizer_dir: str | None = None,
    dtype: str = "float32",
) -> None:
    """Write model.safetensors + config.json (+ tokenizer and processor files) that
    transformers loads as InternVLForConditionalGeneration / Phi4MultimodalForCausalLM."""
    state = vlm_params_to_hf(params, cfg)
    for k, x in (unused or {}).items():
        state.setdefault(k, x)
    tensors = {k: cast_for_save(x, dtype) for k, x in state.items()}
    tmp = out_dir.rstrip("/") + ".tmp-write"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    hf = vlm_config_to_hf(cfg)
    hf["torch_dtype"] = dtype
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf, f, indent=1)
    if tokenizer_dir:
        copy_tokenizer_files(tokenizer_dir, tmp)
        for fn in PROCESSOR_FILES:
            if os.path.exists(os.path.join(tokenizer_dir, fn)):
                shutil.copy2(os.path.join(tokenizer_dir, fn), os.path.join(tmp, fn))
    os.makedirs(out_dir, exist_ok=True)
    for fn in os.listdir(tmp):
        os.replace(os.path.join(tmp, fn), os.path.join(out_dir, fn))
    shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------- latent_jax (Orbax) checkpoints
_UNUSED_KEY = "hf_unused"


def _nest(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        _set(out, k.split("."), v)
    return out


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, name) if isinstance(v, dict) else {name: np.asarray(v)})
    return out


def is_vlm_checkpoint(path: str) -> bool:
    """True when path is a latent_jax checkpoint (save_vlm_checkpoint) of a vision-language model."""
    src = resolve_checkpoint(path)
    if not is_model_checkpoint(src):
        return False
    d = read_json_object(os.path.join(src, MODEL_CONFIG_FILE), CHECKPOINT_FIX)
    return "family" in d and "vision" in d


def save_vlm_checkpoint(path: str, params: dict, cfg: VLMConfig, unused: dict[str, np.ndarray] | None = None,
                        tokenizer_dir: str | None = None) -> str:
    """Write an Orbax checkpoint (params + model_config.json = VLMConfig.to_json, tokenizer and
    processor files). `unused` HF tensors (Phi-4-MM audio) are kept so an export is complete."""
    tree = dict(params)
    if unused:
        tree[_UNUSED_KEY] = _nest(unused)
    path = save_model(path, tree, cfg, tokenizer_dir=tokenizer_dir)
    for fn in PROCESSOR_FILES if tokenizer_dir else ():
        if os.path.exists(os.path.join(tokenizer_dir, fn)):
            shutil.copy2(os.path.join(tokenizer_dir, fn), os.path.join(path, fn))
    return path


def load_vlm_checkpoint(path: str, dtype: str | None = None) -> tuple[VLMConfig, dict, dict[str, np.ndarray]]:
    """(config, params, unused HF tensors) from a save_vlm_checkpoint directory."""
    src = resolve_checkpoint(path)
    if not is_vlm_checkpoint(src):
        raise CheckpointError(f"{path} is not a latent_jax vision-language checkpoint; create one with "
                              "`python -m latent_jax.convert hf-to-orbax --hf DIR --out CKPT`")
    cfg = read_model_config(src, VLMConfig)
    with quiet_orbax():
        _, tree = restore_params(src, cfg.text, None, None)
    unused = _flatten(tree.pop(_UNUSED_KEY, {}))
    tree = {k: v for k, v in tree.items()}
    if dtype is not None:
        tree = cast_params(tree, dtype)
        cfg = cfg.replace(text=cfg.text.replace(param_dtype=str(dtype)))
    return cfg, tree, unused


def load_vlm_any(path: str, dtype: str | None = None) -> tuple[VLMConfig, dict, dict[str, np.ndarray]]:
    """(config, params, unused) from a VLM HF directory or a save_vlm_checkpoint directory."""
    if is_vlm_checkpoint(path):
        return load_vlm_checkpoint(path, dtype)
    over = {"param_dtype": str(dtype)} if dtype else {}
    cfg, params, unused = load_vlm(path, return_unused=True, **over)
    if dtype is not None:
        params = cast_params(params, dtype)
    return cfg, params, unused
