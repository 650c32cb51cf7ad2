"""Parity of the vision-language ports against the transformers PyTorch classes (float32,
max abs logit diff <= 1e-4), with images, several frames as video, both conversion directions,
the Phi-4-MM vision LoRA merge, and the audio refusal."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from latent_jax.testing import IMAGE_TOKEN_ID, make_tiny_vlm
from latent_jax.models.hf_vlm import load_vlm, save_vlm
from latent_jax.models.multimodal import AudioNotSupportedError, VisionLanguageModel

TOL = 1e-4


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    return {f: make_tiny_vlm(f, str(tmp_path_factory.mktemp(f)), with_tokenizer=False) for f in ("internvl", "phi4mm")}


_HF_CACHE = {}


def _hf(family, path):
    if path in _HF_CACHE:
        return _HF_CACHE[path]
    cls = transformers.InternVLForConditionalGeneration if family == "internvl" else transformers.Phi4MultimodalForCausalLM
    _HF_CACHE[path] = cls.from_pretrained(path, attn_implementation="eager").eval()
    return _HF_CACHE[path]


_FWD = {}


def _forward(cfg, params, ids, **kw):
    """Jitted latent_jax forward (op-by-op dispatch is slow on CPU); layouts are static."""
    layouts = kw.pop("layouts", None)
    key = (cfg, layouts)
    if key not in _FWD:
        _FWD[key] = jax.jit(lambda p, i, kw: VisionLanguageModel(cfg).apply({"params": p}, i, layouts=layouts, **kw).logits)
    return np.asarray(_FWD[key](params, jnp.asarray(ids), {k: jnp.asarray(v) for k, v in kw.items()}))


def _internvl_inputs(cfg, n_tiles_per_row=(2, 1), seed=0):
    rng = np.random.default_rng(seed)
    n = cfg.tokens_per_tile
    rows = [[BOS, 5, 6] + [IMAGE_TOKEN_ID] * n * t + [7, 8] for t in n_tiles_per_row]
    T = max(map(len, rows))
    ids = np.zeros((len(rows), T), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):  # left padding
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    px = rng.standard_normal((sum(n_tiles_per_row), 3, 28, 28)).astype(np.float32)
    return ids, mask, px


BOS = 1


def _internvl_compare(hf, cfg, params, ids, mask, px):
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(px)).logits
    out = _forward(cfg, params, ids, pixel_values=px, attention_mask=mask)
    m = mask.astype(bool)
    return np.abs(out[m] - ref.detach().numpy()[m]).max()


def test_internvl_images_parity(vlm_dirs):
    d = vlm_dirs["internvl"]
    cfg, params = load_vlm(d)
    assert cfg.family == "internvl" and cfg.text.model_type == "qwen2" and cfg.tokens_per_tile == 4
    ids, mask, px = _internvl_inputs(cfg)
    assert _internvl_compare(_hf("internvl", d), cfg, params, ids, mask, px) <= TOL


def test_internvl_video_frames_parity(vlm_dirs):
    """Several frames, one tile each, as InternVL feeds a video."""
    d = vlm_dirs["internvl"]
    cfg, params = load_vlm(d)
    ids, mask, px = _internvl_inputs(cfg, n_tiles_per_row=(5,), seed=1)
    assert _internvl_compare(_hf("internvl", d), cfg, params, ids, mask, px) <= TOL


def _phi4_inputs(cfg, layouts_spec, seed=0):
    """layouts_spec: per image (h_crops, w_crops, pad_cols_in_last_crop)."""
    rng = np.random.default_rng(seed)
    p = cfg.vision.patches_per_side
    S = cfg.vision.image_size
    max_crops = max(h * w for h, w, _ in layouts_spec) + 1
    n = len(layouts_spec)
    px = rng.standard_normal((n, max_crops, 3, S, S)).astype(np.float32)
    pm = np.ones((n, max_crops, p, p), bool)
    sizes, layouts = [], []
    for i, (h, w, pad) in enumerate(layouts_spec):
        px[i, 1 + h * w:] = 0
        if pad:
            for c in range(h):
                pm[i, 1 + c * w + (w - 1), :, p - pad:] = False
        m = pm[i, 1 : 1 + h * w, 0::2, 0::2]
        b = m.shape[-1]
        m = m.reshape(h, w, b, b).transpose(0, 2, 1, 3).reshape(h * b, w * b)
        layouts.append((h, w, int(m[:, 0].sum()), int(m[0, :].sum())))
        sizes.append([h * S, w * S])
    return px, pm, np.array(sizes), tuple(layouts)


def _phi4_compare(hf, cfg, params, spec, seed=0):
    px, pm, sizes, layouts = _phi4_inputs(cfg, spec, seed)
    n_tok = sum(cfg.phi4_tokens(lay) for lay in layouts)
    ids = np.array([[BOS, 5, 6] + [IMAGE_TOKEN_ID] * n_tok + [7, 8, 9]])
    ref = hf(input_ids=torch.tensor(ids), image_pixel_values=torch.tensor(px), image_sizes=torch.tensor(sizes),
             image_attention_mask=torch.tensor(pm.astype(np.int64))).logits.detach().numpy()
    out = _forward(cfg, params, ids, pixel_values=px, patch_mask=pm, layouts=layouts)
    return np.abs(out - ref).max()


def test_phi4mm_hd_images_parity(vlm_dirs):
    """Two images: a 1x2-crop one whose last crop is padded (patch mask), and a 1x1 one."""
    d = vlm_dirs["phi4mm"]
    cfg, params = load_vlm(d)
    assert cfg.family == "phi4mm" and cfg.text.model_type == "phi3" and cfg.vision.feature_layer == -2
    assert _phi4_compare(_hf("phi4mm", d), cfg, params, [(1, 2, 2), (1, 1, 0)]) <= TOL


def test_phi4mm_video_frames_parity(vlm_dirs):
    d = vlm_dirs["phi4mm"]
    cfg, params = load_vlm(d)
    assert _phi4_compare(_hf("phi4mm", d), cfg, params, [(1, 1, 0)] * 4, seed=3) <= TOL


@pytest.mark.parametrize("family", ["internvl", "phi4mm"])
def test_export_reloads_in_transformers(vlm_dirs, tmp_path, family):
    """HF -> latent_jax -> HF: transformers loads the export and gives the original logits."""
    d = vlm_dirs[family]
    cfg, params, unused = load_vlm(d, return_unused=True)
    out = str(tmp_path / "export")
    save_vlm(params, cfg, out, unused=unused)
    cls = transformers.InternVLForConditionalGeneration if family == "internvl" else transformers.Phi4MultimodalForCausalLM
    a, b = _hf(family, d), cls.from_pretrained(out, attn_implementation="eager").eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst == 0.0
    # and the reloaded export still matches latent_jax on an image prompt
    cfg2, params2 = load_vlm(out)
    if family == "internvl":
        ids, mask, px = _internvl_inputs(cfg2)
        assert _internvl_compare(b, cfg2, params2, ids, mask, px) <= TOL
    else:
        assert _phi4_compare(b, cfg2, params2, [(1, 2, 1)]) <= TOL


def test_phi4mm_vision_lora_merged_at_load(vlm_dirs, tmp_path):
    """In-checkpoint PEFT-style vision LoRA (base_layer + lora_A/B.vision) is merged: W + a/r B A."""
    from safetensors.numpy import load_file, save_file

    d = vlm_dirs["phi4mm"]
    state = load_file(os.path.join(d, "model.safetensors"))
    rng = np.random.default_rng(0)
    r, alpha = 4, 8
    merged = dict(state)
    lora_state = {}
    for k, w in state.items():
        if k.startswith("model.layers.") and k.endswith(("qkv_proj.weight", "down_proj.weight")):
            stem = k[: -len(".weight")]
            A = (0.05 * rng.standard_normal((r, w.shape[1]))).astype(np.float32)
            B = (0.05 * rng.standard_normal((w.shape[0], r))).astype(np.float32)
            lora_state[f"{stem}.base_layer.weight"] = w
            lora_state[f"{stem}.lora_A.vision.weight"] = A
            lora_state[f"{stem}.lora_B.vision.weight"] = B
            lora_state[f"{stem}.lora_A.speech.weight"] = A * 3
            lora_state[f"{stem}.lora_B.speech.weight"] = B * 3
            merged[k] = w + (alpha / r) * B @ A
        else:
            lora_state[k] = w
    lora_dir, ref_dir = tmp_path / "lora", tmp_path / "ref"
    for p, st in ((lora_dir, lora_state), (ref_dir, merged)):
        os.makedirs(p)
        save_file(st, str(p / "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        c["vision_lora"] = {"r": r, "lora_alpha": alpha}
        with open(p / "config.json", "w") as f:
            json.dump(c, f)
    cfg, params = load_vlm(str(lora_dir))
    ref = transformers.Phi4MultimodalForCausalLM.from_pretrained(str(ref_dir), attn_implementation="eager").eval()
    assert _phi4_compare(ref, cfg, params, [(1, 1, 0)]) <= TOL
    base_cfg, base_params = load_vlm(d)
    diff = np.abs(np.asarray(params["language_model"]["layers_0"]["self_attn"]["qkv_proj"]["kernel"])
                  - np.asarray(base_params["language_model"]["layers_0"]["self_attn"]["qkv_proj"]["kernel"])).max()
    assert diff > 1e-3  # the adapter changed the weights


def test_audio_inputs_fail_clearly(vlm_dirs):
    cfg, params = load_vlm(vlm_dirs["phi4mm"])
    with pytest.raises(AudioNotSupportedError, match="audio inputs are not supported"):
        VisionLanguageModel(cfg).apply({"params": params}, jnp.ones((1, 4), jnp.int32),
                                       audio_input_features=jnp.zeros((1, 10, 80)))


def test_video_token_dropping_in_lm(vlm_dirs):
    """HiCo video-level dropping: with no drop layers it equals the plain forward; dropping half
    the video tokens at layer 1 shortens the sequence (uniform and attention modes)."""
    from latent_jax.models.multimodal import forward_with_token_drop

    cfg, params = load_vlm(vlm_dirs["internvl"])
    ids = np.array([[BOS, 5] + [IMAGE_TOKEN_ID] * 8 + [6, 7]])
    m = VisionLanguageModel(cfg)
    x = jax.jit(lambda p, i: m.apply({"params": p}, i, method="embed_inputs"))(params, jnp.asarray(ids))
    full = np.asarray(jax.jit(lambda p, i: m.apply({"params": p}, i).logits[:, -1])(params, jnp.asarray(ids)))
    mask = jnp.ones(ids.shape, jnp.int32)
    vmask = ids == IMAGE_TOKEN_ID

    def drop(layers, mode="uniform"):  # jitted: eager op-by-op dispatch is slow on CPU
        return jax.jit(lambda p, e, mk: forward_with_token_drop(p, cfg, e, mk, vmask, layers, 0.5, mode))(params, x, mask)

    lg, T = drop([])
    assert T == 12 and np.abs(np.asarray(lg) - full).max() <= TOL
    for mode in ("uniform", "attention"):
        lg, T = drop([1], mode)
        assert T == 8 and np.isfinite(np.asarray(lg)).all()
