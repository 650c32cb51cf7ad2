"""Coconut: latent_jax's scan + KV-cache forward against (a) the original algorithm as the
facebookresearch/coconut code runs it, in PyTorch with a transformers LlamaForCausalLM, and
(b) a JAX multi-pass forward without any cache; same weights, same batch, one process.

    python benchmarks/coconut.py                      # embedded-default-sized model (2 x 128)
    python benchmarks/coconut.py --size large         # 4 layers x 256, vocab 1024
    python benchmarks/coconut.py --baselines jax      # only the JAX no-cache comparison
    python benchmarks/coconut.py --size large --layers 2 --hidden 128 --batch 8 --question 64 \
        --latents 6 --answer 12 --gen-batch 8 --new-tokens 12 --baselines jax   # older runs

Training step (loss + backward + AdamW update):
  * latent_jax: one jitted step, coconut_loss (prefix prefilled once, lax.scan over the
    thought columns against the prefix cache) + value_and_grad + optax.adamw.
  * torch original: the Coconut wrapper of facebookresearch/coconut (coconut.py), re-
    implemented below for transformers 5: n + 1 passes over the batch, pass 0 over the
    prefix before the earliest latent, one pass per thought column, a final pass over the
    rest, each pass reusing the KV cache (past_key_values) of the earlier ones; after each
    pass the latent embeddings take the last-layer hidden state of the previous position
    (rebuilt out of place from per-position vectors, as the original does to avoid in-place
    writes; `--torch-fill index` uses one out-of-place index_put instead). torch.optim.AdamW.
  * JAX naive: n + 1 full passes without a cache (naive_coconut_logits), loss + grads.
  The losses of the first steps (identical weights, then identical updates) are printed
  side by side; they agree to ~1e-5 in float32.

Generation (greedy):
  * latent_jax: coconut_generate over all --gen-batch questions at once (batched prefill,
    thought scan, KV-cached while_loop decode).
  * torch original: Coconut.generate of the original, one question at a time (batch 1 is
    all it supports): the multi-pass forward over the prompt, then each further token runs
    the base model over the whole embedded sequence again (no cache), stopping at EOS.
  * JAX naive: naive_generate_one, batch 1, whole sequence and all passes per token.
  Outputs are compared token for token (up to the first EOS).

Every timing is the median of --reps (JAX) or --slow-reps (the baselines) timed runs after
a warm-up (compiles excluded). The CPU thread count of both libraries is --threads (default:
all cores, JAX's default); OMP_WAIT_POLICY defaults to PASSIVE (see below the imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from threads import pin_xla_threads  # noqa: E402  (benchmarks/threads.py, before jax)

# torch's OpenMP threads otherwise spin-wait at every barrier; on a CPU shared with other jobs
# that stalls a 2-thread torch by 10x or more (measured), which would flatter the ratios
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_THREADS = pin_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from latent_jax.decoding.sampling import SamplingParams  # noqa: E402
from latent_jax.latent.coconut import (  # noqa: E402
    coconut_generate,
    coconut_loss,
    masked_cross_entropy,
    naive_coconut_logits,
    naive_generate_one,
)
from latent_jax.testing import tiny_config  # noqa: E402
from latent_jax.models.decoder import init_params  # noqa: E402

LAT, START, END, EOS = 3, 4, 5, 2

# model and batch shapes; explicit flags override the preset's values
SIZES = {
    # the embedded default (configs/prosqa_coconut.py): 2 layers x 128, 8 heads, word
    # vocabulary of a few dozen ids, batch 64, ~80-token sequences, up to 4 thoughts
    "default": dict(layers=2, hidden=128, head_dim=16, mlp_ratio=2, vocab=48, batch=64, question=66, latents=4,
                    answer=8, gen_batch=64, new_tokens=12),
    # larger: 4 layers x 256 (heads of 64), vocab 1024, longer questions and 6 thoughts
    "large": dict(layers=4, hidden=256, head_dim=64, mlp_ratio=4, vocab=1024, batch=8, question=96, latents=6,
                  answer=16, gen_batch=64, new_tokens=16),
}


def make_batch(B, q_len, n, ans_len, vocab, rng, with_answer=True):
    """Rows with different question lengths and latent counts, aligned at the first latent
    (left padding, as the original's collator does)."""
    qs = [rng.integers(10, vocab, size=int(rng.integers(q_len // 2, q_len + 1))).tolist() + [START] for _ in range(B)]
    ks = [n - (i % 3) if i % 3 < n else n for i in range(B)]
    ans = [rng.integers(10, vocab, size=ans_len).tolist() + [EOS] if with_answer else [] for _ in range(B)]
    P = max(len(q) for q in qs)
    rest = max(k + 1 + len(a) for k, a in zip(ks, ans)) - n
    T = P + n + rest
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    lat = np.zeros((B, T), bool)
    lab = np.full((B, T), -100, np.int32)
    for b, (q, k, a) in enumerate(zip(qs, ks, ans)):
        seq = q + [LAT] * k + [END] + a
        o = P - len(q)
        ids[b, o : o + len(seq)] = seq
        mask[b, o : o + len(seq)] = 1
        lat[b, P : P + k] = True
        lab[b, P + k + 1 : o + len(seq)] = a
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    batch = {k: jnp.asarray(v) for k, v in dict(input_ids=ids, attention_mask=mask, latent_mask=lat, labels=lab,
                                                    position_ids=pos).items()}
    prompts = [q + [LAT] * k + [END] for q, k in zip(qs, ks)]
    return batch, P, n, prompts


def timeit(fn, reps, with_result=False, warm_up=True):
    """Median seconds of `reps` calls after one warm-up call (compile); with the warm-up's
    result when asked."""
    res = fn() if warm_up else None
    ts = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return (statistics.median(ts), res) if with_result else statistics.median(ts)


def temp_bytes(jitted, *args):
    try:
        return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def until_eos(toks):
    toks = list(toks)
    return toks[: toks.index(EOS)] if EOS in toks else toks


# ----------------------------------------------------------------------------- torch original
def torch_model_from_params(params, cfg):
    """A transformers LlamaForCausalLM (float32, its default sdpa attention) holding the
    same weights as the latent_jax params."""
    import torch
    import transformers

    from latent_jax.models.hf import params_to_hf

    hf = cfg.to_hf()
    hf.pop("architectures", None)
    hf.pop("torch_dtype", None)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf))
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in params_to_hf(params, cfg).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"weight export: missing {missing}, unexpected {unexpected}")
    return model.float()


def make_torch_coconut(base, latent_id, eos_id, fill="original"):
    """The Coconut module of facebookresearch/coconut (coconut.py), written again for
    transformers 5 (DynamicCache instead of legacy tuples). fill="original" rebuilds the
    input embeddings from per-position vectors after each pass as the original does;
    fill="index" does the same replacement with one out-of-place index_put."""
    import torch

    class OriginalCoconut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base
            self.embedding = base.get_input_embeddings()

        def _feed_back(self, embeds, hidden, offset, pairs):
            """Latent (b, t) takes the last-layer hidden state of (b, t - 1); `hidden` starts
            at column `offset`. Never writes in place (autograd)."""
            if not pairs:
                return embeds
            if fill == "index":
                bi = torch.tensor([b for b, _ in pairs])
                ti = torch.tensor([t for _, t in pairs])
                return embeds.index_put((bi, ti), hidden[bi, ti - 1 - offset])
            rows = [[embeds[b, t] for t in range(embeds.shape[1])] for b in range(embeds.shape[0])]
            for b, t in pairs:
                rows[b][t] = hidden[b, t - 1 - offset]
            return torch.stack([torch.stack(r) for r in rows])

        def forward(self, input_ids, attention_mask, labels, position_ids):
            B, T = input_ids.shape
            latents = [(input_ids[b] == latent_id).nonzero().flatten().tolist() for b in range(B)]
            n_pass = max(len(x) for x in latents)
            embeds = self.embedding(input_ids)
            lo, hi = 0, (min(x[0] for x in latents if x) if n_pass else T)
            cache, logits = None, []
            for k in range(n_pass + 1):
                if cache is not None and cache.get_seq_length() > lo:
                    cache.crop(lo - cache.get_seq_length())  # keep the columns before this pass's first one
                out = self.base(inputs_embeds=embeds[:, lo:hi], attention_mask=attention_mask[:, :hi],
                                position_ids=position_ids[:, lo:hi], past_key_values=cache, use_cache=True,
                                output_hidden_states=True)
                logits.append(out.logits)
                if k == n_pass:
                    break
                cache = out.past_key_values
                pairs = [(b, x[k]) for b, x in enumerate(latents) if len(x) > k]
                embeds = self._feed_back(embeds, out.hidden_states[-1], lo, pairs)
                lo, hi = hi, (T if k + 1 == n_pass else hi + 1)
            logits = torch.cat(logits, dim=1)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
            return loss, embeds, logits

        @torch.no_grad()
        def generate(self, input_ids, max_new_tokens):
            """Batch 1 only, as the original."""
            assert input_ids.shape[0] == 1
            tokens = input_ids[0].tolist()
            L = input_ids.shape[1]
            _, embeds, logits = self.forward(input_ids, torch.ones_like(input_ids), input_ids.clone(),
                                             torch.arange(L).reshape(1, -1))
            nxt = int(torch.argmax(logits[0, -1]))
            tokens.append(nxt)
            embeds = torch.cat([embeds, self.embedding(torch.tensor(nxt)).view(1, 1, -1)], dim=1)
            for _ in range(max_new_tokens - 1):
                out = self.base(inputs_embeds=embeds)  # the whole sequence again, no cache
                nxt = int(torch.argmax(out.logits[0, -1]))
                if nxt == eos_id:
                    break
                tokens.append(nxt)
                embeds = torch.cat([embeds, self.embedding(torch.tensor(nxt)).view(1, 1, -1)], dim=1)
            return tokens[L:]

    return OriginalCoconut()


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="default",
                    help="preset for the flags below (explicit flags win)")
    for flag in ("layers", "hidden", "head-dim", "mlp-ratio", "vocab", "batch", "question", "latents", "answer",
                 "gen-batch", "new-tokens"):
        ap.add_argument(f"--{flag}", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5, help="timed repeats per measurement (median reported)")
    ap.add_argument("--slow-reps", type=int, default=3,
                    help="timed repeats of the torch baselines and of the batch-1 JAX generation")
    ap.add_argument("--check-steps", type=int, default=2,
                    help="train steps whose losses are compared (they are also the warm-up)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--baselines", default="torch,jax", help="comma list: torch (the original), jax (no cache)")
    ap.add_argument("--torch-fill", choices=("original", "index", "both"), default="both",
                    help="how the torch original writes thoughts into the embeddings (train step)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for JAX and torch (0: all cores)")
    ap.add_argument("--json-out", default="", help="also write the figures here (JSON)")
    a = ap.parse_args()
    for k, v in SIZES[a.size].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    baselines = {b.strip() for b in a.baselines.split(",") if b.strip()}
    if baselines - {"torch", "jax"}:
        ap.error(f"--baselines: unknown {sorted(baselines - {'torch', 'jax'})}")

    heads = max(1, a.hidden // a.head_dim)
    cfg = tiny_config("llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.mlp_ratio * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=a.head_dim, eos_token_id=(EOS,))
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    res: dict = {"args": vars(a)}
    threads = a.threads or os.cpu_count()
    print(f"device: {jax.devices()[0].device_kind}, {threads} threads  model: {a.layers} layers, hidden "
          f"{a.hidden}, {heads} heads, vocab {a.vocab}, {cfg.num_params() / 1e6:.2f}M params, float32")
    if "torch" in baselines:
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY')}), transformers "
              f"{transformers.__version__}, jax {jax.__version__}")

    # ------------------------------------------------------------------ training step
    batch, P, n, _ = make_batch(a.batch, a.question, a.latents, a.answer, a.vocab, rng)
    print(f"\ntrain batch {tuple(batch['input_ids'].shape)}, {n} thought columns at {P}, "
          f"rows with {max(1, n - 2)}-{n} thoughts")

    import optax

    tx = optax.adamw(a.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=a.weight_decay)

    def train_step(p, o, b):
        loss, g = jax.value_and_grad(lambda q: coconut_loss(q, b, config=cfg, latent_start=P, num_latent=n)[0])(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731 - fresh buffers (the step donates its inputs)
    jstate = [copy(params), tx.init(params)]

    def jax_step():
        p, o, loss = train_step(jstate[0], jstate[1], batch)
        jstate[0], jstate[1] = p, o
        return float(jax.block_until_ready(loss))

    jax_losses = [jax_step() for _ in range(a.check_steps)]
    t_ours = timeit(jax_step, a.reps)
    print(f"latent_jax train step (scan + cache, loss + grads + AdamW): {1e3 * t_ours:.1f} ms")
    res.update(train_shape=list(batch["input_ids"].shape), train_ms=1e3 * t_ours, train_losses=jax_losses)

    if "torch" in baselines:
        import torch

        tb = {k: torch.from_numpy(np.asarray(batch[k]).astype(np.int64))
              for k in ("input_ids", "attention_mask", "labels", "position_ids")}
        fills = ("original", "index") if a.torch_fill == "both" else (a.torch_fill,)
        for fill in fills:
            base = torch_model_from_params(params, cfg).train()
            model = make_torch_coconut(base, LAT, EOS, fill=fill)
            opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=a.weight_decay)

            def torch_step():
                loss = model(**tb)[0]
                loss.backward()
                opt.step()
                opt.zero_grad()
                return float(loss.detach())

            t_losses = [torch_step() for _ in range(a.check_steps)]
            t_torch = timeit(torch_step, a.slow_reps, warm_up=False)  # the check steps warmed up
            diff = max(abs(x - y) for x, y in zip(jax_losses, t_losses))
            print(f"torch original (fill: {fill}), {n + 1} passes with KV cache, loss + backward + AdamW: "
                  f"{1e3 * t_torch:.1f} ms  -> ratio torch / latent_jax = {t_torch / t_ours:.2f}x")
            print(f"  losses of the first {a.check_steps} steps: latent_jax "
                  f"{' '.join(f'{x:.6f}' for x in jax_losses)} | torch {' '.join(f'{x:.6f}' for x in t_losses)}"
                  f"  max |diff| {diff:.1e}")
            res[f"torch_{fill}"] = dict(train_ms=1e3 * t_torch, ratio=t_torch / t_ours, losses=t_losses, max_diff=diff)

    if "jax" in baselines:
        scan_step = jax.jit(jax.value_and_grad(
            lambda p, b: coconut_loss(p, b, config=cfg, latent_start=P, num_latent=n)[0]))
        naive_step = jax.jit(jax.value_and_grad(
            lambda p, b: masked_cross_entropy(naive_coconut_logits(
                p, b["input_ids"], b["attention_mask"], b["latent_mask"], b["position_ids"], config=cfg,
                num_passes=n), b["labels"])[0]))
        ls, _ = scan_step(params, batch)
        ln, _ = naive_step(params, batch)
        t_scan = timeit(lambda: jax.block_until_ready(scan_step(params, batch)), a.reps)
        t_naive = timeit(lambda: jax.block_until_ready(naive_step(params, batch)), a.reps)
        print(f"JAX loss + grads: scan+cache {1e3 * t_scan:.1f} ms, naive {n + 1}-pass without cache "
              f"{1e3 * t_naive:.1f} ms, ratio naive/scan = {t_naive / t_scan:.2f}x  (loss scan {float(ls):.6f}, "
              f"naive {float(ln):.6f})")
        ms, mn = temp_bytes(scan_step, params, batch), temp_bytes(naive_step, params, batch)
        if ms and mn:
            print(f"  compiled temp memory: scan {ms / 2**20:.1f} MiB, naive {mn / 2**20:.1f} MiB, "
                  f"ratio {mn / ms:.2f}x")
        res["jax_naive"] = dict(scan_ms=1e3 * t_scan, naive_ms=1e3 * t_naive, ratio=t_naive / t_scan,
                                loss_scan=float(ls), loss_naive=float(ln),
                                temp_mib=[ms / 2**20, mn / 2**20] if ms and mn else None)

    # ------------------------------------------------------------------ generation
    gb, P, n, prompts = make_batch(a.gen_batch, a.question, a.latents, 0, a.vocab, rng, with_answer=False)
    stop = jnp.asarray([EOS], jnp.int32)
    sp = SamplingParams.make(0.0)
    print(f"\ngeneration: {a.gen_batch} questions (prompts {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, {max(1, n - 2)}-{n} thoughts), greedy, up to {a.new_tokens} new tokens, stop at EOS")

    def batched():
        return jax.block_until_ready(coconut_generate(
            params, gb["input_ids"], gb["attention_mask"], gb["latent_mask"], jax.random.PRNGKey(0), sp, stop,
            config=cfg, latent_start=P, num_latent=n, max_new_tokens=a.new_tokens))

    out = batched()
    t_b = timeit(batched, a.reps)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    ours = [until_eos(toks[i, : lens[i]]) for i in range(len(prompts))]
    total = int(lens.sum())
    print(f"latent_jax coconut_generate, batch {a.gen_batch} at once: {1e3 * t_b:.1f} ms ({total / t_b:.0f} tok/s, "
          f"{total} tokens, {sum(EOS in toks[i, : lens[i]] for i in range(len(prompts)))} rows stopped at EOS)")
    res.update(gen_ms=1e3 * t_b, gen_tokens=total)

    if "torch" in baselines:
        import torch

        model = make_torch_coconut(torch_model_from_params(params, cfg).eval(), LAT, EOS)
        tp = [torch.tensor([p], dtype=torch.long) for p in prompts]

        def torch_gen():
            return [model.generate(x, a.new_tokens) for x in tp]

        t_t, ref = timeit(torch_gen, a.slow_reps, with_result=True)
        ref = [until_eos(r) for r in ref]
        agree = np.mean([r == o for r, o in zip(ref, ours)])
        print(f"torch original generate, batch 1 x {a.gen_batch}: {t_t:.3f} s  -> ratio torch / latent_jax = "
              f"{t_t / t_b:.1f}x; identical greedy outputs: {100 * agree:.0f}% of {len(prompts)}")
        res["gen_torch"] = dict(s=t_t, ratio=t_t / t_b, identical=float(agree))

    if "jax" in baselines:
        def one_by_one():
            return [naive_generate_one(params, p, LAT, config=cfg, max_new_tokens=a.new_tokens, stop_ids=(EOS,))
                    for p in prompts]

        t_n, ref = timeit(one_by_one, a.slow_reps, with_result=True)  # the warm-up compiles every length bucket
        ref = [until_eos(r) for r in ref]
        agree = np.mean([r == o for r, o in zip(ref, ours)])
        print(f"JAX naive batch-1 uncached generate: {t_n:.3f} s  -> ratio {t_n / t_b:.1f}x; identical greedy "
              f"outputs: {100 * agree:.0f}%")
        res["gen_jax_naive"] = dict(s=t_n, ratio=t_n / t_b, identical=float(agree))
    if a.json_out:
        import json

        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
