"""Generation CLI for every decoding strategy.

    python -m latent_jax.generate --model PATH --prompt "Hello" [--max-new-tokens 32]
    python -m latent_jax.generate --model PATH --input-ids 1,2,3 --strategy sample --temperature 0.7 --top-p 0.9 --json
    python -m latent_jax.generate --model PATH --prompts-file prompts.jsonl --json
    python -m latent_jax.generate --model VLM --image cat.jpg --prompt "<image>\nWhat is this?" --json
    python -m latent_jax.generate --model VLM --video clip.mp4 --num-frames 8 --prompt "Describe it."
    python -m latent_jax.generate --model runs/prosqa/coconut/best_model --question "0 1 | 1 2 [Q] 2 3 [R] 0"

PATH is a Hugging Face directory (config.json + safetensors) or a latent_jax checkpoint from
`latent_jax.convert`. A prompts file has one JSON object per line with "prompt" (text) or
"input_ids" (a list of ints). --json prints one JSON object per prompt with input_ids,
output_ids (new tokens only), text, tokens_per_s (decode only, compile excluded) and
forward_passes. Strategy-specific options are listed by `--strategy NAME --help`.

Vision-language models (InternVL3, Phi-4-multimodal; HF directory or converted checkpoint)
take --image or --video with --prompt or --input-ids (greedy / sample): see
latent_jax.decoding.vlm for the placeholder rules.

A model saved by a Coconut run (its best_model holds coconut.json: tasks/coconut_model.py)
runs its continuous thoughts, as the run's evaluation does (same decoding, same answer decoder
and cache policy, its max_new_tokens and sampling unless given): --question TEXT (or
{"question": TEXT} rows) is laid out as the evaluation's prompt (the format's question suffix,
then the thought markers and latents); a --prompt / --input-ids prompt gets the thoughts appended,
or is taken as written when it holds <|latent|> tokens. --thoughts N sets the thoughts
(0 = plain decoding of the prompt, any strategy). <|latent|> in a prompt for any other model is
an error: it would be embedded as an ordinary token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax

from latent_jax.data.pipeline import collate_eval
from latent_jax.data.tokenizer import add_coconut_tokens
from latent_jax.data.tokenizer import load_tokenizer as load_run_tokenizer
from latent_jax.data.video import vlm_video_frames
from latent_jax.decoding.diffusion import answer_options_from_config
from latent_jax.decoding.strategies import STRATEGIES, batches, bucket_batch, get_strategy
from latent_jax.decoding.tova import tova_options_from_config
from latent_jax.decoding.vlm import run_cli
from latent_jax.latent.curriculum import END_LATENT, LATENT, START_LATENT, EvalPrompt
from latent_jax.models.hf_vlm import is_vlm_checkpoint, is_vlm_dir, load_vlm_any
from latent_jax.models.io import load_any, resolve_checkpoint
from latent_jax.parallel import to_host
from latent_jax.paths import resolve_path
from latent_jax.tasks.coconut_model import CoconutModel, generate_aligned, read_coconut_model

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
    src.add_argument("--question", help="a question for a model saved by a Coconut run: laid out as its evaluation's "
                     "prompt, with its continuous thoughts")
    src.add_argument("--prompts-file",
                     help='JSONL file: one {"prompt": TEXT}, {"question": TEXT} or {"input_ids": [...]} per line')
    p.add_argument("--strategy", default="greedy", help=f"decoding strategy: {', '.join(sorted(STRATEGIES))} "
                   "(a Coconut run's model: greedy or sample, default its evaluation's)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new tokens per prompt (default 32; a Coconut run's model: its evaluation's)")
    p.add_argument("--thoughts", type=int, default=None,
                   help="continuous thoughts per prompt of a Coconut run's model (default: its evaluation's at the "
                   "test stage, coconut.json); 0 = plain decoding of the prompt")
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


def read_rows(args) -> list[tuple[str, str, Any]]:
    """(where, kind, value) of each prompt of --prompt, --question, --input-ids or --prompts-file:
    kind "prompt" or "question" (text) or "input_ids" (a list of ints)."""
    if args.prompt is not None:
        return [("--prompt", "prompt", args.prompt)]
    if args.question is not None:
        return [("--question", "question", args.question)]
    if args.input_ids is not None:
        return [("--input-ids", "input_ids", list(args.input_ids))]
    if not os.path.isfile(args.prompts_file):
        raise FileNotFoundError(f"--prompts-file {args.prompts_file} does not exist")
    rows: list[tuple[str, str, Any]] = []
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
            kind = next((k for k in ("input_ids", "question", "prompt") if isinstance(row, dict) and k in row), None)
            if kind is None:
                raise ValueError(f'{where} needs a "prompt" or "question" (text) or "input_ids" (list of ints) field')
            if kind == "input_ids":
                ids = row["input_ids"]
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                    raise ValueError(f'{where}: "input_ids" must be a list of ints')
                rows.append((where, kind, ids))
            else:
                rows.append((where, kind, str(row[kind])))
    if not rows:
        raise ValueError(f"--prompts-file {args.prompts_file} has no prompts")
    return rows


def check_ids(prompts: list[list[int]], vocab_size: int) -> list[list[int]]:
    """The prompts, each checked to be non-empty and inside the vocabulary."""
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; give at least one token")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return prompts


def read_prompts(args, tokenizer, vocab_size: int) -> list[list[int]]:
    """Token-id prompts from --prompt, --input-ids or --prompts-file (validated) for a model not
    saved by a Coconut run: --question and Coconut latent tokens are errors."""
    latent_id = None if tokenizer is None else tokenizer.get_vocab().get(LATENT)
    no_coconut = f"{args.model} was not saved by a Coconut run (it has no coconut.json)"

    def encode(text: str, where: str) -> list[int]:
        if tokenizer is None:
            raise ValueError(f"{where} is text but {args.model} has no tokenizer files; pass token ids (--input-ids 1,2,3)")
        marker = next((m for m in (LATENT, START_LATENT, END_LATENT) if m in text), None)
        if marker:
            raise ValueError(f"{where} holds {marker}, but {no_coconut}: it would be embedded as an ordinary token, "
                             "not run as a continuous thought; remove it, or pass a Coconut run's best_model")
        return list(tokenizer(text)["input_ids"])

    prompts: list[list[int]] = []
    for where, kind, value in read_rows(args):
        if kind == "question":
            raise ValueError(f"{where} needs a model saved by a Coconut run, and {no_coconut}; "
                             "pass the whole prompt with --prompt")
        ids = value if kind == "input_ids" else encode(value, where)
        if latent_id is not None and latent_id in ids:
            raise ValueError(f"{where} holds the {LATENT} token id {latent_id}, but {no_coconut}: it would be embedded "
                             "as an ordinary token; remove it, or pass a Coconut run's best_model")
        prompts.append(ids)
    return check_ids(prompts, vocab_size)


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
    if args.thoughts is not None and args.thoughts < 0:
        raise ValueError(f"--thoughts {args.thoughts}; must be >= 0 (0 = plain decoding)")


def _given(argv: list[str] | None, flag: str) -> bool:
    """Whether `flag` (e.g. --temperature) was typed on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a == flag or a.startswith(flag + "=") for a in argv)


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
    path = resolve_checkpoint(args.model)
    coconut = read_coconut_model(path) if os.path.isdir(path) else None
    if coconut is not None:
        return _run_coconut(args, argv, config, params, path, coconut)
    if args.max_new_tokens is None:
        args.max_new_tokens = 32
    _validate(args, config)
    if args.thoughts:
        raise ValueError(f"--thoughts needs a model saved by a Coconut run; {args.model} has no coconut.json")
    tokenizer = load_tokenizer(path)
    prompts = read_prompts(args, tokenizer, config.vocab_size)
    return get_strategy(args.strategy).run_cli(params, config, tokenizer, prompts, args)


