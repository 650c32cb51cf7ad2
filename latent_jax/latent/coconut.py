"""Continuous thought (Coconut, Hao et al. 2024, arXiv 2412.06769) as pure functions.

A batch is left-padded so that every row's first latent slot sits at column
`latent_start`; the columns `latent_start .. latent_start + num_latent - 1` are the thought
columns (a row with fewer latents has ordinary tokens there, `latent_mask` False).

    forward:  prefix [0, latent_start) runs once; its per-layer K/V leave the layer scan as
              outputs (Decoder return_kv: no cache is carried through the layers, whose
              backward would save it at every layer)
              lax.scan over the num_latent thought columns: at a latent slot the input
              embedding is the previous position's last-layer hidden state (after the final
              norm); elsewhere the token's embedding. The prefix cache is a scan constant,
              only the per-thought K/V buffer (num_latent slots) is carried, and each
              thought step is rematerialised, so the backward pass keeps O(num_latent) small
              buffers instead of num_latent copies of the full cache.
              the remaining tokens run teacher-forced against [prefix cache | thought K/V]
              (read-only segments); a cache for decoding is assembled only when asked for.
    loss:     mean next-token cross entropy over labels != -100 (labels aligned with
              input_ids, shifted inside, as transformers and the original code do), the LM
              head applied inside the loss over chunks of config.ce_chunk positions.
    generate: the same prefill + thought scan, then a lax.while_loop decode (batched, KV
              cached) with latent_jax.decoding.sampling.sample_logits; or (`coconut_diffusion_
              generate`) the answer decoded by masked diffusion reading the same cache.

`thought_norm="embed"` (off by default; the original feeds the hidden state back as is)
rescales every fed-back thought to the mean L2 norm of the token embedding rows. A final-
normed hidden state is typically tens of times larger than an embedding row (in the
embedded default's trained model 13.6 vs 0.57), so an unscaled thought dominates the
residual stream it enters; this option puts it on the scale of the inputs the model was
trained on. It applies alike in the scan, the naive reference and generation.

`feedback=False` is the "pause as thought" ablation: latent slots keep the `<|latent|>`
token's own (learned) embedding and there is no recurrence, so one ordinary forward pass.

Multimodal callers pass `embeds_override` (B, T, D) with `embeds_override_mask` (B, T):
those positions take the given embeddings (image / video features) instead of token
embeddings; everything else is unchanged.

`naive_coconut_logits` is the reference algorithm of the original implementation
(num_latent + 1 full forward passes without a cache, replacing the latent embeddings
after each pass); tests and benchmarks compare against it.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.diffusion import (
    DiffusionOptions,
    DiffusionOutput,
    diffusion_generate_after_prefix,
    forward_process,
)
from latent_jax.decoding.sampling import (
    DecodeState,
    GenerateOutput,
    SamplingParams,
    decode_loop,
    needs_long_switch,
    sample_logits,
)
from latent_jax.decoding.tova import TovaOptions, TovaOutput, head_weights_for, tova_decode_loop, tova_start
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache
from latent_jax.models.lm_head import (
    IGNORE_INDEX,
    logprob_and_argmax,
    map_head_chunks,
    masked_mean_nll,
    target_logprobs,
)

Array = jax.Array
LATENT_TOKENS = ("<|start-latent|>", "<|end-latent|>", "<|latent|>")


@flax.struct.dataclass
class CoconutOutput:
    """logits (B, T, V) float32 for every input position; hidden (B, T, D): the final-normed
    hidden states they are the LM head of (a chunked loss reads these and never forms the whole
    logits; unused logits are removed under jit); cache: the KV cache after the whole sequence
    (slots: T + extra_slots) or None when not requested."""

    logits: Array
    hidden: Array
    cache: KVCache | None


# ----------------------------------------------------------------------------- helpers
def input_embeddings(
    params: dict,
    input_ids: Array,
    config: ModelConfig,
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
) -> Array:
    """Token embeddings (B, T, D), with `embeds_override` at the positions where
    `embeds_override_mask` is True (multimodal prefixes)."""
    model = Decoder(config)
    emb = model.apply({"params": params}, input_ids, method=model.embed)
    if embeds_override is not None:
        if embeds_override_mask is None:
            raise ValueError("embeds_override needs embeds_override_mask (B, T) marking the replaced positions")
        emb = jnp.where(embeds_override_mask[..., None].astype(bool), embeds_override.astype(emb.dtype), emb)
    return emb


THOUGHT_NORMS = ("none", "embed")


def check_thought_norm(thought_norm: str) -> str:
    if thought_norm not in THOUGHT_NORMS:
        raise ValueError(f"thought_norm={thought_norm!r}; use one of {list(THOUGHT_NORMS)}")
    return thought_norm


def embedding_norm(params: dict) -> Array:
    """Mean L2 norm of the input embedding rows (float32 scalar, no gradient)."""
    table = params["embed_tokens"]["embedding"].astype(jnp.float32)
    return jax.lax.stop_gradient(jnp.mean(jnp.linalg.norm(table, axis=-1)))


def thought_target_norm(params: dict, thought_norm: str) -> Array | None:
    """The norm every thought is rescaled to (`"embed"`), or None (`"none"`: unchanged).
    Computed once per forward, outside the thought scan."""
    return None if check_thought_norm(thought_norm) == "none" else embedding_norm(params)


def _rescale(h: Array, target: Array | None) -> Array:
    if target is None:
        return h
    hf = h.astype(jnp.float32)
    norm = jnp.linalg.norm(hf, axis=-1, keepdims=True)
    return (hf * (target / jnp.maximum(norm, 1e-6))).astype(h.dtype)


def thought_input(h: Array, params: dict, thought_norm: str) -> Array:
    """The input embedding a thought becomes: the hidden state itself (`"none"`, as the
    original) or rescaled per row to the mean embedding norm (`"embed"`)."""
    return _rescale(h, thought_target_norm(params, thought_norm))


def positions_from_mask(attention_mask: Array) -> Array:
    """Rotary positions (B, T) for left-padded rows: cumsum(mask) - 1, clamped at 0."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _empty_cache_like(config: ModelConfig, batch: int, slots: int, dtype) -> KVCache:
    return KVCache.init(config, batch, slots, dtype)


