"""No torch at run time: with torch unimportable (the path finder filtered, so find_spec('torch')
is None as when torch is not installed), one subprocess runs the text Coconut smoke preset, the
A-OKVQA (InternVL) multimodal smoke preset on the fixtures it builds itself, the roundtrip on a
tiny Llama (latent_jax as the reference) and a bf16 HF -> Orbax -> HF export; the export is then
checked tensor for tensor with the safetensors library. (tests/test_testing.py builds and loads
every smoke preset's fixtures without torch, in the fast tier.)"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRIVER = r"""
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
import json, os
import jax
jax.config.update("jax_platforms", "cpu")
from latent_jax.main import _load_config, resolve_workflow
from latent_jax import convert
work, hf_bf16 = sys.argv[1:3]
import time
t0 = time.time()
out = {}
c = _load_config("configs/prosqa_coconut.py:smoke")
c.chain = "cot"
c.num_epochs = 1
out["text"] = resolve_workflow(c.workflow)(c, os.path.join(work, "text")) is not None
print("TIME text", time.time() - t0, flush=True)
c = _load_config("configs/aokvqa_coconut.py:smoke")  # builds its tiny InternVL + A-OKVQA fixtures
c.num_epochs = 1
out["vlm"] = resolve_workflow(c.workflow)(c, os.path.join(work, "vlm")) is not None
print("TIME vlm", time.time() - t0, flush=True)
c = _load_config("configs/roundtrip.py:smoke")  # the transformers reference needs torch: latent_jax's instead
c.roundtrip.families = "llama"
r = resolve_workflow(c.workflow)(c, os.path.join(work, "rt"))
out["roundtrip"] = [r["all_ok"], r["models"][0]["reference"], r["models"][0]["generation_matches_transformers"]]
print("TIME roundtrip", time.time() - t0, flush=True)
assert convert.main(["hf-to-orbax", "--hf", hf_bf16, "--out", os.path.join(work, "ckpt")]) == 0
assert convert.main(["orbax-to-hf", "--ckpt", os.path.join(work, "ckpt"), "--out", os.path.join(work, "export"),
                     "--dtype", "bfloat16"]) == 0
out["torch_loaded"] = any(k.split(".")[0] == "torch" for k in sys.modules)
print("TIME export", time.time() - t0, flush=True)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory):
    """What only a test may build with torch: a bf16 HF model saved by transformers."""
    torch = pytest.importorskip("torch")
    import transformers

    from latent_jax.testing import make_tiny_hf

    base = tmp_path_factory.mktemp("no_torch")
    f32 = make_tiny_hf("llama", str(base / "hf32"))
    model = transformers.AutoModelForCausalLM.from_pretrained(f32).to(torch.bfloat16)
    model.save_pretrained(str(base / "hf_bf16"), safe_serialization=True)
    return base, base / "hf_bf16"


def test_smoke_presets_and_export_run_without_torch(prebuilt, tmp_path):
    from safetensors.torch import load_file

    base, hf_bf16 = prebuilt
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path), str(hf_bf16)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(p.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert res == {"text": True, "vlm": True, "torch_loaded": False,
                   "roundtrip": [True, "latent_jax (torch not installed)", None]}
    assert (tmp_path / "vlm" / "results.json").exists()
    src = load_file(str(hf_bf16 / "model.safetensors"))
    exp = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert json.load(open(tmp_path / "export" / "config.json"))["torch_dtype"] == "bfloat16"
    for k, v in src.items():
        if k in exp:
            assert exp[k].dtype == v.dtype and bool((exp[k] == v).all()), k
    assert set(exp) <= set(src) and len(exp) >= len(src) - 1  # tied lm_head may be omitted
