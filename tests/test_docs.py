"""The README and docs/ against the code: every config file named exists with the presets named,
every documented `python -m latent_jax.main` command parses (file, preset, keys, value types),
every documented `python -m latent_jax.<module>` is a module with a __main__ block, and a
checked list of claims that once went stale (the default's data, the presets of the text
formats, "Not yet" items that exist, the decoder's tree mask, which configs/ files are configs).
No training runs here: seconds."""

import glob
import importlib.util
import inspect
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
NOT_CONFIGS = {"base.py", "mm_common.py"}  # shared fields, no get_config
# not shipped: the README's placeholder, and the file docs/architecture.md's worked example of
# adding a workflow writes
HYPOTHETICAL = {"configs/X.py", "configs/lm.py"}


def read(doc: str) -> str:
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return f.read()


def load_config_module(rel: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{os.path.basename(rel)[:-3]}", os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ROOT)
    spec.loader.exec_module(mod)
    return mod


_CONFIGS: dict = {}


def get_config(rel: str, preset: str = ""):
    if rel not in _CONFIGS:
        _CONFIGS[rel] = load_config_module(rel)
    return _CONFIGS[rel].get_config(preset) if preset else _CONFIGS[rel].get_config()


def config_files() -> list[str]:
    from latent_jax.main import config_files as listed

    return sorted(os.path.relpath(f, ROOT) for f, _ in listed(os.path.join(ROOT, "configs")))


def test_every_config_file_has_a_smoke_preset_and_the_readme_says_which_files_are_not_configs():
    from latent_jax.main import WORKFLOWS

    configs = config_files()
    every = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
    assert {os.path.basename(p) for p in set(every) - set(configs)} == NOT_CONFIGS
    for rel in configs:
        c = get_config(rel, "smoke")
        assert c.workflow in WORKFLOWS, rel
    # the README's claim names the files of configs/ that are not configs
    line = next(p for p in read("README.md").split("\n\n") if "Configs live in `configs/`" in p)
    assert "`:smoke`" in line and all(f"`{name}`" in line for name in NOT_CONFIGS), line


def _config_refs():
    """(doc, 'configs/X.py', preset or '') of every config file named in the README and docs/."""
    out = []
    for doc in DOCS:
        for m in re.finditer(r"configs/[\w/]+\.(?:py|json)(?::(\{[\w,]+\}|[\w,]+))?", read(doc)):
            rel, _, presets = m.group(0).partition(":")
            for p in presets.strip("{}").split(",") if presets.startswith("{") else [presets]:
                out.append((doc, rel, p))
    return out


def test_every_documented_config_file_and_preset_exists():
    refs = _config_refs()
    assert len(refs) > 20
    for doc, rel, preset in refs:
        if rel in HYPOTHETICAL:
            continue
        assert os.path.isfile(os.path.join(ROOT, rel)), f"{doc} names {rel}, which does not exist"
        if preset:
            assert rel.endswith(".py") and os.path.basename(rel) not in NOT_CONFIGS, (doc, rel, preset)
            get_config(rel, preset)  # an unknown preset raises ValueError naming the valid ones


def test_every_documented_preset_name_is_a_preset():
    """`:name` and "the `name` preset" in the docs name a preset of some config file."""
    names = set()
    for doc in DOCS:
        text = read(doc)
        names |= {(doc, n) for n in re.findall(r"`:(\w+)`", text)}
        names |= {(doc, n) for n in re.findall(r"the `:?(\w+)` preset", text)}
    assert names
    configs = config_files()
    for doc, name in sorted(names):
        ok = False
        for rel in configs:
            try:
                get_config(rel, name)
                ok = True
                break
            except ValueError:
                continue
        assert ok, f"{doc} names a preset {name!r} that no config file has"


def _main_commands():
    """(doc, argv) of every `python -m latent_jax.main ...` command in the docs, backslash
    continuations joined; commands with placeholders (X.py, [optional], <name>) are skipped."""
    out = []
    for doc in DOCS:
        text = read(doc).replace("\\\n", " ")
        for m in re.finditer(r"python -m latent_jax\.main([^\n`|#]*)", text):
            args = m.group(1).strip()
            if any(ph in args for ph in ("X.py", "[", "<")):
                continue
            out.append((doc, ["main", *shlex.split(args)]))
    return out


def test_every_documented_main_command_parses(monkeypatch):
    """The file, preset, override keys and value types of each command (what main checks before
    it runs anything)."""
    from latent_jax.main import check_override_keys

    monkeypatch.chdir(ROOT)
    cmds = _main_commands()
    assert len(cmds) > 10
    for doc, argv in cmds:
        try:
            check_override_keys(argv)
        except SystemExit as e:
            pytest.fail(f"{doc}: {' '.join(argv[1:])}: {e.code}")


def test_every_documented_module_has_a_main():
    mods = set()
    for doc in DOCS:
        mods |= {(doc, m) for m in re.findall(r"python -m (latent_jax(?:\.\w+)*)", read(doc))}
    assert any(m == "latent_jax.generate" for _, m in mods)
    for doc, mod in sorted(mods):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin, f"{doc} runs {mod}, which is no module"
        src = open(spec.origin, encoding="utf-8").read()
        assert re.search(r"""if __name__ == ["']__main__["']""", src), f"{doc} runs {mod}, which has no __main__ block"
    for doc in DOCS:
        for path in re.findall(r"python ((?:benchmarks|launch)/\w+\.py)", read(doc)):
            assert os.path.isfile(os.path.join(ROOT, path)), f"{doc} runs {path}"


# ------------------------------------------------------------------ claims that went stale once
def test_coconut_quick_start_describes_the_default_data():
    quick = read("docs/coconut.md").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"(\d+) hops, (\d+)-(\d+) nodes", quick)
    assert m, "the quick start no longer states the default's hops and nodes"
    g = get_config("configs/prosqa_coconut.py").data.gen
    assert (int(m[1]), int(m[1]), int(m[2]), int(m[3])) == (g.min_hops, g.max_hops, g.min_nodes, g.max_nodes)
    assert get_config("configs/default.py").data.gen.to_dict() == g.to_dict()


