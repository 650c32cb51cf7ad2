"""Vision-language models: a vision tower + projector whose outputs are spliced into the
token stream of the one decoder (latent_jax.models.decoder.Decoder) via inputs_embeds.

    cfg, params = latent_jax.models.hf_vlm.load_vlm(path)
    model = VisionLanguageModel(cfg)
    out = model.apply({"params": params}, input_ids, pixel_values=px, attention_mask=mask,
                      layouts=layouts, patch_mask=pm)          # DecoderOutput

Image placeholders in `input_ids` (config.image_token_id) are replaced, in row-major order
over the batch, by the image features (transformers' masked_scatter / index_put).
params["language_model"] is a plain decoder param tree, so every text-only method
(Coconut, sampling, TOVA) runs on it with the prefix embeddings from `embed_inputs`.

Families:
- internvl (InternVLForConditionalGeneration): pixel_values (N_tiles, 3, S, S); each tile
  gives (S/p * downsample)^2 tokens.
- phi4mm (Phi4MultimodalForCausalLM): pixel_values (N_images, max_crops, 3, S, S) with the
  global view first, patch_mask (N_images, max_crops, S/p, S/p) and static `layouts`, one
  (h_crops, w_crops, useful_h, useful_w) per image (latent_jax.models.image_processing). The
  audio tower is not ported: audio inputs raise.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder, DecoderOutput, default_positions
from latent_jax.models.hico import merge_clip_tokens, select_video_tokens
from latent_jax.models.layers import DecoderLayer, KVCache
from latent_jax.models.vision import (
    InternVLProjector,
    Phi4Projector,
    VisionConfig,
    VisionTower,
    avg_pool_2x2,
    pixel_shuffle,
)

Array = jax.Array
FAMILIES = ("internvl", "phi4mm")


class AudioNotSupportedError(ValueError):
    """Phi-4-multimodal's speech/audio tower is not part of latent_jax."""


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """A vision-language model: text decoder config + vision tower config + glue. Hashable."""

    family: str
    text: ModelConfig
    vision: VisionConfig
    image_token_id: int
    downsample_ratio: float = 0.5  # internvl pixel shuffle
    projector_hidden_act: str = "gelu"  # internvl projector
    video_token_id: int | None = None
    hf_extra_json: str = "{}"  # top-level HF keys kept for a faithful export

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown VLM family {self.family!r}; supported: {', '.join(FAMILIES)}")

    @property
    def model_type(self) -> str:
        return self.family

    def replace(self, **kw) -> "VLMConfig":
        return dataclasses.replace(self, **kw)

    @property
    def base_tokens_per_side(self) -> int:
        """Tokens per side of one tile/crop after downsampling (pixel shuffle or 2x2 pooling)."""
        n = self.vision.patches_per_side
        if self.family == "internvl":
            return int(n * self.downsample_ratio)
        return (n + 1) // 2

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens of one InternVL tile, or of one Phi-4-MM crop before the HD layout."""
        return self.base_tokens_per_side ** 2

    def phi4_tokens(self, layout: Sequence[int]) -> int:
        """Placeholder tokens of one Phi-4-MM image with layout (h_crops, w_crops, useful_h, useful_w)."""
        b = self.base_tokens_per_side
        _, _, uh, uw = layout
        return uh * (uw + 1) + 1 + b * (b + 1)

    def to_json(self) -> str:
        d = {
            "family": self.family,
            "text": json.loads(self.text.to_json()),
            "vision": dataclasses.asdict(self.vision),
            "image_token_id": self.image_token_id,
            "downsample_ratio": self.downsample_ratio,
            "projector_hidden_act": self.projector_hidden_act,
            "video_token_id": self.video_token_id,
            "hf_extra_json": self.hf_extra_json,
        }
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VLMConfig":
        d = json.loads(text)
        d["text"] = ModelConfig.from_json(json.dumps(d["text"]))
        d["vision"] = VisionConfig(**d["vision"])
        return cls(**d)


def splice_features(embeds: Array, input_ids: Array, token_id: int, features: Array) -> Array:
    """Replace the embeddings at input_ids == token_id, in row-major order over (B, T), by the
    rows of features (N, D). Static shapes: extra placeholders read the last row, extra rows are
    unused (callers check counts on the host with `count_placeholders`)."""
    B, T, D = embeds.shape
    mask = (input_ids == token_id).reshape(-1)
    idx = jnp.clip(jnp.cumsum(mask) - 1, 0, features.shape[0] - 1)
    gathered = features.astype(embeds.dtype)[idx]
    out = jnp.where(mask[:, None], gathered, embeds.reshape(B * T, D))
    return out.reshape(B, T, D)


def count_placeholders(input_ids, token_id: int) -> int:
    import numpy as np

    return int((np.asarray(input_ids) == token_id).sum())


class VisionLanguageModel(nn.Module):
    """Vision tower + projector + the shared Decoder (params: vision_tower, projector, language_model)."""

    config: VLMConfig

    def setup(self):
        cfg = self.config
        self.language_model = Decoder(cfg.text)
        self.vision_tower = VisionTower(cfg.vision)
        if cfg.family == "internvl":
            self.projector = InternVLProjector(cfg.vision, cfg.text.hidden_size, cfg.projector_hidden_act)
        else:
            self.projector = Phi4Projector(cfg.vision, cfg.text.hidden_size)

    # ------------------------------------------------------------ vision side
    def tile_features(self, pixel_values: Array, patch_mask: Array | None = None) -> Array:
        """Pre-projector features per tile/crop: (N, base, base, D_proj_in)."""
        cfg = self.config
        x = self.vision_tower(pixel_values, patch_mask)
        n, t, d = x.shape
        s = int(round(t ** 0.5))
        x = x.reshape(n, s, s, d)
        if cfg.family == "internvl":
            return pixel_shuffle(x, cfg.downsample_ratio)
        return avg_pool_2x2(x)

    def project(self, x: Array) -> Array:
        return self.projector(x)

    def image_features(
        self,
        pixel_values: Array,
        patch_mask: Array | None = None,
        layouts: Sequence[Sequence[int]] | None = None,
    ) -> Array:
        """All image tokens (N_tokens, D_text) in placeholder order."""
        cfg = self.config
        if cfg.family == "internvl":
            f = self.tile_features(pixel_values)
            return self.project(f.reshape(-1, f.shape[-1]))
        # phi4mm: HD layout per image
        if pixel_values.ndim != 5:
            raise ValueError("phi4mm pixel_values must be (images, crops, 3, H, W); use latent_jax.models.image_processing")
        if layouts is None:
            raise ValueError("phi4mm needs `layouts` (one (h_crops, w_crops, useful_h, useful_w) per image)")
        n_img, n_crops = pixel_values.shape[:2]
        pm = None if patch_mask is None else patch_mask.reshape(n_img * n_crops, *patch_mask.shape[2:])
        f = self.tile_features(pixel_values.reshape(n_img * n_crops, *pixel_values.shape[2:]), pm)
        b, d = f.shape[1], f.shape[-1]
        f = f.reshape(n_img, n_crops, b, b, d)
        nl, sep = self.projector.sub_newline.astype(f.dtype), self.projector.global_sep.astype(f.dtype)
        outs = []
        for i, (hr, wr, uh, uw) in enumerate(layouts):
            g = jnp.concatenate([f[i, 0], jnp.broadcast_to(nl, (b, 1, d))], axis=1).reshape(-1, d)
            sub = f[i, 1 : 1 + hr * wr].reshape(hr, wr, b, b, d).transpose(0, 2, 1, 3, 4)
            sub = sub.reshape(hr * b, wr * b, d)[:uh, :uw]
            sub = jnp.concatenate([sub, jnp.broadcast_to(nl, (uh, 1, d))], axis=1).reshape(-1, d)
            outs.append(jnp.concatenate([sub, sep[None], g], axis=0))
        return self.project(jnp.concatenate(outs, axis=0))

    def video_features(
        self,
        frames: Array,
        tokens_per_frame: int | None = None,
        clip_frames: int = 4,
        patch_mask: Array | None = None,
    ) -> Array:
        """Video tokens (F * tokens_per_frame, D_text) from frames (F, 3, S, S) at the tile size.

        Each frame is one tile / one global crop; with tokens_per_frame set, HiCo merges the
        tokens of every `clip_frames` consecutive frames (bipartite matching) down to
        tokens_per_frame per frame before the projector."""
        f = self.tile_features(frames, patch_mask)
        F_, b, _, d = f.shape
        f = f.reshape(F_, b * b, d)
        if tokens_per_frame is not None and tokens_per_frame < b * b:
            f = merge_clip_tokens(f, tokens_per_frame, clip_frames)
        return self.project(f.reshape(-1, d))

    # -------------------------------------------------------------- text side
    def embed_inputs(self, input_ids: Array, features: Array | None = None) -> Array:
        """Token embeddings with image/video placeholders replaced by `features` (N, D)."""
        x = self.language_model.embed(input_ids)
        if features is None:
            return x
        return splice_features(x, input_ids, self.config.image_token_id, features)

    def __call__(
        self,
        input_ids: Array,
        pixel_values: Array | None = None,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        patch_mask: Array | None = None,
        layouts: Sequence[Sequence[int]] | None = None,
        features: Array | None = None,
        audio_input_features: Array | None = None,
    ) -> DecoderOutput:
        """Full forward: vision -> splice -> decoder. Pass precomputed `features` (e.g. HiCo
        video tokens) instead of pixel_values to skip the tower."""
        if audio_input_features is not None:
            raise AudioNotSupportedError(
                "audio inputs are not supported: latent_jax ports Phi-4-multimodal's vision and text parts "
                "only; drop the audio or run the audio tower in transformers"
            )
        if features is None and pixel_values is not None:
            features = self.image_features(pixel_values, patch_mask, layouts)
        x = self.embed_inputs(input_ids, features)
        return self.language_model(inputs_embeds=x, attention_mask=attention_mask, positions=positions, cache=cache)


def init_vlm_params(config: VLMConfig, rng: Array | int = 0) -> dict:
    """Random params for `config` (a plain nested dict)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    v = config.vision
    s = v.image_size
    ids = jnp.zeros((1, 4), jnp.int32)
    if config.family == "internvl":
        px = jnp.zeros((1, 3, s, s), jnp.float32)
        return VisionLanguageModel(config).init(rng, ids, px)["params"]
    px = jnp.zeros((1, 2, 3, s, s), jnp.float32)
    p = v.patches_per_side
    b = config.base_tokens_per_side
    return VisionLanguageModel(config).init(rng, ids, px, patch_mask=jnp.ones((1, 2, p, p), bool),
                                            layouts=((1, 1, b, b),))["params"]


