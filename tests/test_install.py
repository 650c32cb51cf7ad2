"""The package installs (`pip install -e .` from pyproject.toml) into a fresh venv and its
command-line entry points run from a directory outside the repository, with the relative
paths a user types there.

The fresh venv sees the test venv's site-packages through a .pth file (nothing is downloaded);
latent_jax itself is not on its path until pip installs it."""

import os
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _site_packages(python: str) -> str:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with latent_jax installed editable, a directory outside the repo)."""
    base = tmp_path_factory.mktemp("install")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=False)  # pip and setuptools come through outer.pth
    py = str(env_dir / "bin" / "python")
    # the test venv's packages (jax, flax, ..., setuptools) without latent_jax: the repo root is
    # never on this interpreter's path, so `import latent_jax` works only once pip installed it
    (open(os.path.join(_site_packages(py), "outer.pth"), "w")).write(_site_packages(sys.executable) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    elsewhere = base / "work"
    elsewhere.mkdir()
    probe = subprocess.run([py, "-c", "import latent_jax"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'latent_jax'" in probe.stderr, probe.stderr[-2000:]
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e",
                          ROOT], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-4000:]
    return py, elsewhere, env


def test_version_comes_from_one_place(installed):
    py, cwd, env = installed
    from latent_jax import __version__

    out = subprocess.run([py, "-c", "import importlib.metadata as m, latent_jax; "
                          "print(m.version('latent_jax'), latent_jax.__version__)"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [__version__, __version__]


def test_clis_run_from_another_directory(installed):
    py, cwd, env = installed
    # the converter / generator where the data is: relative --out under the current directory
    gen = subprocess.run([py, "-m", "latent_jax.data.prosqa", "graph", "--out", "data", "--train", "8", "--valid", "2",
                          "--test", "2"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert sorted(os.listdir(cwd / "data")) == [f"prosqa_graph_{s}.json" for s in ("test", "train", "valid")]
    # the main entry point finds its embedded default config from anywhere
    hlp = subprocess.run([py, "-m", "latent_jax.main", "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert hlp.returncode == 0, hlp.stdout[-2000:] + hlp.stderr[-3000:]
    assert "prosqa_coconut" in hlp.stdout or "default" in hlp.stdout
