"""Tiny random Hugging Face checkpoints for tests, demos and benchmarks (nothing downloaded)."""

from __future__ import annotations

import os


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
    """Save a random *ForCausalLM of `family` with save_pretrained; returns out_dir."""
    import torch
    import transformers

    cfg = tiny_hf_config(family, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # random, non-trivial norms and biases so parity tests exercise every tensor
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
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
