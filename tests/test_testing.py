"""latent_jax.testing writes its tiny HF checkpoints without torch, as the transformers classes'
save_pretrained would: the same files, config.json, generation_config.json and safetensors header
(names, dtypes, shapes), loaded by transformers with no missing, unexpected or re-initialised
tensor. And the fixtures every `:smoke` preset builds (tiny VLMs + A-OKVQA / CinePile data,
the roundtrip's tiny decoders + tokenizer) are built and loaded with torch unimportable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from latent_jax import testing as fx
from latent_jax.models.safetensors_np import load_file, read_header, read_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECODERS = ("mistral", "llama", "qwen2", "phi3")
VLMS = ("internvl", "phi4mm")


def _transformers_dir(family: str, out: str):
    """The reference: the transformers class saved with save_pretrained (needs torch)."""
    pytest.importorskip("torch")
    import transformers

    if family in VLMS:
        cls = (transformers.InternVLForConditionalGeneration if family == "internvl"
               else transformers.Phi4MultimodalForCausalLM)
        model = cls._from_config(fx.tiny_vlm_hf_config(family))
    else:
        cls = transformers.AutoModelForCausalLM
        model = cls.from_config(fx.tiny_hf_config(family))
    model.save_pretrained(out, safe_serialization=True)
    return cls


@pytest.mark.parametrize("family", DECODERS + VLMS)
def test_fixture_is_what_save_pretrained_writes(family, tmp_path):
    ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
    cls = _transformers_dir(family, ref)
    if family in VLMS:
        fx.make_tiny_vlm(family, ours, seed=3, with_tokenizer=False)
    else:
        fx.make_tiny_hf(family, ours, seed=3)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(ref))
    for fn in ("config.json", "generation_config.json"):
        assert json.load(open(os.path.join(ours, fn))) == json.load(open(os.path.join(ref, fn))), fn
    st_ref, st_ours = os.path.join(ref, "model.safetensors"), os.path.join(ours, "model.safetensors")
    assert read_header(st_ours) == read_header(st_ref)
    assert read_metadata(st_ours) == read_metadata(st_ref)

    model, info = cls.from_pretrained(ours, output_loading_info=True)
    assert not any(info.values()), info
    ours_state = load_file(st_ours)
    torch_state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if family in VLMS:
        from latent_jax.models.hf_vlm import normalize_keys

        ours_state = normalize_keys(ours_state)
    for k, v in ours_state.items():
        np.testing.assert_array_equal(torch_state[k], v, err_msg=k)
    # non-trivial norms and biases (what the parity tests rely on), the padding row zero
    norms = [v for k, v in ours_state.items() if k.endswith("norm.weight")]
    assert norms and all(np.abs(v - 1).max() > 0.01 for v in norms)
    biases = [v for k, v in ours_state.items() if k.endswith(".bias")]
    assert family in ("mistral", "llama", "phi3") or (biases and all(np.abs(v).max() > 0 for v in biases))
    embed = next(v for k, v in ours_state.items() if k.endswith("embed_tokens.weight"))
    assert not embed[0].any() and embed[1:].std() > 0.005


def test_fixture_values_follow_seed_and_initializer_range(tmp_path):
    a = load_file(fx.make_tiny_hf("llama", str(tmp_path / "a"), seed=0) + "/model.safetensors")
    b = load_file(fx.make_tiny_hf("llama", str(tmp_path / "b"), seed=1) + "/model.safetensors")
    c = load_file(fx.make_tiny_hf("llama", str(tmp_path / "c"), seed=0, initializer_range=0.2)
                  + "/model.safetensors")
    a2 = load_file(fx.make_tiny_hf("llama", str(tmp_path / "a2"), seed=0) + "/model.safetensors")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert all(np.array_equal(a[n], a2[n]) for n in a)
    assert not np.array_equal(a[k], b[k])
    assert 0.015 < a[k].std() < 0.025 and 0.15 < c[k].std() < 0.25


_NO_TORCH = r"""
import importlib.machinery as _m, sys


class _NoTorch:  # the path finder, minus torch: as on a machine where torch is not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "torchaudio"):
            return None
        return _m.PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        _m.PathFinder.invalidate_caches()

    @classmethod
    def find_distributions(cls, *a, **k):  # importlib.metadata still sees every installed package
        return _m.PathFinder.find_distributions(*a, **k)


sys.meta_path[:] = [_NoTorch if f is _m.PathFinder else f for f in sys.meta_path]
try:
    import torch  # noqa: F401
    raise SystemExit("torch still importable")
except ModuleNotFoundError:
    pass
"""

_FIXTURES = _NO_TORCH + r"""
import json, os
import jax
jax.config.update("jax_platforms", "cpu")
from latent_jax.generate import load_tokenizer
from latent_jax.main import _load_config
from latent_jax.models.hf import load_hf
from latent_jax.models.hf_vlm import load_vlm
from latent_jax.tasks.coconut_mm import ensure_smoke_fixtures, load_items
from latent_jax.testing import make_tiny_hf, make_tiny_tokenizer

work = sys.argv[1]
out = {}
# the multimodal presets: what ensure_smoke_fixtures builds (one family per dataset)
for spec in ("cinepile_coconut.py:smoke", "aokvqa_coconut.py:smoke"):
    c = _load_config("configs/" + spec)
    ensure_smoke_fixtures(c, work)
    cfg, params = load_vlm(c.model.path)
    tok = load_tokenizer(c.model.path)
    items, _ = load_items(c, "train")
    out[spec] = [cfg.family, len(items), tok.convert_tokens_to_ids("<|latent|>")]
# the roundtrip preset: a tiny decoder of each family + the character tokenizer
rt = _load_config("configs/roundtrip.py:smoke")
for fam in rt.roundtrip.families.split(","):
    d = os.path.join(work, "hf_source", fam)
    make_tiny_hf(fam, d, initializer_range=0.2)
    make_tiny_tokenizer(d)
    cfg, params = load_hf(d)
    tok = load_tokenizer(d)
    out[fam] = [cfg.model_type, tok.decode(tok("JAX")["input_ids"], skip_special_tokens=True)]
out["torch_loaded"] = any(k.split(".")[0] == "torch" for k in sys.modules)
print("RESULT " + json.dumps(out))
"""


def test_smoke_fixtures_build_and_load_without_torch(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", _FIXTURES, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(p.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert res.pop("torch_loaded") is False
    assert res["cinepile_coconut.py:smoke"][:2] == ["phi4mm", 8]
    assert res["aokvqa_coconut.py:smoke"][:2] == ["internvl", 8]
    assert res["cinepile_coconut.py:smoke"][2] == res["aokvqa_coconut.py:smoke"][2] == 5  # the tiny VLM layout
    assert res["llama"] == ["llama", "JAX"] and res["phi3"] == ["phi3", "JAX"]
    assert sorted(os.listdir(tmp_path / "fixtures" / "tiny_phi4mm")) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
