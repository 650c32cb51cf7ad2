"""Play a video as a stream with timed user turns; print timestamped replies and silences.

    python -m latent_jax.stream --model PATH --video FILE --fps 2 --script turns.jsonl
    python -m latent_jax.stream --model runs/stream/best_model --script turns.jsonl   # text model

--model: a vision-language model (InternVL3 / Phi-4-multimodal HF directory or converted
checkpoint) for --video, or any text model (HF directory or latent_jax checkpoint).
--script: JSON lines, each {"time": seconds, "text": "a user turn"} (wrapped in the chat
template, then the model responds) or {"time": seconds, "input": "raw stream text"}
(ingested as it is, no reply; e.g. the synthetic task's frame tokens). Frames are sampled
at --fps and ingested at their timestamps (through the vision tower, HiCo when
--hico-tokens-per-frame is set); a frame group (HiCo merges --hico-clip-frames frames) is
ingested only once its last frame's time has passed, so no turn sees a frame from its future.
With --respond-every-frames N the model may also speak after every N frames (silence when it
has nothing to say). Output: one JSON object per line, {"time", "trigger": "user" | "frames",
"user", "reply", "silent", "tokens", "latency_s", "frames" (frames ingested so far)}, then a
summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


from latent_jax.data.streaming import template_for
from latent_jax.data.video import video_info, vlm_video_frames
from latent_jax.decoding.streaming import StreamOptions, StreamSession
from latent_jax.generate import load_tokenizer
from latent_jax.models.hf_vlm import is_vlm_checkpoint, is_vlm_dir, load_vlm_any
from latent_jax.models.io import load_any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latent_jax.stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="VLM or text model directory / checkpoint")
    p.add_argument("--video", default=None, help="video file played as the stream (needs a VLM)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second taken from --video")
    p.add_argument("--script", required=True, help="JSON lines of timed user turns / raw inputs")
    p.add_argument("--template", default=None,
                   help="chat template (chatml, phi3, phi4mm, llama3, mistral, stream_demo); default: the "
                        "model's stream.json, else its family's")
    p.add_argument("--system", default=None, help="system prompt ingested first")
    p.add_argument("--max-slots", type=int, default=4096, help="KV slots of the session cache")
    p.add_argument("--policy", choices=("none", "window", "tova"), default="tova",
                   help="what to evict when the cache is full")
    p.add_argument("--sink", type=int, default=64, help="first stream positions never evicted")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-chunk", type=int, default=256, help="largest ingest chunk (longer inputs are split)")
    p.add_argument("--respond-every-frames", type=int, default=0, help="also respond after every N frames (0 = off)")
    p.add_argument("--hico-tokens-per-frame", type=int, default=0, help="HiCo: merge to this many tokens per frame")
    p.add_argument("--hico-clip-frames", type=int, default=4, help="HiCo: frames merged together")
    p.add_argument("--stop-ids", default=None, help="stop token ids, e.g. 2,32000 (default: the template's end token)")
    return p


def read_script(path: str) -> list[dict]:
    """Timed events from the JSON-lines script, sorted by time (stable)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--script {path} does not exist")
    events = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or ("text" in row) == ("input" in row):
                raise ValueError(f'{where} needs exactly one of "text" (a user turn) or "input" (raw stream text)')
            t = row.get("time", row.get("t"))
            if not isinstance(t, (int, float)) or t < 0:
                raise ValueError(f'{where} needs "time": seconds >= 0')
            events.append({"time": float(t), **row})
    return sorted(events, key=lambda e: e["time"])


def _load(args):
    if not os.path.exists(args.model):
        raise FileNotFoundError(f"--model {args.model} does not exist; pass an HF model directory or a checkpoint")
    if os.path.isdir(args.model) and (is_vlm_dir(args.model) or is_vlm_checkpoint(args.model)):
        vcfg, params, _ = load_vlm_any(args.model)
        return vcfg, params, vcfg.family
    if args.video:
        raise ValueError(f"--video needs a vision-language model (InternVL3 / Phi-4-multimodal); {args.model} is "
                         "a text model: drop --video and put the stream's text in the script's \"input\" rows")
    cfg, params = load_any(args.model)
    return cfg, params, cfg.model_type


