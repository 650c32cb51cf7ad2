"""Generation CLI for every decoding strategy.

    python -m latent_jax.generate --model PATH --prompt "Hello" [--max-new-tokens 32]
    python -m latent_jax.generate --model PATH --input-ids 1,2,3 --strategy sample --temperature 0.7 --top-p 0.9 --json
    python -m latent_jax.generate --model PATH --prompts-file prompts.jsonl --json
    python -m latent_jax.generate --model VLM --image cat.jpg --prompt "<image>\nWhat is this?" --json
    python -m latent_jax.generate --model VLM --video clip.mp4 --num-frames 8 --prompt "Describe it."

PATH is a Hugging Face directory (config.json + safetensors) or a latent_jax checkpoint from
`latent_jax.convert`. A prompts file has one JSON object per line with "prompt" (text) or
"input_ids" (a list of ints). --json prints one JSON object per prompt with input_ids,
output_ids (new tokens only), text, tokens_per_s (decode only, compile excluded) and
forward_passes. Strategy-specific options are listed by `--strategy NAME --help`.

Vision-language models (InternVL3, Phi-4-multimodal; HF directory or converted checkpoint)
take --image or --video with --prompt or --input-ids (greedy / sample): see
latent_jax.decoding.vlm for the placeholder rules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from latent_jax.data.video import vlm_video_frames
from latent_jax.decoding.strategies import STRATEGIES, get_strategy
from latent_jax.decoding.vlm import run_cli
from latent_jax.models.hf_vlm import is_vlm_checkpoint, is_vlm_dir, load_vlm_any
from latent_jax.models.io import load_any, resolve_checkpoint
from latent_jax.paths import resolve_path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _int_list(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None


def build_parser(strategy: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with `strategy`, that strategy's own options are added."""
    p = argparse.ArgumentParser(
        prog="python -m latent_jax.generate",
        description="Generate text with a latent_jax model (HF directory or Orbax checkpoint).",
    )
    p.add_argument("--model", required=True, help="HF model directory or latent_jax checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one text prompt (needs a tokenizer in the model directory)")
    src.add_argument("--input-ids", type=_int_list, help="one prompt as token ids, e.g. 1,2,3")
    src.add_argument("--prompts-file", help='JSONL file: one {"prompt": TEXT} or {"input_ids": [...]} per line')
    p.add_argument("--strategy", default="greedy", help=f"decoding strategy: {', '.join(sorted(STRATEGIES))}")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (sample; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-ids", type=_int_list, default=None,
                   help="stop token ids, e.g. 2,32000 (default: the model's eos; 'none' = never stop early)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: the checkpoint's); params are cast to it too")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    mm = p.add_argument_group("vision-language models (InternVL3, Phi-4-multimodal)")
    media = mm.add_mutually_exclusive_group()
    media.add_argument("--image", help="image file spliced in at the prompt's <image> placeholder")
    media.add_argument("--video", help="video file (frames sampled uniformly) spliced in at the placeholder")
    mm.add_argument("--num-frames", type=int, default=8, help="frames sampled from --video")
    mm.add_argument("--max-tiles", type=int, default=12, help="InternVL tiles / Phi-4-MM HD crops per image")
    mm.add_argument("--hico-tokens-per-frame", type=int, default=0, help="HiCo: merge video tokens to this many per frame (0 = off)")
    mm.add_argument("--hico-clip-frames", type=int, default=4, help="HiCo: frames merged together")
    if strategy is not None:
        get_strategy(strategy).add_cli_args(p)
    return p


