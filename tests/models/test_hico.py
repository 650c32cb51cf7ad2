"""HiCo: token counts after merging, lossless merging of identical tokens, token dropping."""

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax.models.hico import compression_ratio, merge_clip_tokens, merge_tokens, select_video_tokens


def test_merge_counts_as_configured():
    f = jnp.asarray(np.random.default_rng(1).standard_normal((6, 16, 8)), jnp.float32)
    out = jax.jit(lambda x: merge_clip_tokens(x, 3, clip_frames=4))(f)
    assert out.shape == (6, 3, 8)  # clips of 4 and 2 frames
    assert compression_ratio(6 * 16, out.shape[0] * out.shape[1]) == 16 / 3


def test_merging_identical_tokens_loses_nothing():
    u = np.random.default_rng(0).standard_normal((7, 8)).astype(np.float32)
    x = np.repeat(u, 2, axis=0)  # each token twice in a row
    m, sizes = merge_tokens(jnp.asarray(x), 7)
    assert np.abs(np.asarray(m) - u).max() == 0.0  # exactly the distinct tokens, in order
    assert np.asarray(sizes).tolist() == [2.0] * 7
    # a frame repeated over a clip merges back to that frame
    frame = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    clip = jnp.asarray(np.stack([frame] * 4))
    out = np.asarray(merge_clip_tokens(clip, 5 // 4 + 1, clip_frames=4)).reshape(-1, 4)
    assert all(np.abs(frame - o).sum(-1).min() < 1e-5 for o in out)


def test_merge_is_size_weighted_mean():
    x = jnp.asarray([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    m, s = merge_tokens(x, 2)
    assert np.allclose(np.sort(np.asarray(m), axis=0), [[0.05, 0.05], [1.0, 1.0]], atol=1e-6) or np.allclose(
        np.asarray(m), [[1.0, 0.05], [0.05, 1.0]], atol=1e-6)
    assert np.asarray(s).sum() == 4


def test_select_video_tokens():
    vm = np.zeros((2, 10), bool)
    vm[:, 2:8] = True
    idx = np.asarray(select_video_tokens(vm, 0.5, "uniform"))
    assert idx.shape == (2, 7) and {0, 1, 8, 9} <= set(idx[0].tolist())
    attn = np.zeros((2, 2, 10), np.float32)
    attn[:, :, [3, 5, 6]] = 1.0
    idx = np.asarray(select_video_tokens(vm, 0.5, "attention", jnp.asarray(attn)))
    assert idx[0].tolist() == [0, 1, 3, 5, 6, 8, 9]
