"""Decoding strategies of the generation CLI (`python -m latent_jax.generate --strategy NAME`).

`STRATEGIES` maps a strategy name to the module that implements it; modules are imported
only when chosen. Each strategy module exposes

    add_cli_args(parser: argparse.ArgumentParser) -> None      # its own options, if any
    run_cli(params, config, tokenizer, prompts: list[list[int]], args) -> list[dict]

run_cli returns one dict per prompt with at least input_ids, output_ids (new tokens only),
text (None without a tokenizer), tokens_per_s (decode only, compile excluded) and
forward_passes. This module implements `greedy` and `sample` on sampling.prefill/decode, and
the helpers other strategies share (batching, bucketing, AOT compile, timing).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.decoding.sampling import SamplingParams, decode, left_pad, prefill
from latent_jax.parallel import to_host

# name -> module path (a module exposing add_cli_args and run_cli)
STRATEGIES: dict[str, str] = {
    "greedy": "latent_jax.decoding.strategies",
    "sample": "latent_jax.decoding.strategies",
    "tova": "latent_jax.decoding.tova",
    "diffusion": "latent_jax.decoding.diffusion",
    "typical": "latent_jax.decoding.speculative",
}


def get_strategy(name: str) -> ModuleType:
    """Import the module registered for `name` (clear errors for unknown or broken entries)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}")
    path = STRATEGIES[name]
    try:
        mod = importlib.import_module(path)
    except ModuleNotFoundError as e:
        raise ValueError(f"strategy {name!r} is registered as module {path!r}, which cannot be imported ({e})") from e
    for fn in ("add_cli_args", "run_cli"):
        if not callable(getattr(mod, fn, None)):
            raise ValueError(f"strategy module {path!r} lacks {fn}(); every strategy module defines add_cli_args and run_cli")
    return mod


# ------------------------------------------------------------------------- shared helpers
def bucket_length(n: int, minimum: int = 16) -> int:
    """Round a prompt length up to a bucket (powers of two up to 512, then multiples of 256),
    so prompts of similar lengths share one compiled program."""
    b = minimum
    while b < n and b < 512:
        b *= 2
    if n > b:
        b = -(-n // 256) * 256
    return b


def bucket_batch(n: int, batch_size: int) -> int:
    """Batch rows to compile for `n` prompts: the next power of two, capped at batch_size."""
    b = 1
    while b < n:
        b *= 2
    return max(min(b, batch_size), n)


def batches(items: Sequence, size: int) -> Iterator[tuple[int, list]]:
    """(start index, chunk) over `items` in chunks of `size`."""
    for i in range(0, len(items), size):
        yield i, list(items[i: i + size])


def pad_batch(prompts: list[list[int]], rows: int, pad_id: int, min_bucket: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to a bucketed length and fill the batch to `rows` rows by repeating the
    first prompt (extra rows are discarded by the caller). Returns (ids, mask) int32."""
    filled = list(prompts) + [prompts[0]] * (rows - len(prompts))
    return left_pad(filled, pad_id, bucket=bucket_length(max(len(p) for p in filled), min_bucket))


_COMPILED: dict[Any, Any] = {}


def aot(fn: Callable, *args, key: Any = None, **static) -> Any:
    """fn.lower(*args, **static).compile(), cached by `key` (default: shapes/dtypes + static)."""
    if key is None:
        shapes = jax.tree.map(lambda x: (np.shape(x), str(jnp.result_type(x))), args)
        key = (fn, str(shapes), tuple(sorted(static.items())))
    if key not in _COMPILED:
        _COMPILED[key] = fn.lower(*args, **static).compile()
    return _COMPILED[key]


def decode_text(tokenizer, ids: list[int]) -> str | None:
    return None if tokenizer is None else tokenizer.decode(ids, skip_special_tokens=True)


def stop_ids_from(args, config) -> list[int]:
    """--stop-ids if given ('' or 'none' = no stop tokens), otherwise the model's eos tokens."""
    if getattr(args, "stop_ids", None) is None:
        return list(config.eos_token_id)
    return list(args.stop_ids)


# ---------------------------------------------------------------- greedy / sample strategy
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """greedy and sample use only the shared options (--temperature, --top-k, --top-p, --seed)."""


def run_cli(params, config, tokenizer, prompts: list[list[int]], args) -> list[dict]:
    """Greedy (--strategy greedy) or temperature/top-k/top-p sampling (--strategy sample),
    batched and KV-cached; timing excludes compilation (programs are AOT-compiled first)."""
    greedy = args.strategy == "greedy"
    sp = SamplingParams.make(0.0 if greedy else args.temperature, 1.0 if greedy else args.top_p)
    top_k = 0 if greedy else int(args.top_k)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    stops = jnp.asarray(stop_ids_from(args, config), jnp.int32)
    max_new = int(args.max_new_tokens)
    static = dict(config=config, max_new_tokens=max_new, top_k=top_k, pad_id=int(pad_id))
    rng = jax.random.PRNGKey(int(args.seed))
    results: list[dict] = []
    for start, chunk in batches(prompts, int(args.batch_size)):
        ids, mask = pad_batch(chunk, bucket_batch(len(chunk), int(args.batch_size)), pad_id)
        ids, mask = jnp.asarray(ids), jnp.asarray(mask)
        rng, sub = jax.random.split(rng)
        pre = aot(prefill, params, ids, mask, sub, sp, stops, cache_dtype=None, **static)
        state_shape = jax.eval_shape(
            functools.partial(prefill, cache_dtype=None, **static), params, ids, mask, sub, sp, stops
        )
        dec = aot(decode, params, state_shape, sp, stops, **static)
        t0 = time.perf_counter()
        state = jax.block_until_ready(pre(params, ids, mask, sub, sp, stops))
        t1 = time.perf_counter()
        out = jax.block_until_ready(dec(params, state, sp, stops))
        t2 = time.perf_counter()
        toks, lens, steps = to_host((out.tokens, out.lengths, out.steps))
        steps = int(steps)
        stop_set = set(np.asarray(stops).tolist())
        for j, p in enumerate(chunk):
            new = toks[j, : lens[j]].tolist()
            results.append(
                dict(
                    index=start + j,
                    strategy=args.strategy,
                    input_ids=list(map(int, p)),
                    output_ids=new,
                    text=decode_text(tokenizer, new),
                    num_new_tokens=len(new),
                    stopped=bool(new) and new[-1] in stop_set,
                    tokens_per_s=(len(new) - 1) / (t2 - t1) if len(new) > 1 and t2 > t1 else None,
                    prefill_s=t1 - t0,
                    decode_s=t2 - t1,
                    forward_passes=1 + steps,
                )
            )
    return results
