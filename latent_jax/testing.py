"""The one fixtures module for tests, demos, benchmarks and every config's `:smoke` preset
(nothing downloaded): tiny random Hugging Face checkpoints of the real transformers classes
(language models and vision-language models) in the layout their save_pretrained writes,
tokenizers, synthetic images, short synthetic videos written with PyAV, and dataset rows in the
real CinePile / A-OKVQA schemas. None of it needs torch (transformers' config classes, the
tokenizers library and latent_jax's own safetensors writer), so every `:smoke` preset runs on a
machine without it; tests/test_testing.py checks the checkpoints against transformers.
Also tiny in-memory ModelConfigs (`tiny_config`).

Library code below the tasks does not import this module: tests, benchmarks, the CLIs and the
tasks' `:smoke` presets do (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np

from latent_jax.data.cinepile import clip_id
from latent_jax.models.config import ModelConfig
from latent_jax.models.hf import expected_shapes
from latent_jax.models.hf_vlm import vlm_config_from_hf, vlm_params_to_hf
from latent_jax.models.multimodal import init_vlm_params
from latent_jax.models.safetensors_np import save_file


def tiny_config(model_type: str = "llama", **kw) -> ModelConfig:
    """A small random-init ModelConfig for tests, benchmarks and laptop demos."""
    base = dict(
        model_type=model_type,
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        fused_qkv=model_type == "phi3",
        fused_gate_up=model_type == "phi3",
        attention_bias=model_type == "qwen2",
        bos_token_id=1,
        eos_token_id=(2,),
        pad_token_id=0,
    )
    base.update(kw)
    return ModelConfig(**base)


def tiny_hf_config(family: str, **kw):
    """A small transformers config of `family` (mistral, llama, qwen2, phi3)."""
    import transformers

    base = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "mistral":
        base.update(sliding_window=8, head_dim=16)
        cls = transformers.MistralConfig
    elif family == "llama":
        base.update(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            max_position_embeddings=512,
        )
        cls = transformers.LlamaConfig
    elif family == "qwen2":
        base.update(tie_word_embeddings=True)
        cls = transformers.Qwen2Config
    elif family == "phi3":
        half = 64 // 4 * 3 // 4 // 2  # rotary_dim / 2 with partial_rotary_factor 0.75
        base.update(
            partial_rotary_factor=0.75,
            original_max_position_embeddings=32,
            max_position_embeddings=256,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.1 * i for i in range(half)],
                "long_factor": [2.0 + 0.3 * i for i in range(half)],
            },
        )
        cls = transformers.Phi3Config
    else:
        raise ValueError(f"unknown family {family!r}")
    base.update(kw)
    return cls(**base)


def make_tiny_hf(family: str, out_dir: str, seed: int = 0, **kw) -> str:
    """Save a random *ForCausalLM of `family` as save_pretrained writes it (config.json,
    generation_config.json, model.safetensors with the same tensor names, shapes and dtype),
    without torch: normal(0, initializer_range) weights, pad embedding row zero, and
    non-trivial norms (1 + 0.1 N) and biases (0.05 N) so parity tests exercise every tensor.
    Returns out_dir."""
    cfg = tiny_hf_config(family, **kw)
    arch = type(cfg).__name__.replace("Config", "ForCausalLM")

    def tensors(hf: dict) -> dict[str, np.ndarray]:
        shapes = expected_shapes(ModelConfig.from_hf(hf))
        return _random_state(shapes, seed, std=float(hf.get("initializer_range", 0.02)), bias_std=0.05,
                             pad_rows={"model.embed_tokens.weight": hf.get("pad_token_id")})

    return _write_hf_dir(out_dir, cfg, arch, tensors)


_NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "layernorm_before.weight", "layernorm_after.weight")


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int, std: float, bias_std: float,
                  small: tuple[str, ...] = (), pad_rows: dict | None = None) -> dict[str, np.ndarray]:
    """float32 tensors for `shapes` (sorted by name, so the values depend only on seed and
    names): norm weights 1 + 0.1 N, biases and names containing any of `small` bias_std * N,
    everything else std * N; the rows in pad_rows ({name: row or None}) zeroed, as
    nn.Embedding(padding_idx) initialises them."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        z = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith(_NORM_SUFFIXES):
            x = 1.0 + 0.1 * z
        elif name.endswith(".bias") or any(k in name for k in small):
            x = bias_std * z
        else:
            x = std * z
        row = (pad_rows or {}).get(name)
        if row is not None and 0 <= int(row) < shape[0]:
            x[int(row)] = 0.0
        out[name] = np.ascontiguousarray(x, dtype=np.float32)
    return out


