"""Generation with an image or a video in the prompt (InternVL3, Phi-4-multimodal).

    python -m latent_jax.generate --model PATH --image IMG --prompt "<image>\\nWhat is this?" --json
    python -m latent_jax.generate --model PATH --video VID --num-frames 8 --prompt "Describe the clip."

The frozen vision tower + projector turn the image (InternVL tiles / Phi-4-MM HD crops) or
the sampled video frames (one tile or global crop per frame, optional HiCo merging) into
feature rows; the prompt's placeholder (`<image>`, `<video>` or the model's image token; a
prompt without one gets the media first, after BOS) is expanded to one image token per row,
the features are spliced into the token embeddings, and the language model runs the usual
cached decode: `prefill_embeds` fills the KV cache from inputs_embeds and
latent_jax.decoding.sampling.decode runs the same while_loop as text-only generation.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import (
    DecodeState,
    GenerateOutput,
    SamplingParams,
    decode,
    decode_loop,
    left_pad,
    needs_long_switch,
    sample_logits,
)
from latent_jax.decoding.speculative import TypicalOptions, TypicalOutput, typical_generate
from latent_jax.decoding.strategies import bucket_length, decode_text
from latent_jax.decoding.tova import TovaOptions, TovaOutput, tova_generate
from latent_jax.models.decoder import Decoder
from latent_jax.models.image_processing import vlm_image_inputs
from latent_jax.models.layers import KVCache
from latent_jax.models.multimodal import VisionLanguageModel, VLMConfig

Array = jax.Array
PLACEHOLDERS = ("<image>", "<video>")


# ------------------------------------------------------------------------ features
def media_features(cfg: VLMConfig, params: dict, image=None, frames: np.ndarray | None = None,
                   max_tiles: int = 12, hico_tokens_per_frame: int = 0, hico_clip_frames: int = 4) -> np.ndarray:
    """Feature rows (N, D_text) of one image (a path or a PIL image) or one video's preprocessed
    frames (F, 3, S, S), as data.video.vlm_video_frames reads them; exactly one of the two."""
    if (image is None) == (frames is None):
        raise ValueError("pass exactly one of --image PATH or --video PATH")
    model = VisionLanguageModel(cfg)
    if frames is not None:
        frames = jnp.asarray(frames)
        tpf = int(hico_tokens_per_frame) or None
        fn = jax.jit(lambda p, f: model.apply({"params": p}, f, tpf, int(hico_clip_frames), method="video_features"))
        return np.asarray(fn(params, frames))
    px, pm, layouts = vlm_image_inputs(cfg, image, max_tiles)
    if layouts is None:
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="image_features"))
        return np.asarray(fn(params, jnp.asarray(px)))
    fn = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m, layouts, method="image_features"))
    return np.asarray(fn(params, jnp.asarray(px), jnp.asarray(pm)))


def expand_placeholder(before: list[int], after: list[int], image_token_id: int, n: int) -> list[int]:
    """before + n image tokens + after."""
    return list(before) + [int(image_token_id)] * int(n) + list(after)


def prompt_ids(tokenizer, cfg: VLMConfig, prompt: str, n: int) -> list[int]:
    """Token ids of `prompt` with its media placeholder expanded to n image tokens (the
    media goes first, after the tokenizer's BOS, when the prompt has no placeholder)."""
    names = list(PLACEHOLDERS)
    own = tokenizer.convert_ids_to_tokens(int(cfg.image_token_id))
    if isinstance(own, str) and own not in names:
        names.insert(0, own)
    for name in names:
        if name in prompt:
            before, after = prompt.split(name, 1)
            if any(m in after for m in names):
                raise ValueError("the prompt has more than one media placeholder; --image / --video take one")
            head = list(tokenizer(before)["input_ids"])
            tail = list(tokenizer(after, add_special_tokens=False)["input_ids"])
            return expand_placeholder(head, tail, cfg.image_token_id, n)
    full = list(tokenizer(prompt)["input_ids"])
    bos = tokenizer.bos_token_id
    k = 1 if bos is not None and full[:1] == [bos] else 0
    return expand_placeholder(full[:k], full[k:], cfg.image_token_id, n)


# ------------------------------------------------------------------------ decoding
def embed_prompt(params: dict, cfg: VLMConfig, input_ids: Array, features: Array) -> Array:
    """Token embeddings (B, T, D) with the image placeholders replaced by `features` rows."""
    return VisionLanguageModel(cfg).apply({"params": params}, input_ids, features, method="embed_inputs")


def _prefill_embeds(lm_params, inputs_embeds, input_ids, attention_mask, rng, sp, stop_ids, *, config,
                    max_new_tokens, top_k, pad_id) -> DecodeState:
    model = Decoder(config)
    B, T = input_ids.shape
    cache = KVCache.init(config, B, T + max_new_tokens, None)
    out = model.apply({"params": lm_params}, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache)
    last_pos = jnp.sum(attention_mask, axis=-1).astype(jnp.int32) - 1
    rng, sub = jax.random.split(rng)
    tok = sample_logits(out.logits[:, -1], sub, sp, top_k)
    return DecodeState.start(out.cache, tok, last_pos, rng, stop_ids, max_new_tokens=max_new_tokens, pad_id=pad_id,
                             long=jnp.asarray(False), input_ids=input_ids, attention_mask=attention_mask)


prefill_embeds = jax.jit(_prefill_embeds, static_argnames=("config", "max_new_tokens", "top_k", "pad_id"))
prefill_embeds.__doc__ = """Prefill left-padded prompt embeddings (B, T, D) into a KV cache of T + max_new_tokens
slots and sample the first token; returns the DecodeState that sampling.decode continues."""


def _check_length(cfg: VLMConfig, total: int) -> None:
    """`total`: the longest real prompt (not its padded width) + max_new_tokens; left padding
    takes no positions, so a padded prompt reaches the same positions as its real tokens."""
    if needs_long_switch(cfg.text, total):
        raise ValueError(
            f"prompt + --max-new-tokens = {total} crosses rope_original_max_position_embeddings="
            f"{cfg.text.rope_original_max_position_embeddings}, where longrope re-encodes the prompt without "
            "its image features; lower --max-new-tokens or --num-frames / --max-tiles")


def generate_vlm(params: dict, input_ids: Array, attention_mask: Array, features: Array, rng: Array,
                 sp: SamplingParams, stop_ids: Array, *, cfg: VLMConfig, max_new_tokens: int, top_k: int = 0,
                 pad_id: int = 0, tova: TovaOptions | None = None, head_weights: Array | None = None,
                 medusa: tuple[dict, TypicalOptions] | None = None) -> GenerateOutput | TovaOutput | TypicalOutput:
    """Batched KV-cached generation for left-padded prompts whose image tokens take `features`
    rows in row-major order (features from `media_features` / VisionLanguageModel).

    tova: decode with a TOVA cache of tova.budget(T + max_new_tokens) slots instead of the
    full cache (the `cache.policy: tova` config): the prompt, video tokens included, is
    prefilled whole and cut to the budget by its last token's attention, then every step
    evicts one slot (see decoding/tova.py); returns a TovaOutput.
    medusa: (heads, TypicalOptions): typical-acceptance speculative decoding with Medusa heads
    trained on the language model (decoding/speculative.py); returns a TypicalOutput."""
    try:  # the longest real prompt; under an outer jit only the padded width is known
        longest = int(np.asarray(attention_mask).sum(-1).max())
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        longest = input_ids.shape[1]
    _check_length(cfg, longest + max_new_tokens)
    if tova is not None and medusa is not None:
        raise ValueError("pass tova or medusa, not both: typical acceptance keeps the full cache")
    if medusa is not None:
        heads, opts = medusa
        emb = _embed_jit(params, cfg, jnp.asarray(input_ids), jnp.asarray(features))
        return typical_generate(params["language_model"], heads, input_ids, attention_mask, rng, sp, stop_ids,
                                config=cfg.text, max_new_tokens=max_new_tokens, opts=opts, top_k=top_k, pad_id=pad_id,
                                inputs_embeds=emb)
    if tova is not None:
        emb = _embed_jit(params, cfg, jnp.asarray(input_ids), jnp.asarray(features))
        return tova_generate(params["language_model"], input_ids, attention_mask, rng, sp, stop_ids, config=cfg.text,
                             max_new_tokens=max_new_tokens, opts=tova, head_weights=head_weights, top_k=top_k,
                             pad_id=pad_id, inputs_embeds=emb)
    return _generate_vlm(params, input_ids, attention_mask, features, rng, sp, stop_ids, cfg=cfg,
                         max_new_tokens=max_new_tokens, top_k=top_k, pad_id=pad_id)


_embed_jit = jax.jit(embed_prompt, static_argnums=1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "top_k", "pad_id"))
def _generate_vlm(params, input_ids, attention_mask, features, rng, sp, stop_ids, *, cfg, max_new_tokens, top_k,
                  pad_id) -> GenerateOutput:
    emb = embed_prompt(params, cfg, input_ids, features)
    static = dict(config=cfg.text, max_new_tokens=max_new_tokens, top_k=top_k, pad_id=pad_id)
    state = _prefill_embeds(params["language_model"], emb, input_ids, attention_mask, rng, sp, stop_ids, **static)
    return decode_loop(params["language_model"], state, sp, stop_ids, **static)


