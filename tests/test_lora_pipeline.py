"""gin_configs/lora/lora.gin turns LoRA on in every training stage, each with its start; the
smoke pipeline runs every variant with it."""
import json
import os
import subprocess
import sys

import gin
import pytest

from mathft_jax import pipeline
from mathft_jax.core import gin_utils
from waiting import HANG_LIMIT_S
from xla_env import one_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA_GIN = "gin_configs/lora/lora.gin"


def _context(tmp_path, variant):
    gin.clear_config()
    gin_utils.parse_gin(["gin_configs/runs/smoke.gin", LORA_GIN],
                        [f"pipeline.run_dir='{tmp_path}'", f"pipeline.variant='{variant}'"])
    cfg = pipeline.PipelineConfig().validate()
    return pipeline.Context(cfg, pipeline.Run(cfg.run_dir), cfg.stages)


def test_lora_gin_sets_every_training_stage_and_its_start(tmp_path):
    try:
        ctx = _context(tmp_path, "mtsf")
        starts = {stage: pipeline._train_config(ctx, stage).lora for stage in ("ssft", "scr", "mtsf")}
        assert all(s.rank == 16 and s.alpha == 32.0 for s in starts.values())
        assert starts["scr"].start == "continue" and starts["mtsf"].start == "continue"
        dpo = pipeline._train_config(_context(tmp_path, "dpo"), "dpo").lora
        grpo = pipeline._grpo_config(_context(tmp_path, "grpo")).lora
        assert dpo.start == "merge" and grpo.start == "merge" and grpo.rank == 16
    finally:
        gin.clear_config()


def _pipeline(run, gin_files, *bindings):
    cmd = [sys.executable, "-m", "mathft_jax.pipeline",
           *(f"--gin_file={f}" for f in ["gin_configs/runs/smoke.gin", *gin_files]),
           f"--gin_bindings=pipeline.run_dir='{run}'", *(f"--gin_bindings={b}" for b in bindings)]
    out = subprocess.run(cmd, cwd=REPO, env=one_device_env(), capture_output=True, text=True,
                         timeout=HANG_LIMIT_S)
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A base that already solves some problems, as an imported model does: the smoke run's
    full fine-tuned SSFT. (LoRA on the smoke run's random init learns no right answers in
    the smoke budget, so scr_data would find no pairs.)"""
    run = tmp_path_factory.mktemp("base") / "run"
    _pipeline(run, [], "pipeline.stop_after='ssft'")
    return str(run / "ssft" / "checkpoints")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mtsf", "mtsf_control", "dpo", "grpo"])
def test_every_variant_runs_with_lora(tmp_path, variant, pretrained):
    run = tmp_path / "run"
    _pipeline(run, [LORA_GIN], f"pipeline.variant='{variant}'",
              f"pipeline.init_checkpoint='{pretrained}'", "ssft/train.total_steps=20",
              "grpo/grpo.iterations=2", "dpo/train.total_steps=4")
    trained = [s for s in pipeline.VARIANTS[variant] if s in ("ssft", "scr", "mtsf", "dpo", "grpo")]
    for stage in trained:
        record = json.loads((run / stage / "checkpoints" / "lora.json").read_text())
        assert record["lora"]["rank"] == 16, stage
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert results
