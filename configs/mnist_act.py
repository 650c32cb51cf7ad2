"""ACT (recursive halting) image classification: digits by default, MNIST by preset.

    python -m latent_jax.main --config=configs/mnist_act.py --workdir runs/digits_act
    python -m latent_jax.main --config=configs/mnist_act.py:mnist --workdir runs/mnist_act \
        --config.data.data_dir=~/tensorflow_datasets
    python -m latent_jax.main --config=configs/mnist_act.py:smoke --workdir /tmp/act_smoke

Presets (comma-separated): mnist, smoke, muon, raw (pixel tokens), patch, wavelet, siren.
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "act"
    c.task = "digits"  # digits | mnist
    c.ponder_on = "all"  # all: ponder cost over every token; label: only the label position
    c.progress = True
    c.train_steps = 0  # training budget in steps, then evaluated (0 = num_epochs full epochs)

    c.model.model_type = "llama"
    c.model.hidden_size = 64
    c.model.intermediate_size = 192
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 2
    c.model.head_dim = 16
    c.model.max_position_embeddings = 1024

    c.act = ConfigDict()
    c.act.k_max = 3
    c.act.tau = 0.9
    c.act.lambda_ponder = 1e-2
    c.act.ponder_type = "act"
    c.act.pondernet_prior = 0.5
    c.act.lambda_deep_supervision = 0.05
    c.act.use_step_film = True
    c.act.film_rank = 8
    c.act.gated_residual = True
    c.act.halting_mass_scale = 1.0
    c.act.halting_bias_init = -1.0
    c.act.step_embeddings = True
    c.act.remat = True

    c.vision = ConfigDict()
    c.vision.encoder = "patch"  # raw | conv | patch | wavelet | siren
    c.vision.hidden = 64
    c.vision.patch_size = 2  # 8x8 digits -> 16 patch tokens
    c.vision.siren_omega = 30.0
    c.vision.freeze_encoder = False
    c.vision.num_labels = 10

    c.augment = ConfigDict()
    c.augment.enabled = True
    c.augment.prob_start = 0.2
    c.augment.prob_end = 0.8
    c.augment.degrees_start = 0.0
    c.augment.degrees_end = 10.0
    c.augment.translate_start = 0.0
    c.augment.translate_end = 0.08
    c.augment.auto_fraction = 0.6

    c.data = ConfigDict()
    c.data.data_dir = ""  # MNIST: a prepared tensorflow-datasets directory
    c.data.test_fraction = 0.2  # digits
    c.data.token_param_ratio = 0.0  # > 0: repeat (augmented) data to this many tokens per parameter
    c.data.max_multiplicity = 0
    c.data.max_train = 0
    c.data.max_eval = 0

    c.optim.name = "adamw"
    c.optim.learning_rate = 2e-3
    c.optim.adamw_learning_rate = 2e-3
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.01
    c.optim.grad_clip = 1.0

    c.batch_size = 32
    c.num_epochs = 20
    c.log_every = 10
    c.eval_every_epochs = 5

    for preset in [p for p in (arg or "").split(",") if p]:
        if preset == "mnist":
            c.task = "mnist"
            c.data.data_dir = "~/tensorflow_datasets"
            c.vision.encoder = "conv"
            c.vision.patch_size = 2  # 14x14 = 196 conv tokens
            c.model.hidden_size = 128
            c.model.head_dim = 32
            c.num_epochs = 3
            c.eval_every_epochs = 1
            c.data.token_param_ratio = 0.0
        elif preset == "smoke":
            c.model.hidden_size = 32
            c.model.intermediate_size = 64
            c.model.head_dim = 8
            c.act.k_max = 3
            c.vision.hidden = 16
            c.batch_size = 16
            c.train_steps = 6
            c.log_every = 2
            c.eval_every_epochs = 1
            c.data.max_train = 64
            c.data.max_eval = 32
            c.progress = False
        elif preset == "muon":
            c.optim.name = "muon"
            c.optim.learning_rate = 0.02
        elif preset in ("raw", "patch", "wavelet", "siren", "conv"):
            c.vision.encoder = preset
            if preset == "patch":
                c.vision.patch_size = 2
        else:
            raise ValueError(f"unknown preset {preset!r}; use mnist, smoke, muon, raw, conv, patch, wavelet, siren")
    return c
