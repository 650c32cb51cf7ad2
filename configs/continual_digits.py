"""Loss of plasticity and continual backprop (Dohare et al., Nature 2024) on CPU: a long
sequence of permuted 8x8-digit tasks learned one after another by a small MLP, with plain
backprop, continual backprop, L2 and shrink-and-perturb (config.compare), each in
workdir/<variant>/; plasticity.png draws every variant's accuracy on each new task.

    python -m latent_jax.main --config=configs/continual_digits.py --workdir runs/continual_digits
    python -m latent_jax.main --config=configs/continual_digits.py:smoke --workdir /tmp/cl_smoke
    python -m latent_jax.main --config=configs/continual_digits.py:mnist --workdir runs/continual_mnist \
        --config.data.data_dir=~/tensorflow_datasets

Presets (comma-separated): smoke, labels (label-permuted tasks: plasticity is lost within
~80 tasks), pixels (permuted pixels, the default), mnist (28x28 MNIST through
tensorflow-datasets, the paper's Permuted MNIST), single (one run with config.continual as
set, no comparison).
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "continual"
    c.compare = "bp,cbp,l2,snp"  # variants, each its own run; "" = one run with config.continual
    c.last_fraction = 0.1  # the summary compares new-task accuracy over the first / last 10% of tasks
    c.epochs_per_dataset = 1  # Trainer epochs per task (each epoch = data.passes passes)
    c.eval_seen = True  # after each task: accuracy on every task so far (+ the next) -> accuracy matrix
    c.progress = False
    c.keep_best = 1

    c.data = ConfigDict()
    c.data.source = "digits"  # digits (scikit-learn 8x8) | mnist (tensorflow-datasets)
    c.data.data_dir = ""
    c.data.test_fraction = 0.2
    c.data.permute = "pixels"  # pixels | labels
    c.data.num_tasks = 150
    c.data.passes = 3  # passes over a task's training split
    c.data.max_train = 0  # > 0: first N training images only

    c.mlp = ConfigDict()
    c.mlp.widths = "128,128"
    c.mlp.classes = 10

    c.continual.init = "kaiming"  # as the MLP's own init (ReLU)
    c.continual.replacement_rate = 1e-4  # the paper's permuted-MNIST setting
    c.continual.maturity_threshold = 100
    c.continual.decay_rate = 0.99

    c.baselines = ConfigDict()  # the compared variants' settings
    c.baselines.l2 = 1e-3
    c.baselines.snp_shrink = 1e-4
    c.baselines.snp_noise = 1e-3

    c.optim.name = "adamw"
    c.optim.learning_rate = 3e-3
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0

    c.batch_size = 32
    c.log_every = 100
    c.eval_every_epochs = 1

    for preset in [p for p in (arg or "").split(",") if p]:
        if preset == "smoke":
            c.data.num_tasks = 4
            c.data.passes = 1
            c.data.max_train = 256
            c.mlp.widths = "32,32"
            c.continual.maturity_threshold = 4
            c.continual.replacement_rate = 1e-2
            c.log_every = 8
        elif preset in ("labels", "pixels"):
            c.data.permute = preset
        elif preset == "mnist":
            c.data.source = "mnist"
            c.data.data_dir = "~/tensorflow_datasets"
            c.mlp.widths = "2000,2000,2000"
            c.data.num_tasks = 800
            c.data.passes = 1
            c.optim.learning_rate = 1e-3
        elif preset == "single":
            c.compare = ""
        else:
            raise ValueError(f"unknown preset {preset!r}; use smoke, labels, pixels, mnist, single")
    return c