def load_tokenizer(path: str):
    """A transformers tokenizer from the model directory, or None when it has no tokenizer files."""
    if not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a broken tokenizer is a user-fixable problem; keep it to one line
        raise ValueError(f"cannot load the tokenizer in {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def read_prompts(args, tokenizer, vocab_size: int) -> list[list[int]]:
    """Token-id prompts from --prompt, --input-ids or --prompts-file (validated)."""

    def encode(text: str, where: str) -> list[int]:
        if tokenizer is None:
            raise ValueError(f"{where} is text but {args.model} has no tokenizer files; pass token ids (--input-ids 1,2,3)")
        return list(tokenizer(text)["input_ids"])

    prompts: list[list[int]] = []
    if args.prompt is not None:
        prompts.append(encode(args.prompt, "--prompt"))
    elif args.input_ids is not None:
        prompts.append(list(args.input_ids))
    else:
        if not os.path.isfile(args.prompts_file):
            raise FileNotFoundError(f"--prompts-file {args.prompts_file} does not exist")
        with open(args.prompts_file) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{args.prompts_file} line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where} is not valid JSON ({e.msg})") from None
                if isinstance(row, str):
                    row = {"prompt": row}
                if not isinstance(row, dict) or not ({"prompt", "input_ids"} & set(row)):
                    raise ValueError(f'{where} needs a "prompt" (text) or "input_ids" (list of ints) field')
                if "input_ids" in row:
                    ids = row["input_ids"]
                    if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                        raise ValueError(f'{where}: "input_ids" must be a list of ints')
                    prompts.append(ids)
                else:
                    prompts.append(encode(str(row["prompt"]), where))
        if not prompts:
            raise ValueError(f"--prompts-file {args.prompts_file} has no prompts")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; give at least one token")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return prompts


def _validate(args, config) -> None:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}; must be >= 1")
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}; must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p}; must be in (0, 1]")
    if not 0 <= args.top_k <= config.vocab_size:
        raise ValueError(f"--top-k {args.top_k}; must be in [0, vocab_size={config.vocab_size}]")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}; must be >= 1")


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse argv, load the model, generate; returns the per-prompt result dicts."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--strategy", default="greedy")
    known, _ = pre.parse_known_args(argv)
    args = build_parser(known.strategy).parse_args(argv)
    for name in ("model", "prompts_file", "image", "video"):  # relative to the current directory, once, here
        if getattr(args, name, None):
            setattr(args, name, resolve_path(getattr(args, name)))

    if os.path.isdir(args.model) and (is_vlm_dir(args.model) or is_vlm_checkpoint(args.model)):
        return _run_vlm(args)
    if args.image or args.video:
        raise ValueError(f"--image / --video need a vision-language model (InternVL3, Phi-4-multimodal); {args.model} is text-only")
    over = {"dtype": args.dtype} if args.dtype else {}
    config, params = load_any(args.model, dtype=args.dtype, **over)
    _validate(args, config)
    tokenizer = load_tokenizer(resolve_checkpoint(args.model))
    prompts = read_prompts(args, tokenizer, config.vocab_size)
    return get_strategy(args.strategy).run_cli(params, config, tokenizer, prompts, args)


def _run_vlm(args) -> list[dict[str, Any]]:
    if not (args.image or args.video):
        raise ValueError(f"{args.model} is a vision-language model; pass --image PATH or --video PATH")
    for flag, path in (("--image", args.image), ("--video", args.video)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path} does not exist")
    cfg, params, _ = load_vlm_any(args.model, dtype=args.dtype)
    if args.dtype:
        cfg = cfg.replace(text=cfg.text.replace(dtype=args.dtype))
    frames = vlm_video_frames(cfg, args.video, args.num_frames) if args.video else None
    return run_cli(args, cfg, params, load_tokenizer(resolve_checkpoint(args.model)), frames=frames)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 a user error reported on one line)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        results = run(argv)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("LATENT_JAX_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    as_json = "--json" in argv
    for r in results:
        if as_json:
            print(json.dumps(r))
        else:
            shown = r["text"] if r.get("text") is not None else " ".join(map(str, r["output_ids"]))
            print(shown)
    if not as_json and results:
        tps = [r["tokens_per_s"] for r in results if r.get("tokens_per_s")]
        if tps:
            print(f"[{len(results)} prompts, decode {sum(tps) / len(tps):.1f} tokens/s per prompt, "
                  f"{results[0]['forward_passes']} forward passes]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
