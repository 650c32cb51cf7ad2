"""latent_jax: Flax models of Hugging Face checkpoints and latent-reasoning methods on them."""

import logging as _logging


class _NoTorchNotice(_logging.Filter):
    """transformers announces at import that PyTorch is missing; latent_jax uses transformers
    only for tokenizers, configs and file utilities, which need no PyTorch, so the notice
    would tell a user something is broken when nothing is. Other transformers messages pass."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found.")


_logging.getLogger("transformers").addFilter(_NoTorchNotice())
