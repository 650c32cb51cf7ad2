"""InternVL tiling equals transformers' GotOcr2 PIL image processor; Phi-4-MM HD crops follow
the documented algorithm and agree with the model's placeholder count."""

import numpy as np
import pytest

from latent_jax.models.image_processing import (
    IMAGENET_MEAN, IMAGENET_STD, best_grid, internvl_tiles, phi4_grid, phi4_hd_crops, stack_hd,
)
from latent_jax.testing import synthetic_image


@pytest.mark.parametrize("hw", [(60, 150), (100, 70), (56, 56)])
def test_internvl_tiles_equal_transformers(hw):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    img = synthetic_image(*hw, seed=hw[0])
    proc = GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1,
                                    max_patches=6, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    ref = np.asarray(proc(images=[img], return_tensors="np")["pixel_values"])
    ours = internvl_tiles(img, tile_size=28, max_tiles=6)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5


def test_grids():
    assert best_grid(448, 896, 448) == (2, 1)
    assert best_grid(100, 100, 448, max_tiles=12) == (1, 1)
    assert phi4_grid(448, 900, 448) == (3, 1)
    assert phi4_grid(5000, 5000, 448, max_crops=4) == (2, 2)


def test_phi4_hd_crops_layout_and_tokens():
    from latent_jax.testing import tiny_vlm_hf_config
    from latent_jax.models.hf_vlm import vlm_config_from_hf

    cfg = vlm_config_from_hf(tiny_vlm_hf_config("phi4mm").to_dict())
    img = synthetic_image(30, 70, seed=1)  # -> 3 crops wide, 2 high at S=28, padded at the bottom
    hd = phi4_hd_crops(img, size=28, patch_size=7, max_crops=36)
    assert hd.crops.shape == (1 + 6, 3, 28, 28) and hd.patch_mask.shape == (7, 4, 4)
    hc, wc, uh, uw = hd.layout
    assert (hc, wc) == (2, 3) and hd.image_size == (56, 84)
    # the resized image is 84 x 36 -> 20 rows of padding = 2 padded patch rows (of 7 px)
    assert not hd.patch_mask[4:, -2:].any() and hd.patch_mask[1:4].all()
    assert uh == 3 and uw == 6
    assert hd.num_tokens == cfg.phi4_tokens(hd.layout)
    assert np.allclose(hd.crops[-1, :, -1, -1], 1.0)  # white padding normalises to 1
    px, pm, layouts = stack_hd([hd, phi4_hd_crops(synthetic_image(20, 20), 28, 7)])
    assert px.shape == (2, 7, 3, 28, 28) and pm[1, 2:].all() and layouts[1] == (1, 1, 2, 2)
