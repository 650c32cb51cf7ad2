"""PyAV decoding of a synthetic clip, uniform sampling, clear errors."""

import numpy as np
import pytest

from latent_jax.testing import write_synthetic_video
from latent_jax.data.video import VideoError, read_frames, sample_indices, video_info


def test_sample_indices_uniform():
    assert sample_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_read_frames(tmp_path):
    p = write_synthetic_video(str(tmp_path / "a.mp4"), num_frames=12, height=32, width=48)
    info = video_info(p)
    assert info["frames"] == 12 and (info["height"], info["width"]) == (32, 48)
    f = read_frames(p, 4)
    assert f.shape == (4, 32, 48, 3) and f.dtype == np.uint8
    every = read_frames(p, 12)
    assert np.array_equal(f, every[sample_indices(12, 4)])  # exactly the sampled frames
    assert np.abs(every[0].astype(int) - every[6].astype(int)).max() > 50  # frames differ
    assert read_frames(p, 2, max_side=24).shape == (2, 16, 24, 3)


def test_unreadable_video(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        read_frames(str(tmp_path / "missing.mp4"), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoError, match="cannot read video"):
        read_frames(str(bad), 4)
