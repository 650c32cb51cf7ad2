"""Streaming sessions: one KV cache that grows as input arrives, replies decoded on demand.

A session holds everything seen so far (system prompt, video frames, user turns, its own
replies) in one static-shape KV cache. `ingest` appends a chunk by prefill at the next
positions; `respond` decodes greedily (or by sampling) until a stop token, feeding every
emitted token, the stop token included, back into the cache so the conversation continues.
A reply whose first token is the stop token is empty: the model stays silent (noise turns).

    sess = StreamSession(params, config, StreamOptions(max_slots=1024, policy="tova", sink=16),
                         stop_ids=[eos])
    sess.ingest(system_ids)
    sess.ingest_embeds(frame_features)        # or sess.ingest_frames(pixels) with a VLM
    sess.ingest(user_turn_ids + assistant_header_ids)
    reply = sess.respond()                    # [] + [eos] = silence

Both steps are jitted with static shapes: a chunk is left-padded to a power-of-two bucket
(padding slots hold position -1 and are never attended), a reply loop is one
lax.while_loop. With `policy="none"` the cache must hold the whole stream; with "window"
(the most recent slots) or "tova" (the slots the newest query attended to most, Oren et al.
2024) the session evicts, before a chunk or a reply that would not fit, just enough slots
to make room. `sink` positions at the start of the stream (system prompt; StreamingLLM's
attention sinks) are never evicted. Evicted tokens keep nothing; kept tokens keep their
original rotary positions, so memory is fixed whatever the stream's length and, while the
stream fits, the output equals the unbounded session's exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import SamplingParams, is_stop, needs_long_switch, sample_logits
from latent_jax.decoding.tova import keep_top, token_scores
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache
from latent_jax.models.multimodal import VisionLanguageModel

Array = jax.Array
POLICIES = ("none", "window", "tova")


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """Static session settings (hashable; a jit static argument).

    max_slots: KV slots per layer (the whole memory of the session); policy: none | window |
    tova (what to evict when a chunk or a reply would not fit); sink: stream positions
    [0, sink) never evicted; max_new_tokens: the longest reply; min_chunk: the smallest
    ingest bucket (chunks are padded to a power of two >= min_chunk, at most max_chunk;
    longer inputs are split)."""

    max_slots: int = 2048
    policy: str = "none"
    sink: int = 0
    max_new_tokens: int = 64
    min_chunk: int = 8
    max_chunk: int = 64

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r}; use one of {', '.join(POLICIES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
        if not 1 <= self.min_chunk <= self.max_chunk:
            raise ValueError(f"need 1 <= min_chunk ({self.min_chunk}) <= max_chunk ({self.max_chunk})")
        room = max(self.max_chunk, self.max_new_tokens)
        if self.policy != "none" and self.max_slots < self.sink + 2 * room:
            raise ValueError(
                f"max_slots={self.max_slots} is too small for policy={self.policy!r}: it needs sink + "
                f"2 * max(max_chunk, max_new_tokens) = {self.sink + 2 * room}; raise max_slots or lower max_chunk")
        if self.max_slots < room:
            raise ValueError(f"max_slots={self.max_slots} < max(max_chunk, max_new_tokens) = {room}; raise max_slots")

    def bucket(self, n: int) -> int:
        """Padded width of a chunk of n <= max_chunk tokens."""
        b = self.min_chunk
        while b < n:
            b *= 2
        return min(b, self.max_chunk)


@flax.struct.dataclass
class StreamState:
    """cache (slots: max_slots); scores (L, B, S) each slot's importance from the newest query
    (TOVA); next_pos (B,) the position the next token takes; logits (B, V) the next-token
    logits after everything seen; rng."""

    cache: KVCache
    scores: Array
    next_pos: Array
    logits: Array
    rng: Array


@flax.struct.dataclass
class Reply:
    """tokens (B, max_new) the reply, the stop token included, pad after; lengths (B,)."""

    tokens: Array
    lengths: Array


def init_state(config: ModelConfig, opts: StreamOptions, batch: int = 1, rng: Array | None = None,
               cache_dtype=None) -> StreamState:
    """An empty session: no token seen, every slot empty."""
    cache = KVCache.init(config, batch, opts.max_slots, cache_dtype)
    return StreamState(
        cache=cache,
        scores=jnp.zeros(cache.pos.shape, jnp.float32),
        next_pos=jnp.zeros((batch,), jnp.int32),
        logits=jnp.zeros((batch, config.vocab_size), jnp.float32),
        rng=jax.random.PRNGKey(0) if rng is None else rng,
    )


# ------------------------------------------------------------------------- eviction
def eviction_scores(state: StreamState, opts: StreamOptions) -> Array:
    """(L, B, S): higher = keep. window: the slot's position (recent first); tova: the newest
    query's attention. Empty slots lowest, sink positions highest."""
    pos = state.cache.pos
    s = pos.astype(jnp.float32) if opts.policy == "window" else state.scores
    s = jnp.where(pos >= 0, s, -2.0)
    if opts.sink:
        s = jnp.where((pos >= 0) & (pos < opts.sink), jnp.finfo(jnp.float32).max, s)
    return s


