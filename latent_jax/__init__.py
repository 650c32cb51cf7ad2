"""latent_jax: Flax models of Hugging Face checkpoints and latent-reasoning methods on them."""

__version__ = "0.3.0"  # the one place of the version (pyproject.toml reads it)

import logging as _logging

# transformers messages that tell a latent_jax user nothing they can act on. latent_jax uses
# transformers for tokenizers, configs and file utilities, which need no PyTorch, so its
# import-time "PyTorch was not found" notice would say something is broken when nothing is;
# and the Phi-3 / Phi-4 config.json files as published set rope original_max_position_embeddings
# without `factor`, which transformers asks the model's authors to change (latent_jax reads
# the rope fields itself). Every other transformers message passes.
_DROPPED = {
    "transformers": ("PyTorch was not found.",),
    "transformers.modeling_rope_utils": ("This model config has set a `rope_parameters['original_max_position_embeddings']`",),
}


class _Drop(_logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


for _name, _prefixes in _DROPPED.items():  # a logger's filters see the records logged to it
    _logging.getLogger(_name).addFilter(_Drop(_prefixes))
