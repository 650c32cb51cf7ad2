"""Masked-diffusion decoding (LLaDA, ML-GSAI/LLaDA generate.py; Fast-dLLM, NVlabs/Fast-dLLM)
and the masked-diffusion training objective (LLaDA / MDLM).

Decoding: a canvas of prompt + `gen_length` mask tokens is decoded in blocks of
`block_length`, left to right. Each step runs the model over the canvas, takes x0 as the
argmax of Gumbel-perturbed logits (temperature), scores every still-masked position of the
current block by the softmax probability of its x0 (`low_confidence`) or at random
(`random`), and unmasks

* fixed schedule: the k most confident, k spread evenly over the block's steps with the
  remainder on the earliest steps (steps // num_blocks steps per block), or
* Fast-dLLM parallel decoding (`threshold`): every position whose confidence is at least
  `threshold`, and always the most confident one; a block takes as many steps as it needs.

`cache="prefix"` (Fast-dLLM prefix cache): at the first step of a block the whole canvas
is run once and its K/V kept; later steps of the block run only the canvas from the block
start on, attending to the cached prefix. `cache="dual"` also keeps the suffix after the
block and runs only the block. `cfg_scale` > 0 adds classifier-free guidance (the
unconditional canvas has its prompt masked). Any decoder can be driven: `causal=False` for
masked-diffusion models (bidirectional), `causal=True` to drive an ordinary causal LM;
`shift_logits=True` reads the prediction for position i from position i - 1 (AR-adapted
diffusion models).

Gumbel noise is computed in float64 as the reference does (JAX's x64 mode is switched on
for the duration of the call when temperature > 0 and `noise_dtype="float64"`), in log
space: argmax(exp(l) / (-log u)^T) == argmax(l - T log(-log u)), which also avoids the
overflow of exp(l).

Hybrid pipeline (latent thoughts, then a diffusion answer): `diffusion_generate_after_prefix`
decodes a canvas of mask tokens after a prefix that is already in a KV cache (for example a
prompt plus continuous thoughts that have no token ids), and
`diffusion_generate_after_embeds` does the same from prefix embeddings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import needs_long_switch
from latent_jax.decoding.strategies import batches, bucket_batch, decode_text, pad_batch, stop_ids_from
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache
from latent_jax.models.lm_head import logprob_and_argmax, map_head_chunks
from latent_jax.parallel import to_host

Array = jax.Array

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")


def check_longrope(config: ModelConfig, total_len: int) -> None:
    """Refuse a longrope (Phi-3 / Phi-4) canvas that may cross original_max_position_embeddings:
    the model switches rotary factors there and the prompt's cached K/V would need re-encoding."""
    if needs_long_switch(config, total_len):
        raise ValueError(
            f"diffusion: prompt + gen_length = {total_len} crosses rope_original_max_position_embeddings="
            f"{config.rope_original_max_position_embeddings} of this longrope model, where the rotary factors "
            "switch; lower gen_length or the prompt length")


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
    """Static decoding settings (hashable; a jit static argument)."""

    steps: int = 64
    gen_length: int = 64
    block_length: int = 64
    temperature: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None  # Fast-dLLM parallel decoding when set
    cfg_scale: float = 0.0
    mask_id: int = 0
    cache: str = "none"  # none | prefix | dual
    causal: bool = False
    shift_logits: bool = False
    noise_dtype: str = "float64"  # float64 | float32

    def __post_init__(self):
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r}; use one of {', '.join(REMASKING)}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache={self.cache!r}; use one of {', '.join(CACHE_MODES)}")
        if self.gen_length < 1 or self.block_length < 1 or self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} must be a positive multiple of block_length={self.block_length}")
        if self.threshold is None and (self.steps < 1 or self.steps % self.num_blocks):
            raise ValueError(f"steps={self.steps} must be a positive multiple of the number of blocks "
                             f"({self.num_blocks} = gen_length / block_length)")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must be in [0, 1]")
        if self.shift_logits and self.cache != "none":
            raise ValueError("shift_logits needs cache='none'")
        if self.noise_dtype not in ("float64", "float32"):
            raise ValueError(f"noise_dtype={self.noise_dtype!r}; use float64 or float32")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        """Fixed schedule steps per block; the step bound (block_length) in threshold mode."""
        return self.block_length if self.threshold is not None else self.steps // self.num_blocks


