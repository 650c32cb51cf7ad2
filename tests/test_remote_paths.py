"""Workdirs and checkpoint paths as URIs: a gs:// string reaches Orbax unchanged and no local
`gs:` folder appears; a file:// URI (handled by the same URI code path, no bucket needed) takes
real checkpoints, metrics and results.json through the path layer."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from latent_jax import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the real entry point with a stand-in workflow that opens the workflow's checkpointer; Orbax's
# CheckpointManager is replaced by a recorder (no bucket here), so what Orbax receives is visible
_PROBE = r"""
import sys, json
import orbax.checkpoint as ocp
seen = []
class Recorder:
    def __init__(self, directory, *a, **k):
        seen.append(str(directory))
    def all_steps(self): return []
    def latest_step(self): return None
ocp.CheckpointManager = Recorder
from latent_jax import main as M, paths
from latent_jax.train.checkpoint import TrainCheckpointer
def probe(config, workdir):
    TrainCheckpointer(paths.join(workdir, "checkpoints"))
    print(json.dumps({"workdir": workdir, "orbax": seen}))
M.WORKFLOWS["probe"] = "__main__:probe"
sys.modules["__main__"].probe = probe
sys.argv = ["main", "--config=configs/default.py", "--config.workflow=probe", "--workdir=gs://bucket/x"]
from absl import app
app.run(M.main)
"""


def test_gs_workdir_reaches_orbax_unchanged_and_no_local_folder(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _PROBE.replace("configs/", ROOT + "/configs/")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"workdir": "gs://bucket/x", "orbax": ["gs://bucket/x/checkpoints"]}
    assert os.listdir(tmp_path) == []  # no ./gs:/bucket/x


def test_path_layer_keeps_uris():
    assert paths.resolve_path("gs://bucket/x") == "gs://bucket/x"
    assert paths.join("gs://bucket/x/", "checkpoints", "3") == "gs://bucket/x/checkpoints/3"
    assert paths.orbax_path("gs://bucket/x") == "gs://bucket/x"
    assert paths.orbax_path("file:///tmp/a") == "/tmp/a"


def test_file_uri_workdir_checkpoints_metrics_results(tmp_path, monkeypatch):
    from latent_jax.testing import tiny_config
    from latent_jax.models.decoder import init_params
    from latent_jax.models.io import load_model, save_model
    from latent_jax.train.checkpoint import TrainCheckpointer
    from latent_jax.train.metrics import MetricsWriter, read_metrics

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "bucket" / "run"
    uri = f"file://{base}"
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
    with TrainCheckpointer(paths.join(uri, "checkpoints"), keep_best=1, best_metric="acc") as ck:
        ck.save(1, state, metrics={"acc": 0.5}, extra={"epoch": 0})
        ck.save(1, jax.tree.map(lambda x: x + 1, state), metrics={"acc": 0.7}, extra={"epoch": 1})  # re-save
        ck.save(2, state, extra={"epoch": 2})
        assert ck.all_steps() == [1, 2] and ck.best_step() == 1
    with TrainCheckpointer(paths.join(uri, "checkpoints"), keep_best=1, best_metric="acc") as ck:  # resume
        restored, extra = ck.restore(1, state)
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) + 1)
    assert extra == {"epoch": 1}

    w = MetricsWriter(uri, tensorboard=False, enabled=True)
    w.write(1, {"loss": 2.0})
    w.write(2, {"loss": 1.5})
    w.close()
    assert [r["loss"] for r in read_metrics(uri)] == [2.0, 1.5]
    paths.write_json(paths.join(uri, "test", "results.json"), {"accuracy": 0.25})
    assert json.loads((base / "test" / "results.json").read_text()) == {"accuracy": 0.25}

    cfg = tiny_config("llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    save_model(paths.join(uri, "best_model"), params, cfg)
    cfg2, p2 = load_model(paths.join(uri, "best_model"))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, p2, params)
    assert sorted(os.listdir(tmp_path)) == ["bucket"]  # nothing named file: in the working directory
    assert (base / "checkpoints" / "1").is_dir() and (base / "metrics.jsonl").is_file()
