"""Generation CLI: --prompt / --input-ids / --prompts-file, HF dir and Orbax checkpoint,
--json fields, batching does not change greedy output, strategy registry, one-line errors."""

import json

import jax
import numpy as np
import pytest

from latent_jax.decoding import sampling as S
from latent_jax.decoding import strategies
from latent_jax.generate import main, run
from latent_jax.models.hf import load_hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from latent_jax.testing import make_tiny_hf, make_tiny_tokenizer

    d = str(tmp_path_factory.mktemp("gen_llama"))
    make_tiny_hf("llama", d, initializer_range=0.2)
    make_tiny_tokenizer(d)
    return d


def _json_lines(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return [json.loads(line) for line in out]


def test_prompt_json_matches_generate(model_dir, capsys):
    assert main(["--model", model_dir, "--prompt", "Hello", "--max-new-tokens", "6", "--stop-ids", "none", "--json"]) == 0
    (r,) = _json_lines(capsys)
    for k in ("input_ids", "output_ids", "text", "tokens_per_s", "forward_passes"):
        assert k in r
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert r["input_ids"] == tok("Hello")["input_ids"]
    cfg, params = load_hf(model_dir)
    ids, mask = S.left_pad([r["input_ids"]])
    ref = S.generate(params, ids, mask, jax.random.PRNGKey(0), S.SamplingParams.make(),
                     np.zeros((0,), np.int32), config=cfg, max_new_tokens=6)
    assert r["output_ids"] == np.asarray(ref.tokens)[0].tolist()  # new tokens only
    assert r["text"] == tok.decode(r["output_ids"], skip_special_tokens=True)
    assert r["forward_passes"] == 6 and r["tokens_per_s"] > 0


def test_batch_file_equals_single_runs_and_orbax(model_dir, tmp_path, capsys):
    pf = tmp_path / "p.jsonl"
    rows = [{"prompt": "abc"}, {"input_ids": [5, 6, 7, 8, 9, 10, 11]}, {"prompt": "The quick brown fox"}]
    pf.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    batch = run(["--model", model_dir, "--prompts-file", str(pf), "--max-new-tokens", "5", "--batch-size", "2"])
    assert [r["index"] for r in batch] == [0, 1, 2]
    single = run(["--model", model_dir, "--input-ids", "5,6,7,8,9,10,11", "--max-new-tokens", "5"])
    assert batch[1]["output_ids"] == single[0]["output_ids"]
    # the converted Orbax checkpoint gives the same tokens (and keeps the tokenizer)
    from latent_jax.convert import main as convert

    ck = str(tmp_path / "ck")
    assert convert(["hf-to-orbax", "--hf", model_dir, "--out", ck]) == 0
    capsys.readouterr()
    again = run(["--model", ck, "--prompts-file", str(pf), "--max-new-tokens", "5", "--batch-size", "2"])
    assert [r["output_ids"] for r in again] == [r["output_ids"] for r in batch]
    assert again[0]["text"] is not None


def test_sample_strategy_seeded(model_dir):
    argv = ["--model", model_dir, "--input-ids", "3,4,5", "--strategy", "sample", "--temperature", "2.0",
            "--top-k", "20", "--top-p", "0.9", "--max-new-tokens", "8", "--stop-ids", "none"]
    a = run(argv + ["--seed", "1"])[0]["output_ids"]
    b = run(argv + ["--seed", "1"])[0]["output_ids"]
    c = run(argv + ["--seed", "7"])[0]["output_ids"]
    assert a == b and a != c and len(a) == 8


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors_are_one_line(model_dir, tmp_path, capsys):
    from latent_jax.testing import make_tiny_hf

    notok = make_tiny_hf("qwen2", str(tmp_path / "notok"))
    capsys.readouterr()
    assert "no tokenizer files" in _err(capsys, ["--model", notok, "--prompt", "hi"])
    assert main(["--model", notok, "--input-ids", "4,5", "--max-new-tokens", "2"]) == 0  # ids work without one
    capsys.readouterr()
    assert "does not exist" in _err(capsys, ["--model", str(tmp_path / "none"), "--input-ids", "1"])
    assert "outside the vocabulary" in _err(capsys, ["--model", model_dir, "--input-ids", "1,999"])
    assert "--top-p" in _err(capsys, ["--model", model_dir, "--input-ids", "1", "--top-p", "0"])
    assert "--max-new-tokens" in _err(capsys, ["--model", model_dir, "--input-ids", "1", "--max-new-tokens", "0"])
    assert "unknown --strategy 'nope'" in _err(capsys, ["--model", model_dir, "--input-ids", "1", "--strategy", "nope"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    assert "line 2 is not valid JSON" in _err(capsys, ["--model", model_dir, "--prompts-file", str(bad)])
    bad.write_text('{"text": "x"}\n')
    assert '"prompt"' in _err(capsys, ["--model", model_dir, "--prompts-file", str(bad)])
    assert "does not exist" in _err(capsys, ["--model", model_dir, "--prompts-file", str(tmp_path / "nofile")])


def test_strategy_registry(monkeypatch):
    assert strategies.get_strategy("greedy") is strategies
    monkeypatch.setitem(strategies.STRATEGIES, "broken", "latent_jax.decoding.does_not_exist")
    with pytest.raises(ValueError, match="cannot be imported"):
        strategies.get_strategy("broken")
    monkeypatch.setitem(strategies.STRATEGIES, "nofn", "json")
    with pytest.raises(ValueError, match="lacks add_cli_args"):
        strategies.get_strategy("nofn")
    assert strategies.bucket_length(5) == 16 and strategies.bucket_length(17) == 32
    assert strategies.bucket_length(600) == 768
    assert strategies.bucket_batch(3, 8) == 4 and strategies.bucket_batch(9, 8) == 9


# ------------------------------------------------------------ vision-language models
@pytest.fixture(scope="module")
def vlm_media(tmp_path_factory):
    from latent_jax import testing as fx

    d = tmp_path_factory.mktemp("gen_vlm")
    img = str(d / "img.jpg")
    fx.synthetic_image(40, 52, seed=3).save(img)
    return {"internvl": fx.make_tiny_vlm("internvl", str(d / "internvl")),
            "phi4mm": fx.make_tiny_vlm("phi4mm", str(d / "phi4mm")),
            "image": img, "video": fx.write_synthetic_video(str(d / "v.mp4"), num_frames=8)}


def test_vlm_image_equals_transformers_greedy(vlm_media, capsys):
    """--image on InternVL3: the prompt's <image> becomes the tile tokens, and greedy output
    equals InternVLForConditionalGeneration.generate on the same tiles."""
    import torch
    import transformers

    from latent_jax.models.image_processing import internvl_tiles

    d = vlm_media["internvl"]
    assert main(["--model", d, "--image", vlm_media["image"], "--prompt", "Q: <image>\nwhat?", "--max-new-tokens", "6",
                 "--max-tiles", "2", "--json"]) == 0
    (r,) = _json_lines(capsys)
    assert r["media"] == "image" and r["input_ids"].count(3) == r["media_tokens"] > 0
    px = internvl_tiles(vlm_media["image"], 28, max_tiles=2)
    assert r["media_tokens"] == px.shape[0] * 4
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(d, attn_implementation="eager").eval()
    ids = torch.tensor([r["input_ids"]])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.tensor(px),
                          max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    assert r["output_ids"] == ref[: len(r["output_ids"])] and len(r["output_ids"]) >= 1
    assert len(r["output_ids"]) == 6 or r["output_ids"][-1] == 2


def test_vlm_video_equals_direct_call_and_checkpoint(vlm_media, tmp_path, capsys):
    """--video on Phi-4-MM (frames as global crops, HiCo merging): the cached CLI output equals
    an uncached greedy loop over VisionLanguageModel, and the converted checkpoint gives the same."""
    import jax.numpy as jnp

    from latent_jax.convert import main as convert
    from latent_jax.data.video import vlm_video_frames
    from latent_jax.models.hf_vlm import load_vlm
    from latent_jax.models.multimodal import VisionLanguageModel

    d = vlm_media["phi4mm"]
    argv = ["--video", vlm_media["video"], "--num-frames", "4", "--hico-tokens-per-frame", "2", "--hico-clip-frames",
            "2", "--prompt", "<video> say", "--max-new-tokens", "5", "--stop-ids", "none", "--json"]
    assert main(["--model", d, *argv]) == 0
    (r,) = _json_lines(capsys)
    assert r["media"] == "video" and r["media_tokens"] == 4 * 2 and len(r["output_ids"]) == 5
    cfg, params = load_vlm(d)
    m = VisionLanguageModel(cfg)
    feats = m.apply({"params": params}, jnp.asarray(vlm_video_frames(cfg, vlm_media["video"], 4)), 2, 2,
                    method="video_features")
    seq = list(r["input_ids"])
    for _ in range(5):
        logits = m.apply({"params": params}, jnp.asarray([seq]), features=feats).logits
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert seq[len(r["input_ids"]):] == r["output_ids"]
    ck = str(tmp_path / "ck")
    assert convert(["hf-to-orbax", "--hf", d, "--out", ck]) == 0
    capsys.readouterr()
    assert main(["--model", ck, *argv]) == 0
    (r2,) = _json_lines(capsys)
    assert r2["output_ids"] == r["output_ids"]


def test_vlm_errors_are_one_line(vlm_media, model_dir, capsys):
    d = vlm_media["internvl"]
    for argv, want in [(["--model", d, "--prompt", "hi"], "--image PATH or --video PATH"),
                       (["--model", d, "--image", "/nope.jpg", "--prompt", "hi"], "does not exist"),
                       (["--model", d, "--image", vlm_media["image"], "--prompt", "hi", "--strategy", "tova"], "greedy or sample"),
                       (["--model", model_dir, "--image", vlm_media["image"], "--prompt", "hi"], "text-only")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], (argv, err)


def test_vlm_longrope_limit_counts_the_real_prompt_not_its_padding(vlm_media, tmp_path, capsys):
    """Phi-4-MM (longrope): a prompt whose real length + --max-new-tokens stays within
    original_max_position_embeddings is generated even when its padded width would cross;
    one whose real length crosses is refused on one line."""
    import shutil

    from latent_jax.decoding.strategies import bucket_length

    argv = ["--image", vlm_media["image"], "--prompt", "Q: <image>\nwhat?", "--max-tiles", "1", "--json"]
    assert main(["--model", vlm_media["phi4mm"], *argv, "--max-new-tokens", "1"]) == 0
    (r,) = _json_lines(capsys)
    n = len(r["input_ids"])
    new = 4
    assert bucket_length(n) > n  # padded width > real length

    def with_original_max(limit):
        d = tmp_path / f"phi_{limit}"
        shutil.copytree(vlm_media["phi4mm"], d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["original_max_position_embeddings"] = cfg["rope_parameters"]["original_max_position_embeddings"] = limit
        (d / "config.json").write_text(json.dumps(cfg))
        return str(d)

    assert main(["--model", with_original_max(n + new), *argv, "--max-new-tokens", str(new), "--stop-ids", "none"]) == 0
    (r,) = _json_lines(capsys)
    assert len(r["output_ids"]) == new
    err = _err(capsys, ["--model", with_original_max(n + new - 1), *argv, "--max-new-tokens", str(new)])
    assert f"= {n + new} crosses rope_original_max_position_embeddings={n + new - 1}" in err


def test_damaged_model_files_are_one_line_naming_the_file(model_dir, tmp_path, capsys):
    """Truncated or random-bytes safetensors, a model directory without config.json, an Orbax
    checkpoint with a garbage model_config.json or truncated array files: one line naming the
    file, no traceback (and, in a real process, no asyncio noise at exit)."""
    import os
    import shutil
    import subprocess
    import sys

    from latent_jax.convert import main as convert

    def copy(name):
        d = tmp_path / name
        shutil.copytree(model_dir, d)
        return d

    d = copy("truncated")
    st = d / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    assert f"{st} is not a readable safetensors file" in _err(capsys, ["--model", str(d), "--input-ids", "1"])
    d = copy("random")
    (d / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    assert f"{d / 'model.safetensors'} is not a readable safetensors file" in _err(capsys, ["--model", str(d), "--input-ids", "1"])
    d = copy("noconfig")
    os.remove(d / "config.json")
    assert "config.json" in _err(capsys, ["--model", str(d), "--input-ids", "1"])

    ck = str(tmp_path / "ck")
    assert convert(["hf-to-orbax", "--hf", model_dir, "--out", ck]) == 0
    capsys.readouterr()
    garbage = tmp_path / "garbage"
    shutil.copytree(ck, garbage)
    (garbage / "model_config.json").write_text('{"model_type": "llama", "hidden_')
    err = _err(capsys, ["--model", str(garbage), "--input-ids", "1"])
    assert f"{garbage / 'model_config.json'} is not valid JSON" in err and "re-create" in err

    trunc = tmp_path / "trunc"
    shutil.copytree(ck, trunc)
    arrays = [os.path.join(r, f) for r, _, fs in os.walk(trunc / "params") for f in fs
              if "ocdbt.process" in r and os.path.basename(r) == "d"]
    assert arrays
    for p in arrays:
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 3)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(3):  # the reads left in flight finish at random moments; try a few times
        out = subprocess.run([sys.executable, "-m", "latent_jax.generate", "--model", "trunc", "--input-ids", "1"],
                             cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"),
                             capture_output=True, text=True, timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
        assert lines[0].startswith(f"error: {trunc / 'params'} cannot be read") and "re-create" in lines[0]
