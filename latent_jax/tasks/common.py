"""What several tasks build the same way: a decoder from config.model, loaded or from scratch."""

from __future__ import annotations

from ml_collections import ConfigDict

from latent_jax.models.config import ModelConfig
from latent_jax.models.io import load_any

MODEL_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "dtype", "param_dtype",
                "scan_layers", "remat_policy", "ce_chunk", "attention", "attention_chunk")


def model_config_from(model_cfg: ConfigDict, vocab_size: int, **extra) -> ModelConfig:
    """A from-scratch ModelConfig from config.model's fields (and `extra`)."""
    kw = {k: model_cfg[k] for k in MODEL_FIELDS if k in model_cfg}
    kw.update(extra)
    return ModelConfig(vocab_size=vocab_size, **kw)


def load_model(config: ConfigDict, path: str = "") -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of `path` (default config.model.path; an HF directory or a
    latent_jax checkpoint) with config.model's param_dtype, dtype, remat_policy, scan_layers,
    ce_chunk and attention."""
    m = config.model
    mcfg, params = load_any(path or m.path, dtype=m.param_dtype, scan_layers=bool(m.scan_layers))
    return mcfg.replace(dtype=m.dtype, remat_policy=m.remat_policy, **execution_fields(m)), params


def execution_fields(model_cfg: ConfigDict) -> dict:
    """The ModelConfig fields of config.model that say how the model runs, not what it is (loaded
    models take them from the config): ce_chunk, attention, attention_chunk."""
    return dict(ce_chunk=int(model_cfg.get("ce_chunk", 0)), attention=str(model_cfg.get("attention", "auto")),
                attention_chunk=int(model_cfg.get("attention_chunk", 512)))
