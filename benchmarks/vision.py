"""Image / video prefill throughput of the latent_jax VLM ports vs the transformers PyTorch
classes on the same tiny-but-not-trivial random config, and HiCo's effect on prefill time.

    python benchmarks/vision.py [--family internvl|phi4mm|both] [--frames 8] [--iters 5]

Prints tokens/s for each side and the ratio latent_jax / transformers (same process, same
inputs, float32, after warm-up), then the video prefill time with and without HiCo merging.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from latent_jax.testing import IMAGE_TOKEN_ID, make_tiny_vlm  # noqa: E402
from latent_jax.models.hf_vlm import load_vlm  # noqa: E402
from latent_jax.models.multimodal import VisionLanguageModel  # noqa: E402

MID = dict(image_size=112, patch_size=14)  # 8x8 patches per tile
SIZES = {
    "vision": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "text": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
}


def _time(fn, iters):
    fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def bench(family: str, frames: int, iters: int) -> None:
    import transformers

    d = tempfile.mkdtemp()
    if family == "internvl":
        make_tiny_vlm(family, d, with_tokenizer=False, vision=dict(SIZES["vision"], image_size=112, patch_size=14),
                      text=SIZES["text"], image_size=112, patch_size=14)
    else:
        make_tiny_vlm(family, d, with_tokenizer=False, vision=dict(SIZES["vision"], crop_size=112), image_size=112,
                      patch_size=14, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4)
    cfg, params = load_vlm(d)
    cls = transformers.InternVLForConditionalGeneration if family == "internvl" else transformers.Phi4MultimodalForCausalLM
    hf = cls.from_pretrained(d, attn_implementation="sdpa").eval()
    model = VisionLanguageModel(cfg)
    rng = np.random.default_rng(0)
    S = cfg.vision.image_size
    if family == "internvl":
        px = rng.standard_normal((frames, 3, S, S)).astype(np.float32)
        n = frames * cfg.tokens_per_tile
        ids = np.array([[1] + [IMAGE_TOKEN_ID] * n + [5] * 16])
        f_j = jax.jit(lambda p, i, x: model.apply({"params": p}, i, pixel_values=x).logits)
        run_j = lambda: f_j(params, jnp.asarray(ids), jnp.asarray(px)).block_until_ready()  # noqa: E731
        run_t = lambda: hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px))  # noqa: E731
    else:
        p = cfg.vision.patches_per_side
        b = cfg.base_tokens_per_side
        layouts = ((1, 1, b, b),) * frames
        px = rng.standard_normal((frames, 2, 3, S, S)).astype(np.float32)
        pm = np.ones((frames, 2, p, p), bool)
        n = sum(cfg.phi4_tokens(lay) for lay in layouts)
        ids = np.array([[1] + [IMAGE_TOKEN_ID] * n + [5] * 16])
        f_j = jax.jit(lambda p_, i, x, m: model.apply({"params": p_}, i, pixel_values=x, patch_mask=m,
                                                      layouts=layouts).logits)
        run_j = lambda: f_j(params, jnp.asarray(ids), jnp.asarray(px), jnp.asarray(pm)).block_until_ready()  # noqa: E731
        run_t = lambda: hf(input_ids=torch.tensor(ids), image_pixel_values=torch.tensor(px),  # noqa: E731
                           image_sizes=torch.tensor([[S, S]] * frames), image_attention_mask=torch.tensor(pm.astype(np.int64)))
    with torch.inference_mode():
        tj, tt = _time(run_j, iters), _time(run_t, iters)
    T = ids.shape[1]
    print(f"{family:9s} {frames} frames/images, {T} tokens: latent_jax {T / tj:9.0f} tok/s  "
          f"transformers {T / tt:9.0f} tok/s  ratio {tt / tj:5.2f}x")
    # HiCo: video prefill with and without merging (frames as single tiles / global crops)
    frames_px = jnp.asarray(rng.standard_normal((frames, 3, S, S)).astype(np.float32))
    for tpf in (None, cfg.tokens_per_tile // 4):
        nf = frames * (tpf or cfg.tokens_per_tile)
        ids_v = jnp.asarray(np.array([[1] + [IMAGE_TOKEN_ID] * nf + [5] * 16]))

        def pre(p_, i, f, tpf=tpf):
            feats = model.apply({"params": p_}, f, tpf, 4, method="video_features")
            return model.apply({"params": p_}, i, features=feats).logits

        fj = jax.jit(pre)
        t = _time(lambda: fj(params, ids_v, frames_px).block_until_ready(), iters)
        label = "no HiCo" if tpf is None else f"HiCo {cfg.tokens_per_tile}->{tpf}/frame"
        print(f"{family:9s} video prefill {label:22s}: {t * 1e3:8.1f} ms  ({nf} video tokens)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="both")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"device: {jax.devices()[0].device_kind}, torch threads {torch.get_num_threads()}")
    for fam in (["internvl", "phi4mm"] if a.family == "both" else [a.family]):
        bench(fam, a.frames, a.iters)


if __name__ == "__main__":
    main()