# ----------------------------------------------------------------------------- forward
def coconut_forward(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    position_ids: Array | None = None,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    feedback: bool = True,
    extra_slots: int | None = None,
    remat_thoughts: bool = True,
    thought_norm: str = "none",
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
) -> CoconutOutput:
    """Continuous-thought forward over a (B, T) batch aligned at `latent_start`.

    Returns logits for every position. With `extra_slots` (an int), also returns the KV
    cache of the whole sequence with that many empty slots appended (for decoding).
    Gradients flow through every thought.
    """
    cfg = config
    model = Decoder(cfg)
    p = {"params": params}
    B, T = input_ids.shape
    P, n = int(latent_start), int(num_latent)
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    attention_mask = attention_mask.astype(jnp.int32)
    emb = input_embeddings(params, input_ids, cfg, embeds_override, embeds_override_mask)
    cdt = cfg.jnp_dtype
    want_cache = extra_slots is not None
    extra = int(extra_slots or 0)

    if n == 0 or not feedback:
        # no thoughts, or pause-as-thought: latents are ordinary (learned) token embeddings
        cache = _empty_cache_like(cfg, B, T + extra, cdt) if want_cache else None
        out = model.apply(p, inputs_embeds=emb, attention_mask=attention_mask, positions=position_ids, cache=cache)
        return CoconutOutput(logits=out.logits, hidden=out.hidden, cache=out.cache)

    if P < 1 or P + n > T:
        raise ValueError(
            f"latent_start={P}, num_latent={n} do not fit a sequence of length {T}; the first latent "
            "needs a preceding token (the question and <|start-latent|>)"
        )

    # 1. prefix, run once; its per-layer K/V come out of the layer scan (no cache is threaded
    #    through the layers, so the backward does not save a whole cache at every layer)
    pre = model.apply(
        p,
        inputs_embeds=emb[:, :P],
        attention_mask=attention_mask[:, :P],
        positions=position_ids[:, :P],
        return_kv=True,
    )
    prefix_cache = pre.cache  # scan constant

    # 2. thoughts: scan over columns P .. P+n-1 carrying the previous hidden state and a
    #    small K/V buffer for the thought slots only; the prefix cache is a read-only scan
    #    constant that attention reads in place (never concatenated or copied per thought).
    #    Each step attends [prefix | thoughts so far | itself] and writes its K/V into the buffer.
    buf0 = _empty_cache_like(cfg, B, n, cdt)
    cols = slice(P, P + n)
    xs = (
        jnp.arange(n, dtype=jnp.int32),
        jnp.swapaxes(emb[:, cols], 0, 1),  # (n, B, D)
        jnp.swapaxes(latent_mask[:, cols].astype(bool), 0, 1),  # (n, B)
        jnp.swapaxes(attention_mask[:, cols], 0, 1),
        jnp.swapaxes(position_ids[:, cols], 0, 1),
    )

    target = thought_target_norm(params, thought_norm)  # loop-invariant: not recomputed per thought

    def step(carry, x):
        h_prev, buf = carry
        i, tok_emb, is_latent, m, pos = x
        th = _rescale(h_prev, target)
        inp = jnp.where(is_latent[:, None], th.astype(tok_emb.dtype), tok_emb)[:, None]
        o = model.apply(p, inputs_embeds=inp, attention_mask=m[:, None], positions=pos[:, None],
                        prefix_cache=(prefix_cache, buf), return_kv=True)
        h = o.hidden[:, 0]
        return (h, buf.write_slots(o.cache, i)), h

    if remat_thoughts:
        step = jax.checkpoint(step, prevent_cse=True)
    h0 = pre.hidden[:, -1]
    (_, thoughts), hs = jax.lax.scan(step, (h0, buf0), xs)
    thought_hidden = jnp.swapaxes(hs, 0, 1)  # (B, n, D)

    # 3. the rest, teacher-forced against [prefix | thoughts] (read-only segments)
    rest = T - P - n
    hidden = [pre.hidden, thought_hidden]
    parts = [prefix_cache, thoughts]
    if rest > 0:
        suf = model.apply(
            p,
            inputs_embeds=emb[:, P + n :],
            attention_mask=attention_mask[:, P + n :],
            positions=position_ids[:, P + n :],
            prefix_cache=(prefix_cache, thoughts),
            return_kv=True,
        )
        hidden.append(suf.hidden)
        parts.append(suf.cache)
    hidden = jnp.concatenate(hidden, axis=1)
    cache = None
    if want_cache:  # decoding continues in one cache of T + extra_slots slots
        cache = KVCache.concat_slots(parts, T).pad_slots(extra)
    return CoconutOutput(logits=model.apply(p, hidden, method=model.head), hidden=hidden, cache=cache)