def make_room(state: StreamState, n: int, opts: StreamOptions) -> StreamState:
    """Traceable: when fewer than n slots are free, keep the max_slots - n best slots (by
    `eviction_scores`, in slot order) so that the next n tokens fit. policy 'none' never evicts
    (the host-side session refuses a stream that does not fit)."""
    if opts.policy == "none":
        return state
    S = opts.max_slots
    keep = S - n

    def evict(s: StreamState) -> StreamState:
        sc = eviction_scores(s, opts)
        _, idx = jax.lax.top_k(sc, keep)
        idx = jnp.sort(idx, axis=-1)
        cache = keep_top(s.cache, sc, keep).pad_slots(n).replace(end=jnp.asarray(keep, jnp.int32))
        scores = jnp.take_along_axis(s.scores, idx, axis=-1)
        scores = jnp.pad(scores, [(0, 0), (0, 0), (0, n)])
        return s.replace(cache=cache, scores=scores)

    return jax.lax.cond(state.cache.end + n > S, evict, lambda s: s, state)


# --------------------------------------------------------------------------- ingest
def _forward(params, config: ModelConfig, state: StreamState, embeds: Array, mask: Array) -> StreamState:
    """Append embeds (B, C, D) with mask (B, C) (left padding: 0 before the real tokens) at the
    next positions; logits and scores from the newest real query (a row with no real token
    keeps its logits)."""
    model = Decoder(config)
    valid = mask.astype(bool)
    positions = state.next_pos[:, None] + jnp.cumsum(valid, axis=-1) - 1
    positions = jnp.maximum(positions, 0).astype(jnp.int32)
    out = model.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask.astype(jnp.int32),
                      positions=positions, cache=state.cache)
    any_real = jnp.any(valid, axis=-1)
    logits = jnp.where(any_real[:, None], out.logits[:, -1], state.logits)
    L, B, H = out.attn_last.shape[:3]
    hw = jnp.full((B, L, H), 1.0 / H, jnp.float32)
    scores = token_scores(out.attn_last, out.cache.pos, hw, True)
    scores = jnp.where(any_real[None, :, None], scores, state.scores)
    return state.replace(cache=out.cache, scores=scores, logits=logits,
                         next_pos=state.next_pos + jnp.sum(valid, axis=-1).astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("config", "opts"), donate_argnames=("state",))
def ingest_embeds(params: dict, state: StreamState, embeds: Array, mask: Array, *, config: ModelConfig,
                  opts: StreamOptions) -> StreamState:
    """Append a left-padded chunk of embeddings (B, C, D) (mask (B, C)), evicting first when
    it would not fit (bounded policies)."""
    state = make_room(state, embeds.shape[1], opts)
    return _forward(params, config, state, embeds, mask)


@functools.partial(jax.jit, static_argnames=("config", "opts"), donate_argnames=("state",))
def ingest_ids(params: dict, state: StreamState, ids: Array, mask: Array, *, config: ModelConfig,
               opts: StreamOptions) -> StreamState:
    """Append a left-padded chunk of token ids (B, C) (mask (B, C))."""
    state = make_room(state, ids.shape[1], opts)
    embeds = Decoder(config).apply({"params": params}, ids, method="embed")
    return _forward(params, config, state, embeds, mask)


