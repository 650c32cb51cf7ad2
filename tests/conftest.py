"""Shared fixtures: tiny random HF checkpoints built on the fly (nothing downloaded)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One persistent XLA compilation cache for the test session, shared by both xdist workers and
# inherited by every subprocess the tests start (a smoke compiled by one test is read back by the
# next): under the pytest cache, so a second run starts warm. LATENT_JAX_TEST_CACHE=0 turns it off.
if os.environ.get("LATENT_JAX_TEST_CACHE", "1") != "0":
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_root, ".pytest_cache", "jax_compile"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

# Fast compiles for the test session (and its subprocesses): the tests run tiny models, where
# XLA:CPU's compile is most of a test's time and the code it makes hardly matters. LLVM's
# expensive passes off (jax_disable_most_optimizations) and the legacy elemental emitters
# instead of the fusion emitters cut the compile of a Coconut gradient about 4x.
# LATENT_JAX_TEST_FAST_COMPILE=0 compiles as users do.
if os.environ.get("LATENT_JAX_TEST_FAST_COMPILE", "1") != "0":
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# float32 everywhere in tests; full-precision matmuls so parity is about the model, not XLA's defaults
jax.config.update("jax_default_matmul_precision", "highest")

FAMILIES = ("mistral", "llama", "qwen2", "phi3")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """tiny_hf_dir(family, **config_overrides) -> path of a saved random *ForCausalLM."""
    from latent_jax.testing import make_tiny_hf

    made = {}

    def make(family: str, **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in made:
            d = tmp_path_factory.mktemp(f"hf_{family}")
            made[key] = make_tiny_hf(family, str(d), **kw)
        return made[key]

    return make


# The second tier: minutes-long end-to-end runs (multi-process, 8-device subprocesses, VLM
# smokes through main). The README's test command runs everything else (`-m "not slow"`);
# .ci/run runs this tier right after it (`-m slow`). Listed here, in one place, so the split
# is visible and a new slow test is added deliberately.
SLOW = (
    "tests/test_multihost.py::",
    "tests/tasks/test_task_resume_sharding.py::test_eight_fake_devices_match_one",
    "tests/test_mm_configs.py::test_cinepile_coconut_smoke_through_main",
    "tests/test_generate_cli.py::test_vlm_video_equals_direct_call_and_checkpoint",
    "tests/test_no_torch.py::test_smoke_presets_and_export_run_without_torch",
    "tests/tasks/test_act.py::test_smoke_through_main",
    "tests/train/test_continual_sharded.py::",
    "tests/tasks/test_coconut.py::test_eight_fake_devices_match_one",
    "tests/models/test_prefix_cache.py::test_prefix_cache_equals_concatenated_cache[False]",
    "tests/decoding/test_diffusion.py::test_caches_exact_on_causal_model_and_after_prefix",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


# XLA compile time per test (in-process compiles; a subprocess's are its own): each test's
# teardown report carries it, and the session prints the 15 tests that compile longest, the
# counterpart of --durations for the suite's main cost on CPU (eager calls compile one program
# per primitive and shape; a jitted function compiles once).
_COMPILE = {"s": 0.0, "n": 0}


def _on_duration(event, secs, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE["s"] += secs
        _COMPILE["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        item._compile_start = dict(_COMPILE)
    outcome = yield
    if call.when == "teardown" and hasattr(item, "_compile_start"):
        s0 = item._compile_start
        outcome.get_result().user_properties.append(
            ("xla_compile", (round(_COMPILE["s"] - s0["s"], 2), _COMPILE["n"] - s0["n"])))


def pytest_terminal_summary(terminalreporter):
    rows = []
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) == "teardown":
                for k, v in getattr(r, "user_properties", ()):
                    if k == "xla_compile":
                        rows.append((v[0], v[1], r.nodeid))
    if not rows:
        return
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    terminalreporter.write_sep("=", f"XLA compile time in the test processes: {total:.0f} s; 15 longest")
    for s, n, nodeid in rows[:15]:
        terminalreporter.write_line(f"{s:7.2f}s {n:5d} compiles  {nodeid}")
