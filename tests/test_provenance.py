"""Run provenance: every stage and model_dir keeps its operative config, and a rerun whose
settings for a finished stage differ stops before any compute, naming the bindings."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import gin
import pytest

from mathft_jax import train
from mathft_jax.core import provenance
from xla_env import one_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipeline(run_dir, *bindings):
    cmd = [sys.executable, "-m", "mathft_jax.pipeline", "--gin_file=gin_configs/runs/smoke.gin",
           f"--gin_bindings=pipeline.run_dir='{run_dir}'", "--gin_bindings=pipeline.stop_after='ssft'",
           *[f"--gin_bindings={b}" for b in bindings]]
    env = one_device_env()
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run whose SSFT stage finished with 3 steps (each test works on a copy)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    first = _pipeline(run, "ssft/train.total_steps=3")
    assert first.returncode == 0, first.stderr[-4000:]
    return run


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


@pytest.mark.slow
def test_a_finished_stage_records_its_operative_config(run):
    ssft = run / "ssft"
    assert "train.total_steps = 3" in (ssft / "config.gin").read_text()  # for people
    assert "train.batch_size" in (ssft / "checkpoints" / "config.gin").read_text()
    recorded = json.loads((ssft / "bindings.json").read_text())
    assert recorded["bindings"]["ssft/train.total_steps"] == "3"


@pytest.mark.slow
def test_rerun_with_changed_stage_settings_stops_before_compute(run):
    ssft = run / "ssft"
    before = sorted(p.name for p in (ssft / "checkpoints").iterdir())
    changed = _pipeline(run, "ssft/train.total_steps=4")
    assert changed.returncode != 0
    assert "ssft/train.total_steps: 3 -> 4" in changed.stderr
    assert "pipeline.ignore_config_changes" in changed.stderr
    assert "[1/8]" not in changed.stdout  # stopped before any stage ran
    assert sorted(p.name for p in (ssft / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_ignore_config_changes_reruns_anyway(run):
    forced = _pipeline(run, "ssft/train.total_steps=4",
                       "pipeline.ignore_config_changes=True")
    assert forced.returncode == 0, forced.stderr[-4000:]
    assert "ssft: already complete" in forced.stdout


@pytest.mark.slow
def test_a_setting_new_since_the_record_is_no_change_at_its_default(run):
    # A stage recorded before a setting existed: at its code default it is no change (the
    # old behaviour). At another value it is one (test_differences_..., below).
    ssft = run / "ssft"
    recorded = json.loads((ssft / "bindings.json").read_text())
    defaults = {f"train.{f.name}": provenance.stable_repr(f.default)
                for f in dataclasses.fields(train.TrainConfig)}
    older = json.loads(json.dumps(recorded))
    del older["resolved"][next(k for k, v in older["resolved"].items() if defaults.get(k) == v)]
    (ssft / "bindings.json").write_text(json.dumps(older))
    rerun = _pipeline(run, "ssft/train.total_steps=3")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "ssft: already complete" in rerun.stdout


def test_differences_name_added_removed_and_changed_bindings():
    diff = provenance.differences({"a.x": "1", "b.y": "'u'"}, {"a.x": "2", "c.z": "True"})
    assert diff == ["a.x: 1 -> 2", "b.y: 'u' -> <default>", "c.z: <default> -> True"]


def test_a_binding_new_to_the_code_differs_only_from_its_default():
    # c.z added to the code since the record: no change at its default, a change otherwise
    assert provenance.differences({"a.x": "1"}, {"a.x": "1", "c.z": "True"},
                                  {"c.z": "True"}) == []
    assert provenance.differences({"a.x": "1"}, {"a.x": "1", "c.z": "True"},
                                  {"c.z": "False"}) == ["c.z: <default> -> True"]
    # a recorded value that differs from the current one is a change, defaults or not
    assert provenance.differences({"c.z": "False"}, {"c.z": "True"},
                                  {"c.z": "True"}) == ["c.z: False -> True"]


def test_explicit_bindings_keep_only_the_given_scopes_and_configurables():
    import mathft_jax.infer  # noqa: F401  (registers infer)
    import mathft_jax.train  # noqa: F401
    gin.parse_config(["train.batch_size = 4", "ssft/train.total_steps = 9",
                      "scr/train.total_steps = 7", "infer.num_samples = 3"])
    got = provenance.explicit_bindings({"train"}, {"", "ssft"})
    assert got == {"train.batch_size": "4", "ssft/train.total_steps": "9"}