# -------------------------------------------------------------------------- respond
@functools.partial(jax.jit, static_argnames=("config", "opts", "top_k", "pad_id"), donate_argnames=("state",))
def respond(params: dict, state: StreamState, sp: SamplingParams, stop_ids: Array, *, config: ModelConfig,
            opts: StreamOptions, top_k: int = 0, pad_id: int = 0) -> tuple[StreamState, Reply]:
    """Decode from the session's logits until every row emitted a stop token or max_new_tokens:
    one lax.while_loop, each emitted token (the stop token included) written to the cache.
    A reply of length 1 whose token is a stop token is silence."""
    M = opts.max_new_tokens
    B = state.next_pos.shape[0]
    state = make_room(state, M, opts)
    model = Decoder(config)

    def cond(c):
        i, s, toks, lens, done = c
        return (i < M) & ~jnp.all(done)

    def body(c):
        i, s, toks, lens, done = c
        rng, sub = jax.random.split(s.rng)
        tok = jnp.where(done, pad_id, sample_logits(s.logits, sub, sp, top_k))
        emb = model.apply({"params": params}, tok[:, None], method="embed")
        s = _forward(params, config, s.replace(rng=rng), emb, (~done)[:, None])
        toks = toks.at[:, i].set(tok)
        lens = lens + (~done).astype(jnp.int32)
        return i + 1, s, toks, lens, done | is_stop(tok, stop_ids)

    init = (jnp.int32(0), state, jnp.full((B, M), pad_id, jnp.int32), jnp.zeros((B,), jnp.int32),
            jnp.zeros((B,), bool))
    _, state, toks, lens, _ = jax.lax.while_loop(cond, body, init)
    return state, Reply(tokens=toks, lengths=lens)


