"""Fields shared by every workflow. Workflow configs start from get_base() and add or
change what they need; presets (":smoke") are applied by each file's get_config(arg)."""

from ml_collections import ConfigDict


def get_base() -> ConfigDict:
    c = ConfigDict()
    c.workflow = "coconut"
    c.mode = "train"  # train | eval
    c.workdir = ""
    c.seed = 0
    c.verbose = False  # absl INFO logs (Orbax logs every checkpoint read and write); False: WARNING and up
    # a data row that lacks a field or has the wrong type: "error" stops the run naming file, row
    # and line; "skip" skips and counts it (the count is logged)
    c.on_bad_row = "error"

    # model: either an HF directory / converted checkpoint, or a from-scratch ModelConfig
    c.model = ConfigDict()
    c.model.path = ""  # local HF dir or Orbax checkpoint from latent_jax.convert
    c.model.model_type = "llama"
    c.model.hidden_size = 128
    c.model.intermediate_size = 512
    c.model.num_hidden_layers = 4
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 4
    c.model.head_dim = 32
    c.model.max_position_embeddings = 1024
    c.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    c.model.param_dtype = "float32"
    c.model.scan_layers = False
    c.model.remat_policy = "none"
    # every task's loss applies the LM head over chunks of this many positions (0 = the whole
    # sequence): full-vocabulary fp32 logits exist for one chunk at a time (models/lm_head.py)
    c.model.ce_chunk = 0
    # attention implementation (models/attention.py): auto | xla | chunked | cudnn | splash. auto: cuDNN
    # on GPU (bf16), Pallas splash on TPU, for calls without a KV cache; the query-chunked XLA path for
    # long calls elsewhere; xla (every head's scores at once) otherwise
    c.model.attention = "auto"
    c.model.attention_chunk = 512  # queries per block of the chunked path

    # multi-host (--multihost): seconds a process waits for a peer that stopped answering before
    # it fails (jax.distributed's heartbeat; jax's default is 100)
    c.heartbeat_timeout_s = 100

    # device mesh (data, fsdp, tensor); -1 = all remaining devices
    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # optimizer
    c.optim = ConfigDict()
    c.optim.name = "adamw"  # adamw | muon (Muon on hidden 2-D weights, AdamW elsewhere)
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 1.0
    c.optim.grad_accum = 1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.mu_dtype = ""  # AdamW's first moment: "" = the param dtype; "bfloat16" halves it
    c.optim.adamw_learning_rate = 3e-4  # for muon: the AdamW group's learning rate
    c.optim.reset_on_stage_change = False

    # the Trainer (latent_jax.train.trainer)
    # plasticity keepers, applied by the Trainer to any workflow (train/continual.py, docs/continual.md);
    # the CinePile seed's --apply_freq / --replacement_rate / --maturity_threshold are these keys
    c.continual = ConfigDict()
    c.continual.enabled = False  # continual backprop (the task's loss_fn returns the MLP activations)
    c.continual.replacement_rate = 1e-4  # units replaced per update, as a fraction of the mature ones
    c.continual.maturity_threshold = 100  # updates before a unit may be replaced
    c.continual.decay_rate = 0.99  # of the running utility and mean activation
    c.continual.apply_freq = 1  # updates between replacements (the count accumulates in between)
    c.continual.accumulate = True  # False: gnt.py's default (one unit with probability rate x eligible when < 1)
    c.continual.init = "normal"  # re-drawn weights: normal (as the decoder, N(0, init_std)) | kaiming | lecun | default
    c.continual.init_std = 0.02
    c.continual.layers = ""  # regex on MLP module paths ('' = every MLP)
    c.continual.seed = 0
    c.continual.l2 = 0.0  # L2 penalty gradient added before the optimizer
    c.continual.snp_shrink = 0.0  # shrink-and-perturb: w <- (1 - shrink) w + snp_noise * N(0, 1) every update
    c.continual.snp_noise = 0.0

    c.batch_size = 8
    c.num_epochs = 1
    c.start_epoch = 0  # first epoch of a fresh run (skips earlier curriculum stages, as Coconut's `resume`)
    c.max_steps = 0  # stop (after checkpointing, before evaluation; resumable) at this step; 0 = run all epochs
    c.checkpoint_every_steps = 0  # 0 = checkpoint at epoch ends only
    c.log_every = 10
    c.eval_every_epochs = 1
    c.keep_best = 2  # training checkpoints kept by the task's best metric (plus the latest)
    c.progress = True
    c.wandb_project = ""

    # KV cache during generation (Coconut text / multimodal eval, VLM generation):
    # policy full | tova (decoding/tova.py: a fixed budget of `size` slots per layer)
    c.cache = ConfigDict(dict(policy="full", size=512, per_layer=True, head_weights="mean", recency_bias=0.0,
                              recency_window=32, dynamic_sizing=False, cache_size_factor=0.5, min_cache_size=128,
                              max_cache_size=2048))
    # how answers are decoded after the thoughts: autoregressive | diffusion (the two-stage
    # pipeline: also trains the answer span with the masked-diffusion objective);
    # block_length 0 = the whole answer, steps 0 = one per token, threshold < 0 = fixed schedule,
    # mask_id < 0 = the pad token (decoding/diffusion.answer_options_from_config)
    c.answer = ConfigDict(dict(decoding="autoregressive", block_length=0, steps=0, threshold=-1.0,
                               remasking="low_confidence", mask_id=-1, shift=True))
    return c


def coconut_settings() -> ConfigDict:
    """config.coconut: the Coconut curriculum of every Coconut workflow (text and multimodal;
    latent_jax.latent.curriculum.CurriculumConfig). The optimizer reset at a stage change is
    optim.reset_on_stage_change."""
    return ConfigDict(dict(
        c_thought=1,  # thoughts per replaced reasoning step
        epochs_per_stage=5,
        max_latent_stage=6,
        pad_latent_to_max=True,
        uniform_prob=0.0,  # probability of mixing an earlier stage into a batch row
        ablation="none",  # none | no_curriculum | no_thought | pause_as_thought
        supervision="steps",  # steps (the original) | frontier: after s thoughts, name a depth-s+1 node (graph data)
        latent_markers=True,  # <|start-latent|> / <|end-latent|> around the thoughts (as the original)
        # none (as both references) | frontier: label every thought slot with a node of its depth
        # on a shortest path | reach: with its depth's whole BFS layer, a set-valued label
        thought_labels="none",
        set_loss="uniform",  # set labels: uniform (CE to uniform over the set) | sum (-log of the set's probability)
        walk_tokens=12,  # coconut_mode="walks" (the shared base on graph walks): walk tokens after the question
    ))
