"""Host-side image preprocessing (NumPy + PIL) for the vision-language families: the model's
input processing (as transformers' image processors), below decoding and data.

- InternVL dynamic tiling (`internvl_tiles`): the image is resized to the tile grid whose
  aspect ratio is closest to the image's (1..max_tiles tiles), cut into S x S tiles, plus a
  thumbnail when there is more than one tile. Equal to transformers' GotOcr2 image
  processor (PIL backend) with crop_to_patches=True, which InternVL uses.
- Phi-4-MM dynamic HD crops (`phi4_hd_crops`): the image is resized (keeping aspect) and
  padded white onto a grid of S x S crops (at most `max_crops`), a global S x S view is
  prepended, and a patch mask marks the padding; returns the static layout the model
  needs. Follows transformers' Phi4MultimodalImageProcessor (torchvision backend, which
  does not run here): same grid choice, mask, token count and crop order; resizes use PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from einops import rearrange

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path_or_image):
    """An RGB PIL image from a path or a PIL image; unreadable files raise one clear error."""
    from PIL import Image

    if isinstance(path_or_image, Image.Image):
        return path_or_image.convert("RGB")
    try:
        with Image.open(path_or_image) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path_or_image}: {e}; check the path or re-download the file") from e


def _to_chw(img, mean, std) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- InternVL tiling
@lru_cache(maxsize=64)
def _aspect_ratios(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    out = [(w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1) if min_tiles <= w * h <= max_tiles]
    return tuple(sorted(out, key=lambda x: x[0] * x[1]))


def best_grid(height: int, width: int, tile: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """(columns, rows) of the tile grid closest to the image's aspect ratio; on ties, more tiles
    while their area is under twice the image's."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for grid in _aspect_ratios(min_tiles, max_tiles):
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and area > 0.5 * tile * tile * grid[0] * grid[1]:
            best = grid
    return best


