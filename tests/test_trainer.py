"""The training core: objectives, optimizers, accumulation, sharding, checkpoints, resume."""
import json
import os
import signal
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax import train
from mathft_jax.convert import checkpoints
from mathft_jax.models import partitioning
from mathft_jax.training import losses
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.training.trainer import abstract_state, init_state, make_train_step
from train_utils import TINY, ArrayIterator
from waiting import HANG_LIMIT_S, wait_for

HERE = os.path.dirname(__file__)
DRIVER = os.path.join(HERE, "train_driver.py")


def _train(tmp_path, name, steps=6, mesh=None, **kw):
    kw.setdefault("data_iterator", ArrayIterator())
    return train.train(model_dir=str(tmp_path / name), total_steps=steps, batch_size=8,
                       sequence_length=16, model=kw.pop("model", TINY), progress=False,
                       mesh_fn=mesh or (lambda: partitioning.make_mesh(devices=jax.devices()[:1])),
                       **kw)


def _losses(model_dir):
    from mathft_jax.core.metrics_writer import read_metrics
    return np.array([r["train/loss"] for r in read_metrics(model_dir)])


def _final_params(model_dir, cfg=TINY):
    one_device = partitioning.Partitioner.single_device(cfg)
    return jax.device_get(checkpoints.load_params(model_dir, cfg, one_device))


def test_token_cross_entropy_matches_hand_computation():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    targets = jnp.array([[0, 1]])
    weights = jnp.array([[1, 0]])
    out = losses.token_cross_entropy(logits, targets, weights, z_loss=0.0)
    np.testing.assert_allclose(out["xent"], -np.log(0.7), rtol=1e-6)
    assert float(out["weight"]) == 1.0 and float(out["correct"]) == 1.0
    zl = losses.token_cross_entropy(logits + 2.0, targets, weights, z_loss=0.1)["z_loss"]
    np.testing.assert_allclose(zl, 0.1 * 2.0 ** 2, rtol=1e-5)  # log Z = 2 after the shift