def _run_coconut(args, argv, config, params, path: str, cm: CoconutModel) -> list[dict[str, Any]]:
    """A model saved by a Coconut run: its prompts laid out with thoughts and decoded as its
    evaluation decodes (tasks/coconut_model.generate_aligned), or plainly with --thoughts 0."""
    s = cm.settings
    if args.max_new_tokens is None:
        args.max_new_tokens = int(s["max_new_tokens"])
    if not _given(argv, "--strategy"):  # the evaluation's decoding
        args.strategy = "sample" if s["do_sample"] else "greedy"
    if args.strategy == "sample":
        for flag, key in (("--temperature", "temperature"), ("--top-p", "top_p")):
            if not _given(argv, flag):
                setattr(args, key, float(s[key]))
    _validate(args, config)
    tok = load_run_tokenizer(path)
    if add_coconut_tokens(tok) != cm.ids:
        raise ValueError(f"the tokenizer in {path} gives the Coconut tokens ids {tuple(tok.latent_ids)}, but "
                         f"{cm.source} says {tuple(cm.ids)}; save the model again with its run")
    thoughts = args.thoughts
    prompts: list[EvalPrompt] = []
    for i, (where, kind, value) in enumerate(read_rows(args)):
        if kind == "question":
            if LATENT in value:
                raise ValueError(f"{where} holds {LATENT}; give the question text only (--thoughts sets the thoughts), "
                                 "or the whole prompt with --prompt")
            if thoughts == 0:  # plain decoding of the question and its suffix
                ids = cm.question_ids(tok, value)
                p = EvalPrompt(tuple(ids), len(ids), 0, idx=i)
            else:
                p = cm.question_prompt(tok, value, thoughts, idx=i)
        else:
            ids = list(value) if kind == "input_ids" else tok.encode(value, add_special_tokens=True)
            check_ids([ids], config.vocab_size)
            p = _typed_layout(ids, cm, where, thoughts, i)
            if p is None:
                p = (EvalPrompt(tuple(ids), len(ids), 0, idx=i) if thoughts == 0 else
                     cm.text_prompt(ids, cm.answer_lead_ids(tok), thoughts, idx=i))
        prompts.append(p)
    check_ids([list(p.input_ids) for p in prompts], config.vocab_size)
    if args.strategy not in ("greedy", "sample"):
        if any(p.n_latent for p in prompts):
            raise ValueError(f"--strategy {args.strategy} decodes without continuous thoughts; the thoughts of "
                             f"{args.model} run with greedy or sample (its run's answer decoder and cache policy), "
                             "or pass --thoughts 0 for plain decoding")
        return get_strategy(args.strategy).run_cli(params, config, tok.hf, [list(p.input_ids) for p in prompts], args)
    stops = [tok.eos_id] if args.stop_ids is None else list(args.stop_ids)
    settings = dict(max_new_tokens=int(args.max_new_tokens), do_sample=args.strategy == "sample",
                    temperature=float(args.temperature), top_p=float(args.top_p))
    answer = answer_options_from_config(cm.answer, settings["max_new_tokens"], tok.pad_id)
    tova = tova_options_from_config(cm.cache)
    rng, results = jax.random.PRNGKey(int(args.seed)), []
    for start, chunk in batches(prompts, int(args.batch_size)):
        eb = collate_eval(chunk, bucket_batch(len(chunk), int(args.batch_size)), tok.pad_id, cm.bucket, cm.feedback)
        rng, sub = jax.random.split(rng)
        t0 = time.perf_counter()
        out = generate_aligned(params, config, eb.arrays, eb.latent_start, eb.num_latent, sub, settings=settings,
                               stop_ids=stops, pad_id=tok.pad_id, feedback=cm.feedback, thought_norm=cm.thought_norm,
                               answer=answer, tova=tova, top_k=0 if args.strategy == "greedy" else int(args.top_k))
        toks, lens, steps = to_host((out.tokens, out.lengths, out.steps))
        steps = int(steps)
        secs = time.perf_counter() - t0
        for j, p in enumerate(chunk):
            new = toks[j, : lens[j]].tolist()
            stopped = bool(new) and new[-1] in stops
            results.append(dict(
                index=start + j, strategy=args.strategy, thoughts=int(p.n_latent),
                input_ids=list(map(int, p.input_ids)),
                output_ids=new, text=tok.decode(new[:-1] if stopped else new, skip_special_tokens=True),
                num_new_tokens=len(new), stopped=stopped, tokens_per_s=None, seconds=secs,
                forward_passes=1 + steps))  # the prompt-and-thoughts prefill, then the answer's passes
    return results


def _typed_layout(ids: list[int], cm: CoconutModel, where: str, thoughts: int | None, idx: int) -> EvalPrompt | None:
    """The layout of a prompt that holds <|latent|> tokens (one run of them), None when it holds none."""
    pos = [j for j, t in enumerate(ids) if t == cm.ids.latent_id]
    if not pos:
        return None
    if thoughts is not None:
        raise ValueError(f"{where} already holds {len(pos)} {LATENT} tokens; drop --thoughts or the tokens")
    if pos != list(range(pos[0], pos[0] + len(pos))):
        raise ValueError(f"{where}: its {LATENT} tokens must be one run (the continuous thoughts), not split")
    return EvalPrompt(tuple(ids), pos[0], len(pos), idx=idx)


def _run_vlm(args) -> list[dict[str, Any]]:
    if not (args.image or args.video):
        raise ValueError(f"{args.model} is a vision-language model; pass --image PATH or --video PATH")
    if args.question is not None or args.thoughts:
        raise ValueError(f"--question / --thoughts need a model saved by a Coconut run; {args.model} is a VLM")
    if args.max_new_tokens is None:
        args.max_new_tokens = 32
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
