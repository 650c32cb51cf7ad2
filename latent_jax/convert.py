"""Convert between Hugging Face directories and latent_jax Orbax checkpoints.

    python -m latent_jax.convert hf-to-orbax --hf DIR --out CKPT [--dtype bfloat16]
    python -m latent_jax.convert orbax-to-hf --ckpt CKPT --out DIR [--dtype bfloat16]

hf-to-orbax reads config.json and safetensors (one file, or shards listed in
model.safetensors.index.json; never pickle) and writes an Orbax checkpoint, the model config
and the tokenizer files. orbax-to-hf writes safetensors + config.json + generation_config
(+ tokenizer) that `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads.

Vision-language directories (InternVL3 `internvl`, Phi-4-multimodal `phi4_multimodal`) are
detected from config.json and go through latent_jax.models.hf_vlm (vision tower, projector
and decoder; Phi-4-MM's unported audio weights are carried along so the export is complete);
the exported directory loads as InternVLForConditionalGeneration / Phi4MultimodalForCausalLM.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from latent_jax.models.config import ConfigError
from latent_jax.models.hf import WeightsError, load_hf, save_hf
from latent_jax.models.hf_vlm import (is_vlm_checkpoint, is_vlm_dir, load_vlm, load_vlm_checkpoint, save_vlm,
                                      save_vlm_checkpoint)
from latent_jax.models.io import CheckpointError, cast_params, load_model, resolve_checkpoint, save_model
from latent_jax.paths import resolve_path

DTYPES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m latent_jax.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF directory (config.json + safetensors) -> Orbax checkpoint")
    a.add_argument("--hf", required=True, help="local Hugging Face model directory")
    a.add_argument("--out", required=True, help="output checkpoint directory (replaced atomically)")
    a.add_argument("--dtype", choices=DTYPES, default=None, help="store params in this dtype (default: as read)")
    a.add_argument("--scan-layers", action="store_true", help="store layers stacked (for config.scan_layers=True)")
    b = sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> HF directory transformers can load")
    b.add_argument("--ckpt", required=True, help="checkpoint written by hf-to-orbax or save_model")
    b.add_argument("--out", required=True, help="output HF directory")
    b.add_argument("--dtype", choices=DTYPES, default=None, help="safetensors dtype (default: the params' dtype)")
    return p


def hf_to_orbax(hf_dir: str, out: str, dtype: str | None = None, scan_layers: bool = False) -> str:
    """Convert an HF directory to a latent_jax checkpoint; returns the checkpoint path."""
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"--hf {hf_dir} is not a directory; pass a local Hugging Face model directory")
    if is_vlm_dir(hf_dir):
        return _vlm_hf_to_orbax(hf_dir, out, dtype, scan_layers)
    over = {"scan_layers": True} if scan_layers else {}
    if dtype:
        over["param_dtype"] = dtype
    cfg, params = load_hf(hf_dir, **over)
    params = cast_params(params, dtype)
    return save_model(out, params, cfg, tokenizer_dir=hf_dir)


def orbax_to_hf(ckpt: str, out: str, dtype: str | None = None) -> str:
    """Convert a latent_jax checkpoint to an HF directory; returns the directory."""
    if is_vlm_checkpoint(ckpt):
        vcfg, vparams, unused = load_vlm_checkpoint(ckpt)
        save_vlm(vparams, vcfg, out, unused=unused, tokenizer_dir=resolve_checkpoint(ckpt), dtype=dtype or "float32")
        return os.path.abspath(out)
    cfg, params = load_model(ckpt)
    save_hf(params, cfg, out, tokenizer_dir=resolve_checkpoint(ckpt), dtype=dtype)
    return os.path.abspath(out)


def _vlm_hf_to_orbax(hf_dir: str, out: str, dtype: str | None, scan_layers: bool) -> str:
    if scan_layers:
        raise ValueError("--scan-layers is for text decoders; vision-language checkpoints keep per-layer params")
    cfg, params, unused = load_vlm(hf_dir, return_unused=True)
    if dtype:
        params = cast_params(params, dtype)
        cfg = cfg.replace(text=cfg.text.replace(param_dtype=dtype))
    return save_vlm_checkpoint(out, params, cfg, unused=unused, tokenizer_dir=hf_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 ok, 2 a user error reported on one line)."""
    args = _parser().parse_args(argv)
    for name in ("hf", "ckpt", "out"):  # relative to the current directory, once, here
        if getattr(args, name, None):
            setattr(args, name, resolve_path(getattr(args, name)))
    t0 = time.perf_counter()
    try:
        if args.cmd == "hf-to-orbax":
            path = hf_to_orbax(args.hf, args.out, args.dtype, args.scan_layers)
        else:
            path = orbax_to_hf(args.ckpt, args.out, args.dtype)
    except (ConfigError, WeightsError, CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        if os.environ.get("LATENT_JAX_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            msg = f"config.json lacks required key {e}; is this a decoder LM config?"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
