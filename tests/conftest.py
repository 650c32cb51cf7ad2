"""Shared fixtures: tiny random HF checkpoints built on the fly (nothing downloaded)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
