"""Multi-host the way it runs on a pod, on one machine: 2 processes on localhost joined by
jax.distributed (coordinator 127.0.0.1, gloo CPU collectives, 4 fake devices each) train the
text Coconut smoke preset through `python -m latent_jax.main --multihost`, configured only by
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID as launch/gpu.sh documents.

Text: one test, three runs: a single-process 8-device reference (2 epochs), then the 2-process run
for epoch 1, then the same 2 processes again with num_epochs=2, which must resume from the
checkpoint. Losses of every step equal the reference; checkpoints and metrics are written once.
FSDP across hosts: the same with params sharded over both processes (data 1, fsdp 4, tensor 2),
against 1 process on that mesh, the exported best model's arrays and test generations included.
Multimodal (A-OKVQA / InternVL smoke): 2 processes x 4 devices against 1 x 8, losses equal.
Slow (minutes on 2 shared cores): marked `multihost`, still part of the default suite."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/prosqa_coconut.py:smoke", "--config.chain=coconut", "--config.coconut_from_cot=False",
        "--config.data.gen.train=32", "--config.data.gen.valid=4", "--config.data.gen.test=4",
        "--config.eval_batch_size=4",
        # a constant lr: the resumed run below extends num_epochs, which would stretch a decaying
        # schedule (the preset's cosine) and change the updates already made
        "--config.optim.schedule=constant"]

pytestmark = pytest.mark.multihost


def _env(devices: int, **extra) -> dict:
    # the test session's compile settings (conftest) carry over; other JAX_ settings do not
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_DISABLE_MOST_OPTIMIZATIONS"}
    flags = os.environ.get("XLA_FLAGS", "")
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, *extra):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "latent_jax.main", *ARGS, *extra, f"--workdir={workdir}",
                               "--multihost"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "coconut", "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_two_processes_match_one_and_resume(tmp_path):
    ref = tmp_path / "ref"
    p = subprocess.run([sys.executable, "-m", "latent_jax.main", *ARGS, "--config.num_epochs=2", f"--workdir={ref}"],
                       cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    want = _losses(ref)
    assert len(want) == 4  # 32 examples / batch 16, 2 epochs (stage 0, then one thought)

    mh = tmp_path / "mh"
    _two_processes(mh, "--config.num_epochs=1")
    got1 = _losses(mh)
    assert sorted(got1) == [1, 2]  # metrics.jsonl written once (by process 0), not twice
    ckdir = mh / "coconut" / "checkpoints"
    steps = sorted(os.listdir(ckdir))
    assert steps == ["2"], steps  # one checkpoint directory, no leftovers from the other process

    outs = _two_processes(mh, "--config.num_epochs=2")  # the same 2 processes again: resumes at epoch 2
    got = _losses(mh)
    assert sorted(got) == [1, 2, 3, 4]
    assert all("epoch 1/2" not in o for o in outs), "the resumed run trained epoch 1 again"
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=2e-4, abs=1e-5), (step, got, want)
    res = json.load(open(mh / "coconut" / "test" / "results.json"))
    one = json.load(open(ref / "coconut" / "test" / "results.json"))
    # every process scored every test row (not its shard): the same rows and answers as 1 process
    assert res["num_examples"] == one["num_examples"] > 0
    assert res["accuracy"] == pytest.approx(one["accuracy"])


# FSDP across hosts (issue 24 item 7): the 8 global devices as (data 1, fsdp 4, tensor 2); make_mesh
# lays them out in process order, so fsdp shards 0-1 live on process 0 and 2-3 on process 1 and no
# process holds a whole sharded parameter (export, evaluation, test and resume must not read one)
FSDP = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2"]


def _predictions(workdir) -> list[list[int]]:
    return [json.loads(line)["generated_ids"] for line in open(workdir / "coconut" / "test" / "predictions.jsonl")]


def test_fsdp_across_processes_matches_one_and_resumes(tmp_path):
    """Params sharded over both processes: the 2-process run, stopped mid-epoch 2 (after epoch 1
    was evaluated and its best model exported) and resumed, has the losses, best model (written
    by Orbax from each process's shards), test generations and scores of 1 process x 8 devices
    on the same mesh."""
    import numpy as np

    from latent_jax.models.io import load_model

    ref = tmp_path / "ref"
    p = subprocess.run([sys.executable, "-m", "latent_jax.main", *ARGS, *FSDP, f"--workdir={ref}"], cwd=ROOT,
                       env=_env(8), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    want = _losses(ref)
    assert len(want) == 4  # 2 epochs of 2 steps

    mh = tmp_path / "mh"
    _two_processes(mh, *FSDP, "--config.max_steps=3")  # epoch 1 evaluated and exported, then stops at step 3
    assert (mh / "coconut" / "best_model" / "params").is_dir()
    assert sorted(os.listdir(mh / "coconut" / "checkpoints")) == ["2", "3"]
    outs = _two_processes(mh, *FSDP)  # the same config: resumes mid-epoch 2, tests the best model
    assert all("resumed from step 3 (epoch 1)" in o for o in outs), outs[0][-2000:]
    got = _losses(mh)
    assert sorted(got) == [1, 2, 3, 4]
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=2e-4, abs=1e-5), (step, got, want)
    assert sorted(os.listdir(mh / "coconut" / "checkpoints")) == sorted(os.listdir(ref / "coconut" / "checkpoints"))

    # the exported best models: the same arrays, whole, whichever process layout wrote them
    (cfg_r, pr), (cfg_m, pm) = (load_model(str(d / "coconut" / "best_model")) for d in (ref, mh))
    assert cfg_r == cfg_m
    flat_r, flat_m = (dict(_flat(t)) for t in (pr, pm))
    assert sorted(flat_r) == sorted(flat_m) and flat_r
    for k, a in flat_r.items():
        assert flat_m[k].shape == a.shape, k
        np.testing.assert_allclose(np.asarray(flat_m[k]), np.asarray(a), rtol=1e-4, atol=1e-5, err_msg=k)
    assert json.load(open(mh / "coconut" / "best_model" / "coconut.json")) == \
        json.load(open(ref / "coconut" / "best_model" / "coconut.json"))

    # evaluation gathered every process's shards: the same test generations and scores
    res = json.load(open(mh / "coconut" / "test" / "results.json"))
    one = json.load(open(ref / "coconut" / "test" / "results.json"))
    assert res["num_examples"] == one["num_examples"] > 0
    assert res["accuracy"] == pytest.approx(one["accuracy"])
    assert _predictions(mh) == _predictions(ref)


def _flat(tree) -> list[tuple[str, object]]:
    import jax

    return [("/".join(str(getattr(k, "key", k)) for k in path), x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


MM_ARGS = ["--config=configs/aokvqa_coconut.py:smoke", "--config.num_epochs=1", "--config.batch_size=8",
           "--config.data.max_train=8", "--config.data.max_eval=8"]


def test_multimodal_two_processes_match_one(tmp_path):
    """The A-OKVQA (InternVL) multimodal Coconut smoke preset: 2 processes x 4 devices train
    with the losses of 1 process x 8 devices (fixtures prebuilt once, shared by both runs)."""
    from latent_jax import testing as fx

    fixtures = tmp_path / "fixtures"
    fx.make_tiny_vlm("internvl", str(fixtures / "tiny_internvl"), seed=0)
    fx.write_aokvqa_fixture(str(fixtures / "aokvqa"), n_train=8, n_val=6)
    args = [*MM_ARGS, f"--config.fixtures_dir={fixtures}"]
    ref = tmp_path / "ref"
    p = subprocess.run([sys.executable, "-m", "latent_jax.main", *args, f"--workdir={ref}"], cwd=ROOT, env=_env(8),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    mh = tmp_path / "mh"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "latent_jax.main", *args, f"--workdir={mh}", "--multihost"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i))) for i in range(2)]
    outs = [q.communicate(timeout=900)[0] for q in procs]
    for q, out in zip(procs, outs):
        assert q.returncode == 0, out[-4000:]

    def losses(d):
        return [json.loads(line)["train/loss"] for line in open(d / "metrics.jsonl") if "train/loss" in line]

    want, got = losses(ref), losses(mh)
    assert len(want) == 1 and got == pytest.approx(want, rel=2e-4)
    assert (mh / "best_model").is_dir() and os.listdir(mh / "checkpoints") == os.listdir(ref / "checkpoints")
