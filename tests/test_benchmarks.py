"""benchmarks/accelerator.sh --smoke (issue 24 item 6): the one accelerator check runs end to end on
CPU at toy sizes, so every code path of its table (attention parity, MFU, the Phi-4-MM-shaped
Coconut step, decode against transformers) is exercised without a GPU."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--smoke", "--json-out", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    checks = [row.split(" | ")[0][2:] for row in rows]
    assert checks == ["attention parity: chunked vs xla", "attention parity: splash vs xla", "MFU, decoder bf16",
                      "Coconut step, 2-layer Phi-4-MM shape", "decode, batch 1", "decode, batch 8"], r.stdout
    assert all(row.rstrip(" |").endswith("ok") for row in rows[:2]), rows
    res = json.loads(out.read_text())
    assert all(p["ok"] and p["err"] < 1e-4 for p in res["parity"])
    assert res["mfu"]["mfu"] > 0 and res["coconut"]["tokens_per_s"] > 0
    assert [d["batch"] for d in res["decode"]] == [1, 8] and all(d["same_tokens"] == 1.0 for d in res["decode"])
