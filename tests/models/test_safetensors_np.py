"""The numpy safetensors reader/writer agrees with the safetensors library (torch side)."""

import ml_dtypes
import numpy as np
import pytest

from latent_jax.models import safetensors_np as stn


def test_read_files_written_by_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    t = {"a.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
         "b.f16": torch.randn(4, generator=g).to(torch.float16),
         "c.f32": torch.randn(2, 2, 2, generator=g), "d.i64": torch.arange(6).reshape(2, 3),
         "e.empty": torch.zeros(0, 3)}
    save_file(t, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    got = stn.load_file(str(tmp_path / "m.safetensors"))
    assert got["a.bf16"].dtype == ml_dtypes.bfloat16
    for k, v in t.items():
        np.testing.assert_array_equal(got[k].astype(np.float64), v.double().numpy(), err_msg=k)
    assert stn.read_metadata(str(tmp_path / "m.safetensors")) == {"format": "pt"}


def test_written_files_read_by_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    stn.save_file({"w": stn.cast_for_save(x, "bfloat16"), "h": stn.cast_for_save(x, "float16"),
                   "f": x, "i": np.arange(5, dtype=np.int32)}, str(tmp_path / "o.safetensors"))
    back = load_file(str(tmp_path / "o.safetensors"))
    assert back["w"].dtype == torch.bfloat16 and back["h"].dtype == torch.float16
    np.testing.assert_array_equal(back["w"].float().numpy(), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(back["f"].numpy(), x)
    np.testing.assert_array_equal(back["i"].numpy(), np.arange(5))


def test_truncated_file_is_one_clear_error(tmp_path):
    p = tmp_path / "t.safetensors"
    stn.save_file({"w": np.ones((64, 64), np.float32)}, str(p))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(stn.SafetensorsError, match="truncated"):
        stn.load_file(str(p))
    with pytest.raises(ValueError, match="export dtype"):
        stn.cast_for_save(np.ones(2), "int8")
