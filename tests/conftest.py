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
