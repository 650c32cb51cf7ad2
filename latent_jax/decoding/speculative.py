"""Typical-acceptance speculative decoding with Medusa draft heads (Cai et al. 2024,
FasterDecoding/Medusa).

Draft heads: N heads on the base model's last hidden state (after the final norm), each a
residual SiLU block plus a linear layer to the vocabulary, separate weights per head. Head
i at position t predicts token t + i + 2 (the base model's own head predicts t + 1). They
are trained with the backbone frozen (`heads_loss`, `train_heads`, workflow "medusa"),
optionally weighting head i by decay**i (0.8 in Medusa).

Decoding step: the pending token t0 (the base model's choice, always accepted) followed by
the heads' proposals forms a candidate chain (or, `tree_topk` > 1, several chains from the
heads' top-k, verified together as extra batch rows). One forward pass verifies every
candidate. A proposal x at depth j is accepted when

    greedy (temperature 0):  x == argmax p_j
    typical:                 p_j(x) > min(epsilon, delta * exp(-H(p_j)))

with p_j the base model's distribution (at the temperature) after the candidate's first j
tokens; the longest accepted prefix is kept and the next pending token is drawn from the
base model's distribution after it. The accepted tokens' K/V are contiguous in the cache:
candidates are written at [end, end + n + 1), then end moves past the accepted ones and the
rejected slots are marked empty (pos -1) to be overwritten by the next step. Rows run
independently (the whole loop is vmapped over the batch), each with its own cache end.

At temperature 0 the output equals plain greedy decoding token for token, whatever the
heads propose.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import SamplingParams, needs_long_switch, sample_logits
from latent_jax.decoding.strategies import batches, bucket_batch, decode_text, pad_batch, stop_ids_from
from latent_jax.models.config import ModelConfig
from latent_jax.models.decoder import Decoder
from latent_jax.models.layers import KVCache
from latent_jax.parallel import to_host

Array = jax.Array

HEADS_CONFIG_FILE = "medusa_config.json"
HEADS_WEIGHTS_FILE = "medusa_heads.safetensors"


# ----------------------------------------------------------------------------- heads
def init_heads(config: ModelConfig, num_heads: int, rng: Array | int = 0, base_params: dict | None = None) -> dict:
    """Medusa heads: residual block initialised to zero (the head starts as the identity) and
    the output layer copied from the base model's LM head when base_params are given."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    D, V = config.hidden_size, config.vocab_size
    if base_params is not None:
        out = (base_params["embed_tokens"]["embedding"].T if config.tie_word_embeddings
               else base_params["lm_head"]["kernel"])
        out = jnp.asarray(out, jnp.float32)
    heads = {}
    for i in range(num_heads):
        rng, sub = jax.random.split(rng)
        o = out if base_params is not None else config.initializer_range * jax.random.normal(sub, (D, V))
        heads[f"head_{i}"] = {
            "res": {"kernel": jnp.zeros((D, D), jnp.float32), "bias": jnp.zeros((D,), jnp.float32)},
            "out": {"kernel": jnp.array(o, jnp.float32)},
        }
    return heads


def num_heads_of(heads: dict) -> int:
    return len([k for k in heads if k.startswith("head_")])


def heads_logits(heads: dict, hidden: Array, num_heads: int | None = None) -> Array:
    """(N, ..., V) float32 logits of the first num_heads heads for hidden (..., D)."""
    n = num_heads_of(heads) if num_heads is None else num_heads
    outs = []
    for i in range(n):
        h = heads[f"head_{i}"]
        x = hidden.astype(jnp.float32)
        x = x + jax.nn.silu(x @ h["res"]["kernel"] + h["res"]["bias"])
        outs.append(x @ h["out"]["kernel"])
    return jnp.stack(outs)