# ------------------------------------------------------------------------- session
class StreamSession:
    """A host-side handle on one jitted session (batch 1 unless `batch` is given): pads chunks
    to buckets, splits long inputs, tracks how many slots are used and refuses (policy 'none')
    a stream that would overflow the cache, with the fix in the message.

    For a vision-language model pass `vlm` (VLMConfig) and the full VLM params: `ingest_frames`
    runs the vision tower (+ HiCo merging with hico_tokens_per_frame) and appends the frame
    tokens; the language model's params are params['language_model']."""

    def __init__(self, params: dict, config: ModelConfig | None = None, opts: StreamOptions = StreamOptions(), *,
                 stop_ids: Sequence[int] | None = None, sp: SamplingParams | None = None, top_k: int = 0,
                 pad_id: int | None = None, vlm=None, hico_tokens_per_frame: int = 0, hico_clip_frames: int = 4,
                 batch: int = 1, seed: int = 0):
        if vlm is not None:
            self.vlm, self.vlm_params, config = vlm, params, vlm.text
            params = params["language_model"]
        elif config is None:
            raise ValueError("StreamSession needs a ModelConfig (text decoders) or vlm=VLMConfig")
        else:
            self.vlm, self.vlm_params = None, None
        self.params, self.config, self.opts = params, config, opts
        stops = list(config.eos_token_id) if stop_ids is None else list(stop_ids)
        if not stops:
            raise ValueError("no stop token: pass stop_ids (e.g. the chat template's end-of-turn id)")
        self.stop_ids = jnp.asarray(stops, jnp.int32)
        self._stops = set(int(s) for s in stops)
        self.sp = sp or SamplingParams.make()
        self.top_k = int(top_k)
        self.pad_id = int(pad_id if pad_id is not None else (config.pad_token_id or 0))
        self.batch = int(batch)
        self.hico_tokens_per_frame = int(hico_tokens_per_frame)
        self.hico_clip_frames = int(hico_clip_frames)
        self.seed = int(seed)
        self._frame_fn = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: an empty cache (compiled steps are kept)."""
        self.state = init_state(self.config, self.opts, self.batch, jax.random.PRNGKey(self.seed),
                                self.config.jnp_dtype)
        self.tokens_seen = 0  # stream positions used (real tokens)
        self.slots_used = 0  # cache slots written since the last eviction (padding included)
        self.evictions = 0

    # -------------------------------------------------------------- bookkeeping
    def _reserve(self, n: int) -> None:
        cfg = self.config
        if needs_long_switch(cfg, self.tokens_seen + n + 1):
            raise ValueError(
                f"the stream reaches position {self.tokens_seen + n} beyond rope_original_max_position_embeddings="
                f"{cfg.rope_original_max_position_embeddings} of this longrope model, where the cache would need "
                "re-encoding with the long factors; start a new session (or use a model without longrope)")
        S = self.opts.max_slots
        if self.slots_used + n > S:
            if self.opts.policy == "none":
                raise ValueError(
                    f"stream overflows the session cache: {self.slots_used} + {n} slots > max_slots={S}; raise "
                    "max_slots or bound the cache with policy='window' or 'tova'")
            self.slots_used = S - n
            self.evictions += 1
        self.slots_used += n

    def _chunks(self, n: int):
        step = self.opts.max_chunk
        for a in range(0, n, step):
            yield a, min(n, a + step)

    # -------------------------------------------------------------------- input
    def ingest(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append token ids: (n,) for a batch-1 session, or (B, n) with pad_id-free rows."""
        arr = np.asarray(ids, np.int32)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.shape[0] != self.batch:
            raise ValueError(f"ingest got {arr.shape[0]} rows for a session of batch {self.batch}")
        bad = arr[(arr < 0) | (arr >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})")
        for a, b in self._chunks(arr.shape[1]):
            n = b - a
            w = self.opts.bucket(n)
            ids_p = np.full((self.batch, w), self.pad_id, np.int32)
            mask = np.zeros((self.batch, w), np.int32)
            ids_p[:, w - n:] = arr[:, a:b]
            mask[:, w - n:] = 1
            self._reserve(w)
            self.state = ingest_ids(self.params, self.state, jnp.asarray(ids_p), jnp.asarray(mask),
                                    config=self.config, opts=self.opts)
            self.tokens_seen += n

    def ingest_embeds(self, embeds) -> None:
        """Append embedding rows: (n, D) for a batch-1 session or (B, n, D) (video tokens)."""
        e = jnp.asarray(embeds)
        e = e[None] if e.ndim == 2 else e
        if e.shape[0] != self.batch or e.shape[-1] != self.config.hidden_size:
            raise ValueError(f"ingest_embeds got shape {tuple(e.shape)}; expected ({self.batch}, n, "
                             f"{self.config.hidden_size})")
        for a, b in self._chunks(e.shape[1]):
            n = b - a
            w = self.opts.bucket(n)
            part = jnp.pad(e[:, a:b], [(0, 0), (w - n, 0), (0, 0)]).astype(self.config.jnp_dtype)
            mask = jnp.asarray(np.pad(np.ones((self.batch, n), np.int32), [(0, 0), (w - n, 0)]))
            self._reserve(w)
            self.state = ingest_embeds(self.params, self.state, part, mask, config=self.config, opts=self.opts)
            self.tokens_seen += n

    def frame_features(self, frames) -> jax.Array:
        """Video tokens (F * tokens_per_frame, D) of frames (F, 3, S, S) through the vision tower,
        projector and (hico_tokens_per_frame > 0) HiCo merging over hico_clip_frames frames."""
        if self.vlm is None:
            raise ValueError("ingest_frames needs a vision-language session (StreamSession(..., vlm=VLMConfig))")
        if self._frame_fn is None:
            model, tpf, cf = VisionLanguageModel(self.vlm), self.hico_tokens_per_frame or None, self.hico_clip_frames
            self._frame_fn = jax.jit(lambda p, f: model.apply({"params": p}, f, tpf, cf, method="video_features"))
        return self._frame_fn(self.vlm_params, jnp.asarray(frames))

    def ingest_frames(self, frames) -> int:
        """Append video frames (F, 3, S, S) (one tile / global crop each); returns tokens added."""
        feats = self.frame_features(frames)
        self.ingest_embeds(feats)
        return int(feats.shape[0])

    # ------------------------------------------------------------------- output
    def respond(self) -> list[list[int]]:
        """Decode a reply per row, stop token included ([stop] alone = silence)."""
        self._reserve(self.opts.max_new_tokens)
        self.state, rep = respond(self.params, self.state, self.sp, self.stop_ids, config=self.config,
                                  opts=self.opts, top_k=self.top_k, pad_id=self.pad_id)
        toks, lens = np.asarray(rep.tokens), np.asarray(rep.lengths)
        out = [toks[i, : lens[i]].tolist() for i in range(self.batch)]
        # reply slots actually written; the rest of the reservation is free again
        self.slots_used -= self.opts.max_new_tokens - int(lens.max())
        self.tokens_seen += int(lens.max())
        return out

    def is_silence(self, reply: Sequence[int]) -> bool:
        """True when the reply is a stop token alone (or nothing)."""
        return len(reply) == 0 or (len(reply) == 1 and int(reply[0]) in self._stops)

    def strip(self, reply: Sequence[int]) -> list[int]:
        """The reply without its final stop token."""
        r = list(reply)
        return r[:-1] if r and int(r[-1]) in self._stops else r
