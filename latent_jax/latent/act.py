"""Adaptive computation (ACT): recursive halting around any latent_jax decoder.

The whole layer stack (`Decoder.stack`) is applied up to `k_max` times to the hidden
state. After every application a per-token halting head gives a halting probability p;
a token halts once its cumulative halting mass reaches `tau`, its last step taking the
remainder 1 - (mass so far), so each token's step weights sum to 1 (Graves 2016). The
output logits are the halting-mass-weighted sum of the per-step logits. A halted token
keeps its state, and its keys/values stay frozen at those of its last step: later
(deeper) steps of other tokens attend to the frozen keys/values.

    params = init_params(model_config, act_config, rng)     # {'decoder': ..., 'act': ...}
    out = act_apply(params, model_config, act_config, input_ids, attention_mask=mask)
    loss, metrics = act_loss(out, labels, loss_mask, act_config)

Training runs a lax.scan over k_max steps (remat per step); inference runs a
lax.while_loop that stops once every token has halted. Both call the same step function
and give the same logits. With an `ACTCache` (one KV cache per recursion depth) the
while_loop path decodes incrementally: a token that halted at depth n copies its frozen
keys/values into depths n+1..k_max-1, so later tokens can attend to it at every depth
and cached generation equals recomputing the whole sequence (`act_generate`).

Ponder cost: "act" is Graves' N + R (steps run plus remainder; the gradient flows
through R only); "pondernet" is KL(halting distribution || truncated geometric prior)
(Banino et al. 2021), taken over the same per-token step weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_jax.decoding.sampling import SamplingParams, emit_token, is_stop, sample_logits
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder, default_positions
from latent_jax.models.decoder import init_params as init_decoder_params
from latent_jax.models.layers import KVCache
from latent_jax.models.lm_head import logprob_and_argmax, map_head_chunks, target_logprobs

Array = jax.Array

PONDER_TYPES = ("act", "pondernet")


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ACTConfig:
    """Recursive-halting options (hashable: usable as a jit static argument).

    k_max: most applications of the layer stack per token. tau: cumulative halting mass
    at which a token halts (0 -> one step; > 1 -> always k_max). lambda_ponder: weight of
    the ponder cost of type ponder_type ('act' = N + R, 'pondernet' = KL to a geometric
    prior with success probability pondernet_prior). lambda_deep_supervision: weight of
    the mean per-step cross-entropy over the steps each token ran. use_step_film /
    film_rank: per-step low-rank FiLM of the state before each application.
    gated_residual: state <- state + g_k (stack(state) - state) with a learnable scalar
    g_k per step (init 1 = plain replacement). halting_mass_scale multiplies the halting
    probabilities; halting_bias_init is the halting head's initial bias. step_embeddings
    adds a learned (zero-initialised) vector per step. remat: rematerialise each step in
    the training scan.
    """

    k_max: int = 4
    tau: float = 0.99
    lambda_ponder: float = 1e-3
    ponder_type: str = "act"
    pondernet_prior: float = 0.5
    lambda_deep_supervision: float = 0.0
    use_step_film: bool = False
    film_rank: int = 8
    gated_residual: bool = False
    halting_mass_scale: float = 1.0
    halting_bias_init: float = -1.0
    step_embeddings: bool = True
    remat: bool = True

    def __post_init__(self):
        if self.k_max < 1:
            raise ValueError(f"act.k_max={self.k_max}; it must be >= 1")
        if self.ponder_type not in PONDER_TYPES:
            raise ValueError(f"act.ponder_type={self.ponder_type!r}; use one of {', '.join(PONDER_TYPES)}")
        if not 0.0 < self.pondernet_prior <= 1.0:
            raise ValueError(f"act.pondernet_prior={self.pondernet_prior}; it must be in (0, 1]")
        if self.film_rank < 1:
            raise ValueError(f"act.film_rank={self.film_rank}; it must be >= 1")
        if self.halting_mass_scale <= 0:
            raise ValueError(f"act.halting_mass_scale={self.halting_mass_scale}; it must be > 0")
        if self.tau < 0:
            raise ValueError(f"act.tau={self.tau}; it must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ACTConfig":
        """From a dict / ConfigDict; unknown keys are rejected with the valid ones."""
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown act config keys {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**d)


# ------------------------------------------------------------------ halting arithmetic
def halting_update(cum: Array, running: Array, p: Array, k: Array | int, k_max: int, tau: float):
    """One step of ACT halting arithmetic for every token.

    cum: mass assigned so far; running: tokens that ran this step; p: their halting
    probabilities at this step; k: 0-based step index. A running token halts when its
    cumulative halting probability min(cum + p, 1) reaches tau (so tau > 1 is never
    reached) or this is step k_max - 1, taking the remainder 1 - cum as its weight;
    otherwise its weight is p (clipped so the mass never exceeds 1).
    Returns (weight, new cum, still running, halted now).
    """
    p = p.astype(jnp.float32)
    last = jnp.asarray(k) >= k_max - 1
    halt = running & ((jnp.minimum(cum + p, 1.0) >= tau) | last)
    rest = 1.0 - cum
    w = jnp.where(halt, rest, jnp.where(running, jnp.minimum(p, rest), 0.0))
    return w, cum + w, running & ~halt, halt


def halting_weights(p: Array, tau: float, running: Array | None = None):
    """Step weights from halting probabilities p (K, ...) of every step.

    Returns (weights (K, ...) summing to 1 over K for running tokens, n_steps (...)
    steps run, remainder (...) the last step's weight R)."""
    K = p.shape[0]
    running = jnp.ones(p.shape[1:], bool) if running is None else running

    def body(c, xs):
        cum, run, n, rem = c
        k, pk = xs
        w, cum, run_next, halt = halting_update(cum, run, pk, k, K, tau)
        return (cum, run_next, n + run.astype(jnp.int32), jnp.where(halt, w, rem)), w

    zero = jnp.zeros(p.shape[1:], jnp.float32)
    init = (zero, running, jnp.zeros(p.shape[1:], jnp.int32), zero)
    (_, _, n, rem), w = jax.lax.scan(body, init, (jnp.arange(K), p))
    return w, n, rem


def geometric_log_prior(k_max: int, lam: float) -> np.ndarray:
    """log of the geometric distribution lam (1 - lam)^k over steps 0..k_max-1, renormalised."""
    k = np.arange(k_max, dtype=np.float64)
    pr = lam * (1.0 - lam) ** k
    pr = np.maximum(pr, 1e-30)
    return np.log(pr / pr.sum()).astype(np.float32)


def ponder_act(n_steps: Array, remainder: Array) -> Array:
    """Graves' ponder cost N + R per token (N is piecewise constant: gradient through R)."""
    return n_steps.astype(jnp.float32) + remainder


def ponder_pondernet(weights: Array, lam: float) -> Array:
    """KL(weights || truncated geometric prior) per token; weights (K, ...) over steps."""
    logp = jnp.asarray(geometric_log_prior(weights.shape[0], lam)).reshape((-1,) + (1,) * (weights.ndim - 1))
    return jnp.sum(jax.scipy.special.xlogy(weights, weights) - weights * logp, axis=0)


# -------------------------------------------------------------------- extra parameters
def _rms(x: Array, eps: float = 1e-6) -> Array:
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)).astype(x.dtype)