def heads_loss(heads: dict, hidden: Array, ids: Array, valid: Array, decay: float = 1.0) -> tuple[Array, dict]:
    """Cross-entropy of head i at position t against ids[t + i + 2] (hidden (B, T, D) from the
    frozen base model, ids/valid (B, T)); head i weighted by decay**i. Returns (loss, metrics
    with per-head top-1 accuracy)."""
    logits = heads_logits(heads, hidden)
    N = logits.shape[0]
    total, metrics = 0.0, {}
    for i in range(N):
        s = i + 2
        lg = logits[i, :, :-s]
        tgt = ids[:, s:]
        m = (valid[:, s:] & valid[:, :-s]).astype(jnp.float32)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(lg, -1), tgt[..., None], -1)[..., 0]
        n = jnp.maximum(jnp.sum(m), 1.0)
        li = jnp.sum(ce * m) / n
        total = total + (decay ** i) * li
        metrics[f"head{i}_loss"] = li
        metrics[f"head{i}_acc"] = jnp.sum((jnp.argmax(lg, -1) == tgt) * m) / n
    metrics["loss"] = total
    return total, metrics


def base_hidden(params: dict, ids: Array, valid: Array, config: ModelConfig) -> Array:
    """The frozen base model's final-normed hidden states (B, T, D), no gradient."""
    out = Decoder(config).apply({"params": jax.lax.stop_gradient(params)}, ids, attention_mask=valid)
    return jax.lax.stop_gradient(out.hidden)


def make_train_step(config: ModelConfig, tx, decay: float = 1.0):
    """A jitted (heads, opt_state, params, ids, valid) -> (heads, opt_state, metrics) step that
    trains only the heads."""
    import optax

    @jax.jit
    def step(heads, opt_state, params, ids, valid):
        hidden = base_hidden(params, ids, valid, config)
        (loss, m), g = jax.value_and_grad(heads_loss, has_aux=True)(heads, hidden, ids, valid.astype(bool), decay)
        upd, opt_state = tx.update(g, opt_state, heads)
        return optax.apply_updates(heads, upd), opt_state, m

    return step


def train_heads(params: dict, config: ModelConfig, heads: dict, sequences: np.ndarray, *, steps: int = 200,
                batch_size: int = 16, learning_rate: float = 1e-3, decay: float = 0.8, seed: int = 0,
                valid: np.ndarray | None = None, log_fn=None) -> dict:
    """Train `heads` with the base model frozen on token sequences (n, T) (right-padded with
    valid 0 where given). log_fn(step, metrics) is called every 10 steps."""
    import optax

    tx = optax.adamw(learning_rate, weight_decay=0.0)
    opt_state = tx.init(heads)
    step_fn = make_train_step(config, tx, decay)
    if valid is None:
        valid = np.ones_like(sequences)
    rs = np.random.RandomState(seed)
    for s in range(steps):
        idx = rs.randint(0, len(sequences), size=batch_size)
        heads, opt_state, m = step_fn(heads, opt_state, params, jnp.asarray(sequences[idx]), jnp.asarray(valid[idx]))
        if log_fn is not None and (s % 10 == 0 or s == steps - 1):
            log_fn(s, {k: float(v) for k, v in m.items()})
    return heads