def masked_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """(mean next-token CE over labels != -100, number of such tokens). labels are aligned
    with the inputs: logits[:, t] predicts labels[:, t + 1]."""
    return masked_mean_nll(target_logprobs(logits[:, :-1], labels[:, 1:]), labels[:, 1:])


def _set_member_logprobs(logp: Array, sets: Array) -> Array:
    """log p of each member of sets (B, T, K) (0 where padded) from log-probabilities (B, T, V)."""
    return jnp.take_along_axis(logp, jnp.where(sets != IGNORE_INDEX, sets, 0), axis=-1)


def _set_loss_terms(lp: Array, argmax: Array, sets: Array, kind: str) -> tuple[Array, Array, Array]:
    """set_cross_entropy's (summed loss, labelled positions, argmax hits) from the members'
    log-probabilities lp (B, T, K) and the argmax (B, T), sets aligned with them."""
    member = sets != IGNORE_INDEX
    n = jnp.sum(member, -1)
    if kind == "uniform":
        nll = -jnp.sum(jnp.where(member, lp, 0.0), -1) / jnp.maximum(n, 1)
    elif kind == "sum":
        nll = -jax.nn.logsumexp(jnp.where(member, lp, -jnp.inf), axis=-1)
    else:
        raise ValueError(f"set_loss={kind!r}; use 'uniform' or 'sum'")
    has = n > 0
    hit = jnp.any(member & (sets == argmax[..., None]), -1)
    return jnp.sum(jnp.where(has, nll, 0.0)), jnp.sum(has), jnp.sum(hit & has)


def set_cross_entropy(logits: Array, label_sets: Array, kind: str = "uniform") -> tuple[Array, Array, Array]:
    """(summed loss, number of labelled positions, number whose argmax is in the set) of
    set-valued labels (B, T, K), members padded with -100, aligned as `labels` (logits[:, t]
    predicts the set at t + 1). kind "uniform": cross-entropy to the uniform distribution over
    the set, -mean_k log p(k); "sum": -log sum_k p(k)."""
    lg = logits[:, :-1].astype(jnp.float32)
    sets = label_sets[:, 1:]
    lp = _set_member_logprobs(jax.nn.log_softmax(lg, axis=-1), sets)
    return _set_loss_terms(lp, jnp.argmax(lg, -1), sets, kind)


