"""Every Trainer task other than text Coconut (tests/tasks/test_coconut.py): ACT (digits),
masked diffusion (toy SFT) and Medusa heads (self-distilled), each on its smoke preset cut
to 6 updates. For each, a run interrupted by max_steps=4 and resumed reproduces the
uninterrupted run's per-step losses, and so does the same run on 8 fake CPU devices (data=2,
fsdp=2, tensor=2). Multimodal Coconut (A-OKVQA smoke, 4 updates; its resume test is in
tests/test_mm_configs.py) on 8 devices (data=2, tensor=4: its batch is 2) matches 1 device
too. All 8-device runs share one subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from latent_jax.testing import cpu_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
TASKS = ("act", "diffusion", "medusa")


def task_config(name: str, max_steps: int = STEPS):
    """The task's smoke preset with STEPS updates and a loss logged every step, stopped at
    `max_steps` (STEPS: the whole run, stopped before the final evaluation, which these tests
    do not need; epochs of 4 (ACT) and 3 (diffusion) steps, so a stop at 4 is mid-epoch)."""
    sys.path.insert(0, ROOT)
    if name == "act":
        from configs.mnist_act import get_config

        c = get_config("smoke")  # digits, 4 steps per epoch: the stop at 4 is an epoch end + 2
    elif name == "diffusion":
        from configs.diffusion_lm import get_config

        c = get_config("smoke")
        c.eval_every_steps = 3
    else:
        from configs.medusa_heads import get_config

        c = get_config("smoke")
        c.data.num_sequences = 16
    c.train_steps = STEPS
    c.eval_every_epochs = 100
    c.log_every = 1
    c.progress = False
    c.max_steps = max_steps
    return c


def mm_config(fixtures: str):
    """aokvqa_coconut:smoke (2 epochs of 2 steps: stages 0 and 1), stopped before evaluation."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("aokvqa_cfg", os.path.join(ROOT, "configs", "aokvqa_coconut.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.fixtures_dir, c.max_steps = fixtures, 4
    return c


def run_task(name: str, workdir: str, max_steps: int = STEPS, mesh=None, fixtures: str = "") -> dict:
    from latent_jax.main import resolve_workflow

    c = mm_config(fixtures) if name == "mm" else task_config(name, max_steps)
    if mesh:
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return resolve_workflow(c.workflow)(c, workdir)


def train_losses(workdir) -> dict:
    from latent_jax.train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(str(workdir)) if "train/loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(name) -> the uninterrupted 1-device run's (losses, results), run on first use
    (the multimodal one only in the slow tier's 8-device test); reference.fixtures: its VLM
    fixtures directory."""
    out = {}

    def get(name: str):
        if name not in out:
            d = tmp_path_factory.mktemp(f"ref_{name}")
            res = run_task(name, str(d), fixtures=get.fixtures)
            out[name] = (train_losses(d), res)
        return out[name]

    get.fixtures = str(tmp_path_factory.mktemp("mm_fx"))
    return get


@pytest.mark.parametrize("name", TASKS)
def test_resume_equals_uninterrupted(reference, name, tmp_path):
    part = run_task(name, str(tmp_path), max_steps=4)
    assert part["stopped"] and part["step"] == 4
    rest = run_task(name, str(tmp_path))
    assert rest["stopped"] and rest["step"] == STEPS
    ref_losses, ref_res = reference(name)
    got = train_losses(tmp_path)
    assert sorted(got) == sorted(ref_losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref_losses[s] for s in sorted(ref_losses)], rtol=1e-5)
    assert len(set(np.round(list(ref_losses.values()), 6))) > 1  # training moved the loss
    if name == "medusa":  # checkpoints hold the trained heads, not the frozen base model
        from latent_jax.train.checkpoint import TrainCheckpointer

        ck = TrainCheckpointer(str(tmp_path / "checkpoints"))
        state, _ = ck.restore_latest()
        ck.close()
        assert set(state["params"]) == {"heads"}


_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8
    from test_task_resume_sharding import TASKS, run_task, train_losses
    out = {{}}
    for name in TASKS + ("mm",):
        wd = {workdir!r} + "/" + name
        run_task(name, wd, mesh=(2, 1, 4) if name == "mm" else (2, 2, 2), fixtures={fx!r})
        out[name] = train_losses(wd)
    print("LOSSES", json.dumps(out))
""")


def test_eight_fake_devices_match_one(reference, tmp_path):
    for name in TASKS + ("mm",):  # the 1-device runs first (they also build the VLM fixtures)
        reference(name)
    env = cpu_devices_env(8)
    code = _SCRIPT.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)), workdir=str(tmp_path),
                          fx=reference.fixtures)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    eight = json.loads([x for x in r.stdout.splitlines() if x.startswith("LOSSES")][-1][len("LOSSES "):])
    for name in TASKS + ("mm",):
        one = reference(name)[0]
        got = {int(k): v for k, v in eight[name].items()}
        assert sorted(got) == sorted(one) == list(range(1, (4 if name == "mm" else STEPS) + 1)), name
        np.testing.assert_allclose([got[s] for s in sorted(got)], [one[s] for s in sorted(one)], rtol=2e-4,
                                   err_msg=name)