def save_heads(path: str, heads: dict, meta: dict | None = None) -> str:
    """Write heads as safetensors + a JSON config (num_heads, hidden_size, vocab_size, meta)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    flat = {f"{h}.{part}.{name}": np.asarray(v, np.float32) for h, d in heads.items()
            for part, dd in d.items() for name, v in dd.items()}
    save_file(flat, os.path.join(path, HEADS_WEIGHTS_FILE))
    first = heads["head_0"]["out"]["kernel"]
    info = {"num_heads": num_heads_of(heads), "hidden_size": int(first.shape[0]), "vocab_size": int(first.shape[1])}
    info.update(meta or {})
    with open(os.path.join(path, HEADS_CONFIG_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return path


def load_heads(path: str, config: ModelConfig | None = None) -> tuple[dict, dict]:
    """(heads, info) from save_heads output; checks they fit `config` when given."""
    from safetensors.numpy import load_file

    wf, cf = os.path.join(path, HEADS_WEIGHTS_FILE), os.path.join(path, HEADS_CONFIG_FILE)
    if not (os.path.isfile(wf) and os.path.isfile(cf)):
        raise FileNotFoundError(f"{path} has no Medusa heads ({HEADS_WEIGHTS_FILE} + {HEADS_CONFIG_FILE}); "
                                "train them with `python -m latent_jax.main --config=configs/medusa_heads.py`")
    with open(cf) as f:
        info = json.load(f)
    heads: dict = {}
    for name, v in load_file(wf).items():
        h, part, leaf = name.split(".")
        heads.setdefault(h, {}).setdefault(part, {})[leaf] = jnp.asarray(v)
    if config is not None and (info["hidden_size"] != config.hidden_size or info["vocab_size"] != config.vocab_size):
        raise ValueError(f"heads in {path} are for hidden_size={info['hidden_size']}, vocab_size={info['vocab_size']}; "
                         f"the model has {config.hidden_size}, {config.vocab_size}; train heads for this model")
    return heads, info


# ------------------------------------------------------------------------- decoding
@dataclasses.dataclass(frozen=True)
class TypicalOptions:
    """Static settings. num_heads: heads used (0 = all); tree_topk 1 = a single chain, k > 1 =
    up to num_paths chains from the heads' top-k, verified together: tree_attention=True in
    one forward pass over the flattened candidate tree (Medusa's tree mask and tree position
    ids), False as extra batch rows (the cache tiled per chain; kept for comparison)."""

    epsilon: float = 0.09
    delta: float = 0.3
    num_heads: int = 0
    tree_topk: int = 1
    num_paths: int = 4
    tree_attention: bool = True


@flax.struct.dataclass
class TypicalOutput:
    """tokens (B, max_new), lengths (B,), steps (B,) decode forward passes per row after the
    prefill, accepted (B,) draft tokens accepted per row, drafted () draft tokens proposed per
    step (heads); mean accepted length = (steps + accepted) / steps tokens per forward pass."""

    tokens: Array
    lengths: Array
    steps: Array
    accepted: Array
    drafted: Array


def _paths(topk_ids: Array, topk_lp: Array, num_paths: int) -> Array:
    """(P, N) candidate continuations from per-head top-k (N, k): the num_paths combinations
    with the highest summed head log-probabilities."""
    N, k = topk_ids.shape
    combos = np.array(list(itertools.product(range(k), repeat=N)), np.int32)  # (k^N, N)
    score = jnp.sum(topk_lp[jnp.arange(N)[None, :], combos], axis=-1)
    _, best = jax.lax.top_k(score, min(num_paths, combos.shape[0]))
    return topk_ids[jnp.arange(N)[None, :], jnp.asarray(combos)[best]]


def _accept_mask(logits: Array, cand: Array, sp: SamplingParams, opts: TypicalOptions) -> Array:
    """(P, N) whether cand[:, j] is accepted under logits[:, j] (P, N, V)."""
    greedy_ok = cand == jnp.argmax(logits, -1)
    t = jnp.maximum(sp.temperature, 1e-6)
    logp = jax.nn.log_softmax(logits / t, -1)
    p = jnp.exp(logp)
    ent = -jnp.sum(p * logp, -1)
    px = jnp.take_along_axis(p, cand[..., None], -1)[..., 0]
    typical_ok = px > jnp.minimum(opts.epsilon, opts.delta * jnp.exp(-ent))
    return jnp.where(sp.temperature > 0, typical_ok, greedy_ok)


def candidate_tree(num_paths: int, depth: int) -> dict[str, np.ndarray]:
    """The flattened candidate tree of `num_paths` chains of `depth` drafts after one shared
    root (the pending token): node 0 is the root, node 1 + p * depth + j the j-th draft of
    chain p. Returns (all static numpy) mask (M, M) (a node sees itself and its ancestors),
    depth (M,) (tree position offsets), parent (P, depth) (the node whose logits judge each
    draft) and node (P, depth). Chains are not merged where their prefixes agree: a repeated
    node has the same ancestors and position as its twin, so it gets the same logits."""
    P, N = int(num_paths), int(depth)
    dep = np.concatenate([[0], np.tile(np.arange(1, N + 1), P)]).astype(np.int32)
    chain = np.concatenate([[-1], np.repeat(np.arange(P), N)])
    mask = (chain[None, :] == chain[:, None]) & (dep[None, :] <= dep[:, None])
    mask[:, 0] = True
    node = (1 + np.arange(P)[:, None] * N + np.arange(N)[None, :]).astype(np.int32)
    parent = np.concatenate([np.zeros((P, 1), np.int32), node[:, :-1]], axis=1)
    return {"mask": mask, "depth": dep, "parent": parent, "node": node}


def _generate_row(params, heads, ids, mask, rng, sp, stop_ids, emb=None, *, config, max_new_tokens, opts, top_k,
                  pad_id):
    model = Decoder(config)
    N = opts.num_heads or num_heads_of(heads)
    T = ids.shape[0]
    P = 1 if opts.tree_topk <= 1 else min(opts.num_paths, opts.tree_topk ** N)
    one_pass = P > 1 and opts.tree_attention
    tree = candidate_tree(P, N) if one_pass else None
    S = T + max_new_tokens + (1 + P * N if one_pass else N + 1)
    cache = KVCache.init(config, 1, S)
    if emb is None:
        out = model.apply({"params": params}, ids[None], attention_mask=mask[None], cache=cache)
    else:  # prompt embeddings (VLM: image / video rows spliced in)
        out = model.apply({"params": params}, inputs_embeds=emb[None], attention_mask=mask[None], cache=cache)
    p_last = jnp.sum(mask).astype(jnp.int32) - 1
    rng, sub = jax.random.split(rng)
    t0 = sample_logits(out.logits[:, -1], sub, sp, top_k)[0]
    hid = out.hidden[0, -1]
    buf = jnp.full((max_new_tokens + N + 1,), pad_id, jnp.int32)
    ar = jnp.arange(N + 1)

    def cond(s):
        return ~s[6]

    def body(s):
        cache, pos, t0, hid, buf, n_out, done, rng, steps, acc = s
        hl = heads_logits(heads, hid, N)  # (N, V)
        if P == 1:
            cand = jnp.argmax(hl, -1)[None].astype(jnp.int32)  # (1, N)
        else:
            lp, ix = jax.lax.top_k(jax.nn.log_softmax(hl, -1), opts.tree_topk)
            cand = _paths(ix.astype(jnp.int32), lp, P)
        chain = jnp.concatenate([jnp.full((P, 1), t0, jnp.int32), cand], axis=1)  # (P, N + 1)
        if one_pass:  # the whole tree in one row: tree mask, tree position ids
            flat = jnp.concatenate([t0[None], cand.reshape(-1)])[None]  # (1, M)
            o = model.apply({"params": params}, flat, positions=(pos + 1 + tree["depth"])[None], cache=cache,
                            tree_mask=jnp.asarray(tree["mask"])[None])
            lg, hs = o.logits[0], o.hidden[0]  # (M, V), (M, D)
            ok = _accept_mask(lg[tree["parent"]], cand, sp, opts)  # (P, N)
        else:
            c = jax.tree.map(lambda a: jnp.repeat(a, P, axis=1) if a.ndim >= 2 else a, cache)
            positions = jnp.broadcast_to(pos + 1 + ar, (P, N + 1))
            o = model.apply({"params": params}, chain, positions=positions, cache=c)
            ok = _accept_mask(o.logits[:, :N], cand, sp, opts)  # (P, N)
        n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)  # (P,)
        best = jnp.argmax(n_acc)
        a = n_acc[best]
        chain_b = chain[best]
        # commit chain[0..a]; truncate at the first stop token
        keep = ar <= a
        is_stop = jnp.any(chain_b[:, None] == stop_ids[None, :], -1) & keep if stop_ids.shape[0] else jnp.zeros_like(keep)
        first_stop = jnp.argmax(is_stop)
        hit = jnp.any(is_stop)
        n_new = jnp.where(hit, first_stop + 1, a + 1)
        keep = ar < n_new
        cur = jax.lax.dynamic_slice(buf, (n_out,), (N + 1,))
        buf = jax.lax.dynamic_update_slice(buf, jnp.where(keep, chain_b, cur), (n_out,))
        n_out = n_out + n_new
        done = hit | (n_out >= max_new_tokens)
        rng, sub = jax.random.split(rng)
        if one_pass:
            # the accepted path (root, then chain best's first a drafts) moved to [end, end + a + 1)
            path = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.asarray(tree["node"])[best]])  # (N + 1,)
            src = jnp.concatenate([path, jnp.zeros((P * N - N,), jnp.int32)])
            newc = o.cache.compact_slots(cache.end, src, a + 1)
            last = path[a]
            nxt = sample_logits(lg[last][None], sub, sp, top_k)[0]
            return (newc, pos + a + 1, nxt, hs[last], buf, n_out, done, rng, steps + 1, acc + a)
        # the chosen row's cache; accepted slots stay, rejected slots are emptied
        end = cache.end
        slot = jnp.arange(S)
        newc = jax.tree.map(lambda a_: jax.lax.dynamic_slice_in_dim(a_, best, 1, axis=1) if a_.ndim >= 2 else a_, o.cache)
        stale = (slot >= end + a + 1) & (slot < end + N + 1)
        newc = newc.replace(pos=jnp.where(stale[None, None, :], -1, newc.pos), end=end + a + 1)
        nxt = sample_logits(o.logits[best, a][None], sub, sp, top_k)[0]
        return (newc, pos + a + 1, nxt, o.hidden[best, a], buf, n_out, done, rng, steps + 1, acc + a)

    first_stop = jnp.any(t0 == stop_ids) if stop_ids.shape[0] else jnp.zeros((), bool)
    buf0 = buf.at[0].set(t0)
    # the first token comes from the prefill; the loop starts from it as the pending token
    init = (out.cache, p_last, t0, hid, buf, jnp.int32(0), jnp.zeros((), bool), rng, jnp.int32(0), jnp.int32(0))
    init_done = first_stop | (max_new_tokens <= 1)
    init = init[:6] + (init_done,) + init[7:]
    cache, pos, t0_, hid, buf, n_out, done, rng, steps, acc = jax.lax.while_loop(cond, body, init)
    buf = jnp.where(init_done, buf0, buf)
    n_out = jnp.where(init_done, 1, n_out)
    lengths = jnp.minimum(n_out, max_new_tokens)
    tokens = jnp.where(jnp.arange(max_new_tokens) < lengths, buf[:max_new_tokens], pad_id)
    return tokens, lengths, steps, acc


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "opts", "top_k"))
def typical_generate(params: dict, heads: dict, input_ids: Array, attention_mask: Array, rng: Array,
                     sp: SamplingParams, stop_ids: Array, *, config: ModelConfig, max_new_tokens: int,
                     opts: TypicalOptions = TypicalOptions(), top_k: int = 0, pad_id: int = 0,
                     inputs_embeds: Array | None = None) -> TypicalOutput:
    """Generate up to max_new_tokens for left-padded prompts (B, T) with Medusa heads and
    typical acceptance (exact greedy matching at temperature 0). inputs_embeds (B, T, D), when
    given, replace the prompt's token embeddings (VLM prompts, see vlm.generate_vlm)."""
    if opts.num_heads > num_heads_of(heads):
        raise ValueError(f"TypicalOptions.num_heads={opts.num_heads} but only {num_heads_of(heads)} heads were given")
    N = opts.num_heads or num_heads_of(heads)
    if needs_long_switch(config, input_ids.shape[1] + max_new_tokens + N):
        raise ValueError(
            f"typical acceptance: prompt + max_new_tokens + drafts = {input_ids.shape[1] + max_new_tokens + N} may "
            f"cross rope_original_max_position_embeddings={config.rope_original_max_position_embeddings} of this "
            "longrope model, where its cache would need re-encoding with the long factors; lower max_new_tokens "
            "or the prompt length")
    B = input_ids.shape[0]
    rngs = jax.random.split(rng, B)
    fn = functools.partial(_generate_row, config=config, max_new_tokens=max_new_tokens, opts=opts, top_k=top_k,
                           pad_id=pad_id)
    tokens, lengths, steps, acc = jax.vmap(fn, in_axes=(None, None, 0, 0, 0, None, None, 0))(
        params, heads, input_ids, attention_mask, rngs, sp, stop_ids, inputs_embeds)
    N = opts.num_heads or num_heads_of(heads)
    return TypicalOutput(tokens=tokens, lengths=lengths, steps=steps, accepted=acc, drafted=jnp.asarray(N))


