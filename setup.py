"""mathft_jax: install with `pip install -e .[test]` (see BUILD.md for CPU, GPU and TPU)."""
from setuptools import find_packages, setup

# Lower bounds are the versions this project was tested with: jax 0.10.x on Python 3.11
# (CPU, CI) and jax 0.11.x on the Python 3.12 accelerator images.
CORE = [
    "jax>=0.10.0",
    "jaxlib>=0.10.0",
    "flax>=0.12.0",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11.0",
    "gin-config>=0.5.0",
    "absl-py>=2.1.0",
    "sympy>=1.13",
    "ml-collections>=1.0.0",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
]
# seqio brings TensorFlow (CPU wheel on Linux) through tensorflow-text; only
# mathft_jax.data imports it, so model, trainer and decoding work without it.
DATA = [
    "seqio>=0.0.19",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.20",
]
# The CPU build of torch 2.13.0 is pinned: an unpinned torch pulls a multi-GB CUDA build.
HF = ["transformers>=4.50", "safetensors>=0.4", "tokenizers>=0.20", "torch==2.13.0"]
TEST = ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100"] + HF
# The optional `math_verify` grader (mathft_jax.grading.graders), run in helper processes.
GRADERS = ["math-verify>=0.7"]
BENCH = GRADERS

setup(
    name="mathft_jax",
    version="0.1.0",
    description="T5X-style JAX/Flax fine-tuning of LLMs for competition math (Liu et al., 2023).",
    packages=find_packages(include=["mathft_jax", "mathft_jax.*"]),
    python_requires=">=3.11",
    install_requires=CORE + DATA,
    extras_require={"test": TEST, "hf": HF, "graders": GRADERS, "bench": BENCH + HF},
    include_package_data=True,
)
