"""`python -m mathft_jax.rl --gin_file=...`: the GRPO loop (mathft_jax/rl/loop.py)."""
from mathft_jax.core.entry import run_module

run_module("mathft_jax.rl.loop")
