"""Model checkpoints (save_model / load_model / load_any) and TrainCheckpointer retention,
restore and crash safety."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_jax.testing import tiny_config
from latent_jax.models.decoder import init_params
from latent_jax.models.io import CheckpointError, load_any, load_model, save_model
from latent_jax.train.checkpoint import TrainCheckpointer


def _allclose_tree(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_save_load_model_roundtrip(tmp_path):
    cfg = tiny_config("qwen2", tie_word_embeddings=True)
    params = init_params(cfg, 0)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    out = save_model(str(tmp_path / "ck"), params, cfg, tokenizer_dir=str(tok))
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    cfg2, p2 = load_model(out)
    assert cfg2 == cfg
    assert _allclose_tree(jax.device_get(params), jax.device_get(p2))
    cfg3, p3 = load_model(out, dtype="bfloat16")
    assert cfg3.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p3))
    # load_any on the same checkpoint, converting to the scanned layout
    cfg4, p4 = load_any(out, scan_layers=True)
    assert cfg4.scan_layers and "layers" in p4
    np.testing.assert_array_equal(
        np.asarray(p4["layers"]["layer"]["mlp"]["down_proj"]["kernel"][1]),
        np.asarray(params["layers_1"]["mlp"]["down_proj"]["kernel"]),
    )


def test_save_model_replace_is_atomic(tmp_path, monkeypatch):
    cfg = tiny_config("llama")
    p0 = init_params(cfg, 0)
    path = str(tmp_path / "ck")
    save_model(path, p0, cfg)
    # a failing second write must leave the first checkpoint intact and no temp dirs behind
    import latent_jax.models.io as mio

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mio, "copy_tokenizer_files", boom)
    tok = tmp_path / "tok"
    tok.mkdir()
    with pytest.raises(RuntimeError):
        save_model(path, init_params(cfg, 1), cfg, tokenizer_dir=str(tok))
    _, back = load_model(path)
    assert _allclose_tree(jax.device_get(p0), back)
    assert sorted(os.listdir(tmp_path)) == ["ck", "tok"]
    # a swap interrupted between the two renames: only ck.previous exists -> still loadable
    os.replace(path, path + ".previous")
    _, back = load_any(path)
    assert _allclose_tree(jax.device_get(p0), back)


def test_load_any_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_any(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither an HF model directory"):
        load_any(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="not a latent_jax checkpoint"):
        load_model(str(tmp_path / "empty"))


def test_load_any_hf(tiny_hf_dir):
    d = tiny_hf_dir("mistral")
    cfg, params = load_any(d)
    assert cfg.model_type == "mistral" and cfg.sliding_window == 8
    assert "lm_head" in params


def _state(v: float):
    return {"w": jnp.full((3, 2), v, jnp.float32), "step": jnp.int32(int(v))}


def test_train_checkpointer_keeps_best_and_latest(tmp_path):
    d = str(tmp_path / "ckpts")
    accs = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.7, 5: 0.2}
    with TrainCheckpointer(d, keep_best=2, best_metric="accuracy") as ck:
        for s, a in accs.items():
            ck.save(s, _state(s), metrics={"accuracy": a, "loss": 1 - a}, extra={"epoch": s, "stage": 0})
        steps = ck.all_steps()
        assert steps == [2, 4, 5], steps  # best two (2, 4) plus the latest (5)
        assert ck.best_step() == 2 and ck.latest_step() == 5
    # a fresh manager on the same directory sees the same, and restores state + extra
    ck = TrainCheckpointer(d, keep_best=2)
    state, extra = ck.restore_latest(_state(0.0))
    assert float(state["w"][0, 0]) == 5.0 and extra == {"epoch": 5, "stage": 0}
    state, extra = ck.restore(ck.best_step(), _state(0.0))
    assert float(state["w"][0, 0]) == 2.0 and extra["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
        ck.restore(3, _state(0.0))
    ck.close()


def test_train_checkpointer_min_mode_and_missing_metric(tmp_path):
    with TrainCheckpointer(str(tmp_path), keep_best=1, best_metric="loss", mode="min") as ck:
        for s, loss in [(10, 3.0), (20, 1.0), (30, 2.0), (40, 5.0)]:
            ck.save(s, _state(s), metrics={"loss": loss})
        assert ck.all_steps() == [20, 40]
        assert ck.best_step() == 20
        with pytest.raises(ValueError, match="metrics lack 'loss'"):
            ck.save(50, _state(50), metrics={"acc": 1.0})


def test_train_checkpointer_survives_partial_write(tmp_path):
    d = tmp_path / "ck"
    with TrainCheckpointer(str(d), keep_best=2) as ck:
        ck.save(1, _state(1), metrics={"accuracy": 0.3}, extra={"iter": {"pos": 7}})
    # a save killed mid-write leaves an orbax temporary directory with partial contents
    tmpdir = d / "2.orbax-checkpoint-tmp-1234567"
    (tmpdir / "state").mkdir(parents=True)
    (tmpdir / "state" / "garbage").write_bytes(b"\x00partial")
    # ... and a directory that looks like a step but was never finalized
    ck = TrainCheckpointer(str(d), keep_best=2)
    assert ck.latest_step() == 1
    state, extra = ck.restore_latest(_state(0.0))
    assert float(state["w"][0, 0]) == 1.0 and extra == {"iter": {"pos": 7}}
    assert not tmpdir.exists()  # cleaned up at start
    # training continues from there
    ck.save(2, _state(2), metrics={"accuracy": 0.4})
    assert ck.latest_step() == 2
    ck.close()


def test_restore_without_template_and_empty(tmp_path):
    ck = TrainCheckpointer(str(tmp_path / "c"), keep_best=1)
    assert ck.restore_latest() is None and ck.best_step() is None
    ck.save(3, {"a": np.arange(4, dtype=np.float32)}, extra={"cfg": {"lr": 1e-3}})
    state, extra = ck.restore_latest()
    np.testing.assert_array_equal(np.asarray(state["a"]), np.arange(4))
    assert json.loads(json.dumps(extra)) == {"cfg": {"lr": 1e-3}}
    ck.close()


# ------------------------------------------------------------ paths, re-saves, damaged files
def test_relative_paths_work_everywhere(tmp_path, monkeypatch):
    """Orbax needs absolute paths; a caller passing relative ones (as `--workdir runs/x`
    becomes) must not see 'Checkpoint path should be absolute'."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("llama")
    params = init_params(cfg, 0)
    out = save_model(os.path.join("runs", "best_model"), params, cfg)
    assert out == str(tmp_path / "runs" / "best_model")
    for loader in (load_model, load_any):
        _, back = loader(os.path.join("runs", "best_model"))
        assert _allclose_tree(jax.device_get(params), back)
    with TrainCheckpointer(os.path.join("runs", "checkpoints")) as ck:
        assert ck.directory == str(tmp_path / "runs" / "checkpoints")
        ck.save(1, _state(1), extra={"e": 1})
    assert (tmp_path / "runs" / "checkpoints" / "1").is_dir()


