"""ACT (recursive halting) language model on a local text or token file.

    python -m latent_jax.main --config=configs/act_lm.py --workdir runs/act_lm \
        --config.data.path=corpus.txt                     # byte-level, from scratch
    python -m latent_jax.main --config=configs/act_lm.py --workdir runs/act_lm \
        --config.model.path=/models/Mistral-7B --config.data.path=corpus.txt   # halting around a checkpoint
    python -m latent_jax.main --config=configs/act_lm.py:smoke --workdir /tmp/act_lm_smoke

Presets (comma-separated): smoke (builds its own tiny corpus), muon, pondernet.
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "act"
    c.task = "text"
    c.ponder_on = "all"
    c.progress = True
    c.train_steps = 0  # training budget in steps, then evaluated (0 = num_epochs full epochs)

    c.model.model_type = "mistral"
    c.model.hidden_size = 128
    c.model.intermediate_size = 384
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 2
    c.model.head_dim = 32

    c.act = ConfigDict()
    c.act.k_max = 4
    c.act.tau = 0.99
    c.act.lambda_ponder = 2.5e-3
    c.act.ponder_type = "act"
    c.act.pondernet_prior = 0.5
    c.act.lambda_deep_supervision = 0.06
    c.act.use_step_film = True
    c.act.film_rank = 16
    c.act.gated_residual = True
    c.act.halting_mass_scale = 1.0
    c.act.halting_bias_init = -1.0
    c.act.step_embeddings = True
    c.act.remat = True

    c.data = ConfigDict()
    c.data.path = ""  # local .txt / .npy / .bin
    c.data.tokenizer_dir = ""  # default: model.path when set, else bytes
    c.data.seq_len = 128
    c.data.eval_fraction = 0.05
    c.data.max_eval = 256
    c.data.synthetic = False

    c.optim.learning_rate = 1e-3
    c.optim.adamw_learning_rate = 1e-3
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.optim.warmup_steps = 50
    c.batch_size = 16
    c.num_epochs = 1
    c.log_every = 10
    c.eval_every_epochs = 1

    for preset in [p for p in (arg or "").split(",") if p]:
        if preset == "smoke":
            c.data.synthetic = True
            c.data.seq_len = 32
            c.data.max_eval = 8
            c.model.hidden_size = 32
            c.model.intermediate_size = 64
            c.model.head_dim = 8
            c.act.k_max = 3
            c.act.film_rank = 4
            c.batch_size = 8
            c.train_steps = 6
            c.log_every = 2
            c.progress = False
        elif preset == "muon":
            c.optim.name = "muon"
            c.optim.learning_rate = 0.02
        elif preset == "pondernet":
            c.act.ponder_type = "pondernet"
            c.act.lambda_ponder = 0.01
        else:
            raise ValueError(f"unknown preset {preset!r}; use smoke, muon, pondernet")
    return c
