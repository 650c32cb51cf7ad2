"""TOVA: Token Omission Via Attention (Oren et al. 2024, "Transformers are Multi-State RNNs").

A fixed-size KV cache per layer. After every decode step the cache holds one slot too many
(the newest token was just written); the slot with the lowest attention weight from the
newest query is dropped, so the cache never grows. Scores are the attention probabilities
of the newest query averaged over the query heads (or weighted per head), and K, V and the
rotary position are gathered with the same indices for every KV head (GQA). Kept tokens
keep their original rotary positions (KVCache.pos), so nothing is re-rotated.

    opts = TovaOptions(cache_size=64)
    out = tova_generate(params, ids, mask, rng, SamplingParams.make(), stop_ids,
                        config=config, max_new_tokens=256, opts=opts)

A prompt longer than the budget is prefilled whole (one cache of the prompt's length) and
then cut to the budget by the last prompt token's attention. Generation is one jitted
lax.while_loop over a cache of cache_size + 1 slots: memory does not depend on the number
of generated tokens.

Options (the seed's TOVACompression): fixed `cache_size`; `dynamic_sizing` with
`cache_size_factor`, `min_cache_size`, `max_cache_size` (budget = clip(factor * (prompt +
new tokens))); `per_layer` decisions (each layer its own kept set) or one shared decision
from the layer-averaged scores; `head_weight_strategy` "mean" or "weighted" (fixed / learned
per-head weights passed as `head_weights`, optionally momentum-updated during generation
towards the heads whose attention is most focused, `head_weight_update="momentum"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import DecodeState, SamplingParams, emit_token, needs_long_switch, sample_logits
from latent_jax.decoding.strategies import batches, bucket_batch, decode_text, pad_batch, stop_ids_from
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TovaOptions:
    """Static TOVA settings (hashable; a jit static argument)."""

    cache_size: int = 512
    per_layer: bool = True
    head_weight_strategy: str = "mean"  # mean | weighted
    head_weight_update: str = "none"  # none | momentum (only with weighted)
    learning_rate: float = 0.01
    weight_momentum: float = 0.9
    entropy_weight: float = 0.3
    dynamic_sizing: bool = False
    cache_size_factor: float = 0.5
    min_cache_size: int = 128
    max_cache_size: int = 2048
    recency_bias: float = 0.0
    recency_window: int = 32

    def __post_init__(self):
        if self.head_weight_strategy not in ("mean", "weighted"):
            raise ValueError(f"head_weight_strategy={self.head_weight_strategy!r}; use 'mean' or 'weighted'")
        if self.head_weight_update not in ("none", "momentum"):
            raise ValueError(f"head_weight_update={self.head_weight_update!r}; use 'none' or 'momentum'")
        if self.head_weight_update == "momentum" and self.head_weight_strategy != "weighted":
            raise ValueError("head_weight_update='momentum' needs head_weight_strategy='weighted'")
        if not self.dynamic_sizing and self.cache_size < 1:
            raise ValueError(f"cache_size={self.cache_size} must be >= 1")
        if self.recency_bias < 0 or self.recency_window < 1:
            raise ValueError(f"recency_bias={self.recency_bias} must be >= 0 and recency_window={self.recency_window} >= 1")
        if self.dynamic_sizing and not (1 <= self.min_cache_size <= self.max_cache_size):
            raise ValueError("need 1 <= min_cache_size <= max_cache_size for dynamic_sizing")

    def budget(self, seq_len: int) -> int:
        """Cache slots kept for a sequence of `seq_len` tokens (prompt + new tokens)."""
        if not self.dynamic_sizing:
            return self.cache_size
        return int(min(max(int(self.cache_size_factor * seq_len), self.min_cache_size), self.max_cache_size))


@flax.struct.dataclass
class TovaOutput:
    """tokens (B, max_new), lengths (B,), steps () decode forward passes after the prefill,
    cache the final pruned KVCache (cache_size + 1 slots), head_weights (B, L, H) final
    per-head weights, cache_size () the budget used."""

    tokens: Array
    lengths: Array
    steps: Array
    cache: KVCache
    head_weights: Array
    cache_size: Array


def token_scores(attn: Array, pos: Array, head_weights: Array, per_layer: bool, query_pos: Array | None = None,
                 recency_bias: float = 0.0, recency_window: int = 1) -> Array:
    """Importance of every cache slot: (L, B, S) from attn (L, B, H, S), slot positions
    pos (L, B, S) and per-head weights (B, L, H) (rows sum to 1). Empty slots score -1 so
    they are dropped first. With per_layer=False every layer gets the layer-averaged score.
    recency_bias > 0 adds recency_bias * max(0, 1 - age / recency_window) to each slot, age
    being how many positions it lies behind the newest query (query_pos (B,))."""
    w = jnp.transpose(head_weights, (1, 0, 2))[..., None]  # (L, B, H, 1)
    s = jnp.sum(attn.astype(jnp.float32) * w, axis=2)
    if not per_layer:
        # a slot index holds the same token in every layer when decisions are shared
        s = jnp.broadcast_to(jnp.mean(s, axis=0, keepdims=True), s.shape)
    if recency_bias:
        if query_pos is None:
            raise ValueError("recency_bias needs query_pos, the newest token's position per row")
        age = (query_pos[None, :, None] - pos).astype(jnp.float32)
        s = s + recency_bias * jnp.clip(1.0 - age / max(int(recency_window), 1), 0.0, 1.0)
    return jnp.where(pos >= 0, s, -1.0)


def keep_top(cache: KVCache, scores: Array, keep: int) -> KVCache:
    """A cache of `keep` slots holding the highest-scoring slots of `cache` per layer and row
    (K, V and positions gathered with the same indices for every KV head), in slot order."""
    _, idx = jax.lax.top_k(scores, keep)  # (L, B, keep)
    idx = jnp.sort(idx, axis=-1)
    return cache.take_slots(idx).replace(end=jnp.asarray(keep, jnp.int32))


def _pad_slots(cache: KVCache, slots: int) -> KVCache:
    return cache.pad_slots(slots - cache.slots)


def _momentum_update(w: Array, vel: Array, attn: Array, pos: Array, opts: TovaOptions) -> tuple[Array, Array]:
    """Move per-head weights (B, L, H) towards the heads whose newest-query attention is most
    focused (low entropy), blended with uniform by (1 - entropy_weight); heavy-ball update."""
    a = jnp.transpose(attn.astype(jnp.float32), (1, 0, 2, 3))  # (B, L, H, S)
    valid = jnp.transpose(pos >= 0, (1, 0, 2))[:, :, None, :]
    ent = -jnp.sum(jnp.where(valid & (a > 0), a * jnp.log(jnp.maximum(a, 1e-30)), 0.0), axis=-1)
    n = jnp.maximum(jnp.sum(valid, axis=-1), 2).astype(jnp.float32)
    focus = 1.0 - ent / jnp.log(n)  # 1 = all mass on one slot, 0 = uniform
    focus = focus / jnp.maximum(jnp.sum(focus, axis=-1, keepdims=True), 1e-9)
    H = w.shape[-1]
    target = opts.entropy_weight * focus + (1.0 - opts.entropy_weight) / H
    vel = opts.weight_momentum * vel + (target - w)
    w = jnp.maximum(w + opts.learning_rate * vel, 0.0)
    w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-9)
    return w, vel


def head_weights_for(config: ModelConfig, batch: int, opts: TovaOptions, head_weights: Array | None = None) -> Array:
    """Per-head weights (B, L, H), rows summing to 1: uniform for head_weight_strategy='mean' or
    when none are given, else head_weights (L, H) or (B, L, H) normalised."""
    L, H = config.num_hidden_layers, config.num_attention_heads
    if opts.head_weight_strategy == "mean" or head_weights is None:
        return jnp.full((batch, L, H), 1.0 / H, jnp.float32)
    hw = jnp.asarray(head_weights, jnp.float32)
    if hw.shape not in ((L, H), (batch, L, H)):
        raise ValueError(f"head_weights has shape {hw.shape}; expected ({L}, {H}) or ({batch}, {L}, {H})")
    hw = jnp.broadcast_to(hw, (batch, L, H))
    return hw / jnp.maximum(jnp.sum(hw, axis=-1, keepdims=True), 1e-9)


def tova_start(cache: KVCache, last_logits: Array, last_pos: Array, rng: Array, sp: SamplingParams,
               stop_ids: Array, head_weights: Array, *, cache_size: int, max_new_tokens: int, top_k: int,
               pad_id: int, prefill_scores: Array | None = None) -> DecodeState:
    """The TOVA state after a prefill that left the prompt in `cache` (slots [0, cache.end)):
    sample the first token from last_logits (B, V) at last_pos (B,). With prefill_scores
    (L, B, S) (the last prompt token's attention, from `token_scores`) a prompt longer than
    the budget is cut to cache_size slots now; without them (Coconut, whose right-padded
    prompt has no common last query) the whole prompt stays and the first decode step cuts
    it by the first answer token's attention."""
    C, S = int(cache_size), cache.slots
    if prefill_scores is not None:
        cache = _pad_slots(keep_top(cache, prefill_scores, min(C, S)), C + 1).replace(end=jnp.asarray(C, jnp.int32))
    else:
        cache = _pad_slots(cache, max(S, C) + 1).replace(end=jnp.asarray(S, jnp.int32))
    rng, sub = jax.random.split(rng)
    tok = sample_logits(last_logits, sub, sp, top_k)
    return DecodeState.start(cache, tok, last_pos, rng, stop_ids, max_new_tokens=max_new_tokens, pad_id=pad_id,
                             head_weights=head_weights, velocity=jnp.zeros_like(head_weights))


def tova_decode_loop(params: dict, state: DecodeState, sp: SamplingParams, stop_ids: Array, *, config: ModelConfig,
                     max_new_tokens: int, opts: TovaOptions, top_k: int, pad_id: int, cache_size: int) -> TovaOutput:
    """Traceable TOVA decode loop from `tova_start`: each step writes the new token into the
    spare slot, attends, and keeps the cache_size best slots by `token_scores`. A state whose
    cache is larger than cache_size + 1 (an uncut prompt) is cut by the first step, outside
    the while_loop, so the loop itself always carries cache_size + 1 slots."""
    model = Decoder(config)
    C = int(cache_size)

    def cond_fn(s: DecodeState):
        return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def body_fn(s: DecodeState) -> DecodeState:
        pos = s.pos + 1
        o = model.apply({"params": params}, s.tok[:, None], positions=pos[:, None], cache=s.cache)
        hw, vel = s.head_weights, s.velocity
        if opts.head_weight_update == "momentum":
            hw, vel = _momentum_update(hw, vel, o.attn_last, o.cache.pos, opts)
        sc = token_scores(o.attn_last, o.cache.pos, hw, opts.per_layer, pos, opts.recency_bias, opts.recency_window)
        cache = _pad_slots(keep_top(o.cache, sc, C), C + 1).replace(end=jnp.asarray(C, jnp.int32))
        nxt, tokens, lengths, done, rng = emit_token(o.logits[:, -1], s.rng, sp, top_k, s.step, s.done, s.tokens,
                                                     s.lengths, stop_ids, pad_id)
        return s.replace(step=s.step + 1, tok=nxt, cache=cache, pos=pos, done=done, tokens=tokens, lengths=lengths,
                         rng=rng, head_weights=hw, velocity=vel)

    if state.cache.slots != C + 1:
        def shrink(s: DecodeState) -> DecodeState:  # nothing left to decode: keep the most recent slots
            c = s.cache
            rec = jnp.where(c.pos >= 0, c.pos, -1).astype(jnp.float32)
            return s.replace(cache=_pad_slots(keep_top(c, rec, C), C + 1).replace(end=jnp.asarray(C, jnp.int32)))

        state = jax.lax.cond(cond_fn(state), body_fn, shrink, state)
    s = jax.lax.while_loop(cond_fn, body_fn, state)
    return TovaOutput(tokens=s.tokens, lengths=s.lengths, steps=s.step - 1, cache=s.cache,
                      head_weights=s.head_weights, cache_size=jnp.asarray(C, jnp.int32))


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "opts", "top_k", "cache_size"))
def tova_generate_jit(params, input_ids, attention_mask, rng, sp, stop_ids, head_weights, *, config, max_new_tokens,
                      opts, top_k, pad_id, cache_size, inputs_embeds=None):
    """The jitted TOVA generation for a fixed budget `cache_size` and normalised head_weights
    (B, L, H); `tova_generate` computes both and calls it (benchmarks lower it for memory
    analysis). inputs_embeds (B, T, D), when given, replace the token embeddings (VLM)."""
    model = Decoder(config)
    B, T = input_ids.shape
    # prefill the whole prompt, then cut to the budget by the last prompt token's attention
    out = model.apply({"params": params}, None if inputs_embeds is not None else input_ids,
                      attention_mask=attention_mask, cache=KVCache.init(config, B, T), inputs_embeds=inputs_embeds)
    last_pos = jnp.sum(attention_mask, axis=-1).astype(jnp.int32) - 1
    scores = token_scores(out.attn_last, out.cache.pos, head_weights, opts.per_layer, last_pos, opts.recency_bias,
                          opts.recency_window)
    kw = dict(max_new_tokens=max_new_tokens, top_k=top_k, pad_id=pad_id)
    state = tova_start(out.cache, out.logits[:, -1], last_pos, rng, sp, stop_ids, head_weights, cache_size=cache_size,
                       prefill_scores=scores, **kw)
    return tova_decode_loop(params, state, sp, stop_ids, config=config, opts=opts, cache_size=cache_size, **kw)


