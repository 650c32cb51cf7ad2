"""Streaming sessions: chunked ingestion + respond equals one-shot greedy generation (text
decoders and a VLM with video frames, across several turns); bounded caches keep compiled
memory fixed and equal the unbounded session while the stream fits; bad input fails on one
line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.decoding.sampling import SamplingParams, generate
from latent_jax.decoding.streaming import StreamOptions, StreamSession, ingest_ids, init_state, respond
from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params

EOS = 2
M = 8
# one full-cache setting shared by the tests (one compile per chunk bucket)
FULL = StreamOptions(max_slots=192, max_new_tokens=M, min_chunk=8, max_chunk=16)
BOUNDED = {p: StreamOptions(max_slots=48, policy=p, sink=4, max_new_tokens=M, min_chunk=8, max_chunk=8)
           for p in ("window", "tova")}


def _greedy(params, cfg, prompt, max_new=M, width=64):
    """One-shot greedy generation, the prompt left-padded to `width` (one compile per model)."""
    ids = np.zeros((1, width), np.int32)
    mask = np.zeros((1, width), np.int32)
    ids[0, width - len(prompt):], mask[0, width - len(prompt):] = prompt, 1
    out = generate(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0), SamplingParams.make(),
                   jnp.asarray([EOS], jnp.int32), config=cfg, max_new_tokens=max_new)
    n = int(out.lengths[0])
    return np.asarray(out.tokens)[0, :n].tolist()


@pytest.fixture(scope="module")
def model():
    # Mistral-style: a sliding-window layer and a full-attention layer
    cfg = tiny_config("mistral", layer_windows=(8, 0))
    return cfg, init_params(cfg, 1)


def test_chunked_session_equals_one_shot_greedy_over_turns(model):
    cfg, params = model
    rng = np.random.default_rng(0)
    turns = [rng.integers(4, cfg.vocab_size, n).tolist() for n in (23, 9)]
    sess = StreamSession(params, cfg, FULL, stop_ids=[EOS])
    history = []
    for turn in turns:
        # uneven chunks: 5 + 13 + rest, each padded to its own bucket
        for a, b in ((0, 5), (5, 18), (18, len(turn))):
            if a < len(turn):
                sess.ingest(turn[a:b])
        history += turn
        reply = sess.respond()[0]
        assert reply == _greedy(params, cfg, history), f"turn {len(history)}"
        history += reply
    assert sess.tokens_seen == len(history)


def test_bounded_cache_equals_unbounded_while_it_fits_and_keeps_shapes(model):
    cfg, params = model
    rng = np.random.default_rng(1)
    chunks = [rng.integers(4, cfg.vocab_size, 8).tolist() for _ in range(12)]
    sessions = {p: StreamSession(params, cfg, BOUNDED[p], stop_ids=[EOS]) for p in BOUNDED}
    full = StreamSession(params, cfg, FULL, stop_ids=[EOS])
    shapes = set()
    for i, ch in enumerate(chunks):
        for s in (full, *sessions.values()):
            s.ingest(ch)
        if i % 3 == 2:
            ref = full.respond()[0]
            for p, s in sessions.items():
                got = s.respond()[0]
                if s.evictions == 0:  # the stream still fits: identical to the unbounded session
                    assert got == ref, p
            shapes.add(tuple(sessions["tova"].state.cache.k.shape))
    # a stream of ~120 tokens in 48 slots: both evicted, and the cache never changed shape
    assert all(s.evictions > 0 for s in sessions.values())
    assert shapes == {(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 48, cfg.head_dim)}
    # the sink positions survived every eviction
    pos = np.asarray(sessions["window"].state.cache.pos)[0, 0]
    assert set(range(4)) <= set(pos.tolist())
    # window keeps the most recent positions
    kept = sorted(p for p in pos.tolist() if p >= 4)
    assert kept == list(range(full.tokens_seen - len(kept), full.tokens_seen))


def test_compiled_memory_is_independent_of_stream_length(model):
    cfg, params = model
    opts = BOUNDED["tova"]
    sess = StreamSession(params, cfg, opts, stop_ids=[EOS])
    rng = np.random.default_rng(2)
    sess.ingest(rng.integers(4, cfg.vocab_size, 8).tolist())
    sess.respond()
    n_before = (ingest_ids._cache_size(), respond._cache_size())
    # one program per step shape serves a stream of any length: run 5x the cache through it
    for i in range(32):
        sess.ingest(rng.integers(4, cfg.vocab_size, 8).tolist())
        if i % 8 == 7:
            sess.respond()
    assert sess.tokens_seen > 5 * opts.max_slots
    assert (ingest_ids._cache_size(), respond._cache_size()) == n_before
    assert sess.state.cache.nbytes() == init_state(cfg, opts).cache.nbytes()
    # XLA's memory analysis of that program vs an unbounded cache sized for this stream
    sp, stops = SamplingParams.make(), jnp.asarray([EOS], jnp.int32)
    size = lambda m: m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes

    def respond_memory(o):
        return respond.lower(params, init_state(cfg, o), sp, stops, config=cfg, opts=o).compile().memory_analysis()

    bounded = respond_memory(opts)
    if bounded is None:
        pytest.skip("this backend gives no memory analysis")
    unbounded = respond_memory(StreamOptions(max_slots=sess.tokens_seen + M, max_new_tokens=M, max_chunk=8))
    # what is not the weights: the session state and the step's temporaries
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    assert size(bounded) - weights < (size(unbounded) - weights) / 3


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from latent_jax.testing import make_tiny_vlm

    return make_tiny_vlm("internvl", str(tmp_path_factory.mktemp("sv")))


def test_vlm_session_frames_equal_one_shot_generation(vlm_dir):
    from latent_jax.testing import IMAGE_TOKEN_ID
    from latent_jax.decoding.vlm import generate_vlm
    from latent_jax.models.hf_vlm import load_vlm

    vcfg, vparams = load_vlm(vlm_dir)
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((3, 3, 28, 28)).astype(np.float32)
    sess = StreamSession(vparams, opts=StreamOptions(max_slots=256, max_new_tokens=M, max_chunk=16), stop_ids=[EOS],
                         vlm=vcfg)
    head, tail = [1, 5, 6], [7, 8, 9]
    sess.ingest(head)
    n = sum(sess.ingest_frames(frames[i:i + 1]) for i in range(3))  # one frame at a time
    sess.ingest(tail)
    reply = sess.respond()[0]
    feats = sess.frame_features(frames)
    prompt = head + [IMAGE_TOKEN_ID] * n + tail
    ids = jnp.asarray([prompt], jnp.int32)
    out = generate_vlm(vparams, ids, jnp.ones_like(ids), feats, jax.random.PRNGKey(0), SamplingParams.make(),
                       jnp.asarray([EOS], jnp.int32), cfg=vcfg, max_new_tokens=M)
    assert reply == np.asarray(out.tokens)[0, : int(out.lengths[0])].tolist()
    assert n == feats.shape[0] and sess.tokens_seen == len(prompt) + len(reply)


def test_errors_name_the_fix(model):
    cfg, params = model
    with pytest.raises(ValueError, match="policy"):
        StreamOptions(policy="lru")
    with pytest.raises(ValueError, match="raise max_slots"):
        StreamOptions(max_slots=40, policy="window", max_chunk=32)
    sess = StreamSession(params, cfg, StreamOptions(max_slots=32, max_new_tokens=8, max_chunk=16), stop_ids=[EOS])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sess.ingest([5, cfg.vocab_size])
    sess.ingest(list(range(4, 20)))
    with pytest.raises(ValueError, match="policy='window' or 'tova'"):
        sess.ingest(list(range(4, 21)))
    with pytest.raises(ValueError, match="vision-language"):
        sess.ingest_frames(np.zeros((1, 3, 28, 28), np.float32))


def test_stream_cli_plays_a_video_with_timed_turns(vlm_dir, tmp_path, capsys):
    import json

    from latent_jax.testing import write_synthetic_video
    from latent_jax.stream import main

    video = write_synthetic_video(str(tmp_path / "v.mp4"), num_frames=16, fps=8)  # 2 s
    script = tmp_path / "turns.jsonl"
    script.write_text('{"time": 1.2, "text": "and now?"}\n{"time": 0.2, "text": "what is this?"}\n')
    # the same session settings as the VLM test above: its compiled steps are reused
    argv = ["--model", vlm_dir, "--video", video, "--fps", "2", "--script", str(script), "--policy", "none",
            "--max-slots", "256", "--max-new-tokens", str(M), "--max-chunk", "16", "--stop-ids", str(EOS)]
    assert main(argv) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    turns, summary = rows[:-1], rows[-1]
    assert [r["time"] for r in turns] == [0.2, 1.2] and [r["user"] for r in turns] == ["what is this?", "and now?"]
    assert all(r["trigger"] == "user" and 1 <= r["tokens"] <= M and r["silent"] == (r["tokens"] == 1)
               for r in turns)
    assert summary["frames"] == 4 and summary["turns"] == 2 and summary["evictions"] == 0
    # bad input: one line naming the fix
    script.write_text('{"time": 1.0}\n')
    assert main(argv) == 2
    assert 'needs exactly one of "text"' in capsys.readouterr().err
