"""Medusa draft heads on a frozen base model, workflow "medusa" (for --strategy typical).

    python -m latent_jax.main --config=configs/medusa_heads.py --workdir runs/medusa \
        --config.model.path=/models/Qwen2-0.5B                       # self-distilled corpus
    python -m latent_jax.main --config=configs/medusa_heads.py --workdir runs/medusa \
        --config.model.path=/models/Qwen2-0.5B --config.data.task=text --config.data.path=corpus.txt
    python -m latent_jax.main --config=configs/medusa_heads.py:smoke --workdir /tmp/medusa   # random tiny base

Heads are written to WORKDIR/heads; use them with
`python -m latent_jax.generate --model PATH --strategy typical --heads WORKDIR/heads`.
Presets: smoke.
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "medusa"
    c.train_steps = 1000  # training budget (config.max_steps only interrupts a run, resumably)
    c.batch_size = 32
    c.model.vocab_size = 64  # only for a random base model (model.path empty)

    c.heads = ConfigDict()
    c.heads.num_heads = 3
    c.heads.decay = 0.8  # head i's loss weighted by decay**i

    c.data = ConfigDict()
    c.data.task = "self_distill"  # self_distill | text
    c.data.path = ""
    c.data.tokenizer_dir = ""
    c.data.seq_len = 32
    c.data.prompt_len = 4
    c.data.num_sequences = 2048
    c.data.num_eval = 16

    c.optim.learning_rate = 1e-2
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0
    for preset in filter(None, (arg or "").split(",")):
        if preset == "smoke":
            c.train_steps = 20
            c.progress = False
            c.data.num_sequences = 64
            c.data.num_eval = 4
            c.batch_size = 8
        else:
            raise ValueError(f"unknown preset {preset!r} for configs/medusa_heads.py; available: smoke")
    return c