def tova_generate(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    rng: Array,
    sp: SamplingParams,
    stop_ids: Array,
    *,
    config: ModelConfig,
    max_new_tokens: int,
    opts: TovaOptions = TovaOptions(),
    head_weights: Array | None = None,
    top_k: int = 0,
    pad_id: int = 0,
    inputs_embeds: Array | None = None,
) -> TovaOutput:
    """Generate up to max_new_tokens for left-padded prompts (B, T) with a TOVA cache.

    head_weights: (L, H) or (B, L, H) per-head weights for head_weight_strategy='weighted'
    (normalised to sum 1 per layer); uniform when None. The budget is opts.budget(T +
    max_new_tokens) slots per layer (one more slot holds the newest token before eviction).
    inputs_embeds (B, T, D): prompt embeddings used instead of the ids' (image / video rows).
    """
    B, T = input_ids.shape
    check_longrope(config, T + max_new_tokens)
    hw = head_weights_for(config, B, opts, head_weights)
    C = opts.budget(T + max_new_tokens)
    return tova_generate_jit(params, jnp.asarray(input_ids), jnp.asarray(attention_mask), rng, sp,
                             jnp.asarray(stop_ids, jnp.int32), hw, config=config, max_new_tokens=max_new_tokens,
                             opts=opts, top_k=top_k, pad_id=pad_id, cache_size=C, inputs_embeds=inputs_embeds)


