"""Reinforcement learning on answers, as a library: rewards, the GRPO objective and group rollouts
(the grpo workflow that trains with them is latent_jax.tasks.grpo)."""