def test_resave_of_a_step_is_stored_once_with_its_metrics(tmp_path, caplog):
    """A periodic save on the epoch's last step, then the epoch-end save with validation
    metrics: one step, the newer extra, the metrics kept by a later save without any; and
    no Orbax "did not provide metrics" line for a save without metrics."""
    import logging

    caplog.set_level(logging.INFO)
    with TrainCheckpointer(str(tmp_path / "c"), keep_best=2) as ck:
        ck.save(9, _state(9), extra={"next_epoch": 0})
        ck.save(10, _state(10), extra={"next_epoch": 0, "mid": True})
        ck.save(10, _state(10), metrics={"accuracy": 0.75}, extra={"next_epoch": 1})
        assert 10 in ck.all_steps() and ck.metrics(10) == {"accuracy": 0.75}
        assert ck.restore(10, _state(0.0))[1] == {"next_epoch": 1}
        ck.save(10, _state(10), extra={"next_epoch": 1, "again": True})  # no metrics: keeps 0.75
        assert ck.metrics(10) == {"accuracy": 0.75} and ck.best_step() == 10
        assert ck.restore(10, _state(0.0))[1] == {"next_epoch": 1, "again": True}
    assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()]
    assert not [n for n in os.listdir(tmp_path / "c") if n.endswith(".replaced")]


def test_resave_killed_midway_keeps_the_old_copy(tmp_path, monkeypatch):
    import latent_jax.train.checkpoint as ckmod

    d = str(tmp_path / "c")
    ck = TrainCheckpointer(d, keep_best=1)
    ck.save(5, _state(5), extra={"v": "old"})

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckmod.TrainCheckpointer, "_save", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save(5, _state(6), metrics={"accuracy": 1.0}, extra={"v": "new"})
    assert not os.path.exists(os.path.join(d, "5"))  # set aside, not deleted
    monkeypatch.undo()
    ck2 = TrainCheckpointer(d, keep_best=1)  # a restarted run puts it back
    assert ck2.latest_step() == 5
    state, extra = ck2.restore_latest(_state(0.0))
    assert extra == {"v": "old"} and float(state["w"][0, 0]) == 5.0
    ck2.close()


def test_damaged_model_checkpoint_errors_name_the_file(tmp_path):
    cfg = tiny_config("llama")
    good = save_model(str(tmp_path / "good"), init_params(cfg, 0), cfg)
    import shutil

    bad = str(tmp_path / "garbage")
    shutil.copytree(good, bad)
    with open(os.path.join(bad, "model_config.json"), "w") as f:
        f.write('{"model_type": "llama", "hidden_size": ')
    with pytest.raises(ValueError) as e:
        load_any(bad)
    msg = str(e.value)
    assert os.path.join(bad, "model_config.json") in msg and "not valid JSON" in msg and "re-create" in msg
    with open(os.path.join(bad, "model_config.json"), "w") as f:
        f.write('{"no_such_field": 1}')
    with pytest.raises(CheckpointError, match="model_config.json is not a ModelConfig"):
        load_model(bad)

    trunc = str(tmp_path / "truncated")
    shutil.copytree(good, trunc)
    n = 0
    for root, _, files in os.walk(os.path.join(trunc, "params")):
        for fn in files:
            p = os.path.join(root, fn)
            if "ocdbt.process" in p and os.sep + "d" + os.sep in p:  # array data files
                with open(p, "r+b") as f:
                    f.truncate(os.path.getsize(p) // 3)
                n += 1
    assert n > 0
    with pytest.raises(CheckpointError) as e:
        load_any(trunc)
    msg = str(e.value)
    assert msg.startswith(os.path.join(trunc, "params") + " cannot be read") and "\n" not in msg and len(msg) < 700
