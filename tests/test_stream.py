"""The streaming CLI (latent_jax.stream) with HiCo frame groups: a group is ingested only once
its last frame's time has passed, so the printed rows are in time order and no turn sees a
frame from its future."""

import json

import pytest

from latent_jax.stream import main
from latent_jax.testing import make_tiny_vlm, write_synthetic_video

EOS = 2


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return make_tiny_vlm("internvl", str(tmp_path_factory.mktemp("sv")))


def test_hico_groups_are_ingested_after_their_last_frame(vlm_dir, tmp_path, capsys):
    fps = 2.0
    video = write_synthetic_video(str(tmp_path / "v.mp4"), num_frames=16, fps=8)  # 2 s: frames 0, .5, 1, 1.5
    script = tmp_path / "turns.jsonl"
    # 0.2 s falls inside the group [0.0, 0.5]; 1.2 s inside [1.0, 1.5]
    script.write_text('{"time": 0.2, "text": "what is this?"}\n{"time": 1.2, "text": "and now?"}\n')
    argv = ["--model", vlm_dir, "--video", video, "--fps", str(fps), "--script", str(script), "--policy", "none",
            "--max-slots", "256", "--max-new-tokens", "4", "--max-chunk", "16", "--stop-ids", str(EOS),
            "--hico-tokens-per-frame", "2", "--hico-clip-frames", "2", "--respond-every-frames", "2"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    replies, summary = rows[:-1], rows[-1]
    times = [r["time"] for r in replies]
    assert times == sorted(times), times  # printed in time order
    assert [(r["trigger"], r["time"]) for r in replies] == [("user", 0.2), ("frames", 0.5), ("user", 1.2),
                                                            ("frames", 1.5)]
    for r in replies:  # the last frame seen was sampled at (frames - 1) / fps, never after the row's time
        assert r["frames"] == 0 or (r["frames"] - 1) / fps <= r["time"], r
    assert [r["frames"] for r in replies] == [0, 2, 2, 4] and summary["frames"] == 4