def run(args) -> list[dict]:
    events = read_script(args.script)
    cfg, params, family = _load(args)
    vlm = cfg if hasattr(cfg, "vision") else None
    tok = load_tokenizer(args.model)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer files; the script's text needs one")
    name = args.template
    meta = os.path.join(args.model, "stream.json")
    if name is None and os.path.isfile(meta):
        with open(meta) as f:
            name = json.load(f).get("template")
    template = template_for(name or family)
    enc = lambda text: list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
    if args.stop_ids:
        stops = [int(x) for x in args.stop_ids.split(",")]
    else:
        stops = enc(template.end)
        if len(stops) != 1:
            raise ValueError(f"the template's end token {template.end!r} is {len(stops)} tokens in this tokenizer; "
                             "pass --stop-ids or the model's --template")
    opts = StreamOptions(max_slots=args.max_slots, policy=args.policy, sink=args.sink if args.policy != "none" else 0,
                         max_new_tokens=args.max_new_tokens, max_chunk=args.max_chunk)
    text_cfg = vlm.text if vlm is not None else cfg
    sess = StreamSession(params, None if vlm else cfg, opts, stop_ids=stops, vlm=vlm,
                         hico_tokens_per_frame=args.hico_tokens_per_frame, hico_clip_frames=args.hico_clip_frames,
                         pad_id=text_cfg.pad_token_id)

    frames, times = None, []
    if args.video:
        if args.fps <= 0:
            raise ValueError(f"--fps {args.fps}; must be > 0")
        info = video_info(args.video)
        n = max(1, int(info["duration"] * args.fps))
        frames = vlm_video_frames(vlm, args.video, n)
        times = [k / args.fps for k in range(n)]
    group = max(1, args.hico_clip_frames if args.hico_tokens_per_frame else 1)

    out: list[dict] = []
    pending: list[int] = enc(template.bos) + (enc(template.system.format(content=args.system)) if args.system else [])
    ingest_s, n_frames, since_reply = 0.0, 0, 0

    def flush():
        nonlocal pending
        if pending:
            sess.ingest(pending)
            pending = []

    def reply(t: float, trigger: str, user: str | None):
        nonlocal pending
        pending += enc(template.assistant_prefix)
        t0 = time.perf_counter()
        flush()
        r = sess.respond()[0]
        dt = time.perf_counter() - t0
        pending += enc(template.after_end) if template.after_end.strip() else []
        row = {"time": round(t, 3), "trigger": trigger, "user": user, "reply": tok.decode(sess.strip(r)),
               "silent": sess.is_silence(r), "tokens": len(r), "latency_s": round(dt, 4), "frames": n_frames}
        print(json.dumps(row), flush=True)
        out.append(row)

    k, e = 0, 0
    while k < len(times) or e < len(events):
        # a group [k, k + group) is ingested once its last frame's time has passed
        if k < len(times) and (e >= len(events) or times[min(k + group, len(times)) - 1] <= events[e]["time"]):
            flush()
            t0 = time.perf_counter()
            sess.ingest_frames(frames[k:k + group])
            jax_ready(sess)
            ingest_s += time.perf_counter() - t0
            n_frames += len(frames[k:k + group])
            since_reply += len(frames[k:k + group])
            t = times[min(k + group, len(times)) - 1]
            k += group
            if args.respond_every_frames and since_reply >= args.respond_every_frames:
                since_reply = 0
                reply(t, "frames", None)
            continue
        ev = events[e]
        e += 1
        if "input" in ev:
            pending += enc(str(ev["input"]) + " ")
            continue
        pending += enc(template.user_turn(str(ev["text"])))
        since_reply = 0
        reply(ev["time"], "user", str(ev["text"]))
    summary = {"summary": True, "frames": n_frames, "turns": sum(1 for r in out if r["trigger"] == "user"),
               "replies": sum(1 for r in out if not r["silent"]), "silences": sum(1 for r in out if r["silent"]),
               "ingest_frames_per_s": round(n_frames / ingest_s, 2) if ingest_s > 0 else None,
               "tokens_seen": sess.tokens_seen, "evictions": sess.evictions, "max_slots": opts.max_slots,
               "policy": opts.policy}
    print(json.dumps(summary), flush=True)
    return out + [summary]


def jax_ready(sess) -> None:
    import jax

    jax.block_until_ready(sess.state.cache.k)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
