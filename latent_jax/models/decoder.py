"""The one decoder LM for every family: token ids or embeddings in; logits, hidden states and
an updated KV cache out.

    model = Decoder(config)
    out = model.apply({"params": params}, input_ids, attention_mask=mask)
    out.logits, out.hidden, out.all_hidden, out.attn_last, out.cache

Unused outputs (per-layer hidden states, attention probabilities, logits) cost nothing
under jit: XLA removes them.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_jax.models.config import ModelConfig
from latent_jax.models.layers import HIDDEN_AXES, DecoderLayer, KVCache, RMSNorm, dense, weights_in_compute_dtype
from latent_jax.parallel import constrain

Array = jax.Array

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


@flax.struct.dataclass
class DecoderOutput:
    """logits (B,T,V) float32; hidden (B,T,D) after the final norm; all_hidden (L+1,B,T,D):
    the input embeddings then every layer's output (before the final norm); attn_last
    (L,B,H,K): each layer's attention probabilities of the newest query over the keys
    (cache slots when a cache is given); cache: the updated KVCache or None."""

    logits: Array
    hidden: Array
    all_hidden: Array
    attn_last: Array
    cache: KVCache | None


class _ScanBody(nn.Module):
    """Adapter so the decoder layer fits nn.scan's (carry, xs) -> (carry, ys) shape."""

    config: ModelConfig
    remat: str = "none"

    @nn.compact
    def __call__(self, carry, positions, key_pos, causal, cache_end, key_mask, xs):
        x, cache = carry
        window, layer_idx, prefix = xs  # prefix: this layer's read-only K/V segments (a scan input)
        layer_cls = _maybe_remat(DecoderLayer, self.remat)
        y, new_cache, attn = layer_cls(self.config, name="layer")(
            x, positions, key_pos, causal, window, cache, cache_end, layer_idx, prefix, key_mask
        )
        if cache is None:  # this layer's K/V leave the scan as an output (None unless asked for)
            return (y, None), (attn, x, new_cache)
        return (y, new_cache), (attn, x, None)


def _maybe_remat(cls, policy: str):
    if policy == "none":
        return cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy={policy!r}; use one of none, {', '.join(REMAT_POLICIES)}")
    return nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=True)