# ------------------------------------------------------------- video-level token dropping
def forward_with_token_drop(
    params: dict,
    config: VLMConfig,
    inputs_embeds: Array,
    attention_mask: Array,
    video_mask,
    drop_layers: Sequence[int],
    keep_ratio: float,
    mode: str = "uniform",
) -> tuple[Array, Array]:
    """HiCo's video-level token dropping inside the LM (prefill, no cache).

    Before each layer in `drop_layers`, keep `keep_ratio` of the remaining video tokens
    (video_mask marks them): 'uniform' keeps evenly spaced ones, 'attention' the ones the
    last query attended to most at the previous layer. Text tokens are always kept and keep
    their rotary positions. video_mask (B, T) must be concrete (NumPy) with the same number
    of video tokens per row. Returns (logits of the last position (B, V), kept sequence length).
    """
    import numpy as np

    counts = np.asarray(video_mask).astype(bool).sum(-1)
    if len(set(counts.tolist())) != 1:
        raise ValueError("video token dropping needs the same number of video tokens in every row")
    num_video = int(counts[0])
    cfg = config.text
    if cfg.scan_layers:
        raise ValueError("token dropping needs model.scan_layers=False")
    lm = params["language_model"]
    x = inputs_embeds.astype(cfg.jnp_dtype)
    valid = attention_mask.astype(bool)
    positions = default_positions(valid, None)
    vmask = video_mask.astype(bool)
    attn = None
    layer = DecoderLayer(cfg)
    for i in range(cfg.num_hidden_layers):
        if i in set(drop_layers):
            idx = select_video_tokens(vmask, keep_ratio, mode, attn, num_video=num_video)
            num_video = max(1, int(round(num_video * keep_ratio)))
            take = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)
            x, positions, valid, vmask = take(x), take(positions), take(valid), take(vmask)
        key_pos = jnp.where(valid, positions, -1)
        x, _, attn = layer.apply({"params": lm[f"layers_{i}"]}, x, positions, key_pos, True,
                                 cfg.layer_windows[i], None, None)
    h = Decoder(cfg).apply({"params": lm}, x[:, -1:], method="final_norm")
    logits = Decoder(cfg).apply({"params": lm}, h, method="head")
    return logits[:, 0], x.shape[1]
