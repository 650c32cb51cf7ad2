"""Streaming demonstration: a tiny model learns, from a stop / noise mix, to answer queries
about a synthetic video stream, stay silent on statements that are not queries, and stop at
once when interrupted; evaluated as a stream (latent_jax.tasks.streaming).

    python -m latent_jax.main --config=configs/streaming_demo.py --workdir runs/stream
    python -m latent_jax.main --config=configs/streaming_demo.py:smoke --workdir /tmp/stream_smoke
    python -m latent_jax.main --config=configs/streaming_demo.py:nomix --workdir runs/stream_nomix

Presets (comma-separated): smoke (seconds: few samples, one epoch), nomix (no stop / noise
samples in training: the baseline the +stop / +noise rows are compared with).
"""

from ml_collections import ConfigDict

from configs.base import get_base


def get_config(arg: str | None = None) -> ConfigDict:
    c = get_base()
    c.workflow = "streaming"
    c.model.model_type = "llama"
    c.model.hidden_size = 64
    c.model.intermediate_size = 192
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 2
    c.model.head_dim = 16
    c.model.max_position_embeddings = 512

    c.data = ConfigDict()
    c.data.template = "stream_demo"
    c.data.n_train = 3000  # synthetic streams (queries only)
    c.data.n_stop = 1500  # + interruption samples (the seed's +10k-stop, scaled)
    c.data.n_noise = 1500  # + noise samples (the seed's +10k-noise, scaled)
    c.data.turns = 3
    c.data.max_len = 112
    c.data.n_eval = 100  # held-out streams
    c.data.n_eval_each = 100  # held-out stop and noise samples (always mixed into the held-out set)

    c.stream = ConfigDict()  # the evaluation session
    c.stream.max_slots = 256
    c.stream.policy = "none"
    c.stream.sink = 0
    c.stream.max_new_tokens = 6

    c.batch_size = 32
    c.num_epochs = 4
    c.eval_every_epochs = 4  # the stream evaluation runs once, at the end
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.log_every = 20
    c.keep_best = 1

    for p in filter(None, (arg or "").split(",")):
        if p == "smoke":
            c.data.n_train, c.data.n_stop, c.data.n_noise = 64, 32, 32
            c.data.n_eval, c.data.n_eval_each = 8, 8
            c.num_epochs = 1
            c.batch_size = 16
            c.progress = False
        elif p == "nomix":
            c.data.n_stop, c.data.n_noise = 0, 0
        else:
            raise ValueError(f"unknown preset {p!r}; use smoke, nomix")
    return c