def internvl_tiles(
    image,
    tile_size: int = 448,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> np.ndarray:
    """(n_tiles, 3, S, S) float32 tiles of one image (grid tiles row-major, thumbnail last)."""
    from PIL import Image

    img = load_image(image)
    if max_tiles <= 1:
        return _to_chw(img.resize((tile_size, tile_size), Image.BICUBIC), mean, std)[None]
    cols, rows = best_grid(img.height, img.width, tile_size, min_tiles, max_tiles)
    resized = img.resize((tile_size * cols, tile_size * rows), Image.BICUBIC)
    tiles = []
    for i in range(cols * rows):
        c, r = i % cols, i // cols
        tiles.append(resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(img.resize((tile_size, tile_size), Image.BICUBIC))
    return np.stack([_to_chw(t, mean, std) for t in tiles])


# -------------------------------------------------------------- Phi-4-MM HD crops
@dataclass
class HDImage:
    """One Phi-4-MM image: crops (1 + h*w, 3, S, S) with the global view first, patch mask
    (1 + h*w, S/p, S/p), image size (h*S, w*S), layout (h, w, useful_h, useful_w) in
    downsampled tokens, and the number of placeholder tokens it fills."""

    crops: np.ndarray
    patch_mask: np.ndarray
    image_size: tuple[int, int]
    layout: tuple[int, int, int, int]
    num_tokens: int


def _phi4_closest(aspect, ratios, width, height, size):
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best_diff, best = diff, r
        elif diff == best_diff and area > 0.5 * size * size * r[0] * r[1]:
            best = r
    return best


def phi4_grid(height: int, width: int, size: int = 448, max_crops: int = 36, min_crops: int = 1) -> tuple[int, int]:
    """(w_crops, h_crops) Phi-4-MM chooses for an image of height x width."""
    w_n, h_n = math.ceil(width / size), math.ceil(height / size)
    if w_n * h_n <= max_crops:
        return w_n, h_n
    ratios = sorted({(i, j) for n in range(min_crops, max_crops + 1) for i in range(1, n + 1)
                     for j in range(1, n + 1) if min_crops <= i * j <= max_crops}, key=lambda x: x[0] * x[1])
    return _phi4_closest(width / height, ratios, width, height, size)


def phi4_hd_crops(
    image, size: int = 448, patch_size: int = 14, max_crops: int = 36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
) -> HDImage:
    """Dynamic HD crops of one image for Phi-4-MM."""
    from PIL import Image

    img = load_image(image)
    W, H = img.width, img.height
    wc, hc = phi4_grid(H, W, size, max_crops)
    tw, th = size * wc, size * hc
    rw, rh = tw / W, th / H
    if rw < rh:
        new_w, new_h = tw, int(H * rw)
        pad_w, pad_h = 0, th - int(H * rw)
    else:
        new_w, new_h = int(W * rh), th
        pad_w, pad_h = tw - int(W * rh), 0
    if min(new_h, th) < 10 or min(new_w, tw) < 10:
        raise ValueError(f"image {W}x{H} has an extreme aspect ratio; crop it before use")
    mask_size = size // patch_size
    mask = np.ones((mask_size * hc, mask_size * wc), bool)
    if pad_w >= patch_size:
        mask[:, -math.floor(pad_w / patch_size):] = False
    if pad_h >= patch_size:
        mask[-math.floor(pad_h / patch_size):, :] = False
    canvas = Image.new("RGB", (tw, th), (255, 255, 255))
    canvas.paste(img.resize((new_w, new_h), Image.BILINEAR), (0, 0))
    hd = _to_chw(canvas, mean, std)  # (3, th, tw)
    glob = np.asarray(canvas.resize((size, size), Image.BICUBIC))
    glob = _to_chw(glob, mean, std)
    crops = rearrange(hd, "c (hc h) (wc w) -> (hc wc) c h w", hc=hc, wc=wc)
    crop_masks = rearrange(mask, "(hc h) (wc w) -> (hc wc) h w", hc=hc, wc=wc)
    b = (mask_size + 1) // 2
    down = rearrange(crop_masks[:, 0::2, 0::2], "(hc wc) h w -> (hc h) (wc w)", hc=hc)
    uh, uw = int(down[:, 0].sum()), int(down[0, :].sum())
    n_tok = b * b + b + 1 + int(down.sum()) + int(down[:, 0].sum())
    return HDImage(
        crops=np.concatenate([glob[None], crops]).astype(np.float32),
        patch_mask=np.concatenate([np.ones((1, mask_size, mask_size), bool), crop_masks]),
        image_size=(th, tw),
        layout=(hc, wc, uh, uw),
        num_tokens=n_tok,
    )


def stack_hd(images: list[HDImage], max_crops: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Batch HD images: pixel values (N, C_max, 3, S, S) zero-padded, patch mask padded with
    ones (as transformers does), and the static layouts tuple."""
    c = max_crops or max(im.crops.shape[0] for im in images)
    n = len(images)
    s = images[0].crops.shape[-1]
    m = images[0].patch_mask.shape[-1]
    px = np.zeros((n, c, 3, s, s), np.float32)
    pm = np.ones((n, c, m, m), bool)
    for i, im in enumerate(images):
        k = im.crops.shape[0]
        px[i, :k] = im.crops
        pm[i, :k] = im.patch_mask
    return px, pm, tuple(im.layout for im in images)


def frame_tiles(frames: np.ndarray, tile_size: int, mean, std) -> np.ndarray:
    """Video frames (F, H, W, 3) uint8 -> (F, 3, S, S): each frame resized to one tile (bicubic)."""
    from PIL import Image

    return np.stack([_to_chw(Image.fromarray(f).resize((tile_size, tile_size), Image.BICUBIC), mean, std)
                     for f in frames])


# ------------------------------------------------------------- model-family inputs
def vlm_image_inputs(cfg, path_or_image, max_tiles: int = 12) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """(pixel_values, patch_mask, layouts) for one image as `cfg.family` (a VLMConfig) expects:
    InternVL tiles (N, 3, S, S) with no mask/layouts; Phi-4-MM HD crops (1, crops, 3, S, S),
    patch mask and the static layouts."""
    v = cfg.vision
    if cfg.family == "internvl":
        return internvl_tiles(path_or_image, v.image_size, max_tiles=int(max_tiles)), None, None
    hd = phi4_hd_crops(path_or_image, v.image_size, v.patch_size, max_crops=int(max_tiles))
    return stack_hd([hd])


def vlm_frame_tiles(cfg, frames: np.ndarray) -> np.ndarray:
    """Video frames (F, H, W, 3) uint8 -> (F, 3, S, S) as `cfg.family` (a VLMConfig) expects: one
    tile per frame, ImageNet normalisation (InternVL) or one global crop in [-1, 1] (Phi-4-MM).
    Reading the frames from a file is data.video.vlm_video_frames."""
    v = cfg.vision
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.family == "internvl" else ((0.5,) * 3, (0.5,) * 3)
    return frame_tiles(frames, v.image_size, mean, std)
