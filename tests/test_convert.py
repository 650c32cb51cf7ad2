"""Conversion CLI: HF -> Orbax -> HF round trips that transformers loads with the same
logits, --dtype, sharded safetensors, and one-line errors for bad inputs."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from latent_jax.convert import main
from tests.conftest import FAMILIES


def _hf_logits(d, ids, mask=None):
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        return m(input_ids=torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_roundtrip_loaded_by_transformers(family, tiny_hf_dir, tmp_path, capsys):
    src = tiny_hf_dir(family)
    ck, out = str(tmp_path / "ck"), str(tmp_path / "hf")
    assert main(["hf-to-orbax", "--hf", src, "--out", ck]) == 0
    assert main(["orbax-to-hf", "--ckpt", ck, "--out", out]) == 0
    assert os.path.exists(os.path.join(out, "model.safetensors"))
    assert os.path.exists(os.path.join(out, "generation_config.json"))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, size=(2, 40))  # longer than Mistral's window 8 and Phi-3's original 32
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    ref = _hf_logits(src, ids, mask)
    back = _hf_logits(out, ids, mask)
    assert np.abs(ref - back)[mask.astype(bool)].max() <= 1e-4
    # and latent_jax on the Orbax checkpoint agrees with transformers on the original
    from latent_jax.models.decoder import Decoder
    from latent_jax.models.io import load_any

    cfg, params = load_any(ck)
    ours = np.asarray(Decoder(cfg).apply({"params": params}, ids, attention_mask=mask).logits)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["model_type"] == family


def test_dtype_and_sharded_input(tiny_hf_dir, tmp_path):
    import transformers
    from safetensors import safe_open

    src = tiny_hf_dir("llama")
    sharded = str(tmp_path / "sharded")
    m = transformers.AutoModelForCausalLM.from_pretrained(src)
    m.save_pretrained(sharded, max_shard_size="40KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    ck, out = str(tmp_path / "ck"), str(tmp_path / "hf16")
    assert main(["hf-to-orbax", "--hf", sharded, "--out", ck, "--dtype", "bfloat16"]) == 0
    with open(os.path.join(ck, "model_config.json")) as f:
        assert json.load(f)["param_dtype"] == "bfloat16"
    assert main(["orbax-to-hf", "--ckpt", ck, "--out", out]) == 0
    with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    ids = np.arange(3, 20)[None]
    ref = _hf_logits(src, ids)
    back = _hf_logits(out, ids)
    assert np.abs(ref - back).max() < 0.1  # bf16 weights: close, not exact
    # --dtype float32 on export widens back
    out32 = str(tmp_path / "hf32")
    assert main(["orbax-to-hf", "--ckpt", ck, "--out", out32, "--dtype", "float32"]) == 0
    with safe_open(os.path.join(out32, "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.float32


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors_are_one_line(tiny_hf_dir, tmp_path, capsys):
    src = tiny_hf_dir("qwen2")
    capsys.readouterr()  # building the fixture prints progress bars; start clean
    out = str(tmp_path / "o")
    assert "is not a directory" in _err(capsys, ["hf-to-orbax", "--hf", str(tmp_path / "missing"), "--out", out])

    def variant(name, edit_cfg=None, drop=None, add=None):
        d = tmp_path / name
        shutil.copytree(src, d)
        if edit_cfg:
            cfg = json.loads((d / "config.json").read_text())
            edit_cfg(cfg)
            (d / "config.json").write_text(json.dumps(cfg))
        if drop:
            os.remove(d / drop)
        if add:
            (d / add).write_bytes(b"pickle")
        return str(d)

    d = variant("unknown", lambda c: c.update(model_type="gpt_neox"))
    assert "unknown model_type='gpt_neox'" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("remote", lambda c: c.update(model_type="phi4mm", auto_map={"AutoModelForCausalLM": "x.Y"}))
    assert "trust_remote_code" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("noweights", drop="model.safetensors")
    assert "no model.safetensors" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("pickle", drop="model.safetensors", add="pytorch_model.bin")
    assert "safetensors only" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("shape", lambda c: c.update(intermediate_size=c["intermediate_size"] * 2))
    assert "shape mismatch" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("noconfig", drop="config.json")
    assert "no config.json" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    assert "not a latent_jax checkpoint" in _err(capsys, ["orbax-to-hf", "--ckpt", src, "--out", out])
    d = variant("truncated")
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(d, "model.safetensors")) // 2)
    err = _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    assert f"{d}/model.safetensors is not a readable safetensors file" in err and "re-download" in err
    d = variant("random")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(np.random.default_rng(1).bytes(3000))
    assert f"{d}/model.safetensors is not a readable safetensors file" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    d = variant("garbage_config")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("\x00\x01 not json")
    assert f"{d}/config.json is not valid JSON" in _err(capsys, ["hf-to-orbax", "--hf", d, "--out", out])
    ck = str(tmp_path / "ck")
    assert main(["hf-to-orbax", "--hf", src, "--out", ck]) == 0
    capsys.readouterr()
    with open(os.path.join(ck, "model_config.json"), "w") as f:
        f.write('{"model_type": ')
    err = _err(capsys, ["orbax-to-hf", "--ckpt", ck, "--out", out])
    assert f"{ck}/model_config.json is not valid JSON" in err and "re-create" in err
    assert not os.path.exists(out)  # nothing written on failure


def test_relative_paths(tiny_hf_dir, tmp_path, monkeypatch, capsys):
    """--hf / --out / --ckpt relative to the current directory (Orbax itself wants absolute)."""
    shutil.copytree(tiny_hf_dir("llama"), tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    assert main(["hf-to-orbax", "--hf", "hf", "--out", "ck"]) == 0
    assert main(["orbax-to-hf", "--ckpt", "ck", "--out", "back"]) == 0
    assert f"wrote {tmp_path / 'back'}" in capsys.readouterr().out
    assert (tmp_path / "ck" / "model_config.json").exists() and (tmp_path / "back" / "model.safetensors").exists()


def test_vlm_dir_without_config_json_is_one_line(tmp_path):
    from latent_jax.models.config import ConfigError
    from latent_jax.models.hf_vlm import load_vlm

    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        load_vlm(str(tmp_path))
    assert str(e.value).startswith(f"{tmp_path} has no config.json; pass a Hugging Face model directory")


def test_subprocess_entry_point(tiny_hf_dir, tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "latent_jax.convert", "orbax-to-hf", "--ckpt", str(tmp_path / "x"), "--out", str(tmp_path / "y")],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "hf-to-orbax" in r.stderr


# ------------------------------------------------------------ vision-language families
@pytest.fixture(scope="module")
def tiny_vlm_dirs(tmp_path_factory):
    from latent_jax.testing import make_tiny_vlm

    return {f: make_tiny_vlm(f, str(tmp_path_factory.mktemp(f"cv_{f}"))) for f in ("internvl", "phi4mm")}


@pytest.mark.parametrize("family", ["internvl", "phi4mm"])
def test_vlm_roundtrip(family, tiny_vlm_dirs, tmp_path):
    """InternVL3 / Phi-4-MM: HF -> Orbax -> HF gives the same tensors (Phi-4-MM's audio
    weights included), config model_type and tokenizer; the checkpoint loads as a VLM."""
    from safetensors.numpy import load_file

    from latent_jax.models.hf_vlm import is_vlm_checkpoint, load_vlm_any, normalize_keys

    src = tiny_vlm_dirs[family]
    ck, out = str(tmp_path / "ck"), str(tmp_path / "hf")
    assert main(["hf-to-orbax", "--hf", src, "--out", ck]) == 0
    assert is_vlm_checkpoint(ck) and os.path.exists(os.path.join(ck, "tokenizer.json"))
    assert main(["orbax-to-hf", "--ckpt", ck, "--out", out]) == 0
    a, b = (normalize_keys(load_file(os.path.join(p, "model.safetensors"))) for p in (src, out))
    assert set(a) == set(b)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0
    if family == "phi4mm":
        assert any("audio" in k for k in b)
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f)["model_type"] == json.load(g)["model_type"]
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    cfg, params, _ = load_vlm_any(ck)
    cfg2, params2, _ = load_vlm_any(src)
    assert cfg == cfg2
    assert main(["hf-to-orbax", "--hf", src, "--out", str(tmp_path / "ck2"), "--scan-layers"]) == 2