def check_longrope(config: ModelConfig, total_len: int) -> None:
    """TOVA cannot re-encode evicted tokens: refuse a longrope (Phi-3 / Phi-4) sequence that may
    cross original_max_position_embeddings."""
    if needs_long_switch(config, total_len):
        raise ValueError(
            f"TOVA: prompt + max_new_tokens = {total_len} crosses rope_original_max_position_embeddings="
            f"{config.rope_original_max_position_embeddings} of this longrope model, where its cache would need "
            "re-encoding with the long factors (evicted tokens are gone); lower max_new_tokens or the prompt length")


CACHE_POLICIES = ("full", "tova")


def tova_options_from_config(cache) -> TovaOptions | None:
    """The `cache` config block (configs/base.py) as TovaOptions, or None for policy 'full'.
    Keys: policy (full | tova), size, per_layer, head_weights (mean | weighted | momentum),
    recency_bias, recency_window, dynamic_sizing, cache_size_factor, min_cache_size,
    max_cache_size."""
    if cache is None:
        return None
    policy = str(cache.get("policy", "full"))
    if policy not in CACHE_POLICIES:
        raise ValueError(f"cache.policy={policy!r}; use one of {', '.join(CACHE_POLICIES)}")
    if policy == "full":
        return None
    hw = str(cache.get("head_weights", "mean"))
    if hw not in ("mean", "weighted", "momentum"):
        raise ValueError(f"cache.head_weights={hw!r}; use mean, weighted or momentum")
    return TovaOptions(
        cache_size=int(cache.get("size", 512)), per_layer=bool(cache.get("per_layer", True)),
        head_weight_strategy="mean" if hw == "mean" else "weighted",
        head_weight_update="momentum" if hw == "momentum" else "none",
        recency_bias=float(cache.get("recency_bias", 0.0)), recency_window=int(cache.get("recency_window", 32)),
        dynamic_sizing=bool(cache.get("dynamic_sizing", False)),
        cache_size_factor=float(cache.get("cache_size_factor", 0.5)),
        min_cache_size=int(cache.get("min_cache_size", 128)), max_cache_size=int(cache.get("max_cache_size", 2048)),
    )


