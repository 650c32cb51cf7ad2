"""The layering of docs/architecture.md (models <- decoding, methods <- data <- train <- tasks
<- CLIs) holds: the import-linter layers contract in .importlinter is kept."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed: pip install -r requirements-test.txt"
    r = subprocess.run([exe, "--no-cache", os.path.join(ROOT, ".importlinter")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stdout[-4000:]
    assert "Contracts: 1 kept, 0 broken." in r.stdout
