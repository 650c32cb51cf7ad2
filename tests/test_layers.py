"""The layering of docs/architecture.md ("Layers") holds:

- the import-linter layers contract in .importlinter is kept (models <- decoding, methods <-
  data <- train <- tasks <- CLIs, with parallel / paths below models), and it names every
  top-level module of latent_jax;
- no module imports a latent_jax module inside a function (function-local imports are for
  optional third-party packages only: torch, transformers, av, tensorboard, wandb, ...);
- no private name (`_x`) crosses a module: neither `from latent_jax.m import _x` nor
  `m._x` on an imported latent_jax module or name.
"""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "latent_jax")


def _modules(root: str):
    """(path, dotted module name, is a package __init__) of every module under root/latent_jax/."""
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, "latent_jax")):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                is_pkg = f == "__init__.py"
                yield path, rel[: -len(".__init__")] if is_pkg else rel, is_pkg


def _target(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _internal(name: str) -> bool:
    return name == "latent_jax" or name.startswith("latent_jax.")


def _scan(root: str = ROOT):
    """(function-local internal imports as (path, line, module), private names across modules as
    'path:line: name'), sorted, over every module of root/latent_jax/."""
    local, private = [], []
    for path, module, is_pkg in _modules(root):
        rel = os.path.relpath(path, root)
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

        def in_function(n):
            while n in parents:
                n = parents[n]
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    return True
            return False

        bound: dict[str, str] = {}  # local name -> the latent_jax module or object it is bound to
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                for a in n.names:
                    if _internal(a.name):
                        if in_function(n):
                            local.append((rel, n.lineno, a.name))
                        bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else "latent_jax"
            elif isinstance(n, ast.ImportFrom):
                target = _target(n, module, is_pkg)
                if not _internal(target):
                    continue
                if in_function(n):
                    local.append((rel, n.lineno, target))
                for a in n.names:
                    if _is_private(a.name) and target != module:
                        private.append(f"{rel}:{n.lineno}: from {target} import {a.name}")
                    bound[a.asname or a.name] = f"{target}.{a.name}"
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and _is_private(n.attr):
                base, chain = n.value, []
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in bound:
                    owner = ".".join([bound[base.id]] + chain[::-1])
                    if owner != module:
                        private.append(f"{rel}:{n.lineno}: {owner}.{n.attr}")
    return sorted(local), sorted(private)


def test_scan_finds_local_imports_and_private_names(tmp_path):
    pkg = tmp_path / "latent_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("_x = 1\n_y = 2\ndef _own():\n    return _x\n")
    (pkg / "a.py").write_text(
        "import json\n"
        "from latent_jax.sub import b\n"
        "import latent_jax.sub.b as bb\n"
        "from latent_jax.sub.b import _x\n"
        "def f():\n"
        "    import torch  # optional third-party: allowed\n"
        "    from .sub import b as c\n"
        "    return b._y + bb._own() + c.x\n")
    (pkg / "sub" / "c.py").write_text("from .b import _y\nfrom . import b\nv = b.__name__\n")
    local, private = _scan(str(tmp_path))
    assert local == [(os.path.join("latent_jax", "a.py"), 7, "latent_jax.sub")]
    a, c = os.path.join("latent_jax", "a.py"), os.path.join("latent_jax", "sub", "c.py")
    assert private == sorted([f"{a}:4: from latent_jax.sub.b import _x", f"{a}:8: latent_jax.sub.b._y",
                              f"{a}:8: latent_jax.sub.b._own", f"{c}:1: from latent_jax.sub.b import _y"])


def test_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed: pip install -r requirements-test.txt"
    r = subprocess.run([exe, "--no-cache", os.path.join(ROOT, ".importlinter")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stdout[-4000:]
    assert "Contracts: 1 kept, 0 broken." in r.stdout


def test_contract_names_every_top_level_module():
    cp = configparser.ConfigParser()
    cp.read(os.path.join(ROOT, ".importlinter"))
    text = cp["importlinter:contract:layers"]["layers"]
    named = {t for t in text.replace(":", " ").replace("|", " ").split() if t.startswith("latent_jax.")}
    top = {f"latent_jax.{os.path.splitext(e)[0]}" for e in os.listdir(PKG)
           if (e.endswith(".py") and e != "__init__.py")
           or os.path.isfile(os.path.join(PKG, e, "__init__.py"))}
    assert top - named == set(), f"put these modules into a layer of .importlinter: {sorted(top - named)}"
    assert named - top == set(), f".importlinter names modules that do not exist: {sorted(named - top)}"


def test_no_function_local_imports_of_latent_jax_modules():
    local, _ = _scan()
    found = [f"{rel}:{line}: {target}" for rel, line, target in local]
    assert not found, ("import latent_jax modules at the module top (a cycle means a function is in the wrong "
                       "layer; function-local imports are for optional third-party packages):\n" + "\n".join(found))


def test_no_private_names_across_modules():
    _, private = _scan()
    assert not private, ("a private name (_x) is used outside its module; make it public (and documented) "
                         "or keep the use inside its module:\n" + "\n".join(private))
