"""launch/tpu_vm.sh against a fake `gcloud` on PATH: the command sequence for a v4-32 (4 hosts),
--dry-run printing instead of running, preemption recovery in `run`, and one-line errors."""

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.sh")

FAKE_GCLOUD = """#!/usr/bin/env bash
echo "gcloud $*" >> "$GCLOUD_LOG"
if [[ "$*" == *" describe "* ]]; then echo "${FAKE_TPU_STATE:-READY}"; fi
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    g = bindir / "gcloud"
    g.write_text(FAKE_GCLOUD)
    g.chmod(g.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    log = tmp_path / "gcloud.log"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", GCLOUD_LOG=str(log), TPU_NAME="lj", ZONE="us-central2-b",
               ACCELERATOR="v4-32", WORKDIR="gs://bkt/runs/cp", CONFIG="configs/cinepile_coconut.py",
               MODEL_DIR=str(tmp_path / "model"), DATA_DIR=str(tmp_path / "data"), STAGE_BUCKET="gs://bkt/stage",
               SRC_TGZ=str(tmp_path / "src.tgz"))

    def call(*args, **extra):
        log.write_text("")
        p = subprocess.run(["bash", SCRIPT, *args], env={**env, **extra}, capture_output=True, text=True, timeout=60)
        return p, [line for line in log.read_text().splitlines() if line]

    return call


def test_v4_32_sequence(fake):
    p, calls = fake("create", SPOT="1")
    assert p.returncode == 0, p.stderr
    assert "4 host(s)" in p.stderr
    assert calls == ["gcloud compute tpus tpu-vm create lj --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot "
                     "--zone=us-central2-b"]
    p, calls = fake("setup")
    assert p.returncode == 0, p.stderr
    assert [c.split()[4] for c in calls] == ["scp", "ssh"]
    assert all("--worker=all" in c for c in calls) and "pip install -q -r requirements.txt" in calls[1]
    assert "jax[tpu]==" in calls[1]
    p, calls = fake("stage")
    assert p.returncode == 0, p.stderr
    assert calls[0].startswith("gcloud storage rsync --recursive") and calls[0].endswith("gs://bkt/stage/model")
    assert "--worker=all" in calls[1] and "gs://bkt/stage/model /tmp/latent_jax_stage/model" in calls[1]
    assert calls[2].endswith("gs://bkt/stage/data") and "/tmp/latent_jax_stage/data" in calls[3]
    p, calls = fake("run", "--config.batch_size=64")
    assert p.returncode == 0, p.stderr
    assert [c.split()[4] for c in calls] == ["describe", "ssh"]
    run = calls[1]
    assert "--worker=all" in run and "--multihost" in run and "--workdir=gs://bkt/runs/cp" in run
    assert "--config.model.path=/tmp/latent_jax_stage/model" in run and "--config.batch_size=64" in run
    assert "seq 0 3" in run  # retried (resuming from the workdir) up to MAX_RESTARTS times
    p, calls = fake("delete")
    assert calls == ["gcloud compute tpus tpu-vm delete lj --quiet --zone=us-central2-b"]


def test_run_after_preemption_recreates_then_resumes(fake):
    p, calls = fake("run", FAKE_TPU_STATE="PREEMPTED")
    assert p.returncode == 0, p.stderr
    verbs = [c.split()[1] if c.split()[1] == "storage" else c.split()[4] for c in calls]
    assert verbs == ["describe", "delete", "create", "scp", "ssh", "storage", "ssh", "storage", "ssh", "ssh"]
    assert "--multihost" in calls[-1] and "PREEMPTED" in p.stderr


def test_dry_run_prints_and_runs_nothing(fake, tmp_path):
    p, calls = fake("--dry-run", "setup")
    assert p.returncode == 0, p.stderr
    assert calls == [] and not (tmp_path / "src.tgz").exists()
    lines = p.stdout.splitlines()
    assert lines[0].startswith("+ tar -C") and "scp" in lines[1] and "--worker=all" in lines[2]
    p, calls = fake("run", "--dry-run")
    assert calls == [] and p.stdout.count("+ gcloud") == 1 and "--multihost" in p.stdout


def test_errors_are_one_line(fake):
    p, _ = fake("run", WORKDIR="runs/local")
    assert p.returncode == 2 and "gs://" in p.stderr.splitlines()[-1]
    p, _ = fake("stage", MODEL_DIR="", DATA_DIR="")
    assert p.returncode == 2 and "MODEL_DIR" in p.stderr
    p, _ = fake("bogus")
    assert p.returncode == 2 and "usage" in p.stderr