class Decoder(nn.Module):
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
            dtype=cfg.jnp_dtype,
            param_dtype=cfg.jnp_param_dtype,
            promote_dtype=weights_in_compute_dtype("embed_tokens", ("embedding",)),  # cast, then gathered
        )
        if cfg.scan_layers:
            self.layers = nn.scan(
                _ScanBody,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=cfg.num_hidden_layers,
            )(cfg, cfg.remat_policy)
        else:
            layer_cls = _maybe_remat(DecoderLayer, cfg.remat_policy)
            self.layers = [layer_cls(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = dense(cfg.vocab_size, False, cfg, "lm_head")

    # ----------------------------------------------------------------- pieces
    def embed(self, input_ids: Array) -> Array:
        """Token embeddings (B, T, D) in the compute dtype."""
        return constrain(self.embed_tokens(input_ids), HIDDEN_AXES)

    def head(self, hidden: Array) -> Array:
        """Logits (float32) from final-normed hidden states."""
        if self.config.tie_word_embeddings:
            logits = self.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    # ---------------------------------------------------------------- forward
    def __call__(
        self,
        input_ids: Array | None = None,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        inputs_embeds: Array | None = None,
        causal: bool | Array = True,
        prefix_cache: KVCache | tuple[KVCache, ...] | None = None,
        tree_mask: Array | None = None,
        return_kv: bool = False,
    ) -> DecoderOutput:
        """Run the stack on (B, T) tokens or (B, T, D) embeddings.

        attention_mask (B, T): 1 for real tokens, 0 for padding (left or right).
        positions (B, T): rotary positions. Default: continue from the cache's largest
        position (0 without a cache), counting only real tokens.
        cache: written at slots [cache.end, cache.end + T); the returned cache has end += T
        and the form of the given one (stacked, or layer-split: see KVCache).
        causal: False gives bidirectional attention (masked-diffusion models).
        prefix_cache: read-only keys attended before `cache`'s (never written or copied); a tuple
        of caches is attended segment after segment.
        return_kv (without `cache`): the output's cache holds these T tokens' K/V of every layer
        (end = T), emitted by the layer scan as outputs. Training uses this instead of a cache:
        nothing of the size of the whole cache is carried through the layers (whose backward
        would save it at every layer). Decoding passes `cache`, updated in place.
        tree_mask (B, T, T) bool: which of these T tokens each may attend to, ANDed with the
        position rule (Medusa tree attention: candidates see their ancestors, not other branches).
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
        x, all_hidden, attn, new_cache = self.stack(x, attention_mask, positions, cache, causal, prefix_cache,
                                                    tree_mask, return_kv)
        hidden = self.norm(x)
        return DecoderOutput(
            logits=self.head(hidden), hidden=hidden, all_hidden=all_hidden, attn_last=attn, cache=new_cache
        )

    def final_norm(self, x: Array) -> Array:
        return self.norm(x)

    def stack(
        self,
        x: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        cache: KVCache | None = None,
        causal: bool | Array = True,
        prefix_cache: KVCache | tuple[KVCache, ...] | None = None,
        tree_mask: Array | None = None,
        return_kv: bool = False,
    ) -> tuple[Array, Array, Array, KVCache | None]:
        """Apply every layer to embeddings x (B, T, D).

        Returns (x before the final norm, all_hidden, attn_last, new cache). Recursive
        methods (ACT) call this repeatedly on their own state. With prefix_cache, attn_last
        covers the prefix slots first, then the cache's. return_kv: see __call__.
        """
        cfg = self.config
        B, T = x.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), jnp.int32)
        valid = attention_mask.astype(bool)
        prefixes = () if prefix_cache is None else (
            (prefix_cache,) if isinstance(prefix_cache, KVCache) else tuple(prefix_cache))
        if positions is None:
            positions = default_positions(valid, cache)
            for pc in prefixes:
                positions = jnp.maximum(positions, default_positions(valid, pc))
        positions = positions.astype(jnp.int32)
        key_pos = jnp.where(valid, positions, -1)
        # a Python bool stays one (static for the fused kernels: one splash kernel, not a switch of two)
        causal = causal if isinstance(causal, bool) else jnp.asarray(causal, bool)
        windows = jnp.asarray(cfg.layer_windows, jnp.int32)
        cache_end = None if cache is None else cache.end
        key_mask = None
        if tree_mask is not None:  # over the cache's slots: the new tokens sit at [end, end + T)
            key_mask = tree_mask.astype(bool)
            if cache is not None:
                full = jnp.ones((B, T, cache.slots), bool)
                key_mask = jax.lax.dynamic_update_slice(full, key_mask, (0, 0, cache.end))

        # decoding: the whole cache is threaded through the layers and each layer updates its own
        # entries in place (dynamic_update_slice on the full arrays): no per-step copy of the cache.
        # (Training passes no cache: return_kv emits each layer's K/V as a scan output.)
        # A layer-split cache (decode loops) gives each layer its own arrays instead.
        split = cache is not None and cache.is_split
        if split and cfg.scan_layers:
            raise ValueError("a layer-split KVCache needs scan_layers=False; use cache.stack_layers()")
        caches = None if cache is None else {"k": cache.k, "v": cache.v, "pos": cache.pos}
        # every layer gets its own slice of the prefix segments (a scan input, never a carry)
        prefix = tuple({"k": pc.k, "v": pc.v, "pos": pc.pos} for pc in prefixes) or None
        if cfg.scan_layers:
            layer_ids = jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32)
            (x, new_caches), (attn, hs, kvs) = self.layers(
                (x, caches), positions, key_pos, causal, cache_end, key_mask, (windows, layer_ids, prefix)
            )
        else:
            outs_a, outs_h, outs_kv = [], [], []
            new_caches = caches
            split_out = {"k": [], "v": [], "pos": []}
            for i, layer in enumerate(self.layers):
                outs_h.append(x)
                layer_cache = {n: a[i] for n, a in caches.items()} if split else new_caches
                layer_prefix = None if prefix is None else jax.tree.map(lambda a: a[i], prefix)
                w = cfg.layer_windows[i]  # a Python int: static for the fused kernels
                x, new_caches, a = layer(x, positions, key_pos, causal, w, layer_cache, cache_end, i, layer_prefix,
                                         key_mask)
                if split:
                    for n in split_out:
                        split_out[n].append(new_caches[n])
                if cache is None:
                    outs_kv.append(new_caches)
                    new_caches = None
                outs_a.append(a)
            if split:
                new_caches = {n: tuple(a) for n, a in split_out.items()}
            attn = jnp.stack(outs_a)
            hs = jnp.stack(outs_h)
            kvs = jax.tree.map(lambda *a: jnp.stack(a), *outs_kv) if outs_kv else None
        all_hidden = jnp.concatenate([hs, x[None]], axis=0)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=new_caches["k"], v=new_caches["v"], pos=new_caches["pos"], end=cache.end + T)
        elif return_kv:
            pos = jnp.broadcast_to(key_pos, (cfg.num_hidden_layers, B, T))
            new_cache = KVCache(k=kvs["k"], v=kvs["v"], pos=pos, end=jnp.asarray(T, jnp.int32))
        return x, all_hidden, attn, new_cache


def default_positions(valid: Array, cache: KVCache | None = None) -> Array:
    """Rotary positions for (B, T) tokens with validity mask `valid`: continue after the
    cache's largest stored position (0 without a cache), counting only real tokens."""
    start = 0 if cache is None else jnp.max(cache.pos[0], axis=-1)[:, None] + 1
    return jnp.maximum(start + jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)


def init_params(config: ModelConfig, rng: Array | int = 0) -> dict:
    """Random params for `config` (a plain nested dict)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    ids = jnp.zeros((1, 4), jnp.int32)
    return jax.jit(Decoder(config).init)(rng, ids)["params"]