def coconut_loss(
    params: dict,
    batch: dict,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    feedback: bool = True,
    remat_thoughts: bool = True,
    thought_norm: str = "none",
    set_loss: str = "uniform",
) -> tuple[Array, dict]:
    """(loss, aux) for a batch dict with input_ids, attention_mask, labels, latent_mask and
    optionally position_ids, embeds_override, embeds_override_mask and label_sets (set-valued
    labels, `set_cross_entropy` of kind `set_loss`; each labelled set counts as one token of
    the mean). aux: n_tokens, token_accuracy (next-token accuracy on labelled positions; a set
    is right when its argmax is a member). The LM head runs inside the loss over chunks of
    config.ce_chunk positions (models.lm_head.map_head_chunks)."""
    out = coconut_forward(
        params,
        batch["input_ids"],
        batch["attention_mask"],
        batch["latent_mask"],
        batch.get("position_ids"),
        config=config,
        latent_start=latent_start,
        num_latent=num_latent,
        feedback=feedback,
        remat_thoughts=remat_thoughts,
        thought_norm=thought_norm,
        embeds_override=batch.get("embeds_override"),
        embeds_override_mask=batch.get("embeds_override_mask"),
    )
    lb = batch["labels"][:, 1:]
    sets = batch["label_sets"][:, 1:] if "label_sets" in batch else None

    def per_token(lg, y, *s):
        logp = jax.nn.log_softmax(lg, axis=-1)
        tok = jnp.take_along_axis(logp, jnp.where(y == IGNORE_INDEX, 0, y)[..., None], axis=-1)[..., 0]
        res = (tok, jnp.argmax(lg, -1).astype(jnp.int32))
        return res + ((_set_member_logprobs(logp, s[0]),) if s else ())

    res = map_head_chunks(params, config, out.hidden[:, :-1], per_token, lb, *(() if sets is None else (sets,)))
    loss, count = masked_mean_nll(res[0], lb)
    valid = lb != IGNORE_INDEX
    correct = jnp.sum((res[1] == lb) & valid)
    if sets is not None:
        s_sum, s_n, s_hit = _set_loss_terms(res[2], res[1], sets, set_loss)
        loss = (loss * count + s_sum) / jnp.maximum(count + s_n, 1)
        count, correct = count + s_n, correct + s_hit
    return loss, {"n_tokens": count, "token_accuracy": correct / jnp.maximum(count, 1)}


def coconut_diffusion_loss(
    params: dict,
    batch: dict,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    mask_id: int,
    feedback: bool = True,
    remat_thoughts: bool = True,
    thought_norm: str = "none",
    eps: float = 1e-3,
    shift: bool = True,
) -> tuple[Array, dict]:
    """The masked-diffusion objective (LLaDA SFT form) on the labelled span after the thoughts,
    the training side of `coconut_diffusion_generate`. Per row t ~ U(0, 1) (from the row's
    `noise_seed` (B,) uint32 in `batch`), each labelled token masked with p = (1 - eps) t + eps;
    question and thoughts run unchanged (causal attention: the thoughts never see the answer).
    Loss: per row the sum over masked tokens of CE / p divided by the row's labelled length,
    averaged over rows. shift=True reads position i's prediction at i - 1 (the causal LM's own
    next-token head; decode with causal=True, shift_logits=True); False at i itself."""
    ids, labels = batch["input_ids"], batch["labels"]
    answer = labels != IGNORE_INDEX
    keys = jax.vmap(jax.random.PRNGKey)(batch["noise_seed"].astype(jnp.uint32))
    noisy, masked, p_mask = jax.vmap(lambda k, r, m: tuple(x[0] for x in forward_process(r[None], k, mask_id, eps,
                                                                                          m[None])))(keys, ids, answer)
    out = coconut_forward(
        params, noisy, batch["attention_mask"], batch["latent_mask"], batch.get("position_ids"), config=config,
        latent_start=latent_start, num_latent=num_latent, feedback=feedback, remat_thoughts=remat_thoughts,
        thought_norm=thought_norm, embeds_override=batch.get("embeds_override"),
        embeds_override_mask=batch.get("embeds_override_mask"),
    )
    hidden = out.hidden[:, :-1] if shift else out.hidden
    tgt, m, p = (ids[:, 1:], masked[:, 1:], p_mask[:, 1:]) if shift else (ids, masked, p_mask)
    logp, argmax = map_head_chunks(params, config, hidden, logprob_and_argmax, tgt)
    ce = -logp
    ans_len = jnp.maximum(jnp.sum(answer, axis=-1, keepdims=True), 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(m, ce / p, 0.0) / ans_len) / ids.shape[0]
    n = jnp.maximum(jnp.sum(m), 1)
    acc = jnp.sum(m & (argmax == tgt)) / n
    return loss, {"n_tokens": jnp.sum(m), "token_accuracy": acc, "mask_frac": jnp.sum(masked) / jnp.maximum(
        jnp.sum(answer), 1)}