def _write_hf_dir(out_dir: str, hf_cfg, architecture: str, tensors) -> str:
    """Write config.json + generation_config.json with transformers' config classes (no torch)
    and model.safetensors = tensors(config.json as a dict), as save_pretrained does. Written
    beside out_dir, then moved in with config.json last (a directory with config.json is complete)."""
    import transformers

    hf_cfg.architectures = [architecture]
    hf_cfg.dtype = "float32"
    tmp = out_dir.rstrip("/") + ".tmp-write"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    hf_cfg.save_pretrained(tmp)
    transformers.GenerationConfig.from_model_config(hf_cfg).save_pretrained(tmp)
    with open(os.path.join(tmp, "config.json")) as f:
        hf = json.load(f)
    save_file(tensors(hf), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    os.makedirs(out_dir, exist_ok=True)
    for fn in sorted(os.listdir(tmp), key=lambda n: n == "config.json"):
        os.replace(os.path.join(tmp, fn), os.path.join(out_dir, fn))
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def make_tiny_tokenizer(out_dir: str, vocab_size: int = 128) -> str:
    """Save a character-level tokenizer (<pad>=0, <s>=1, </s>=2, <unk>=3, then printable ASCII,
    at most vocab_size entries) that transformers' AutoTokenizer loads; returns out_dir."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate((specials + chars)[:vocab_size])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


# ------------------------------------------------------------------ multimodal
# small special-token layout shared by the tiny VLMs and the fixture tokenizer
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = 3
TINY_VOCAB = 160


def tiny_vlm_hf_config(family: str, image_size: int = 28, patch_size: int = 7, **kw):
    """A small transformers config of `family` ('internvl' or 'phi4mm')."""
    import transformers

    if family == "internvl":
        vc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=image_size, patch_size=patch_size, use_qk_norm=True, attention_bias=True,
                  use_mean_pooling=True)
        vc.update(kw.pop("vision", {}))
        tc = dict(model_type="qwen2", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                  pad_token_id=PAD_ID)
        tc.update(kw.pop("text", {}))
        n_tok = (image_size // patch_size // 2) ** 2
        return transformers.InternVLConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE_TOKEN_ID,
                                           image_seq_length=n_tok, **kw)
    if family == "phi4mm":
        half = 64 // 4 * 3 // 4 // 2
        vc = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  image_size=image_size, patch_size=patch_size, crop_size=image_size, image_token_id=IMAGE_TOKEN_ID)
        vc.update(kw.pop("vision", {}))
        ac = dict(hidden_size=32, intermediate_size=64, num_blocks=1, num_attention_heads=4, ext_pw_out_channel=32,
                  depthwise_separable_out_channel=32, nemo_conv_channels=32, audio_token_id=4)
        base = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, original_max_position_embeddings=4096,
                    max_position_embeddings=16384, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                    rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                     "short_factor": [1.0 + 0.1 * i for i in range(half)],
                                     "long_factor": [2.0 + 0.3 * i for i in range(half)]})
        rope_given = "rope_parameters" in kw
        base.update(kw)
        if not rope_given:
            half = base["hidden_size"] // base["num_attention_heads"] * 3 // 4 // 2
            base["rope_parameters"]["short_factor"] = [1.0 + 0.1 * i for i in range(half)]
            base["rope_parameters"]["long_factor"] = [2.0 + 0.3 * i for i in range(half)]
        return transformers.Phi4MultimodalConfig(vision_config=vc, audio_config=ac, **base)
    raise ValueError(f"unknown VLM family {family!r}; use internvl or phi4mm")


def make_tiny_vlm(family: str, out_dir: str, seed: int = 0, with_tokenizer: bool = True, **kw) -> str:
    """Save a random InternVLForConditionalGeneration / Phi4MultimodalForCausalLM as
    save_pretrained writes it (config.json, generation_config.json, model.safetensors with the
    same tensor names and shapes: InternVL's on-disk llava-style names, Phi-4-MM's unported
    audio tower, pooling head and vision layers past the feature layer included), without
    torch: non-trivial norms, biases, layer scales and newline vectors. Returns out_dir."""
    cfg = tiny_vlm_hf_config(family, **kw)
    arch = "InternVLForConditionalGeneration" if family == "internvl" else "Phi4MultimodalForCausalLM"

    def tensors(hf: dict) -> dict[str, np.ndarray]:
        vcfg = vlm_config_from_hf(hf)
        full = vcfg.replace(vision=vcfg.vision.replace(feature_layer=-1))  # every vision layer
        tree = jax.eval_shape(lambda: init_vlm_params(full, 0))
        tree = jax.tree.map(lambda a: np.empty(a.shape, np.float32), tree)
        shapes = {k: v.shape for k, v in vlm_params_to_hf(tree, full).items()}
        if family == "phi4mm":
            shapes.update(_phi4mm_unported_shapes(hf))
        else:
            shapes = {_internvl_disk_name(k): v for k, v in shapes.items()}
        embed = "language_model.model.embed_tokens.weight" if family == "internvl" else "model.embed_tokens.weight"
        text = hf.get("text_config", hf)
        return _random_state(shapes, seed, std=float(text.get("initializer_range", 0.02)), bias_std=0.1,
                             small=("lambda_", "extensor", "position_embedding", "cls_token"),
                             pad_rows={embed: text.get("pad_token_id")})

    _write_hf_dir(out_dir, cfg, arch, tensors)
    if with_tokenizer:
        write_tiny_tokenizer(out_dir)
    return out_dir


def _internvl_disk_name(name: str) -> str:
    """The llava-style name save_pretrained writes for InternVL's run-time tensor `name`
    (the inverse of latent_jax.models.hf_vlm.normalize_keys)."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    if name.startswith("lm_head."):
        return "language_model." + name
    return name.removeprefix("model.")


def _phi4mm_unported_shapes(hf: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the Phi4MultimodalForCausalLM tensors latent_jax does not port (the
    SigLIP post-norm and pooling head, the audio tower and its projections), from config.json."""
    v, a, h = hf["vision_config"], hf["audio_config"], int(hf["hidden_size"])
    out: dict[str, tuple[int, ...]] = {}

    def lin(name: str, n_out: int, n_in: int, *kernel: int) -> None:
        out[name + ".weight"] = (n_out, n_in, *kernel)
        out[name + ".bias"] = (n_out,)

    vh, vi = int(v["hidden_size"]), int(v["intermediate_size"])
    img = "model.embed_tokens_extend.image_embed.img_processor."
    out[img + "post_layernorm.weight"] = out[img + "post_layernorm.bias"] = (vh,)
    out[img + "head.probe"] = (1, 1, vh)
    out[img + "head.attention.in_proj_weight"], out[img + "head.attention.in_proj_bias"] = (3 * vh, vh), (3 * vh,)
    lin(img + "head.attention.out_proj", vh, vh)
    out[img + "head.layernorm.weight"] = out[img + "head.layernorm.bias"] = (vh,)
    lin(img + "head.mlp.fc1", vi, vh)
    lin(img + "head.mlp.fc2", vh, vi)

    aud = "model.embed_tokens_extend.audio_embed."
    ah, ai, heads = int(a["hidden_size"]), int(a["intermediate_size"]), int(a["num_attention_heads"])
    ch, ext, k = int(a["nemo_conv_channels"]), int(a["ext_pw_out_channel"]), int(a["kernel_size"])
    dw = ah * int(a["depthwise_multiplier"])
    for use in ("speech", "vision_speech"):
        lin(f"{aud}up_proj_for_{use}", h, ah * int(a["downsample_rate"]))
        lin(f"{aud}down_proj_for_{use}", h, h)
    enc = aud + "encoder."
    out[enc + "encoder_embedding.global_mean"] = out[enc + "encoder_embedding.global_invstd"] = (int(a["input_size"]),)
    lin(enc + "embed.conv.0", ch, 1, 3, 3)
    for i in range(int(math.log2(int(a["time_reduction"]))) - 1):
        lin(f"{enc}embed.conv.{2 + 3 * i}", ch, 1, 3, 3)
        lin(f"{enc}embed.conv.{3 + 3 * i}", ch, ch, 1, 1)
    lin(enc + "embed.out", ah, ch * int(a["nemo_final_size"]))
    buckets = int(a["bias_max_distance"]) * (1 if a["bias_symmetric"] else 2)
    out[enc + "relative_attention_bias_layer.bias_values.weight"] = (buckets, heads)
    for b in range(int(a["num_blocks"])):
        layer = f"{enc}encoders.{b}."
        for ff in ("feed_forward_in", "feed_forward_out"):
            out[f"{layer}{ff}.layer_norm.weight"] = out[f"{layer}{ff}.layer_norm.bias"] = (ah,)
            lin(f"{layer}{ff}.gate_up_proj", 2 * ai, ah)
            lin(f"{layer}{ff}.down_proj", ah, ai)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin(f"{layer}self_attn.{p}", ah, ah)
        conv = layer + "conv."
        out[conv + "layer_norm.weight"] = out[conv + "layer_norm.bias"] = (ah,)
        lin(conv + "glu.ext_pw_conv_1d", 2 * ext, ah, 1)
        out[conv + "glu.b1"] = out[conv + "glu.b2"] = (1, ext, 1)
        lin(conv + "dw_sep_conv_1d.dw_conv", dw, 1, k)
        lin(conv + "dw_sep_conv_1d.pw_conv", int(a["depthwise_separable_out_channel"]), dw, 1)
        lin(conv + "ext_pw_conv_1d", ext, ah, 1)
        for n in ("layer_norm_att", "layer_norm"):
            out[f"{layer}{n}.weight"] = out[f"{layer}{n}.bias"] = (ah,)
    return out


# ------------------------------------------------------------------ tokenizer
def write_tiny_tokenizer(out_dir: str) -> str:
    """A byte-level BPE-free tokenizer (characters + special tokens) saved as tokenizer.json,
    loadable with transformers.PreTrainedTokenizerFast. Ids match the tiny VLM layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    specials = ["<pad>", "<s>", "</s>", "<image>", "<audio>", "<|latent|>", "<|start-latent|>", "<|end-latent|>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    assert len(vocab) <= TINY_VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>", "image_token": "<image>",
                   "additional_special_tokens": specials[3:8]}, f, indent=1)
    return out_dir


# --------------------------------------------------------------------- images
def synthetic_image(height: int, width: int, seed: int = 0):
    """A PIL RGB image with smooth gradients + noise (so resizing is exercised)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), (xx + yy) / max(height + width - 2, 1)], -1)
    img = (base * 200 + rng.integers(0, 55, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def write_synthetic_video(path: str, num_frames: int = 12, height: int = 32, width: int = 48, fps: int = 8,
                          seed: int = 0) -> str:
    """Write a short mp4 (mpeg4 codec) of a moving square on a gradient with PyAV; returns path."""
    import av

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        color = rng.integers(0, 255, 3)
        for i in range(num_frames):
            yy, xx = np.mgrid[0:height, 0:width]
            img = np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), np.full_like(xx, 40 * (i % 6))], -1)
            x0 = (i * 3) % max(width - 8, 1)
            img[4:12, x0 : x0 + 8] = color
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ----------------------------------------------------------------- dataset rows
def cinepile_rows(n: int = 8, seed: int = 0, n_clips: int = 3) -> list[dict]:
    """Rows in the tomg-group-umd/cinepile schema (test-split fields included)."""
    rng = np.random.default_rng(seed)
    cats = ["Character and Relationship Dynamics", "Narrative and Plot Analysis", "Setting and Technical Analysis",
            "Temporal", "Theme Exploration"]
    rows = []
    for i in range(n):
        clip = i % n_clips
        key = int(rng.integers(0, 5))
        choices = [f"option {c} {i}" for c in "abcde"]
        rows.append({
            "movie_name": f"Movie {clip}",
            "year": 2000 + clip,
            "genre": ["Drama", "Comedy"],
            "yt_clip_title": f"Movie {clip} - Scene {clip}",
            "yt_clip_link": f"https://www.youtube.com/watch?v=clip{clip:04d}xx",
            "movie_scene": f"[scene] a red square moves right. subtitle {clip}",
            "subtitles": f"hello {clip}\nbye {clip}",
            "question": f"What moves in scene {i}?",
            "choices": choices,
            "answer_key": choices[key],
            "answer_key_position": key,
            "question_category": cats[i % len(cats)],
            "hard_split": str(bool(i % 2)),
            "visual_reliance": str(bool(i % 3 == 0)),
        })
    return rows


def write_cinepile_fixture(root: str, n_train: int = 8, n_test: int = 6, n_clips: int = 3,
                           num_frames: int = 8, make_clips: bool = True) -> str:
    """A CinePile directory: train/test parquet + clips/<video id>.mp4; returns root."""
    import datasets

    os.makedirs(root, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        rows = cinepile_rows(n, seed, n_clips)
        datasets.Dataset.from_list(rows).to_parquet(os.path.join(root, f"{split}.parquet"))
    if make_clips:
        for c in range(n_clips):
            link = f"https://www.youtube.com/watch?v=clip{c:04d}xx"
            write_synthetic_video(os.path.join(root, "clips", clip_id(link) + ".mp4"), num_frames=num_frames, seed=c)
    return root


def aokvqa_rows(n: int = 8, seed: int = 0, split: str = "train") -> list[dict]:
    """Rows in the A-OKVQA v1p0 JSON schema."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "cat", "dog", "tree", "car"]
    rows = []
    for i in range(n):
        choices = [words[(i + j) % len(words)] for j in range(4)]
        ci = int(rng.integers(0, 4))
        rows.append({
            "split": split,
            "image_id": 1000 + i,
            "question_id": f"q{seed}_{i}",
            "question": f"What is shown {i}?",
            "choices": choices,
            "correct_choice_idx": ci,
            "direct_answers": [choices[ci]] * 6 + [choices[(ci + 1) % 4]] * 4,
            "difficult_direct_answer": False,
            "rationales": [f"The object is {choices[ci]}.", f"It looks {choices[ci]}.", "So answer."],
        })
    return rows


def write_aokvqa_fixture(root: str, n_train: int = 8, n_val: int = 6, image_size: int = 40) -> str:
    """An A-OKVQA directory: aokvqa_v1p0_{train,val}.json + coco/{train2017,val2017}/*.jpg."""
    os.makedirs(root, exist_ok=True)
    for split, coco, n, seed in (("train", "train2017", n_train, 0), ("val", "val2017", n_val, 1)):
        rows = aokvqa_rows(n, seed, split)
        with open(os.path.join(root, f"aokvqa_v1p0_{split}.json"), "w") as f:
            json.dump(rows, f)
        d = os.path.join(root, "coco", coco)
        os.makedirs(d, exist_ok=True)
        for r in rows:
            synthetic_image(image_size, image_size + 8, seed=r["image_id"]).save(
                os.path.join(d, f"{r['image_id']:012d}.jpg"))
    return root


def cpu_devices_env(n: int) -> dict[str, str]:
    """os.environ for a subprocess that sees `n` fake CPU devices: the device count is appended
    to XLA_FLAGS, so the flags the caller runs with (the test session's compile settings) carry over."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
