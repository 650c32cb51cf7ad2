"""Masked-diffusion LM (LLaDA / MDLM objective), workflow "diffusion".

    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm          # toy SFT task
    python -m latent_jax.main --config=configs/diffusion_lm.py:smoke --workdir /tmp/dlm    # a few seconds
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.data.task=text --config.data.path=corpus.txt --config.diffusion.objective=pretrain
    python -m latent_jax.main --config=configs/diffusion_lm.py --workdir runs/dlm \
        --config.model.path=/models/Llama --config.data.task=sft --config.data.path=pairs.jsonl

Tasks: toy (prompt digits -> reversed digits + 1 mod base, held-out decode accuracy), text (a local
.txt/.npy/.bin file as windows), sft (JSONL of {"prompt", "response"}; the prompt is never
masked). diffusion.mask_id -1 picks the toy [MASK] (3) or the last vocabulary id.
Presets: smoke.
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "diffusion"
    c.train_steps = 600  # training budget (config.max_steps only interrupts a run, resumably)
    c.eval_every_steps = 200  # 0 = evaluate at the end only
    c.log_every = 20
    c.batch_size = 64
    c.progress = True

    c.model.model_type = "llama"
    c.model.hidden_size = 64
    c.model.intermediate_size = 128
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 2
    c.model.head_dim = 16
    c.model.max_position_embeddings = 512

    c.diffusion = ConfigDict()
    c.diffusion.objective = "sft"  # sft (never mask the prompt) | pretrain
    c.diffusion.eps = 1e-3
    c.diffusion.mask_id = -1
    c.diffusion.causal = False  # bidirectional decoder (masked-diffusion LM)

    c.data = ConfigDict()
    c.data.task = "toy"  # toy | text | sft
    c.data.path = ""
    c.data.tokenizer_dir = ""
    c.data.seq_len = 128
    c.data.eval_fraction = 0.05
    c.data.num_train = 4096
    c.data.num_eval = 256
    c.data.num_digits = 6
    c.data.base = 10

    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"

    for preset in filter(None, (arg or "").split(",")):
        if preset == "smoke":
            c.train_steps = 30
            c.eval_every_steps = 30
            c.data.num_train = 256
            c.data.num_eval = 32
            c.batch_size = 16
        else:
            raise ValueError(f"unknown preset {preset!r} for configs/diffusion_lm.py; available: smoke")
    return c