def diffusion_as_generate_output(out: DiffusionOutput, stop_ids: Array, pad_id: int = 0) -> GenerateOutput:
    """A diffusion answer in generate's form: tokens cut after the first stop token (pad_id
    after it), lengths including the stop token, steps = the diffusion forward passes (what
    GenerateOutput.steps counts: passes after the prefill)."""
    toks = out.tokens
    G = toks.shape[1]
    stop = jnp.any(toks[..., None] == jnp.asarray(stop_ids, jnp.int32).reshape(1, 1, -1), axis=-1)
    first = jnp.where(jnp.any(stop, axis=1), jnp.argmax(stop, axis=1) + 1, G).astype(jnp.int32)
    keep = jnp.arange(G)[None, :] < first[:, None]
    return GenerateOutput(tokens=jnp.where(keep, toks, pad_id), lengths=first, steps=out.forward_passes)


@functools.partial(jax.jit, static_argnames=("config", "latent_start", "num_latent", "k", "thought_norm"))
def thought_topk(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    k: int = 5,
    thought_norm: str = "none",
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
) -> tuple[Array, Array]:
    """What each continuous thought decodes to through the LM head (the probing
    analysis of the Coconut paper): (ids, probs), each (B, num_latent, k). Entry i is the
    hidden state fed into latent slot i (the state at the position before it); rows with
    fewer latents have ordinary tokens in their last slots (`latent_mask` False there)."""
    out = coconut_forward(
        params, input_ids, attention_mask, latent_mask, config=config, latent_start=latent_start,
        num_latent=num_latent, remat_thoughts=False, thought_norm=thought_norm,
        embeds_override=embeds_override, embeds_override_mask=embeds_override_mask,
    )
    lg = out.logits[:, latent_start - 1 : latent_start - 1 + num_latent]
    probs, ids = jax.lax.top_k(jax.nn.softmax(lg, axis=-1), k)
    return ids.astype(jnp.int32), probs


# ----------------------------------------------------------------------------- reference
def naive_coconut_logits(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    position_ids: Array | None = None,
    *,
    config: ModelConfig,
    num_passes: int | None = None,
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
    thought_norm: str = "none",
) -> Array:
    """The original algorithm without any cache: for pass k = 0 .. max_latents - 1 run the
    full sequence, then put the hidden state before each row's k-th latent into that latent's
    embedding; one final full pass gives the logits. Latent positions may be anywhere."""
    model = Decoder(config)
    p = {"params": params}
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    emb = input_embeddings(params, input_ids, config, embeds_override, embeds_override_mask)
    lm = latent_mask.astype(bool)
    rank = jnp.cumsum(lm, axis=1) - 1  # k for the k-th latent of the row
    n_max = int(jnp.max(jnp.sum(lm, axis=1))) if num_passes is None else int(num_passes)
    target = thought_target_norm(params, thought_norm)
    for k in range(n_max):
        out = model.apply(p, inputs_embeds=emb, attention_mask=attention_mask, positions=position_ids)
        prev_hidden = jnp.concatenate([jnp.zeros_like(out.hidden[:, :1]), out.hidden[:, :-1]], axis=1)
        fill = lm & (rank == k)
        th = _rescale(prev_hidden, target)
        emb = jnp.where(fill[..., None], th.astype(emb.dtype), emb)
    out = model.apply(p, inputs_embeds=emb, attention_mask=attention_mask, positions=position_ids)
    return out.logits