def acceptance_stats(out: TypicalOutput) -> dict:
    """mean_accepted_length (tokens per decode forward pass, 1 = nothing accepted) and
    acceptance_rate (fraction of drafted tokens accepted), over all rows."""
    steps = int(np.sum(to_host(out.steps)))  # gathered when sharded across processes
    acc = int(np.sum(to_host(out.accepted)))
    n = int(out.drafted)
    return {"mean_accepted_length": (steps + acc) / max(steps, 1),
            "acceptance_rate": acc / max(steps * n, 1), "decode_forward_passes": steps, "accepted_tokens": acc}


# ------------------------------------------------------------------------------ CLI
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of --strategy typical."""
    g = parser.add_argument_group("typical")
    g.add_argument("--heads", default=None, help="directory of trained Medusa heads (save_heads / workflow medusa)")
    g.add_argument("--epsilon", type=float, default=0.09, help="typical acceptance hard threshold")
    g.add_argument("--delta", type=float, default=0.3, help="typical acceptance entropy-dependent threshold")
    g.add_argument("--num-heads", type=int, default=0, help="heads to use (0 = all)")
    g.add_argument("--tree-topk", type=int, default=1, help="1 = one candidate chain; k > 1 = chains from top-k")
    g.add_argument("--num-paths", type=int, default=4, help="candidate chains verified per step when --tree-topk > 1")


def run_cli(params: dict, config: ModelConfig, tokenizer, prompts: list[list[int]], args) -> list[dict]:
    """--strategy typical: one JSON-able dict per prompt, with acceptance figures."""
    if not args.heads:
        raise ValueError("--strategy typical needs --heads PATH (train heads with configs/medusa_heads.py)")
    heads, _ = load_heads(args.heads, config)
    if args.num_heads > num_heads_of(heads):
        raise ValueError(f"--num-heads {args.num_heads} but {args.heads} has {num_heads_of(heads)} heads")
    opts = TypicalOptions(epsilon=args.epsilon, delta=args.delta, num_heads=args.num_heads,
                          tree_topk=args.tree_topk, num_paths=args.num_paths)
    sp = SamplingParams.make(args.temperature, args.top_p)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    stops = jnp.asarray(stop_ids_from(args, config), jnp.int32)
    rng = jax.random.PRNGKey(int(args.seed))
    kw = dict(config=config, max_new_tokens=int(args.max_new_tokens), opts=opts, top_k=int(args.top_k), pad_id=pad)
    results = []
    for start, chunk in batches(prompts, int(args.batch_size)):
        ids, mask = pad_batch(chunk, bucket_batch(len(chunk), int(args.batch_size)), pad)
        rng, sub = jax.random.split(rng)
        jax.block_until_ready(typical_generate(params, heads, ids, mask, sub, sp, stops, **kw))  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(typical_generate(params, heads, ids, mask, sub, sp, stops, **kw))
        dt = time.perf_counter() - t0
        toks, lens, steps, acc = to_host((out.tokens, out.lengths, out.steps, out.accepted))
        n = int(out.drafted)
        for j, p in enumerate(chunk):
            new = toks[j, : lens[j]].tolist()
            s = int(steps[j])
            results.append(dict(
                index=start + j, strategy="typical", input_ids=list(map(int, p)), output_ids=new,
                text=decode_text(tokenizer, new), num_new_tokens=len(new),
                tokens_per_s=len(new) / dt if dt > 0 else None, decode_s=dt, forward_passes=1 + s,
                accepted_tokens=int(acc[j]), mean_accepted_length=(s + int(acc[j])) / max(s, 1),
                acceptance_rate=int(acc[j]) / max(s * n, 1), num_heads=n,
            ))
    return results


# ------------------------------------------------------------------------- workflow