@flax.struct.dataclass
class DiffusionOutput:
    """tokens (B, gen_length) the decoded canvas; forward_passes () model calls (a CFG pair
    counts once); unmask_step (B, gen_length) the step (counted over the whole call, from 0)
    at which each position was unmasked, -1 if never; block_steps (num_blocks,) steps each
    block took."""

    tokens: Array
    forward_passes: Array
    unmask_step: Array
    block_steps: Array


def num_transfer_tokens(n_masked: Array, steps: int) -> Array:
    """(B, steps) tokens to unmask per step: n // steps each, the remainder on the earliest steps."""
    base = n_masked[:, None] // steps
    rem = n_masked[:, None] % steps
    return (base + (jnp.arange(steps)[None, :] < rem)).astype(jnp.int32)


def _x0_and_confidence(logits: Array, rng: Array, opts: DiffusionOptions) -> tuple[Array, Array]:
    """x0 (argmax of Gumbel-perturbed logits) and its confidence for block logits (B, n, V)."""
    k_noise, k_rand = jax.random.split(rng)
    if opts.temperature > 0:
        dt = jnp.float64 if opts.noise_dtype == "float64" and jax.config.jax_enable_x64 else jnp.float32
        u = jax.random.uniform(k_noise, logits.shape, dt, minval=jnp.finfo(dt).tiny, maxval=1.0)
        noisy = logits.astype(dt) - opts.temperature * jnp.log(-jnp.log(u))
        x0 = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
    else:
        x0 = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if opts.remasking == "low_confidence":
        p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
    else:
        conf = jax.random.uniform(k_rand, x0.shape, jnp.float32)
    return x0, conf


