"""Video decoding from local files with PyAV and uniform frame sampling.

`sample_indices(total, num_frames)` picks the centre frame of `num_frames` equal segments
(InternVL / VideoChat-Flash `get_index`); `read_frames(path, num_frames)` decodes only those
frames, as (F, H, W, 3) uint8 RGB; `check_readable(path)` opens a clip and decodes its first
frame; `vlm_video_frames(cfg, path, num_frames)` reads them and preprocesses them for a
vision-language model. Unreadable or missing files raise VideoError with the path.
"""

from __future__ import annotations

import os

import numpy as np

from latent_jax.models.image_processing import vlm_frame_tiles


class VideoError(ValueError):
    """A clip that is missing, unreadable or has no video stream."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Indices of the centre frame of each of `num_frames` equal segments of [0, total)."""
    if total <= 0:
        raise VideoError("video has no frames")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    seg = total / num_frames
    idx = np.floor(seg / 2 + seg * np.arange(num_frames)).astype(np.int64)
    return np.clip(idx, 0, total - 1)


def video_info(path: str) -> dict:
    """{'frames', 'fps', 'duration', 'height', 'width'} of the first video stream."""
    import av

    if not os.path.exists(path):
        raise VideoError(f"video {path} does not exist")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(f"{path} has no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate) if s.average_rate else 0.0
            dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
            frames = s.frames or int(round(dur * fps))
            if frames <= 0:  # container does not say: count by decoding
                frames = sum(1 for _ in c.decode(video=0))
            return {"frames": int(frames), "fps": fps, "duration": dur, "height": s.height, "width": s.width}
    except VideoError:
        raise
    except Exception as e:  # av.error.* and friends
        raise VideoError(f"cannot read video {path}: {e}") from e


def check_readable(path: str) -> None:
    """Raise VideoError naming `path` unless the clip opens, has a video stream and its first
    frame decodes (a cheap probe: one frame, not the whole clip)."""
    import av

    video_info(path)
    try:
        with av.open(path) as c:
            next(iter(c.decode(video=0)))
    except StopIteration:
        raise VideoError(f"no frames decoded from {path}") from None
    except Exception as e:  # av.error.* and friends
        raise VideoError(f"cannot decode video {path}: {e}") from e


def read_frames(path: str, num_frames: int, max_side: int | None = None) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 RGB frames sampled uniformly from the clip at `path`.

    Decodes sequentially and keeps only the sampled frames; when the container reported more
    frames than it holds, the last decoded frame fills the remaining slots. max_side bounds
    the longer side (aspect kept) to save memory on long clips."""
    import av

    info = video_info(path)
    want = sample_indices(info["frames"], num_frames)
    out: list[np.ndarray | None] = [None] * num_frames
    last = None
    try:
        with av.open(path) as c:
            j = 0
            for i, frame in enumerate(c.decode(video=0)):
                if j >= num_frames:
                    break
                if i < want[j]:
                    continue
                if max_side and max(frame.width, frame.height) > max_side:
                    s = max_side / max(frame.width, frame.height)
                    frame = frame.reformat(width=max(2, int(frame.width * s)), height=max(2, int(frame.height * s)))
                last = frame.to_ndarray(format="rgb24")
                while j < num_frames and want[j] <= i:
                    out[j] = last
                    j += 1
    except Exception as e:
        raise VideoError(f"cannot decode video {path}: {e}") from e
    if last is None:
        raise VideoError(f"no frames decoded from {path}")
    return np.stack([f if f is not None else last for f in out])


def vlm_video_frames(cfg, path: str, num_frames: int) -> np.ndarray:
    """(num_frames, 3, S, S): frames sampled uniformly from the clip at `path`, preprocessed as
    `cfg.family` (a VLMConfig) expects (models.image_processing.vlm_frame_tiles)."""
    frames = read_frames(path, int(num_frames), max_side=4 * cfg.vision.image_size)
    return vlm_frame_tiles(cfg, frames)
