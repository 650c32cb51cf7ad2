"""Workflows as tasks of the one Trainer (latent_jax.train.trainer): coconut (text and
multimodal), act, diffusion, medusa; each module has run(config, workdir) for main.WORKFLOWS."""
