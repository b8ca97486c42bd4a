"""Reinforcement learning with verifiable rewards: GRPO on the project's sampler, grader,
trainer and checkpoints. `python -m mathft_jax.rl` runs `loop.grpo` (see loop.py)."""
