"""Vision tokenizers: pixel-token layout, encoder shapes, Haar transform, frozen encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.latent import act as A
from latent_jax.models import vision_tokens as vt
from latent_jax.testing import tiny_config

MC = tiny_config("llama", vocab_size=vt.vocab_size(10), hidden_size=32, intermediate_size=64, head_dim=8,
                 num_hidden_layers=1)
IMGS = np.random.default_rng(0).integers(0, 256, (3, 8, 8)).astype(np.uint8)
_DEC = {}


def _params():
    if not _DEC:
        _DEC["p"] = A.init_params(MC, A.ACTConfig(k_max=1), 0)
    return dict(_DEC["p"])


def test_pixel_token_layout():
    ids = np.asarray(vt.pixel_tokens(IMGS))
    assert ids.shape == (3, 65)
    assert (ids[:, 0] == vt.BOS_ID).all()
    np.testing.assert_array_equal(ids[:, 1:], IMGS.reshape(3, -1))
    np.testing.assert_array_equal(np.asarray(vt.label_token([0, 9])), [259, 268])
    assert vt.vocab_size(10) == 269
    logits = jnp.arange(269.0)[None]
    np.testing.assert_array_equal(np.asarray(vt.label_logits(logits))[0], np.arange(259, 269))


@pytest.mark.parametrize("enc,ps", [("raw", 1), ("conv", 2), ("patch", 2), ("wavelet", 1), ("siren", 1)])
def test_encoder_shapes(enc, ps):
    vc = vt.VisionTokenConfig(encoder=enc, hidden=16, patch_size=ps)
    params = _params()
    params["encoder"] = vt.init_encoder_params(vc, MC.hidden_size, (8, 8))
    emb = jax.jit(vt.image_inputs, static_argnums=(2, 3))(params, IMGS, vc, MC)
    assert emb.shape == (3, 1 + vc.num_tokens(8, 8), MC.hidden_size)
    assert np.isfinite(np.asarray(emb)).all()
    if enc != "raw":  # the image changes the embeddings
        emb2 = jax.jit(vt.image_inputs, static_argnums=(2, 3))(params, 255 - IMGS, vc, MC)
        assert float(jnp.abs(emb2[:, 1:] - emb[:, 1:]).max()) > 0


def test_haar_is_orthonormal():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8)), jnp.float32)
    w = vt.haar2d(x)
    assert w.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(float(jnp.sum(w**2)), float(jnp.sum(x**2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(w[..., 0]), np.asarray(x.reshape(2, 4, 2, 4, 2).sum((2, 4)) / 2), atol=1e-5)


def test_freeze_encoder_stops_gradients():
    params = _params()
    for freeze in (False, True):
        vc = vt.VisionTokenConfig(encoder="patch", hidden=16, patch_size=2, freeze_encoder=freeze)
        params["encoder"] = vt.init_encoder_params(vc, MC.hidden_size, (8, 8))
        g = jax.grad(lambda p: jnp.sum(vt.image_inputs(p, IMGS, vc, MC) ** 2))(params)
        total = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["encoder"]))
        assert (total == 0.0) == freeze


def test_bad_encoder_name():
    with pytest.raises(ValueError, match="raw, conv, patch, wavelet, siren"):
        vt.VisionTokenConfig(encoder="vit")