# ----------------------------------------------------------------------------- generation
@functools.partial(
    jax.jit,
    static_argnames=("config", "latent_start", "num_latent", "max_new_tokens", "top_k", "feedback", "cache_dtype",
                     "thought_norm", "tova"),
)
def coconut_generate(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    rng: Array,
    sp: SamplingParams,
    stop_ids: Array,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    max_new_tokens: int,
    top_k: int = 0,
    pad_id: int = 0,
    feedback: bool = True,
    cache_dtype: str | None = None,
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
    thought_norm: str = "none",
    tova: TovaOptions | None = None,
    head_weights: Array | None = None,
) -> GenerateOutput | TovaOutput:
    """Batched, KV-cached Coconut generation.

    Prompts (B, T): question + <|start-latent|> left-padded so the first latent is at column
    `latent_start`, then the latent slots, then the rest of the prompt (usually
    <|end-latent|>), right-padded with attention_mask 0 when rows differ. The prefix is
    prefilled once, the thoughts are scanned, the rest is prefilled, and a while_loop decodes
    up to max_new_tokens per row (greedy at temperature 0, else temperature / top-p / top-k).

    tova: answer decoding with a TOVA cache of tova.budget(T + max_new_tokens) slots (the
    `cache.policy: tova` config; head_weights as in tova_generate). The thoughts are computed
    with the full cache; afterwards prompt and thought slots are ordinary TOVA candidates: the
    first answer step keeps the budget's best slots by its attention, each later step evicts
    one. Returns a TovaOutput (tokens, lengths, steps, the pruned cache) in that case.
    """
    del cache_dtype  # the cache uses the compute dtype
    B, T = input_ids.shape
    if needs_long_switch(config, T + max_new_tokens):
        raise ValueError(
            "Coconut generation past rope_original_max_position_embeddings of a longrope (Phi-3) model is not "
            "supported; lower max_new_tokens or the prompt length"
        )
    attention_mask = attention_mask.astype(jnp.int32)
    positions = positions_from_mask(attention_mask)
    out = coconut_forward(
        params,
        input_ids,
        attention_mask,
        latent_mask,
        positions,
        config=config,
        latent_start=latent_start,
        num_latent=num_latent,
        feedback=feedback,
        extra_slots=0 if tova is not None else max_new_tokens,
        remat_thoughts=False,
        thought_norm=thought_norm,
        embeds_override=embeds_override,
        embeds_override_mask=embeds_override_mask,
    )
    last_idx = (T - 1 - jnp.argmax(attention_mask[:, ::-1], axis=-1)).astype(jnp.int32)
    last_logits = jnp.take_along_axis(out.logits, last_idx[:, None, None], axis=1)[:, 0]
    last_pos = jnp.take_along_axis(positions, last_idx[:, None], axis=1)[:, 0]
    if tova is not None:
        C = tova.budget(T + max_new_tokens)
        hw = head_weights_for(config, B, tova, head_weights)
        kw = dict(max_new_tokens=max_new_tokens, top_k=top_k, pad_id=pad_id)
        tstate = tova_start(out.cache, last_logits, last_pos, rng, sp, stop_ids, hw, cache_size=C, **kw)
        return tova_decode_loop(params, tstate, sp, stop_ids, config=config, opts=tova, cache_size=C, **kw)
    rng, sub = jax.random.split(rng)
    tok = sample_logits(last_logits, sub, sp, top_k)
    state = DecodeState.start(out.cache, tok, last_pos, rng, stop_ids, max_new_tokens=max_new_tokens, pad_id=pad_id,
                              long=jnp.asarray(True), input_ids=input_ids, attention_mask=attention_mask)
    return decode_loop(params, state, sp, stop_ids, config=config, max_new_tokens=max_new_tokens, top_k=top_k,
                       pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("config", "latent_start", "num_latent", "feedback", "thought_norm"))