# --------------------------------------------------------------------------------- CLI
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of --strategy tova."""
    g = parser.add_argument_group("tova")
    g.add_argument("--cache-size", type=int, default=512, help="TOVA: KV slots kept per layer")
    g.add_argument("--dynamic-sizing", action="store_true", help="TOVA: budget = factor * sequence length, clipped")
    g.add_argument("--cache-size-factor", type=float, default=0.5)
    g.add_argument("--min-cache-size", type=int, default=128)
    g.add_argument("--max-cache-size", type=int, default=2048)
    g.add_argument("--shared-decisions", action="store_true", help="TOVA: one kept set for all layers")
    g.add_argument("--head-weights", default="mean", choices=["mean", "weighted", "momentum"],
                   help="TOVA: average heads uniformly, by fixed weights, or momentum-updated weights")
    parser.set_defaults(temperature=0.0)


def options_from_args(args: argparse.Namespace) -> TovaOptions:
    hw = getattr(args, "head_weights", "mean")
    return TovaOptions(
        cache_size=getattr(args, "cache_size", 512),
        per_layer=not getattr(args, "shared_decisions", False),
        head_weight_strategy="mean" if hw == "mean" else "weighted",
        head_weight_update="momentum" if hw == "momentum" else "none",
        dynamic_sizing=getattr(args, "dynamic_sizing", False),
        cache_size_factor=getattr(args, "cache_size_factor", 0.5),
        min_cache_size=getattr(args, "min_cache_size", 128),
        max_cache_size=getattr(args, "max_cache_size", 2048),
    )


def run_cli(params: dict, config: ModelConfig, tokenizer, prompts: list[list[int]], args) -> list[dict]:
    """--strategy tova: one JSON-able dict per prompt, with the cache budget and its bytes."""
    opts = options_from_args(args)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    sp = SamplingParams.make(args.temperature, args.top_p)
    stops = np.asarray(stop_ids_from(args, config), np.int32)
    kw = dict(config=config, max_new_tokens=int(args.max_new_tokens), opts=opts, top_k=int(args.top_k), pad_id=pad)
    rng = jax.random.PRNGKey(int(args.seed))
    results = []
    for start, chunk in batches(prompts, int(args.batch_size)):
        rows = bucket_batch(len(chunk), int(args.batch_size))
        ids, mask = pad_batch(chunk, rows, pad)
        rng, sub = jax.random.split(rng)
        jax.block_until_ready(tova_generate(params, ids, mask, sub, sp, stops, **kw).tokens)  # compile
        t0 = time.perf_counter()
        out = tova_generate(params, ids, mask, sub, sp, stops, **kw)
        jax.block_until_ready(out.tokens)
        dt = time.perf_counter() - t0
        toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
        C = int(out.cache_size)
        for j, p in enumerate(chunk):
            new = toks[j, : lens[j]].tolist()
            results.append(dict(
                index=start + j, strategy="tova", input_ids=list(map(int, p)), output_ids=new,
                text=decode_text(tokenizer, new), num_new_tokens=len(new),
                tokens_per_s=len(new) / dt if dt > 0 else None, decode_s=dt, forward_passes=1 + int(out.steps),
                cache_size=C, cache_bytes_per_row=out.cache.nbytes() // rows, prompt_cut=len(p) > C,
            ))
    return results
