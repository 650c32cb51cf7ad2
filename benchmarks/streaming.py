"""Streaming session vs re-running the whole prefix per turn, on a simulated video stream.

    python benchmarks/streaming.py [--seconds 60] [--fps 2] [--turn-every 10] [--reply-tokens 16]

A small random InternVL-style model (16 video tokens per frame) watches a --seconds stream
at --fps; a user turn arrives every --turn-every seconds and gets a --reply-tokens reply.
Both sides run in this process on the same weights and inputs, float32, greedy, batch 1,
after compiling every shape they use (compile time is not counted):

  session   latent_jax.decoding.streaming: each frame goes through the vision tower and is
            ingested (chunked prefill into the KV cache) when it arrives; a turn ingests its
            text and decodes the reply from the cache.
  re-run    what the seed's loop costs: at each turn the whole prefix (every frame's tokens,
            every earlier turn and reply) is prefilled again from scratch and the reply
            decoded (decoding.vlm.generate_vlm; the frames' vision features are cached, so
            only the language model is re-run).

Prints ingestion frames/s, the reply latency of every turn for both sides (wall and CPU
seconds: the machine may be shared) and the ratio re-run / session at the last turn, plus a
bounded (TOVA) session whose cache is smaller than the stream.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.threads import pin_xla_threads  # noqa: E402

pin_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from latent_jax.testing import IMAGE_TOKEN_ID, make_tiny_vlm  # noqa: E402
from latent_jax.decoding.sampling import SamplingParams  # noqa: E402
from latent_jax.decoding.streaming import StreamOptions, StreamSession  # noqa: E402
from latent_jax.decoding.vlm import generate_vlm  # noqa: E402
from latent_jax.models.hf_vlm import load_vlm  # noqa: E402

VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
TEXT = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=8192)
NEVER = 10 ** 6  # a stop id no token equals: every reply has exactly --reply-tokens tokens


def clock():
    return time.perf_counter(), time.process_time()


def since(t):
    w, c = clock()
    return w - t[0], c - t[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--turn-every", type=float, default=10.0)
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--turn-tokens", type=int, default=12)
    p.add_argument("--tova-slots", type=int, default=1024)
    p.add_argument("--threads", type=int, default=0, help="XLA intra-op threads (0 = default)")
    args = p.parse_args()

    d = tempfile.mkdtemp()
    make_tiny_vlm("internvl", d, with_tokenizer=False, image_size=56, vision=VISION, text=TEXT)
    cfg, params = load_vlm(d)
    rng = np.random.default_rng(0)
    n_frames = int(args.seconds * args.fps)
    frames = rng.standard_normal((n_frames, 3, 56, 56)).astype(np.float32)
    frame_t = [k / args.fps for k in range(n_frames)]
    turn_t = [args.turn_every * (i + 1) for i in range(int(args.seconds // args.turn_every))]
    turns = [rng.integers(10, 150, args.turn_tokens).tolist() for _ in turn_t]
    R = args.reply_tokens
    sp, stops = SamplingParams.make(), jnp.asarray([NEVER], jnp.int32)

    def run_session(opts: StreamOptions, label: str) -> dict:
        sess = StreamSession(params, opts=opts, stop_ids=[NEVER], vlm=cfg)
        # warm-up: compile every step shape (frame chunk, turn chunk, reply) on a throwaway stream
        sess.ingest([1, 5, 6])
        sess.ingest_frames(frames[:1])
        sess.ingest(turns[0])
        sess.respond()
        jax.block_until_ready(sess.state.cache.k)
        sess.reset()
        sess.ingest([1, 5, 6])
        lat, ing, ing_cpu, replies, feats = [], 0.0, 0.0, [], []
        k = 0
        first = []
        for ti, t in enumerate(turn_t + [float("inf")]):
            while k < n_frames and frame_t[k] < t:
                c = clock()
                f = sess.frame_features(frames[k:k + 1])
                sess.ingest_embeds(f)
                jax.block_until_ready(sess.state.cache.k)
                w, cpu = since(c)
                ing, ing_cpu = ing + w, ing_cpu + cpu
                feats.append(np.asarray(f))
                k += 1
            if ti == len(turn_t):
                break
            c = clock()
            sess.ingest(turns[ti])
            jax.block_until_ready(sess.state.logits)
            first.append(since(c))  # the first reply token is the argmax of these logits
            r = sess.respond()[0]
            lat.append(since(c))
            replies.append(r)
        print(f"{label:>10}: ingestion {n_frames / ing:8.1f} frames/s ({n_frames / ing_cpu:.1f} per CPU-s), "
              f"{sess.tokens_seen} tokens seen, {sess.evictions} evictions, cache {opts.max_slots} slots", flush=True)
        return {"lat": lat, "first": first, "replies": replies, "feats": feats}

    # the unbounded session's cache sized to this stream (each chunk padded to its bucket), in 256s
    bucket = StreamOptions(max_new_tokens=R, max_chunk=64).bucket
    per_frame_tokens = cfg.tokens_per_tile
    need = bucket(3) + n_frames * bucket(per_frame_tokens) + len(turns) * (bucket(args.turn_tokens) + R)
    full = run_session(StreamOptions(max_slots=-(-need // 256) * 256, max_new_tokens=R, max_chunk=64), "session")
    tova = run_session(StreamOptions(max_slots=args.tova_slots, policy="tova", sink=16, max_new_tokens=R,
                                     max_chunk=64), "tova")

    # re-run: the whole prefix at every turn (features cached), compiled per prompt length first
    per_frame = full["feats"][0].shape[0]
    rerun_lat, rerun_first, history, k = [], [], [1, 5, 6], 0
    all_feats = np.concatenate(full["feats"])
    n_seen = 0
    for ti, t in enumerate(turn_t):
        while k < n_frames and frame_t[k] < t:
            history += [IMAGE_TOKEN_ID] * per_frame
            n_seen += 1
            k += 1
        history += turns[ti]
        ids = jnp.asarray([history], jnp.int32)
        feats = jnp.asarray(all_feats[: n_seen * per_frame])
        call = lambda n=R: generate_vlm(params, ids, jnp.ones_like(ids), feats, jax.random.PRNGKey(0), sp, stops,
                                        cfg=cfg, max_new_tokens=n)
        jax.block_until_ready(call().tokens)  # compile
        jax.block_until_ready(call(1).tokens)
        c = clock()
        jax.block_until_ready(call(1).tokens)  # the prefix prefill and the first reply token
        rerun_first.append(since(c))
        c = clock()
        out = call()
        toks = np.asarray(jax.block_until_ready(out.tokens))[0, : int(out.lengths[0])].tolist()
        rerun_lat.append(since(c))
        assert toks == full["replies"][ti], f"turn {ti}: the session's reply differs from the re-run's"
        history += toks

    def table(title, rerun, sess, tv):
        print(f"\n{title}, seconds wall / CPU:")
        print(f"{'t (s)':>6} {'prefix':>7} {'re-run':>15} {'session':>15} {'tova':>15} {'ratio':>7} {'ratio CPU':>9}")
        for i, t in enumerate(turn_t):
            (rw, rc), (sw, sc), (tw, tc) = rerun[i], sess[i], tv[i]
            n = sum(1 for x in frame_t if x < t) * per_frame
            print(f"{t:6.0f} {n:7d} {rw:7.3f}/{rc:7.3f} {sw:7.3f}/{sc:7.3f} {tw:7.3f}/{tc:7.3f} {rw / sw:7.1f} "
                  f"{rc / max(sc, 1e-9):9.1f}")
        (rw, rc), (sw, sc) = rerun[-1], sess[-1]
        return rw / sw, rc / max(sc, 1e-9)

    a = table(f"time to first reply token per turn ({args.turn_tokens}-token turn)", rerun_first, full["first"],
              tova["first"])
    b = table(f"whole reply per turn ({args.turn_tokens}-token turn + {R}-token reply)", rerun_lat, full["lat"],
              tova["lat"])
    print(f"\nat t = {turn_t[-1]:.0f} s, re-run / session: first token {a[0]:.1f}x wall, {a[1]:.1f}x CPU; "
          f"whole reply {b[0]:.1f}x wall, {b[1]:.1f}x CPU (replies identical)")


if __name__ == "__main__":
    main()
