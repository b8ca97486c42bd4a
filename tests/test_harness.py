"""The training harness (`training/harness.py`) that `train` and the GRPO loop share: a
learner of its own, with its own batches and objective, runs and resumes through it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.convert import checkpoints
from mathft_jax.core.metrics_writer import read_metrics
from mathft_jax.models import partitioning
from mathft_jax.training import harness as harness_lib
from mathft_jax.training.optim import OptimizerConfig, ScheduleConfig
from train_utils import TINY

UNITS = 6


def _scale_objective(model, params, batch):
    """Pull every entry of the final norm's scale toward each row's target."""
    del model
    error = params["final_norm"]["scale"][None, :] - batch["target"][:, None]
    return {"loss": jnp.sum(error ** 2) / error.shape[1],
            "weight": jnp.float32(batch["target"].shape[0])}


class _TargetLearner(harness_lib.Learner):
    """Its own batches (target t / 10 at data position t) and objective; `crash_at`: the
    data position at which the process 'dies'."""

    metrics_prefix = "toy"

    def __init__(self, partitioner, crash_at=None):
        self.objective, self.partitioner = _scale_objective, partitioner
        self.position, self.crash_at = 0, crash_at

    def advance(self, state, step):
        self.position += 1
        if self.position == self.crash_at:
            raise KeyboardInterrupt("killed")
        target = np.full((8,), self.position / 10, np.float32)
        return step(state, {"target": self.partitioner.to_global(target)})

    def restore(self, meta):
        self.position = meta["position"]

    def checkpoint_meta(self, unit):
        return {"position": self.position}


class _HostLearner(_TargetLearner):
    """Its metrics come back to the host within the unit (as GRPO's do)."""

    metrics_on_device = False

    def advance(self, state, step):
        state, metrics = super().advance(state, step)
        return state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def _run(tmp_path, name, crash_at=None, learner=_TargetLearner, checkpoint_every=2):
    partitioner = partitioning.Partitioner.single_device(TINY)
    harness = harness_lib.Harness(
        model_dir=str(tmp_path / name), model=TINY,
        optimizer=OptimizerConfig(schedule=ScheduleConfig(peak=0.1)), optimizer_steps=UNITS,
        partitioner=partitioner, seed=0, init_checkpoint=None, keep_checkpoints=5,
        async_checkpoints=False)
    return harness.run(learner(partitioner, crash_at), units=UNITS,
                       checkpoint_every=checkpoint_every, log_every=1, progress=False)


def _scale(model_dir):
    params = checkpoints.load_params(model_dir, TINY, partitioning.Partitioner.single_device(TINY))
    return np.asarray(jax.device_get(params["final_norm"]["scale"]))


def _rows(model_dir):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(model_dir)]


def test_a_learner_of_its_own_trains_through_the_harness(tmp_path):
    whole = _run(tmp_path, "whole")
    assert dataclasses.astuple(whole)[:3] == (0, UNITS, False)
    rows = _rows(tmp_path / "whole")
    assert [r["step"] for r in rows] == list(range(1, UNITS + 1))
    assert set(rows[0]) == {"step", "toy/loss", "toy/grad_norm", "toy/learning_rate",
                            "toy/weight"}  # no throughput without tokens_per_unit
    # its objective did the training: the scale left 1 for the last targets (0.5, 0.6)
    assert np.abs(_scale(tmp_path / "whole") - 0.55).mean() < 0.4


def test_a_killed_learner_resumes_where_its_checkpoint_left_it(tmp_path):
    _run(tmp_path, "whole")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", crash_at=5)  # after the checkpoint of unit 4
    resumed = _run(tmp_path, "killed")
    assert (resumed.start, resumed.final) == (4, UNITS)
    np.testing.assert_array_equal(_scale(tmp_path / "killed"), _scale(tmp_path / "whole"))
    assert _rows(tmp_path / "killed")[-2:] == _rows(tmp_path / "whole")[-2:]


def test_non_finite_metrics_stop_the_run_naming_the_unit(tmp_path):
    partitioner = partitioning.Partitioner.single_device(TINY)
    learner = _TargetLearner(partitioner)
    learner.objective = lambda model, params, batch: {
        **_scale_objective(model, params, batch),
        "loss": jnp.where(batch["target"][0] > 0.25, jnp.nan, 0.0)}
    harness = harness_lib.Harness(
        model_dir=str(tmp_path / "nan"), model=TINY, optimizer=OptimizerConfig(),
        optimizer_steps=UNITS, partitioner=partitioner, seed=0, init_checkpoint=None,
        keep_checkpoints=5, async_checkpoints=False)
    with pytest.raises(harness_lib.NonFiniteLossError, match="at round 3: .*round 2 in"):
        harness.run(learner, units=UNITS, checkpoint_every=2, log_every=1, progress=False,
                    unit_name="round")


@pytest.mark.parametrize("learner,written", [(_TargetLearner, [1]), (_HostLearner, [1, 2])])
def test_metrics_on_device_are_written_a_unit_late(tmp_path, learner, written):
    """Device metrics are fetched while the next unit runs (a crash in unit 3 loses unit
    2's row); a learner's host metrics are written as its unit ends."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "run", crash_at=3, learner=learner, checkpoint_every=100)
    assert [r["step"] for r in _rows(tmp_path / "run")] == written