def test_generator_flags_attributed_to_a_config_match_it():
    """docs/data.md: "`configs/X.py[:preset]` uses `--concepts 16 --min-hops 1 ...`" must be that
    config's data.gen (it once gave the text preset's settings as the embedded default's)."""
    text = " ".join(read("docs/data.md").split())
    found = re.findall(r"\(`(configs/\w+\.py)(?::(\w+))?`\) uses `([^`]+)`", text)
    assert found
    for rel, preset, flags in found:
        gen = get_config(rel, preset).data.gen
        toks = flags.split()
        pairs = dict(zip(toks[::2], toks[1::2]))
        assert all(t.startswith("--") for t in toks[::2]), flags
        for flag, value in pairs.items():
            want = gen[flag[2:].replace("-", "_")]
            got = type(want)(float(value)) if isinstance(want, (int, float)) else value
            assert got == want, f"docs/data.md: {rel}:{preset} uses {flag} {value}; the config has {want!r}"


def test_seeds_lists_nothing_as_not_yet_that_exists():
    """docs/seeds.md's "Not yet" items against the modules that implement them."""
    from latent_jax.decoding.diffusion import answer_options_from_config  # noqa: F401 - the diffusion answer

    text = read("docs/seeds.md")
    not_yet = " ".join(re.findall(r"\*\*Not yet\*\*:?(.*?)(?=\n\*\*|\n## |\Z)", text, flags=re.S))
    not_yet += " ".join(re.findall(r"Not yet:([^.]*)", text))
    exists = {
        r"continual (backprop|propagation)": "latent_jax.train.continual",
        r"reinforcement|policy-gradient|length penalty": "latent_jax.rl.grpo",
        r"streaming session": "latent_jax.decoding.streaming",
        r"Coconut workflow option|diffusion": "latent_jax.decoding.diffusion",
    }
    for pattern, module in exists.items():
        assert importlib.util.find_spec(module) is not None, module
        assert not re.search(pattern, not_yet, flags=re.I), f"docs/seeds.md lists {pattern!r} as not yet; {module} has it"


def test_docs_do_not_say_the_decoder_takes_no_mask():
    from latent_jax.models.decoder import Decoder

    assert "tree_mask" in inspect.signature(Decoder.__call__).parameters
    for doc in DOCS:
        text = " ".join(read(doc).split())
        assert not re.search(r"takes no (custom )?(attention )?mask", text), f"{doc}: the decoder takes tree_mask"