# ------------------------------------------------------------------------------ CLI
def run_cli(args, cfg: VLMConfig, params: dict, tokenizer, frames: np.ndarray | None = None) -> list[dict[str, Any]]:
    """`python -m latent_jax.generate --image/--video` with --strategy greedy or sample; `frames`
    are the --video's preprocessed frames (data.video.vlm_video_frames), which the CLI reads."""
    if args.strategy not in ("greedy", "sample"):
        raise ValueError(f"--strategy {args.strategy} does not take images or videos; use greedy or sample")
    if args.prompts_file is not None:
        raise ValueError("--image / --video take one --prompt (or --input-ids), not --prompts-file")
    t = cfg.text
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}; must be >= 1")
    if args.video and frames is None:
        raise ValueError("--video: pass its frames (latent_jax.data.video.vlm_video_frames)")
    feats = media_features(cfg, params, image=args.image, frames=frames if args.video else None,
                           max_tiles=args.max_tiles, hico_tokens_per_frame=args.hico_tokens_per_frame,
                           hico_clip_frames=args.hico_clip_frames)
    n = feats.shape[0]
    if args.prompt is not None:
        if tokenizer is None:
            raise ValueError(f"--prompt is text but {args.model} has no tokenizer files; pass --input-ids")
        ids = prompt_ids(tokenizer, cfg, args.prompt, n)
    else:
        given = list(args.input_ids)
        k = given.count(cfg.image_token_id)
        if k > 1:
            raise ValueError(f"--input-ids has {k} image tokens ({cfg.image_token_id}); give one placeholder or none")
        if k == 1:
            i = given.index(cfg.image_token_id)
            ids = expand_placeholder(given[:i], given[i + 1:], cfg.image_token_id, n)
        else:
            ids = expand_placeholder([], given, cfg.image_token_id, n)
    bad = [x for x in ids if not 0 <= x < t.vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {t.vocab_size})")
    greedy = args.strategy == "greedy"
    sp = SamplingParams.make(0.0 if greedy else args.temperature, 1.0 if greedy else args.top_p)
    top_k = 0 if greedy else int(args.top_k)
    pad_id = int(t.pad_token_id if t.pad_token_id is not None else 0)
    stops = list(t.eos_token_id) if args.stop_ids is None else list(args.stop_ids)
    stop_arr = jnp.asarray(stops, jnp.int32)
    max_new = int(args.max_new_tokens)
    ids_np, mask_np = left_pad([ids], pad_id, bucket=bucket_length(len(ids)))
    _check_length(cfg, len(ids) + max_new)
    x, m = jnp.asarray(ids_np), jnp.asarray(mask_np)
    static = dict(config=t, max_new_tokens=max_new, top_k=top_k, pad_id=pad_id)
    rng = jax.random.PRNGKey(int(args.seed))
    emb = jax.jit(embed_prompt, static_argnums=1)(params, cfg, x, jnp.asarray(feats))
    lm = params["language_model"]
    pre = prefill_embeds.lower(lm, emb, x, m, rng, sp, stop_arr, **static).compile()
    state_shape = jax.eval_shape(functools.partial(_prefill_embeds, **static), lm, emb, x, m, rng, sp, stop_arr)
    dec = decode.lower(lm, state_shape, sp, stop_arr, **static).compile()
    t0 = time.perf_counter()
    state = jax.block_until_ready(pre(lm, emb, x, m, rng, sp, stop_arr))
    t1 = time.perf_counter()
    out = jax.block_until_ready(dec(lm, state, sp, stop_arr))
    t2 = time.perf_counter()
    new = np.asarray(out.tokens)[0, : int(np.asarray(out.lengths)[0])].tolist()
    return [dict(
        index=0, strategy=args.strategy, input_ids=[int(v) for v in ids], output_ids=new,
        text=decode_text(tokenizer, new), num_new_tokens=len(new), stopped=bool(new) and new[-1] in set(stops),
        media="image" if args.image else "video", media_tokens=int(n),
        tokens_per_s=(len(new) - 1) / (t2 - t1) if len(new) > 1 and t2 > t1 else None,
        prefill_s=t1 - t0, decode_s=t2 - t1, forward_passes=1 + int(out.steps),
    )]