def _select(conf: Array, masked: Array, k: Array, threshold: float | None) -> Array:
    """Positions (B, n) to unmask: the k most confident masked ones, or (threshold) every masked
    one at or above the threshold plus always the most confident."""
    neg = -jnp.inf
    c = jnp.where(masked, conf, neg)
    order = jnp.argsort(-c, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    if threshold is None:
        return masked & (rank < k[:, None])
    return masked & ((rank == 0) | (c >= threshold))


def _segment_forward(params, config, opts, x, positions, valid, cache, start, length, write_at):
    """Logits (B, length, V) for canvas[start:start+length], written into `cache` at slot
    write_at (None = no cache). Returns (logits, new cache)."""
    seg = lambda a: jax.lax.dynamic_slice_in_dim(a, start, length, axis=1) if length != a.shape[1] else a
    model = Decoder(config)
    c = None if cache is None else cache.replace(end=jnp.asarray(write_at, jnp.int32))
    out = model.apply({"params": params}, seg(x), attention_mask=seg(valid), positions=seg(positions), cache=c,
                      causal=opts.causal)
    return out.logits, out.cache


def _denoise(params, x, positions, valid, prompt_index, rng, first_logits, base_cache, *, config, opts, gen_start):
    """Decode canvas x (B, S) whose positions [gen_start, gen_start + gen_length) hold mask
    tokens, after an optional base cache (a prefix attended to but never recomputed)."""
    B, S = x.shape
    G, BL = opts.gen_length, opts.block_length
    mask_id = opts.mask_id
    cfg = opts.cfg_scale > 0
    if cfg:  # conditional and unconditional canvases in one batch
        positions, valid = jnp.concatenate([positions] * 2), jnp.concatenate([valid] * 2)
    off = jnp.zeros((), jnp.int32) if base_cache is None else base_cache.end
    if opts.cache != "none" or base_cache is not None:
        rows = 2 * B if cfg else B
        cache = KVCache.init(config, rows, S) if base_cache is None else _extend(base_cache, S)
    else:
        cache = None

    def canvas(x):
        if not cfg:
            return x
        return jnp.concatenate([x, jnp.where(prompt_index, mask_id, x)])

    def guide(logits):
        if not cfg:
            return logits
        c, u = jnp.split(logits, 2)
        return u + (opts.cfg_scale + 1.0) * (c - u)

    def block_logits_full(x, bs):
        """Whole-canvas forward; block logits and the cache holding the whole canvas."""
        logits, new_cache = _segment_forward(params, config, opts, canvas(x), positions, valid, cache, 0, S, off)
        logits = guide(logits)
        if opts.shift_logits:
            first = logits[:, :1] if first_logits is None else first_logits[:, None].astype(logits.dtype)
            logits = jnp.concatenate([first, logits[:, :-1]], axis=1)
        return jax.lax.dynamic_slice_in_dim(logits, bs, BL, axis=1), new_cache

    def block_logits_cached(x, bs, bcache):
        n = S - bs if opts.cache == "prefix" else BL
        logits, _ = _segment_forward(params, config, opts, canvas(x), positions, valid, bcache, bs, n, off + bs)
        return guide(logits)[:, :BL]

    unmask_step = jnp.full((B, G), -1, jnp.int32)
    nfe = jnp.zeros((), jnp.int32)
    block_steps = []
    spb = opts.steps_per_block
    for b in range(opts.num_blocks):
        bs = gen_start + b * BL
        n_masked = jnp.sum(x[:, bs:bs + BL] == mask_id, axis=-1)
        sched = num_transfer_tokens(n_masked, spb)

        def apply_step(x, logits, i, step_rng, unmask_step, nfe):
            blk = x[:, bs:bs + BL]
            masked = blk == mask_id
            x0, conf = _x0_and_confidence(logits, step_rng, opts)
            k = jax.lax.dynamic_index_in_dim(sched, jnp.minimum(i, spb - 1), axis=1, keepdims=False)
            take = _select(conf, masked, k, opts.threshold)
            x = x.at[:, bs:bs + BL].set(jnp.where(take, x0, blk))
            us = unmask_step[:, bs - gen_start:bs - gen_start + BL]
            us = jnp.where(take, nfe, us)
            unmask_step = unmask_step.at[:, bs - gen_start:bs - gen_start + BL].set(us)
            return x, unmask_step, nfe + 1

        def cond(s):
            i, x = s[0], s[1]
            if opts.threshold is None:
                return i < spb
            return (i < spb) & jnp.any(x[:, bs:bs + BL] == mask_id)

        if opts.cache == "none":
            def body(s):
                i, x, rng, unmask_step, nfe = s
                rng, sub = jax.random.split(rng)
                logits, _ = block_logits_full(x, bs)
                x, unmask_step, nfe = apply_step(x, logits, i, sub, unmask_step, nfe)
                return i + 1, x, rng, unmask_step, nfe

            i, x, rng, unmask_step, nfe = jax.lax.while_loop(cond, body, (jnp.int32(0), x, rng, unmask_step, nfe))
        else:
            rng, sub = jax.random.split(rng)
            logits, bcache = block_logits_full(x, bs)
            x, unmask_step, nfe = apply_step(x, logits, 0, sub, unmask_step, nfe)

            def body(s):
                i, x, rng, unmask_step, nfe = s
                rng, sub = jax.random.split(rng)
                logits = block_logits_cached(x, bs, bcache)
                x, unmask_step, nfe = apply_step(x, logits, i, sub, unmask_step, nfe)
                return i + 1, x, rng, unmask_step, nfe

            i, x, rng, unmask_step, nfe = jax.lax.while_loop(cond, body, (jnp.int32(1), x, rng, unmask_step, nfe))
        block_steps.append(i)
    return DiffusionOutput(tokens=x[:, gen_start:gen_start + G], forward_passes=nfe, unmask_step=unmask_step,
                           block_steps=jnp.stack(block_steps))


def _extend(cache: KVCache, extra: int) -> KVCache:
    return cache.pad_slots(extra)


def _x64(opts: DiffusionOptions):
    if opts.temperature > 0 and opts.noise_dtype == "float64":
        return jax.enable_x64(True)
    return contextlib.nullcontext()


@functools.partial(jax.jit, static_argnames=("config", "opts"))
def _generate(params, input_ids, attention_mask, rng, *, config, opts):
    B, P = input_ids.shape
    G = opts.gen_length
    x = jnp.concatenate([input_ids.astype(jnp.int32), jnp.full((B, G), opts.mask_id, jnp.int32)], axis=1)
    valid = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.ones((B, G), jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    prompt_index = jnp.concatenate([jnp.ones((B, P), bool), jnp.zeros((B, G), bool)], axis=1)
    return _denoise(params, x, positions, valid, prompt_index, rng, None, None, config=config, opts=opts, gen_start=P)


def diffusion_generate(params: dict, input_ids: Array, attention_mask: Array, rng: Array, *, config: ModelConfig,
                       opts: DiffusionOptions) -> DiffusionOutput:
    """Decode opts.gen_length tokens after left-padded prompts (B, P) by masked diffusion
    (LLaDA's generate, plus Fast-dLLM threshold decoding and prefix / dual KV caches)."""
    if input_ids.shape[1] < 1:
        raise ValueError("diffusion decoding needs a prompt of at least one token")
    check_longrope(config, int(np.asarray(attention_mask).sum(-1).max()) + opts.gen_length)
    with _x64(opts):
        return _generate(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32), rng,
                         config=config, opts=opts)


@functools.partial(jax.jit, static_argnames=("config", "opts"))
def _after_prefix(params, cache, next_pos, rng, first_logits, *, config, opts):
    B = cache.k.shape[1]
    G = opts.gen_length
    x = jnp.full((B, G), opts.mask_id, jnp.int32)
    valid = jnp.ones((B, G), jnp.int32)
    positions = (next_pos[:, None] + jnp.arange(G)[None, :]).astype(jnp.int32)
    prompt_index = jnp.zeros((B, G), bool)
    return _denoise(params, x, positions, valid, prompt_index, rng, first_logits, cache, config=config, opts=opts,
                    gen_start=0)


def diffusion_generate_after_prefix(params: dict, cache: KVCache, next_pos: Array, rng: Array, *,
                                    config: ModelConfig, opts: DiffusionOptions,
                                    first_logits: Array | None = None) -> DiffusionOutput:
    """Decode opts.gen_length tokens by masked diffusion after a prefix held in `cache`.

    cache: KVCache whose slots [0, cache.end) hold the prefix of every row (prompt, latent
    thoughts, ...; pos -1 on padding); it is extended by gen_length slots, and the prefix is
    attended to but never recomputed. next_pos (B,): rotary position of the first generated
    token of each row. first_logits (B, V): the prefix's last logits, needed only with
    opts.shift_logits (the prediction for the first answer token). opts.cache selects
    whether the canvas itself is cached per block ("prefix", "dual") or recomputed ("none");
    cfg_scale must be 0 (the prefix has no prompt tokens to mask).
    """
    if opts.cfg_scale > 0:
        raise ValueError("cfg_scale > 0 is not available after a cached prefix; set cfg_scale=0")
    try:  # the furthest position reached; under an outer jit only the cache width is known
        longest = int(np.asarray(next_pos).max()) + opts.gen_length
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        longest = cache.slots + opts.gen_length
    check_longrope(config, longest)
    if opts.shift_logits and first_logits is None:
        raise ValueError("shift_logits needs first_logits (the prefix's last logits)")
    if first_logits is None:
        first_logits = jnp.zeros((cache.k.shape[1], config.vocab_size), jnp.float32)
    with _x64(opts):
        return _after_prefix(params, cache, jnp.asarray(next_pos, jnp.int32), rng, first_logits, config=config,
                             opts=opts)


def diffusion_generate_after_embeds(params: dict, prefix_embeds: Array, prefix_mask: Array, rng: Array, *,
                                    config: ModelConfig, opts: DiffusionOptions,
                                    prefix_causal: bool = True) -> DiffusionOutput:
    """Prefill left-padded prefix embeddings (B, P, D) (mask (B, P)) into a KV cache, then decode
    opts.gen_length tokens after it by masked diffusion (see diffusion_generate_after_prefix)."""
    B, P = prefix_mask.shape
    cache = KVCache.init(config, B, P)
    out = Decoder(config).apply({"params": params}, inputs_embeds=prefix_embeds, attention_mask=prefix_mask,
                                cache=cache, causal=prefix_causal)
    next_pos = jnp.sum(prefix_mask, axis=-1).astype(jnp.int32)
    return diffusion_generate_after_prefix(params, out.cache, next_pos, rng, config=config, opts=opts,
                                           first_logits=out.logits[:, -1])


# ----------------------------------------------------------------------- training objective
def forward_process(ids: Array, rng: Array, mask_id: int, eps: float = 1e-3,
                    maskable: Array | None = None) -> tuple[Array, Array, Array]:
    """LLaDA / MDLM forward process: t ~ U(0, 1) per row, each maskable token masked with
    p = (1 - eps) t + eps. Returns (noisy ids, masked (B, T) bool, p_mask (B, T))."""
    B, T = ids.shape
    k1, k2 = jax.random.split(rng)
    t = jax.random.uniform(k1, (B,))
    p = (1.0 - eps) * t + eps
    p_mask = jnp.broadcast_to(p[:, None], (B, T))
    masked = jax.random.uniform(k2, (B, T)) < p_mask
    if maskable is not None:
        masked &= maskable.astype(bool)
    return jnp.where(masked, mask_id, ids), masked, p_mask


def masked_diffusion_loss(params: dict, ids: Array, attention_mask: Array, rng: Array, *, config: ModelConfig,
                          mask_id: int, prompt_mask: Array | None = None, eps: float = 1e-3,
                          causal: bool = False) -> tuple[Array, dict]:
    """LLaDA / MDLM loss for right-padded ids (B, T) (attention_mask 1 on real tokens).

    Pre-training: sum over masked tokens of CE / p, divided by B * T. SFT (prompt_mask given,
    1 on prompt tokens): the prompt is never masked and each row's sum is divided by its
    answer length, then averaged over rows. Returns (loss, metrics)."""
    valid = attention_mask.astype(bool)
    maskable = valid if prompt_mask is None else valid & ~prompt_mask.astype(bool)
    noisy, masked, p_mask = forward_process(ids, rng, mask_id, eps, maskable)
    hidden = Decoder(config).apply({"params": params}, noisy, attention_mask=attention_mask, causal=causal).hidden
    # the LM head inside the loss, over chunks of config.ce_chunk positions
    logp, argmax = map_head_chunks(params, config, hidden, logprob_and_argmax, ids)
    ce = -logp
    weighted = jnp.where(masked, ce / p_mask, 0.0)
    B, T = ids.shape
    if prompt_mask is None:
        loss = jnp.sum(weighted) / (B * T)
    else:
        ans_len = jnp.maximum(jnp.sum(maskable, axis=-1, keepdims=True), 1).astype(jnp.float32)
        loss = jnp.sum(weighted / ans_len) / B
    n = jnp.maximum(jnp.sum(masked), 1)
    acc = jnp.sum(jnp.where(masked, argmax == ids, False)) / n
    return loss, {"loss": loss, "masked_ce": jnp.sum(jnp.where(masked, ce, 0.0)) / n, "masked_acc": acc,
                  "mask_frac": jnp.sum(masked) / jnp.maximum(jnp.sum(maskable), 1)}


ANSWER_DECODING = ("autoregressive", "diffusion")


def answer_options_from_config(answer, gen_length: int, default_mask_id: int) -> DiffusionOptions | None:
    """The `answer` config block (configs/base.py) as DiffusionOptions for a gen_length answer,
    or None for decoding 'autoregressive'. Keys: decoding (autoregressive | diffusion),
    block_length (0 = gen_length), steps (0 = one per token), threshold (< 0 = fixed schedule),
    remasking, mask_id (< 0 = default_mask_id), shift (True: AR-adapted, causal, position i
    read at i - 1, as `coconut_diffusion_loss` trains it)."""
    if answer is None:
        return None
    mode = str(answer.get("decoding", "autoregressive"))
    if mode not in ANSWER_DECODING:
        raise ValueError(f"answer.decoding={mode!r}; use one of {', '.join(ANSWER_DECODING)}")
    if mode == "autoregressive":
        return None
    bl = int(answer.get("block_length", 0)) or gen_length
    if gen_length % bl:
        raise ValueError(f"answer.block_length={bl} must divide the answer length {gen_length} "
                         "(generation.<mode>.max_new_tokens)")
    thr = float(answer.get("threshold", -1.0))
    mask_id = int(answer.get("mask_id", -1))
    shift = bool(answer.get("shift", True))
    return DiffusionOptions(
        steps=int(answer.get("steps", 0)) or gen_length, gen_length=gen_length, block_length=bl,
        remasking=str(answer.get("remasking", "low_confidence")), threshold=None if thr < 0 else thr,
        mask_id=default_mask_id if mask_id < 0 else mask_id, causal=True, shift_logits=shift,
        cache="none" if shift else "prefix",
    )


# ------------------------------------------------------------------------------------ CLI
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of --strategy diffusion."""
    g = parser.add_argument_group("diffusion")
    g.add_argument("--steps", type=int, default=None, help="diffusion steps in all (default: gen length)")
    g.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default: --max-new-tokens)")
    g.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block (default: gen length)")
    g.add_argument("--threshold", type=float, default=None, help="Fast-dLLM parallel decoding confidence threshold")
    g.add_argument("--remasking", choices=REMASKING, default="low_confidence")
    g.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale (0 = off)")
    g.add_argument("--mask-id", type=int, default=None, help="mask token id (default: the tokenizer's mask token)")
    g.add_argument("--diffusion-cache", choices=CACHE_MODES, default="none", help="per-block KV cache (Fast-dLLM)")
    g.add_argument("--attention", choices=("bidirectional", "causal"), default="bidirectional",
                   help="bidirectional for masked-diffusion models; causal drives an ordinary LM")
    g.add_argument("--shift-logits", action="store_true", help="position i is predicted at i-1 (AR-adapted models)")
    parser.set_defaults(temperature=0.0)


def options_from_args(args: argparse.Namespace, tokenizer, config: ModelConfig) -> DiffusionOptions:
    gen = args.gen_length or args.max_new_tokens
    mask_id = args.mask_id
    if mask_id is None:
        mask_id = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
        if mask_id is None:
            raise ValueError("the tokenizer has no mask token; pass --mask-id ID")
    if not 0 <= mask_id < config.vocab_size:
        raise ValueError(f"--mask-id {mask_id} is outside the vocabulary [0, {config.vocab_size})")
    return DiffusionOptions(
        steps=args.steps or gen, gen_length=gen, block_length=args.block_length or gen,
        temperature=float(args.temperature), remasking=args.remasking, threshold=args.threshold,
        cfg_scale=float(args.cfg_scale), mask_id=int(mask_id), cache=args.diffusion_cache,
        causal=args.attention == "causal", shift_logits=bool(args.shift_logits),
    )


def run_cli(params: dict, config: ModelConfig, tokenizer, prompts: list[list[int]], args) -> list[dict]:
    """--strategy diffusion: one JSON-able dict per prompt (output cut after the first stop token)."""
    opts = options_from_args(args, tokenizer, config)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    stops = set(stop_ids_from(args, config))
    rng = jax.random.PRNGKey(int(args.seed))
    results = []
    for start, chunk in batches(prompts, int(args.batch_size)):
        ids, mask = pad_batch(chunk, bucket_batch(len(chunk), int(args.batch_size)), pad)
        rng, sub = jax.random.split(rng)
        jax.block_until_ready(diffusion_generate(params, ids, mask, sub, config=config, opts=opts))  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(diffusion_generate(params, ids, mask, sub, config=config, opts=opts))
        dt = time.perf_counter() - t0
        toks, us = to_host((out.tokens, out.unmask_step))
        nfe = int(out.forward_passes)
        for j, p in enumerate(chunk):
            row = toks[j].tolist()
            cut = next((n + 1 for n, t in enumerate(row) if t in stops), len(row))
            counts = np.bincount(us[j][us[j] >= 0], minlength=nfe)
            results.append(dict(
                index=start + j, strategy="diffusion", input_ids=list(map(int, p)), output_ids=row[:cut],
                text=decode_text(tokenizer, row[:cut]), num_new_tokens=cut,
                tokens_per_s=opts.gen_length / dt if dt > 0 else None, decode_s=dt, forward_passes=nfe,
                tokens_unmasked_per_step=counts.tolist(), mean_tokens_per_step=float(opts.gen_length / max(nfe, 1)),
                block_steps=np.asarray(out.block_steps).tolist(), threshold=opts.threshold, steps=opts.steps,
                gen_length=opts.gen_length, block_length=opts.block_length,
            ))
    return results
