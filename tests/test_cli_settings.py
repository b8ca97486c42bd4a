"""Bad settings of train, infer and pipeline: exit 2 with one line naming the gin binding,
before anything is built or written; and SIGTERM during train's start-up ends it cleanly."""
import os
import signal
import subprocess
import sys

import pytest
from train_utils import SMALL_TRAIN_SPLIT
from waiting import HANG_LIMIT_S, wait_for
from xla_env import one_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *bindings, gin_file="gin_configs/models/tiny.gin"):
    cmd = [sys.executable, "-m", module, f"--gin_file={gin_file}",
           *[f"--gin_bindings={b}" for b in bindings]]
    return subprocess.run(cmd, cwd=REPO, env=one_device_env(),
                          capture_output=True, text=True, timeout=HANG_LIMIT_S)


def _assert_one_line_usage_error(out, message):
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("binding,message", [
    ("train.batch_size=0", "train.batch_size=0 must be an integer >= 1"),
    ("train.batch_size=-8", "train.batch_size=-8 must be an integer >= 1"),
    ("train.sequence_length=0", "train.sequence_length=0 must be an integer >= 1"),
    ("train.sequence_length=-5", "train.sequence_length=-5 must be an integer >= 1"),
    ("train.total_steps=-1", "train.total_steps=-1 must be an integer >= 0"),
])
def test_train_rejects_bad_numbers_before_writing(tmp_path, binding, message):
    model_dir = tmp_path / "run"
    out = _run("mathft_jax.train", "train.task='synthetic_arith_steps'",
               f"train.model_dir='{model_dir}'", binding)
    _assert_one_line_usage_error(out, message)
    assert not model_dir.exists()  # no metrics.jsonl, no TensorBoard file, nothing


@pytest.mark.parametrize("binding,message", [
    ("infer.num_samples=0", "infer.num_samples=0 must be an integer >= 1"),
    ("infer.temperature=-1.0", "infer.temperature=-1.0 must be a number in [0.0, inf]"),
    ("infer.top_p=0.0", "infer.top_p=0.0 must be a number in (0.0, 1.0]"),
    ("infer.max_decode_len=0", "infer.max_decode_len=0 must be an integer >= 1"),
])
def test_infer_rejects_bad_numbers_before_writing(tmp_path, binding, message):
    output = tmp_path / "c.jsonl"
    out = _run("mathft_jax.infer", f"infer.checkpoint='{tmp_path}/none'",
               f"infer.output_path='{output}'", binding)
    _assert_one_line_usage_error(out, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("binding,message", [
    ("pipeline.k=0", "pipeline.k=0 must be an integer >= 1"),
    ("scr/train.batch_size=0", "train.batch_size=0 must be an integer >= 1"),
    ("sample_eval/infer.num_samples=0", "infer.num_samples=0 must be an integer >= 1"),
    ("pipeline.variant='nope'", "pipeline.variant='nope'"),
])
def test_pipeline_checks_every_stage_before_the_first(tmp_path, binding, message):
    run_dir = tmp_path / "run"
    out = _run("mathft_jax.pipeline", f"pipeline.run_dir='{run_dir}'", binding,
               gin_file="gin_configs/runs/smoke.gin")
    _assert_one_line_usage_error(out, message)
    assert not run_dir.exists() and "[1/8]" not in out.stdout


def _loaded(pid, library):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return library in f.read()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_sigterm_during_train_start_up_exits_cleanly(tmp_path):
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mathft_jax.train", "--gin_file=gin_configs/models/tiny.gin",
           "--gin_bindings=train.task='synthetic_arith_steps'", SMALL_TRAIN_SPLIT,
           f"--gin_bindings=train.model_dir='{model_dir}'", "--gin_bindings=train.total_steps=50"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=one_device_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The event: numpy's extension is mapped, so the slow imports (jax, gin, data) are under
    # way; the handler must already be there.
    wait_for(lambda: _loaded(proc.pid, "_multiarray_umath"), "numpy's extension loaded",
             proc=proc, poll_s=0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, err[-3000:]  # the preemption exit code, not -15
    assert "SIGTERM before the first step" in err
    assert not any(p.name.isdigit() for p in model_dir.iterdir())  # no step ran: none saved


def test_gin_configs_are_found_from_any_working_directory():
    """Commands started outside the checkout still find gin_configs/ (the package's folder
    holds it when installed; the checkout's otherwise)."""
    from mathft_jax.core import gin_utils
    root = gin_utils.gin_configs_root()
    assert os.path.isfile(os.path.join(root, "gin_configs", "models", "tiny.gin"))
