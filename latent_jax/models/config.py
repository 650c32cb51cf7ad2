"""ModelConfig: one frozen dataclass for every decoder family, with HF import/export.

Family differences (qkv bias, sliding window, rope type, partial rotary factor, fused
projections, tied embeddings) are fields here, never separate model classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("mistral", "llama", "qwen2", "phi3")
# model.attention: which attention implementation the decoder uses (models/attention.py)
ATTENTION_IMPLS = ("auto", "xla", "chunked", "cudnn", "splash")


class ConfigError(ValueError):
    """A config.json that latent_jax cannot turn into a ModelConfig."""


def read_json_object(path: str, fix: str) -> dict:
    """The JSON object in the file `path`; ConfigError naming the file and `fix` when the file
    is missing, not JSON (truncated, binary) or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; {fix}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise ConfigError(f"{path} is not a JSON text file ({type(e).__name__}); {fix}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} holds a JSON {type(d).__name__}, not an object; {fix}")
    return d


HF_CONFIG_FIX = "re-download the model or re-save it with save_pretrained"
CHECKPOINT_FIX = ("the checkpoint is damaged; re-create it (python -m latent_jax.convert hf-to-orbax, or the run "
                  "that wrote it)")


def _tup(x):
    return None if x is None else tuple(float(v) for v in x)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder LM. Hashable, so it can be a static arg."""

    model_type: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    # rotary
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | llama3 | longrope | linear
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int | None = None
    rope_short_factor: tuple[float, ...] | None = None
    rope_long_factor: tuple[float, ...] | None = None
    rope_attention_factor: float | None = None
    partial_rotary_factor: float = 1.0
    # attention / mlp layout
    attention_bias: bool = False  # bias on q, k, v (Qwen2: True)
    o_bias: bool = False
    mlp_bias: bool = False
    fused_qkv: bool = False  # Phi-3: one qkv_proj
    fused_gate_up: bool = False  # Phi-3: one gate_up_proj
    layer_windows: tuple[int, ...] = ()  # per-layer sliding window, 0 = full attention
    tie_word_embeddings: bool = False
    # special tokens
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # numerics and execution
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"  # none | full | dots | dots_no_batch
    # training losses apply the LM head over sequence chunks of this many tokens (0 = the whole
    # sequence at once): full-vocabulary fp32 logits then exist for one chunk at a time
    # (models.lm_head.map_head_chunks)
    ce_chunk: int = 0
    # attention implementation (models/attention.py): auto | xla | chunked | cudnn | splash; auto =
    # cuDNN on GPU, Pallas splash on TPU where they apply, else chunked for long calls, else xla
    attention: str = "auto"
    attention_chunk: int = 512  # queries per block of the chunked path
    initializer_range: float = 0.02
    # unknown HF keys, kept for a faithful export (JSON string so the config stays hashable)
    hf_extra_json: str = "{}"

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; fix the config"
            )
        if not isinstance(self.ce_chunk, int) or self.ce_chunk < 0:
            raise ConfigError(f"ce_chunk={self.ce_chunk!r}; use a token count >= 0 (0 = the loss over the whole "
                              "sequence at once)")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"attention={self.attention!r}; use one of {', '.join(ATTENTION_IMPLS)}")
        if not isinstance(self.attention_chunk, int) or self.attention_chunk < 1:
            raise ConfigError(f"attention_chunk={self.attention_chunk!r}; use a query count >= 1")
        if not self.layer_windows:
            object.__setattr__(self, "layer_windows", (0,) * self.num_hidden_layers)
        if len(self.layer_windows) != self.num_hidden_layers:
            raise ConfigError("layer_windows must have one entry per layer")

    # ------------------------------------------------------------------ derived
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def sliding_window(self) -> int | None:
        w = max(self.layer_windows) if self.layer_windows else 0
        return w or None

    @property
    def jnp_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        import jax.numpy as jnp

        return jnp.dtype(self.param_dtype)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = d * (self.q_size + 2 * self.kv_size) + self.q_size * d
        mlp = 3 * d * f
        per_layer = attn + mlp + 2 * d
        emb = v * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + emb + d

    # ----------------------------------------------------------------- rotary
    def inv_freq(self, long: bool = False) -> np.ndarray:
        """Inverse rotary frequencies (rotary_dim // 2,) in float32, as the HF families compute them."""
        dim = self.rotary_dim
        base = self.rope_theta
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
        inv = 1.0 / (base ** exponents)
        if self.rope_type == "llama3":
            old = self.rope_original_max_position_embeddings or 8192
            low_wl = old / self.rope_low_freq_factor
            high_wl = old / self.rope_high_freq_factor
            wavelen = 2 * math.pi / inv
            inv_l = np.where(wavelen > low_wl, inv / self.rope_factor, inv)
            smooth = (old / wavelen - self.rope_low_freq_factor) / (
                self.rope_high_freq_factor - self.rope_low_freq_factor
            )
            smoothed = (1 - smooth) * inv_l / self.rope_factor + smooth * inv_l
            is_medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            inv = np.where(is_medium, smoothed, inv_l)
        elif self.rope_type == "linear":
            inv = inv / self.rope_factor
        elif self.rope_type == "longrope":
            factors = self.rope_long_factor if long else self.rope_short_factor
            ext = np.asarray(factors, dtype=np.float32)
            inv = 1.0 / (ext * base ** exponents)
        return inv.astype(np.float32)

    @property
    def rope_attention_scaling(self) -> float:
        if self.rope_type != "longrope":
            return 1.0
        if self.rope_attention_factor is not None:
            return float(self.rope_attention_factor)
        orig = self.rope_original_max_position_embeddings
        factor = self.max_position_embeddings / orig
        if factor <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(factor) / math.log(orig))

    # --------------------------------------------------------------- HF import
    @classmethod
    def from_hf(cls, cfg: dict[str, Any] | str | os.PathLike, **overrides) -> "ModelConfig":
        """Build from an HF config dict, a config.json path, or a directory holding one."""
        if not isinstance(cfg, dict):
            path = os.fspath(cfg)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.exists(path):
                raise ConfigError(f"no config.json at {path}; pass a Hugging Face model directory")
            cfg = read_json_object(path, HF_CONFIG_FIX)
        cfg = dict(cfg)
        mt = cfg.get("model_type")
        if cfg.get("auto_map") and mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type={mt!r} needs trust_remote_code (auto_map in config.json); latent_jax only "
                f"loads native transformers families: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type={mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        n_heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or hidden // n_heads
        n_layers = cfg["num_hidden_layers"]

        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        if rope_type not in ("default", "llama3", "longrope", "linear"):
            raise ConfigError(f"rope type {rope_type!r} is not supported; use default, linear, llama3 or longrope")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        prf = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0

        windows: tuple[int, ...]
        sw = cfg.get("sliding_window")
        if mt == "qwen2":
            types = cfg.get("layer_types")
            if types is None:
                use = cfg.get("use_sliding_window", False)
                mwl = cfg.get("max_window_layers", n_layers)
                types = [
                    "sliding_attention" if use and sw and i >= mwl else "full_attention"
                    for i in range(n_layers)
                ]
            windows = tuple(int(sw) if t == "sliding_attention" and sw else 0 for t in types)
        else:
            windows = (int(sw) if sw else 0,) * n_layers

        eos = cfg.get("eos_token_id")
        eos_t = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        known = {
            "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rms_norm_eps", "hidden_act", "rope_theta", "rope_scaling", "rope_parameters",
            "partial_rotary_factor", "attention_bias", "mlp_bias", "sliding_window",
            "use_sliding_window", "max_window_layers", "layer_types", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "original_max_position_embeddings",
            "torch_dtype", "dtype", "architectures", "transformers_version", "initializer_range",
        }
        extra = {k: v for k, v in cfg.items() if k not in known}
        kw = dict(
            model_type=mt,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            hidden_act=cfg.get("hidden_act", "silu"),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor") or 1.0),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position_embeddings=rope.get(
                "original_max_position_embeddings", cfg.get("original_max_position_embeddings")
            ),
            rope_short_factor=_tup(rope.get("short_factor")),
            rope_long_factor=_tup(rope.get("long_factor")),
            rope_attention_factor=rope.get("attention_factor"),
            partial_rotary_factor=float(prf),
            attention_bias=mt == "qwen2" or bool(cfg.get("attention_bias", False)),
            o_bias=mt == "llama" and bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            fused_qkv=mt == "phi3",
            fused_gate_up=mt == "phi3",
            layer_windows=windows,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos_t,
            pad_token_id=cfg.get("pad_token_id"),
            initializer_range=cfg.get("initializer_range", 0.02),
            hf_extra_json=json.dumps(extra, sort_keys=True),
        )
        if rope_type == "longrope" and kw["rope_original_max_position_embeddings"] is None:
            raise ConfigError("longrope needs original_max_position_embeddings in config.json")
        kw.update(overrides)
        return cls(**kw)

    # --------------------------------------------------------------- HF export
    def to_hf(self) -> dict[str, Any]:
        """An HF config dict that transformers loads as the matching *ForCausalLM."""
        arch = {
            "mistral": "MistralForCausalLM",
            "llama": "LlamaForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "phi3": "Phi3ForCausalLM",
        }[self.model_type]
        out: dict[str, Any] = json.loads(self.hf_extra_json)
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
        elif self.rope_type == "linear":
            rope.update(factor=self.rope_factor)
        elif self.rope_type == "longrope":
            rope.update(
                short_factor=list(self.rope_short_factor),
                long_factor=list(self.rope_long_factor),
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
            if self.rope_attention_factor is not None:
                rope["attention_factor"] = self.rope_attention_factor
        if self.partial_rotary_factor != 1.0:
            rope["partial_rotary_factor"] = self.partial_rotary_factor
        eos = list(self.eos_token_id)
        out.update(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            hidden_act=self.hidden_act,
            rope_parameters=rope,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
            pad_token_id=self.pad_token_id,
            initializer_range=self.initializer_range,
            torch_dtype=self.param_dtype,
        )
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        if self.rope_original_max_position_embeddings is not None and self.model_type == "phi3":
            out["original_max_position_embeddings"] = self.rope_original_max_position_embeddings
        if self.model_type in ("llama", "mistral"):
            out["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            out["mlp_bias"] = self.mlp_bias
        sw = self.sliding_window
        if self.model_type == "qwen2":
            out["layer_types"] = [
                "sliding_attention" if w else "full_attention" for w in self.layer_windows
            ]
            out["use_sliding_window"] = bool(sw)
            out["sliding_window"] = sw
        elif self.model_type in ("mistral", "phi3"):
            out["sliding_window"] = sw
        return out

    # ------------------------------------------------------------ persistence
    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys {sorted(unknown)}; valid keys: {sorted(fields)}")
        for k in ("layer_windows", "eos_token_id"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        for k in ("rope_short_factor", "rope_long_factor"):
            d[k] = _tup(d.get(k))
        return cls(**d)
