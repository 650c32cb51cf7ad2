"""Coconut training loop: exact resume, and the same losses on 1 and on 8 (data=2, fsdp=2,
tensor=2) fake CPU devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(max_steps: int):
    """The smoke preset, one Coconut run of 2 epochs (stage 0 then stage 1, 4 steps each),
    stopped after `max_steps` without evaluation."""
    sys.path.insert(0, ROOT)
    from configs.prosqa_coconut import get_config

    c = get_config("smoke")
    c.chain = ""
    c.coconut_mode = "coconut"
    c.data.gen.train, c.data.gen.valid, c.data.gen.test = 32, 4, 4
    c.batch_size = 8
    c.num_epochs = 2
    c.epochs_per_stage = 1
    c.max_latent_stage = 1
    c.eval_every_epochs = 100
    c.max_steps = max_steps
    c.reset_optimizer = True
    return c


def train_losses(workdir):
    from latent_jax.train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_resume_equals_uninterrupted(tmp_path):
    from latent_jax.train.loop import run

    full = run(tiny_config(6), str(tmp_path / "full"))
    assert full["stopped"] and full["step"] == 6
    part = run(tiny_config(3), str(tmp_path / "resumed"))
    assert part["step"] == 3
    rest = run(tiny_config(6), str(tmp_path / "resumed"))  # picks up the mid-epoch checkpoint
    assert rest["step"] == 6
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
    # steps 5-6 train stage 1 (with a latent); the loss moved
    assert len(set(np.round(list(a.values()), 6))) > 1


_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    sys.path.insert(0, {tests!r})
    from test_loop import tiny_config, train_losses
    from latent_jax.train.loop import run
    c = tiny_config(6)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = {mesh}
    run(c, {workdir!r})
    print("LOSSES", json.dumps(train_losses({workdir!r})))
""")


def _run_devices(n: int, mesh: tuple, workdir: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    code = _SCRIPT.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)), mesh=mesh, workdir=workdir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("LOSSES")][-1]
    return {int(k): v for k, v in json.loads(line[len("LOSSES "):]).items()}


def test_eight_fake_devices_match_one(tmp_path):
    one = _run_devices(1, (1, 1, 1), str(tmp_path / "one"))
    eight = _run_devices(8, (2, 2, 2), str(tmp_path / "eight"))
    assert sorted(one) == sorted(eight) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([eight[s] for s in sorted(eight)], [one[s] for s in sorted(one)], rtol=2e-4)
