"""mathft_jax: T5X-style JAX/Flax fine-tuning of LLMs for competition math.

Implements Liu et al. (2023), "Improving Large Language Model Fine-tuning for Solving
Math Problems": SSFT, solution-cluster re-ranking (SCR) and multi-task sequential
fine-tuning (MTSF). Sub-modules are imported lazily so that `import mathft_jax` stays
cheap and never pulls TensorFlow.
"""

__version__ = "0.1.0"

from mathft_jax.core import platforms as _platforms  # noqa: E402 (before anything imports JAX)

_platforms.choose_default()

from mathft_jax.core import moved as _moved  # noqa: E402  (old module paths stay importable)

_moved.install()