def test_schedules():
    s = learning_rate_schedule(peak=1.0, warmup_steps=10, decay="cosine", total_steps=110)
    assert float(s(0)) == pytest.approx(0.1) and float(s(9)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.5, abs=1e-6) and float(s(110)) == pytest.approx(0.0, abs=1e-6)
    r = learning_rate_schedule(peak=1.0, warmup_steps=4, decay="rsqrt")
    assert float(r(16)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay='exp'"):
        learning_rate_schedule(decay="exp")


def test_published_peaks_match_whole_device_names():
    from mathft_jax.training import hardware
    assert hardware.published_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.published_peak_flops("NVIDIA L40S") == 362e12  # not the L4's
    assert hardware.published_peak_flops("NVIDIA L4") == 121e12
    assert hardware.published_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12  # not the A10's
    assert hardware.published_peak_flops("TPU v5 lite") == 197e12
    assert hardware.published_peak_flops("cpu") is None


def test_overfits_one_fixed_batch(tmp_path):
    gin.bind_parameter("learning_rate_schedule.peak", 1e-2)
    r = _train(tmp_path, "overfit", steps=150, data_iterator=ArrayIterator(pool=8),
               checkpoint_every=1000, mesh=lambda: partitioning.make_mesh())
    assert r.last_metrics["loss"] < 0.05, r.last_metrics


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_eight_devices_match_one_device(tmp_path, optimizer):
    gin.bind_parameter("make_optimizer.name", optimizer)
    one = _train(tmp_path, "one", checkpoint_every=1000)
    eight = _train(tmp_path, "eight", checkpoint_every=1000,
                   mesh=lambda: partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    np.testing.assert_allclose(_losses(eight.model_dir), _losses(one.model_dir), rtol=2e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                           _final_params(eight.model_dir), _final_params(one.model_dir))


def test_gradient_accumulation_equals_big_batch():
    opt = make_optimizer()
    sched = learning_rate_schedule()
    _, sh = abstract_state(TINY, opt, partitioning.Partitioner.single_device(TINY))
    state = init_state(TINY, opt, sh, seed=0)
    batch = next(ArrayIterator())
    batch["decoder_loss_weights"][::3, 5:9] = 0  # uneven weights across micro-batches
    s1, m1 = jax.jit(make_train_step(TINY, opt, sched, micro_batches=1))(state, batch)
    s4, m4 = jax.jit(make_train_step(TINY, opt, sched, micro_batches=4))(state, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           s1.params, s4.params)


def test_resume_gives_the_uninterrupted_run(tmp_path):
    full = _train(tmp_path, "full", steps=8, checkpoint_every=3)
    part = _train(tmp_path, "part", steps=5, checkpoint_every=3)
    assert part.final_step == 5
    rest = _train(tmp_path, "part", steps=8, checkpoint_every=3)  # a fresh iterator: restored
    assert rest.start_step == 5
    assert checkpoints.tree_equal(_final_params(full.model_dir), _final_params(rest.model_dir))


def test_init_checkpoint_loads_params_with_fresh_optimizer(tmp_path):
    first = _train(tmp_path, "first", steps=3)
    second = _train(tmp_path, "second", steps=1, init_checkpoint=first.model_dir)
    assert second.start_step == 0 and second.final_step == 1
    assert not checkpoints.tree_equal(_final_params(first.model_dir), _final_params(second.model_dir))


def test_restore_onto_different_meshes(tmp_path):
    run = _train(tmp_path, "m", steps=2, mesh=lambda: partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    ref = _final_params(run.model_dir)
    for mesh in (partitioning.make_mesh(devices=jax.devices()[:1]),
                 partitioning.make_mesh(data=1, fsdp=8, tensor=1)):
        p = checkpoints.load_params(run.model_dir, TINY,
                                    partitioning.Partitioner.create(TINY, mesh))
        assert checkpoints.tree_equal(jax.device_get(p), ref)
        assert p["layers_0"]["mlp"]["wi_0"].sharding.mesh.shape == mesh.shape
    # and a full resume (optimizer state too) on a 1x8x1 mesh continues the run
    more = _train(tmp_path, "m", steps=3, mesh=lambda: partitioning.make_mesh(fsdp=8))
    assert more.start_step == 2 and more.final_step == 3


@pytest.mark.parametrize("bad_step", [3, 4])  # metrics are checked a step late, except at a save
def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, bad_step):
    # An out-of-vocabulary target id makes the loss NaN (take_along_axis fills NaN).
    it = ArrayIterator(poison_step=bad_step, poison_token=10_000)
    with pytest.raises(train.NonFiniteLossError, match=f"at step {bad_step}"):
        _train(tmp_path, "nan", steps=8, data_iterator=it, checkpoint_every=2)
    d = str(tmp_path / "nan")
    assert checkpoints.any_complete(d) == 2
    p = _final_params(d)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(p))


def _run_driver(model_dir, steps, every, *extra, wait=True, **popen):
    cmd = [sys.executable, DRIVER, str(model_dir), str(steps), str(every), *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=HANG_LIMIT_S)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _wait_for_step(model_dir, step, proc):
    path = os.path.join(model_dir, "metrics.jsonl")

    def reached():
        if not os.path.exists(path):
            return False
        with open(path) as f:
            lines = [l for l in f if l.strip()]
        try:
            return bool(lines) and json.loads(lines[-1])["step"] >= step
        except ValueError:  # the last line is still being written
            return False
    wait_for(reached, f"step {step}", proc, output=proc.stdout.read)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    out = _run_driver(d, 12, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    return _final_params(str(d))


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference_run):
    d = tmp_path / "run"
    proc = _run_driver(d, 12, 4, "--sleep", "0.1", wait=False)
    _wait_for_step(str(d), 6, proc)
    # The step-4 save is asynchronous: on a busy machine its commit can land after step 6.
    # Kill once a save has committed, so the resume starts from a checkpoint, not step 0.
    wait_for(lambda: checkpoints.any_complete(str(d)) is not None, "a committed save", proc,
             output=proc.stdout.read)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.wait()
    assert checkpoints.any_complete(str(d)) in (4, 8)  # 8 only if the run got that far
    out = _run_driver(d, 12, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert checkpoints.tree_equal(_final_params(str(d)), reference_run)


@pytest.mark.slow
def test_sigterm_saves_at_that_step_and_resumes_bit_identical(tmp_path, reference_run):
    d = tmp_path / "run"
    proc = _run_driver(d, 12, 100, "--sleep", "0.1", wait=False)
    _wait_for_step(str(d), 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, out[-3000:]
    m = __import__("re").search(r"DONE final_step=(\d+) preempted=True", out)
    assert m, out[-3000:]
    assert checkpoints.any_complete(str(d)) == int(m.group(1)) >= 5
    out2 = _run_driver(d, 12, 100)
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert checkpoints.tree_equal(_final_params(str(d)), reference_run)


@pytest.mark.slow
def test_kill_during_save_resumes_from_last_complete_checkpoint(tmp_path, reference_run):
    d = tmp_path / "run"
    out = _run_driver(d, 12, 4, "--die_in_save_at", "8")
    assert out.returncode == -signal.SIGKILL
    assert checkpoints.any_complete(str(d)) in (4, 8)  # 8 only if the write beat the kill
    out = _run_driver(d, 12, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert checkpoints.tree_equal(_final_params(str(d)), reference_run)


@pytest.mark.slow
def test_cli_rejects_unknown_binding_and_missing_task(tmp_path):
    base = [sys.executable, "-m", "mathft_jax.train", "--gin_file=gin_configs/models/tiny.gin",
            f"--gin_bindings=train.model_dir='{tmp_path}'"]
    cwd = os.path.dirname(HERE)
    bad = subprocess.run(base + ["--gin_bindings=train.no_such_arg=3"], capture_output=True,
                         text=True, cwd=cwd, timeout=HANG_LIMIT_S)
    assert bad.returncode != 0 and "no_such_arg" in bad.stderr
    missing = subprocess.run(base + ["--gin_bindings=train.task='no_such_task'"],
                             capture_output=True, text=True, cwd=cwd, timeout=HANG_LIMIT_S)
    assert missing.returncode != 0
    assert "train.task='no_such_task' is not a registered" in missing.stderr
    assert not os.path.exists(tmp_path / "0")


def test_held_out_loss_every_eval_every_steps(tmp_path):
    run = _train(tmp_path, "eval", steps=4, eval_every=2, eval_steps=2,
                 eval_iterator_fn=lambda: ArrayIterator(seed=5))
    from mathft_jax.core.metrics_writer import read_metrics
    rows = [r for r in read_metrics(run.model_dir) if "eval/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(np.isfinite(r["eval/loss"]) and 0 <= r["eval/correct"] <= 1 for r in rows)
    assert os.listdir(os.path.join(run.model_dir, "tb"))  # TensorBoard event files


def test_stage_schedule_ends_where_its_training_ends_unless_set_apart():
    import gin
    gin.clear_config()
    try:
        gin.parse_config(["learning_rate_schedule.decay = 'linear'",
                          "learning_rate_schedule.peak = 1.0"])
        with gin.config_scope("scr"):  # no length bound: the run's own length
            sched = learning_rate_schedule(train_steps=40)
        assert float(sched(20)) == pytest.approx(0.5) and float(sched(40)) == 0.0
        gin.parse_config(["scr/learning_rate_schedule.total_steps = 10"])  # set apart
        with gin.config_scope("scr"):
            sched = learning_rate_schedule(train_steps=40)
        assert float(sched(10)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    finally:
        gin.clear_config()


def test_train_config_carries_its_gin_scope(tmp_path):
    """The model and the optimizer are made in the scope the TrainConfig is made in, and
    `train(config)` reads them from the config alone: in or out of that scope, one run."""
    import dataclasses
    from mathft_jax.training.optim import OptimizerConfig
    bindings = [f"ssft/DecoderConfig.{f.name} = {getattr(TINY, f.name)!r}"
                for f in dataclasses.fields(TINY)]
    gin.parse_config(bindings + ["ssft/DecoderConfig.num_layers = 1",
                                 "learning_rate_schedule.peak = 1e-4",
                                 "ssft/learning_rate_schedule.peak = 0.05",
                                 "ssft/make_optimizer.b2 = 0.9"])
    with gin.config_scope("ssft"):
        config = train.TrainConfig(model_dir=str(tmp_path / "unused"), checkpoint_every=1000)
    assert config.model == dataclasses.replace(TINY, num_layers=1)
    assert (config.optimizer.schedule.peak, config.optimizer.b2) == (0.05, 0.9)

    def run(name, config=config):
        return _train(tmp_path, name, steps=3, model=config.model, config=config)

    outside = run("outside")
    with gin.config_scope("ssft"):
        inside = run("inside")
    np.testing.assert_array_equal(_losses(inside.model_dir), _losses(outside.model_dir))
    small = dataclasses.replace(TINY, num_layers=1)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _final_params(inside.model_dir, small),
                           _final_params(outside.model_dir, small))
    unscoped = run("unscoped", dataclasses.replace(config, optimizer=OptimizerConfig()))
    assert not np.array_equal(_losses(unscoped.model_dir)[1:], _losses(outside.model_dir)[1:])