def coconut_prefill(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    feedback: bool = True,
    thought_norm: str = "none",
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
) -> tuple[KVCache, Array, Array]:
    """The prompt and its continuous thoughts run autoregressively into a KV cache, for an answer
    decoded by another method (masked diffusion). Returns (cache, next_pos, last_logits): the
    cache holds the T prompt columns (slots [0, T), pos -1 on padding, end = T); next_pos (B,)
    is each row's rotary position for its first answer token; last_logits (B, V) are the
    logits of each row's last real prompt token (the greedy first answer token)."""
    attention_mask = attention_mask.astype(jnp.int32)
    positions = positions_from_mask(attention_mask)
    out = coconut_forward(
        params, input_ids, attention_mask, latent_mask, positions, config=config, latent_start=latent_start,
        num_latent=num_latent, feedback=feedback, extra_slots=0, remat_thoughts=False, thought_norm=thought_norm,
        embeds_override=embeds_override, embeds_override_mask=embeds_override_mask,
    )
    T = input_ids.shape[1]
    last_idx = (T - 1 - jnp.argmax(attention_mask[:, ::-1], axis=-1)).astype(jnp.int32)
    last_logits = jnp.take_along_axis(out.logits, last_idx[:, None, None], axis=1)[:, 0]
    last_pos = jnp.take_along_axis(positions, last_idx[:, None], axis=1)[:, 0]
    return out.cache, last_pos + 1, last_logits


def coconut_diffusion_generate(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    latent_mask: Array,
    rng: Array,
    *,
    config: ModelConfig,
    latent_start: int,
    num_latent: int,
    opts: DiffusionOptions,
    feedback: bool = True,
    thought_norm: str = "none",
    embeds_override: Array | None = None,
    embeds_override_mask: Array | None = None,
) -> DiffusionOutput:
    """Continuous thoughts autoregressively, then the answer by masked diffusion (the seed's
    two-stage pipeline). The prompt (laid out as for `coconut_generate`) and its thoughts are
    prefilled into a KV cache once (`coconut_prefill`); opts.gen_length answer tokens are then
    decoded by `diffusion_generate_after_prefix` reading that cache (low-confidence or
    threshold unmasking, blocks of opts.block_length, opts.steps in all). With causal=True,
    shift_logits=True, block_length=1 and one step per token this is greedy decoding.
    Returns the DiffusionOutput (tokens (B, gen_length); forward_passes counts the answer's
    model calls, add 1 for the prompt-and-thoughts prefill)."""
    if needs_long_switch(config, input_ids.shape[1] + opts.gen_length):
        raise ValueError(
            "Coconut diffusion answers past rope_original_max_position_embeddings of a longrope (Phi-3) model are "
            "not supported (the cached prompt would need re-encoding with the long factors); lower gen_length or "
            "the prompt length"
        )
    cache, next_pos, last_logits = coconut_prefill(
        params, jnp.asarray(input_ids), jnp.asarray(attention_mask), jnp.asarray(latent_mask), config=config,
        latent_start=latent_start, num_latent=num_latent, feedback=feedback, thought_norm=thought_norm,
        embeds_override=embeds_override, embeds_override_mask=embeds_override_mask,
    )
    return diffusion_generate_after_prefix(params, cache, next_pos, rng, config=config, opts=opts,
                                           first_logits=last_logits)


def naive_generate_one(
    params: dict,
    prompt_ids: list[int],
    latent_id: int,
    *,
    config: ModelConfig,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (),
    bucket: int = 16,
    thought_norm: str = "none",
) -> list[int]:
    """Greedy batch-1 generation as the original implementation does it: every new token
    recomputes the whole sequence (all latent passes included) without a cache. The
    sequence is right-padded to a multiple of `bucket` (causal attention ignores the
    padding) so a few compiled programs serve every length. Reference for benchmarks."""
    ids = list(prompt_ids)
    out_toks: list[int] = []
    n_lat = sum(1 for t in ids if t == latent_id)
    for _ in range(max_new_tokens):
        L = -(-len(ids) // bucket) * bucket
        x = np.zeros((1, L), np.int32)
        x[0, : len(ids)] = ids
        lm = x == latent_id
        lm[0, len(ids):] = False
        m = (np.arange(L) < len(ids)).astype(np.int32)[None]
        logits = _naive_last_logits(params, jnp.asarray(x), jnp.asarray(m), jnp.asarray(lm), len(ids) - 1,
                                    config=config, num_passes=n_lat, thought_norm=thought_norm)
        nxt = int(jnp.argmax(logits))
        out_toks.append(nxt)
        ids.append(nxt)
        if nxt in stop_ids:
            break
    return out_toks


@functools.partial(jax.jit, static_argnames=("config", "num_passes", "thought_norm"))
def _naive_last_logits(params, x, m, lm, last, *, config, num_passes, thought_norm="none"):
    return naive_coconut_logits(params, x, m, lm, config=config, num_passes=num_passes,
                                thought_norm=thought_norm)[0, last]
