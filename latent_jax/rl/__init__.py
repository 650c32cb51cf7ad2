"""Reinforcement learning on answers: rewards, the GRPO objective, group rollouts and the grpo workflow."""