class ACTModules(nn.Module):
    """The halting head, per-step FiLM, step embeddings and residual gates (params under 'act')."""

    act: ACTConfig
    hidden_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        a, D = self.act, self.hidden_size
        self.halting = nn.Dense(
            1,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(0.02),
            bias_init=nn.initializers.constant(a.halting_bias_init),
        )
        if a.step_embeddings:
            self.step_embed = self.param("step_embed", nn.initializers.zeros, (a.k_max, D), self.param_dtype)
        if a.use_step_film:
            self.film_down = nn.Dense(a.film_rank, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
            self.film_code = self.param("film_code", nn.initializers.normal(1.0), (a.k_max, a.film_rank), self.param_dtype)
            self.film_up = nn.Dense(
                2 * D, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
            )
        if a.gated_residual:
            self.gate = self.param("gate", nn.initializers.ones, (a.k_max,), self.param_dtype)

    def __call__(self, h: Array, k: Array) -> tuple[Array, Array]:
        """Used only to create every parameter: (step input, halting probability)."""
        x = self.step_input(h, k)
        return self.refine(h, x, k), self.halt_prob(h)

    def step_input(self, h: Array, k: Array) -> Array:
        """The state fed to the stack at step k: FiLM(h) + step embedding (identity at init)."""
        a = self.act
        x = h
        if a.use_step_film:
            z = nn.gelu(self.film_down(_rms(h)) + self.film_code[k].astype(self.dtype))
            gamma, beta = jnp.split(self.film_up(z), 2, axis=-1)
            x = x * (1 + gamma) + beta
        if a.step_embeddings:
            x = x + self.step_embed[k].astype(x.dtype)
        return x

    def refine(self, h: Array, y: Array, k: Array) -> Array:
        """New state from the old state h and the stack output y."""
        if self.act.gated_residual:
            return h + self.gate[k].astype(h.dtype) * (y - h)
        return y

    def halt_prob(self, normed: Array) -> Array:
        """Halting probability (B, T) from the final-normed state."""
        z = self.halting(normed.astype(jnp.float32))[..., 0]
        return jax.nn.sigmoid(z) * self.act.halting_mass_scale


def init_act_params(model_config: ModelConfig, act_config: ACTConfig, rng: Array | int = 0) -> dict:
    """Random params of the ACT modules only."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    mods = _modules(model_config, act_config)
    h = jnp.zeros((1, 2, model_config.hidden_size), model_config.jnp_dtype)
    return jax.jit(mods.init)(rng, h, jnp.int32(0))["params"]


def init_params(model_config: ModelConfig, act_config: ACTConfig, rng: Array | int = 0,
                decoder_params: dict | None = None) -> dict:
    """{'decoder': decoder params (random unless given), 'act': ACT params}."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    r1, r2 = jax.random.split(rng)
    dec = decoder_params if decoder_params is not None else init_decoder_params(model_config, r1)
    return {"decoder": dec, "act": init_act_params(model_config, act_config, r2)}


def _modules(mcfg: ModelConfig, acfg: ACTConfig) -> ACTModules:
    return ACTModules(acfg, mcfg.hidden_size, mcfg.jnp_dtype, mcfg.jnp_param_dtype)


# ------------------------------------------------------------------------- KV caches
@flax.struct.dataclass
class ACTCache:
    """One KV cache per recursion depth.

    k, v: (k_max, layers, batch, kv_heads, slots, head_dim) (KVCache's layout with a depth
    axis in front); pos: (k_max, layers, batch, slots), -1 = empty; end: () next slot to
    write (shared by every depth)."""

    k: Array
    v: Array
    pos: Array
    end: Array

    @classmethod
    def init(cls, config: ModelConfig, k_max: int, batch: int, slots: int, dtype=None) -> "ACTCache":
        c = KVCache.init(config, batch, slots, dtype)
        rep = lambda x: jnp.broadcast_to(x, (k_max,) + x.shape)
        return cls(k=rep(c.k), v=rep(c.v), pos=rep(c.pos), end=c.end)

    def depth(self, k: Array | int) -> KVCache:
        """The KV cache of recursion depth k."""
        take = lambda x: jax.lax.dynamic_index_in_dim(x, k, 0, keepdims=False)
        return KVCache(k=take(self.k), v=take(self.v), pos=take(self.pos), end=self.end)


# ----------------------------------------------------------------------------- outputs
@flax.struct.dataclass
class ACTOutput:
    """logits (B,T,V): halting-weighted mix of per-step logits; hidden (B,T,D): final state
    after the final norm; n_steps (B,T) steps each token ran; expected_steps (B,T)
    sum_k (k+1) w_k; remainder (B,T) the last step's weight R; halt_mass (B,T) total weight
    (1 for real tokens); kl (B,T) KL of the step weights to the geometric prior;
    ds_ce (B,T) per-step cross-entropy summed over the steps run (when labels are given);
    inner_steps () stack applications run (the largest n_steps); cache: updated ACTCache;
    mixed (B,T,D) float32: with model ce_chunk > 0, the halting-weighted mix of the steps'
    final-normed states, whose LM head is `logits` (the chunked loss reads it), else None."""

    logits: Array
    mixed: Array | None
    hidden: Array
    n_steps: Array
    expected_steps: Array
    remainder: Array
    halt_mass: Array
    kl: Array
    ds_ce: Array
    inner_steps: Array
    cache: ACTCache | None


# ------------------------------------------------------------------------ the recursion
def _step(params, mcfg: ModelConfig, acfg: ACTConfig, consts, carry, k):
    """One recursion step for every token: apply the stack to the running tokens' states
    (halted tokens are visible through their frozen keys/values), mix in the logits, and
    update the halting bookkeeping. Shared by the scan and while_loop paths."""
    valid, positions, causal, labels, log_prior = consts
    dec, mods = Decoder(mcfg), _modules(mcfg, acfg)
    dp, ap = {"params": params["decoder"]}, {"params": params["act"]}
    run = carry["running"]
    h = carry["h"]
    fk, fv = carry["fk"], carry["fv"]  # (L, B, Hkv, T, Dh), head-major like KVCache
    L, B, T = fk.shape[0], fk.shape[1], fk.shape[3]

    x_in = mods.apply(ap, h, k, method=ACTModules.step_input)
    # keys/values visible at this depth: [cache of earlier chunks] + [this chunk's halted
    # tokens, frozen] + [slots the stack writes for this chunk's running tokens]
    # + [the running tokens' own, which leave the layer scan as outputs (return_kv): no cache is
    # threaded through the layers]
    frozen_pos = jnp.broadcast_to(jnp.where(~run & valid, positions, -1), (L, B, T)).astype(jnp.int32)
    parts = [KVCache(k=fk, v=fv, pos=frozen_pos, end=jnp.int32(0))]
    cache = carry.get("cache")
    if cache is not None:
        parts = [cache.depth(k)] + parts
    y, _, _, fresh = dec.apply(dp, x_in, run.astype(jnp.int32), positions, None, causal, tuple(parts),
                               return_kv=True, method=Decoder.stack)
    fresh_k, fresh_v = fresh.k, fresh.v

    h = jnp.where(run[..., None], mods.apply(ap, h, y, k, method=ACTModules.refine), h)
    normed = dec.apply(dp, h, method=Decoder.final_norm)
    p = mods.apply(ap, normed, method=ACTModules.halt_prob)
    w, cum, run_next, halted = halting_update(carry["cum"], run, p, k, acfg.k_max, acfg.tau)

    sel = run[None, :, None, :, None]  # (L, B, Hkv, T, Dh)
    new = dict(carry)
    new.update(
        h=h,
        cum=cum,
        running=run_next,
        n_steps=carry["n_steps"] + run.astype(jnp.int32),
        expected=carry["expected"] + w * (k + 1).astype(jnp.float32),
        remainder=jnp.where(halted, w, carry["remainder"]),
        kl=carry["kl"] + jax.scipy.special.xlogy(w, w) - w * log_prior[k],
        fk=jnp.where(sel, fresh_k.astype(fk.dtype), fk),
        fv=jnp.where(sel, fresh_v.astype(fv.dtype), fv),
        normed=jnp.where(run[..., None], normed, carry["normed"]),
    )
    if mcfg.ce_chunk:
        # the LM head is linear: the mix of the steps' logits is the head of the mix of their
        # final-normed states, which is carried instead of (B, T, V) logits (the chunked loss
        # applies the head; ACTOutput.logits is the head of it)
        new["mixed"] = carry["mixed"] + w[..., None] * normed.astype(jnp.float32)
        if labels is not None:
            ce = -map_head_chunks(params["decoder"], mcfg, normed, target_logprobs, labels)
    else:
        logits = dec.apply(dp, normed, method=Decoder.head)
        new["logits"] = carry["logits"] + w[..., None] * logits
        if labels is not None:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if labels is not None:
        new["ds_ce"] = carry["ds_ce"] + jnp.where(run, ce, 0.0)
    if cache is not None:
        # this chunk's keys/values at depth k: fresh for tokens that ran, frozen otherwise
        e = cache.end
        z = jnp.zeros((), jnp.int32)
        kpos = jnp.broadcast_to(jnp.where(valid, positions, -1), (1, L, B, T)).astype(jnp.int32)
        new["cache"] = cache.replace(
            k=jax.lax.dynamic_update_slice(cache.k, new["fk"][None].astype(cache.k.dtype), (k, z, z, z, e, z)),
            v=jax.lax.dynamic_update_slice(cache.v, new["fv"][None].astype(cache.v.dtype), (k, z, z, z, e, z)),
            pos=jax.lax.dynamic_update_slice(cache.pos, kpos, (k, z, z, e)),
        )
    return new


def _fill_deeper(cache: ACTCache, fk: Array, fv: Array, kpos: Array, from_depth: Array) -> ACTCache:
    """Write this chunk's frozen keys/values into every depth >= from_depth (the depths the
    loop did not reach because every token had halted)."""
    K = cache.k.shape[0]
    L, B, T = fk.shape[0], fk.shape[1], fk.shape[3]
    e = cache.end
    z = jnp.zeros((), jnp.int32)
    deeper = jnp.arange(K) >= from_depth

    def fill(buf, val, slot_axis):
        start = [z] * buf.ndim
        start[slot_axis] = e
        size = list(buf.shape)
        size[slot_axis] = T
        cur = jax.lax.dynamic_slice(buf, start, size)
        m = deeper.reshape((K,) + (1,) * (cur.ndim - 1))
        upd = jnp.where(m, jnp.broadcast_to(val[None].astype(buf.dtype), cur.shape), cur)
        return jax.lax.dynamic_update_slice(buf, upd, start)

    return cache.replace(
        k=fill(cache.k, fk, 1 + KVCache.KV_SLOT_AXIS),
        v=fill(cache.v, fv, 1 + KVCache.KV_SLOT_AXIS),
        pos=fill(cache.pos, jnp.broadcast_to(kpos, (L, B, T)), 3),
    )


def act_apply(
    params: dict,
    model_config: ModelConfig,
    act_config: ACTConfig,
    input_ids: Array | None = None,
    inputs_embeds: Array | None = None,
    attention_mask: Array | None = None,
    positions: Array | None = None,
    labels: Array | None = None,
    cache: ACTCache | None = None,
    causal: bool | Array = True,
    loop: str = "scan",
) -> ACTOutput:
    """Recursive-halting forward pass on (B, T) ids or (B, T, D) embeddings.

    params: {'decoder', 'act'}. loop: 'scan' (training: always k_max steps, masked,
    remat per step when act_config.remat) or 'while' (inference: stops once every real
    token has halted). labels (B, T), when given, add the per-step cross-entropy used by
    deep supervision. cache: an ACTCache; the tokens are written at [cache.end, +T) of
    every depth and the returned cache has end += T.
    """
    mcfg, acfg = model_config, act_config
    if loop not in ("scan", "while"):
        raise ValueError(f"loop={loop!r}; use 'scan' or 'while'")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    dp = {"params": params["decoder"]}
    if inputs_embeds is None:
        x = Decoder(mcfg).apply(dp, input_ids, method=Decoder.embed)
    else:
        x = inputs_embeds.astype(mcfg.jnp_dtype)
    B, T, D = x.shape
    valid = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(valid, None if cache is None else cache.depth(0))
    positions = positions.astype(jnp.int32)
    L, Hkv, Dh = mcfg.num_hidden_layers, mcfg.num_key_value_heads, mcfg.head_dim
    kv_dtype = mcfg.jnp_dtype if cache is None else cache.k.dtype
    zf = jnp.zeros((B, T), jnp.float32)
    carry = dict(
        h=x,
        cum=zf,
        running=valid,
        n_steps=jnp.zeros((B, T), jnp.int32),
        expected=zf,
        remainder=zf,
        kl=zf,
        ds_ce=zf,
        fk=jnp.zeros((L, B, Hkv, T, Dh), kv_dtype),
        fv=jnp.zeros((L, B, Hkv, T, Dh), kv_dtype),
        normed=jnp.zeros_like(x),
    )
    if mcfg.ce_chunk:
        carry["mixed"] = jnp.zeros((B, T, D), jnp.float32)
    else:
        carry["logits"] = jnp.zeros((B, T, mcfg.vocab_size), jnp.float32)
    if cache is not None:
        carry["cache"] = cache
    log_prior = jnp.asarray(geometric_log_prior(acfg.k_max, acfg.pondernet_prior))
    consts = (valid, positions, jnp.asarray(causal, bool), labels, log_prior)
    step = functools.partial(_step, params, mcfg, acfg, consts)

    if loop == "scan":
        body = lambda c, k: (step(c, k), None)
        if acfg.remat:
            body = jax.checkpoint(body)
        carry, _ = jax.lax.scan(body, carry, jnp.arange(acfg.k_max, dtype=jnp.int32))
        ran = jnp.int32(acfg.k_max)
    else:
        def cond(s):
            k, c = s
            return (k < acfg.k_max) & jnp.any(c["running"])

        def body(s):
            k, c = s
            return k + 1, step(c, k)

        ran, carry = jax.lax.while_loop(cond, body, (jnp.int32(0), carry))

    new_cache = None
    if cache is not None:
        new_cache = carry["cache"]
        if loop == "while":
            kpos = jnp.where(valid, positions, -1).astype(jnp.int32)
            new_cache = _fill_deeper(new_cache, carry["fk"], carry["fv"], kpos, ran)
        new_cache = new_cache.replace(end=new_cache.end + T)
    inner = jnp.max(jnp.where(valid, carry["n_steps"], 0))
    mixed = carry.get("mixed")
    return ACTOutput(
        logits=carry["logits"] if mixed is None else Decoder(mcfg).apply(dp, mixed, method=Decoder.head),
        mixed=mixed,
        hidden=carry["normed"],
        n_steps=carry["n_steps"],
        expected_steps=carry["expected"],
        remainder=carry["remainder"],
        halt_mass=carry["cum"],
        kl=carry["kl"],
        ds_ce=carry["ds_ce"],
        inner_steps=inner,
        cache=new_cache,
    )


# ------------------------------------------------------------------------------ loss
def _masked_mean(x: Array, mask: Array) -> Array:
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def act_loss(
    out: ACTOutput,
    labels: Array,
    loss_mask: Array,
    act_config: ACTConfig,
    ponder_mask: Array | None = None,
    *,
    params: dict | None = None,
    model_config: ModelConfig | None = None,
) -> tuple[Array, dict]:
    """Cross-entropy of the mixed logits on loss_mask + lambda_ponder * ponder cost (mean
    over ponder_mask, default loss_mask) + lambda_deep_supervision * mean per-step CE.
    With model_config.ce_chunk > 0 (out.mixed set) the LM head runs inside the loss over
    chunks (models.lm_head.map_head_chunks), which needs params and model_config.

    Returns (loss, metrics) with ce, token_accuracy (argmax on loss_mask), ponder,
    deep_supervision, act_expected_steps, act_mean_steps and act_inner_steps."""
    a = act_config
    ponder_mask = loss_mask if ponder_mask is None else ponder_mask
    if out.mixed is not None:
        if params is None or model_config is None:
            raise ValueError("act_loss of a chunked ACT output (model.ce_chunk > 0) needs params= and model_config=")
        logp, argmax = map_head_chunks(params["decoder"], model_config, out.mixed, logprob_and_argmax, labels)
        ce_tok = -logp
    else:
        ce_tok = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
        argmax = jnp.argmax(out.logits, -1)
    ce = _masked_mean(ce_tok, loss_mask)
    if a.ponder_type == "act":
        per_tok = ponder_act(out.n_steps, out.remainder)
    else:
        per_tok = out.kl
    ponder = _masked_mean(per_tok, ponder_mask)
    ds = _masked_mean(out.ds_ce / jnp.maximum(out.n_steps, 1).astype(jnp.float32), loss_mask)
    loss = ce + a.lambda_ponder * ponder
    if a.lambda_deep_supervision:
        loss = loss + a.lambda_deep_supervision * ds
    metrics = {
        "loss": loss,
        "ce": ce,
        "token_accuracy": _masked_mean((argmax == labels).astype(jnp.float32), loss_mask),
        "ponder": ponder,
        "deep_supervision": ds,
        "act_expected_steps": _masked_mean(out.expected_steps, ponder_mask),
        "act_mean_steps": _masked_mean(out.n_steps.astype(jnp.float32), ponder_mask),
        "act_inner_steps": out.inner_steps.astype(jnp.float32),
    }
    return loss, metrics


# ------------------------------------------------------------------------ generation
@flax.struct.dataclass
class ACTGenerateOutput:
    """tokens (B, max_new) (pad_id after a row stopped); lengths (B,) new tokens per row
    including the stop token; steps () decode passes after the prefill; inner_steps
    (max_new,) stack applications run for each generated position (prefill first)."""

    tokens: Array
    lengths: Array
    steps: Array
    inner_steps: Array


@functools.partial(jax.jit, static_argnames=("model_config", "act_config", "max_new_tokens", "top_k"))
def act_generate(
    params: dict,
    input_ids: Array,
    attention_mask: Array,
    rng: Array,
    sp: SamplingParams,
    stop_ids: Array,
    *,
    model_config: ModelConfig,
    act_config: ACTConfig,
    max_new_tokens: int,
    top_k: int = 0,
    pad_id: int = 0,
) -> ACTGenerateOutput:
    """KV-cached generation with early halting for left-padded prompts (B, T).

    The prompt is prefilled into one cache per recursion depth; each new token runs the
    while_loop recursion only until it (and every other row's token) has halted; deeper
    depths receive its frozen keys/values."""
    mcfg, acfg = model_config, act_config
    B, T = input_ids.shape
    cache = ACTCache.init(mcfg, acfg.k_max, B, T + max_new_tokens)
    out = act_apply(params, mcfg, acfg, input_ids, attention_mask=attention_mask, cache=cache, loop="while")
    last_pos = jnp.sum(attention_mask, axis=-1).astype(jnp.int32) - 1
    rng, sub = jax.random.split(rng)
    tok = sample_logits(out.logits[:, -1], sub, sp, top_k)
    tokens = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    inner = jnp.zeros((max_new_tokens,), jnp.int32).at[0].set(out.inner_steps)
    done = is_stop(tok, stop_ids)
    lengths = jnp.ones((B,), jnp.int32)

    def cond_fn(s):
        return (s[0] < max_new_tokens) & ~jnp.all(s[4])

    def body_fn(s):
        i, tok, cache, pos, done, tokens, lengths, rng, inner = s
        pos = pos + 1
        o = act_apply(params, mcfg, acfg, tok[:, None], positions=pos[:, None], cache=cache, loop="while")
        nxt, tokens, lengths, done, rng = emit_token(o.logits[:, -1], rng, sp, top_k, i, done, tokens, lengths,
                                                     stop_ids, pad_id)
        return (i + 1, nxt, o.cache, pos, done, tokens, lengths, rng, inner.at[i].set(o.inner_steps))

    init = (jnp.int32(1), tok, out.cache, last_pos, done, tokens, lengths, rng, inner)
    i, _, _, _, _, tokens, lengths, _, inner = jax.lax.while_loop(cond_fn, body_fn, init)
    return ACTGenerateOutput(tokens=tokens, lengths=lengths, steps=i - 1, inner_steps=inner)


def act_flops_fraction(inner_steps: Array | float, k_max: int) -> float:
    """Fraction of the always-k_max compute that an early-halting run used."""
    return float(np.mean(np.asarray(inner_steps))) / k_max if k_max else math.nan
