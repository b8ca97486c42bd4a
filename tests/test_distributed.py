"""Multi-process runs on localhost through launch/run.sh (issue 9).

These start real processes that talk through jax.distributed and gloo, so they are the
slow tests: tiny models, few steps. Every test kills what it started in its teardown.
"""
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from train_utils import SMALL_TRAIN_SPLIT
from waiting import HANG_LIMIT_S, wait_for
from xla_env import FAST_COMPILE

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_SH = str(REPO / "launch" / "run.sh")
DEFAULT_SIGINT = [sys.executable, "-c", "import os, signal, sys; "
                  "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]
DRIVER = str(REPO / "tests" / "distributed_driver.py")
PY = sys.executable
TINY_GIN = "gin_configs/models/tiny.gin"
# Only there so that a hang fails instead of blocking the suite (tests/waiting.py); no
# test asserts how long anything took.
RUN_TIMEOUT_S = HANG_LIMIT_S
BAD_INPUT_TIMEOUT_S = HANG_LIMIT_S


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = FAST_COMPILE  # run.sh --devices_per_process adds the device count
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", MATHFT_INIT_TIMEOUT="60",
               PYTHONUNBUFFERED="1", PYTHON=PY)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """launch/run.sh in the background, output to a file; remembers every descendant so
    that teardown (and the no-zombie checks) can find processes that outlived it."""

    def __init__(self, args, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        # run.sh starts with SIGINT at its default disposition, as from a terminal or CI: a
        # pytest launched in the background by a non-interactive shell ignores SIGINT, and a
        # signal ignored when bash starts can never be trapped.
        self.proc = subprocess.Popen([*DEFAULT_SIGINT, RUN_SH, *args], stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env=env or _env(), cwd=REPO, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def _record(self) -> None:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def output(self) -> str:
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def child_pid(self, i: int) -> int:
        m = re.search(rf"\[run\.sh\] p{i}: pid (\d+)", self.output())
        assert m, self.output()
        return int(m.group(1))

    def wait_until(self, predicate, timeout=RUN_TIMEOUT_S, what="condition") -> None:
        def happened():
            self._record()
            return predicate()

        wait_for(happened, what, proc=self.proc, limit_s=timeout, poll_s=0.3, output=self.output)
        self._record()

    def wait(self, timeout=RUN_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self._record()
            if time.monotonic() > deadline:
                raise AssertionError(f"run.sh still running after {timeout} s:\n"
                                     f"{self.output()[-4000:]}")
            time.sleep(0.3)
        self._log.flush()
        return self.proc.returncode

    def leftovers(self, settle_s: float = 120.0) -> list[psutil.Process]:
        """Descendants still alive (zombies included) once run.sh has exited. Waits a
        little: a grandchild orphaned by its parent's exit is reaped by init, not at once."""
        deadline = time.monotonic() + settle_s
        while True:
            alive = []
            for p in self.seen.values():
                try:
                    if p.is_running():
                        alive.append(p)
                except psutil.NoSuchProcess:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def kill_all(self) -> None:
        self._record()
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def launcher(tmp_path):
    """launch(args) -> Launch; everything started is killed at teardown."""
    started = []

    def launch(args, env=None):
        la = Launch(args, str(tmp_path / f"launch{len(started)}.log"), env)
        started.append(la)
        return la

    yield launch
    for la in started:
        la.kill_all()


def _rows(model_dir) -> list[dict]:
    path = pathlib.Path(model_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _done_lines(output: str) -> dict[int, dict]:
    """{process: {"start_step", "final_step", "preempted"}} from the driver's DONE lines."""
    out = {}
    for m in re.finditer(r"DONE process=(\d+) start_step=(\d+) final_step=(\d+) preempted=(\w+)",
                         output):
        out[int(m.group(1))] = {"start_step": int(m.group(2)), "final_step": int(m.group(3)),
                                "preempted": m.group(4) == "True"}
    return out


def _complete_steps(model_dir) -> list[int]:
    d = pathlib.Path(model_dir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "params").is_dir()) \
        if d.exists() else []


# ----------------------------------------------------------------------------- training


def _train_cli(model_dir, steps):
    return [PY, "-m", "mathft_jax.train", f"--gin_file={TINY_GIN}",
            "--gin_bindings=train.task='synthetic_arith_steps'", SMALL_TRAIN_SPLIT,
            f"--gin_bindings=train.model_dir='{model_dir}'",
            f"--gin_bindings=train.total_steps={steps}", "--gin_bindings=train.batch_size=8",
            "--gin_bindings=train.sequence_length=64", "--gin_bindings=train.checkpoint_every=1000"]


@pytest.mark.slow
def test_two_processes_give_the_one_process_loss_curve(launcher, tmp_path):
    """Same global batch, same 8 global devices (8 in one process, or 4 in each of two):
    the 2-process curve is the 1-process curve up to float32 round-off."""
    steps = 5
    one = launcher(["local", "--processes=1", "--devices_per_process=8", "--",
                    *_train_cli(tmp_path / "one", steps)])
    two = launcher(["local", "--processes=2", "--devices_per_process=4", "--",
                    *_train_cli(tmp_path / "two", steps)])
    assert two.wait() == 0, two.output()[-4000:]
    assert one.wait() == 0, one.output()[-4000:]
    out = two.output()
    assert "[p1]" in out and "jax.distributed: process 0 of 2" in out
    rows_one, rows_two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    # Metrics come from process 0 alone: one row per step, not one per process.
    assert [r["step"] for r in rows_two] == list(range(1, steps + 1))
    assert [r["step"] for r in rows_one] == list(range(1, steps + 1))
    loss_one = np.array([r["train/loss"] for r in rows_one])
    loss_two = np.array([r["train/loss"] for r in rows_two])
    assert loss_one[-1] < loss_one[0]  # it trains
    np.testing.assert_allclose(loss_two, loss_one, rtol=2e-6, atol=0)
    np.testing.assert_allclose([r["train/grad_norm"] for r in rows_two],
                               [r["train/grad_norm"] for r in rows_one], rtol=2e-6)
    assert _complete_steps(tmp_path / "two") == [steps]


def _driver(model_dir, steps, every, sleep):
    return ["local", "--processes=2", "--devices_per_process=1", "--grace=5", "--",
            PY, DRIVER, str(model_dir), str(steps), str(every), f"--sleep={sleep}"]


@pytest.mark.slow
def test_sigterm_to_one_process_then_kill_then_resume(launcher, tmp_path):
    """(1) SIGTERM to p1 alone: both processes save the same step and exit 0.
    (2) A restart resumes there; SIGKILL to p1 mid-run: run.sh stops p0 and exits non-zero,
    leaving no process behind. (3) A restart resumes from the last complete checkpoint and
    completes."""
    model_dir, steps, every = tmp_path / "run", 24, 4
    args = _driver(model_dir, steps, every, sleep=0.25)

    run = launcher(args)
    run.wait_until(lambda: len(_rows(model_dir)) >= 3, what="3 training steps")
    os.kill(run.child_pid(1), signal.SIGTERM)
    assert run.wait() == 0, run.output()[-4000:]
    done = _done_lines(run.output())
    assert set(done) == {0, 1}, run.output()[-4000:]
    saved = done[0]["final_step"]
    assert done[0]["preempted"] and done[1]["preempted"]
    assert done[1]["final_step"] == saved and 3 <= saved < steps
    assert max(_complete_steps(model_dir)) == saved

    run = launcher(args)
    run.wait_until(lambda: max(_complete_steps(model_dir)) >= saved + every
                   and len(_rows(model_dir)) >= saved + every + 2,
                   what="a periodic checkpoint after the resume")
    victim = run.child_pid(1)
    os.kill(victim, signal.SIGKILL)
    rc = run.wait()
    assert rc != 0, run.output()[-4000:]
    assert "exited with status 137: stopping the others" in run.output()
    assert run.leftovers() == [], run.leftovers()
    last = max(_complete_steps(model_dir))
    assert last >= saved + every

    run = launcher(args)
    assert run.wait() == 0, run.output()[-4000:]
    done = _done_lines(run.output())
    assert done == {i: {"start_step": last, "final_step": steps, "preempted": False}
                    for i in (0, 1)}, run.output()[-4000:]
    assert steps in _complete_steps(model_dir)


# ----------------------------------------------------------------------------- inference


@pytest.mark.slow
def test_two_process_infer_writes_the_one_process_candidates(launcher, tmp_path):
    pytest.importorskip("mathft_jax.infer")
    import flax.linen as nn
    import gin
    import jax
    from mathft_jax.convert import checkpoints
    from mathft_jax.models.config import DecoderConfig
    from mathft_jax.models.decoder import init_params

    gin.parse_config_file(str(REPO / TINY_GIN))
    cfg = DecoderConfig()
    checkpoints.save_params(str(tmp_path / "ckpt"),
                            nn.unbox(init_params(cfg, jax.random.PRNGKey(0))))

    def cli(out):
        return [PY, "-m", "mathft_jax.infer", f"--gin_file={TINY_GIN}",
                "--gin_file=gin_configs/infer/synthetic.gin",
                f"--gin_bindings=infer.checkpoint='{tmp_path / 'ckpt'}'",
                f"--gin_bindings=infer.output_path='{out}'", "--gin_bindings=infer.max_problems=8",
                "--gin_bindings=infer.num_samples=2", "--gin_bindings=infer.max_decode_len=16",
                "--gin_bindings=infer.batch_size=8", "--gin_bindings=infer.seed=3"]

    one = launcher(["local", "--processes=1", "--devices_per_process=8", "--",
                    *cli(tmp_path / "one.jsonl")])
    two = launcher(["local", "--processes=2", "--devices_per_process=4", "--",
                    *cli(tmp_path / "two.jsonl")])
    assert two.wait() == 0, two.output()[-4000:]
    assert one.wait() == 0, one.output()[-4000:]
    text_one = (tmp_path / "one.jsonl").read_text()
    assert len(text_one.splitlines()) == 8
    assert (tmp_path / "two.jsonl").read_text() == text_one


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.slow
def test_two_process_pipeline_completes(launcher, tmp_path):
    """The whole recipe (variant mtsf: SSFT, sampling, grading, SCR, MTSF, scoring,
    evaluation) of the seconds-scale smoke config, on 2 processes."""
    pytest.importorskip("mathft_jax.pipeline")
    run = launcher(["local", "--processes=2", "--devices_per_process=1", "--",
                    PY, "-m", "mathft_jax.pipeline", "--gin_file=gin_configs/runs/smoke.gin",
                    f"--gin_bindings=pipeline.run_dir='{tmp_path / 'pipe'}'"])
    assert run.wait() == 0, run.output()[-6000:]
    for stage in ("ssft", "sample_train", "scr_data", "scr", "mtsf", "sample_eval", "score",
                  "evaluate"):
        assert (tmp_path / "pipe" / stage / "DONE.json").exists(), stage
    results = json.loads((tmp_path / "pipe" / "evaluate" / "results.json").read_text())
    assert set(results) == {"ssft", "mtsf"}


@pytest.mark.slow
def test_pipeline_on_a_run_dir_not_shared_by_all_processes_fails_at_start(launcher, tmp_path):
    """Each process given its own local run_dir (as hosts without a shared disk would see a
    local path): an error before any stage, not a hang at a later barrier."""
    command = (f"exec {PY} -m mathft_jax.pipeline --gin_file=gin_configs/runs/smoke.gin "
               f"\"--gin_bindings=pipeline.run_dir='{tmp_path}/pipe_$MATHFT_PROCESS_ID'\"")
    run = launcher(["local", "--processes=2", "--devices_per_process=1", "--",
                    "bash", "-c", command])
    assert run.wait() != 0
    out = run.output()
    assert "is not shared by all 2 processes" in out, out[-4000:]
    assert "[1/8] ssft" not in out


# ----------------------------------------------------------------------------- launcher


def test_launcher_stops_the_others_when_one_fails(launcher, tmp_path):
    script = ('if [ "$MATHFT_PROCESS_ID" = 1 ]; then sleep 1; exit 7; fi; '
              'trap "echo got-TERM; exit 0" TERM; echo started; sleep 60 & wait')
    run = launcher(["local", "--processes=3", "--grace=5", "--", "bash", "-c", script])
    assert run.wait() == 7
    out = run.output()  # the others were stopped (got-TERM), not waited out
    assert "p1 (pid" in out and "exited with status 7: stopping the others" in out
    assert "[p0] got-TERM" in out and "[p2] got-TERM" in out
    assert run.leftovers() == []  # the background `sleep 60`s went with their groups


def _two_children_ignoring_sigterm(launcher):
    """run.sh with two children that report SIGTERM and carry on, once both are up."""
    script = ('trap "echo got-TERM-$MATHFT_PROCESS_ID" TERM; echo ready; '
              'for i in $(seq 300); do sleep 0.2; done')
    run = launcher(["local", "--processes=2", "--grace=120", "--", "bash", "-c", script])
    run.wait_until(lambda: run.output().count("ready") == 2, what="both processes")
    return run


def test_launcher_forwards_sigterm_and_kills_on_a_second_signal(launcher, tmp_path):
    run = _two_children_ignoring_sigterm(launcher)
    run.proc.send_signal(signal.SIGTERM)
    run.wait_until(lambda: "got-TERM-0" in run.output() and "got-TERM-1" in run.output(),
                   what="SIGTERM forwarded")
    assert run.proc.poll() is None  # the children ignore it, so run.sh keeps waiting
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 128 + signal.SIGKILL
    # killed on the second signal, not at the end of the grace period
    assert "second INT: killing every process" in run.output()
    assert "still running after" not in run.output()
    assert run.leftovers() == []


@pytest.mark.parametrize("gap_s", [0.02, 0.06])
def test_a_second_signal_soon_after_the_first_is_not_lost(launcher, gap_s):
    # TERM, then INT tens of milliseconds later, inside one of run.sh's 0.2 s polls. With a
    # foreground `sleep` there bash dropped the INT (59 of 60 times, 10-70 ms apart) and
    # run.sh waited out the grace period. (Two signals within a millisecond can still
    # merge into one; a third then kills.)
    run = _two_children_ignoring_sigterm(launcher)
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(gap_s)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 128 + signal.SIGKILL
    assert "second " in run.output() and "still running after" not in run.output()
    assert run.leftovers() == []


def test_local_sets_coordinator_env_and_device_count(launcher):
    script = 'echo "env $MATHFT_PROCESS_ID/$MATHFT_NUM_PROCESSES $MATHFT_COORDINATOR [$XLA_FLAGS]"'
    run = launcher(["local", "--processes=2", "--devices_per_process=3", "--", "bash", "-c", script],
                   env=_env(XLA_FLAGS="--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"))
    assert run.wait() == 0
    lines = sorted(re.findall(r"\[p(\d)\] env (\d)/(\d) 127\.0\.0\.1:(\d+) \[(.*)\]", run.output()))
    assert [ln[:3] for ln in lines] == [("0", "0", "2"), ("1", "1", "2")]
    assert lines[0][3] == lines[1][3]  # one coordinator port
    assert lines[0][4] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=3"


def _dry(*args) -> list[list[str]]:
    r = subprocess.run([RUN_SH, *args], capture_output=True, text=True, cwd=REPO, timeout=HANG_LIMIT_S)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if line and not line.startswith("#")]


def test_tpu_dry_run_prints_the_gcloud_commands():
    cmd = ["python3", "-m", "mathft_jax.train", "--gin_file=gin_configs/models/palm_1b.gin",
           "--gin_bindings=train.model_dir='gs://bucket/runs/palm 1b'"]
    setup, run = _dry("tpu", "--tpu=my-v4", "--zone=us-central2-b", "--project=proj", "--setup",
                      "--repo=https://github.com/org/mathft_jax.git", "--branch=dev", "--dry_run",
                      "--", *cmd)
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4", "--zone=us-central2-b",
           "--worker=all", "--project=proj"]
    assert setup[:-1] == ssh and run[:-1] == ssh
    assert setup[-1] == (
        "--command=set -e; if [ -d ~/mathft_jax/.git ]; then git -C ~/mathft_jax fetch -q origin "
        "&& git -C ~/mathft_jax checkout -q dev && git -C ~/mathft_jax pull -q --ff-only; "
        "else git clone -q --branch dev https://github.com/org/mathft_jax.git ~/mathft_jax; fi; "
        "cd ~/mathft_jax && python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e .")
    remote = run[-1]
    assert remote.startswith("--command=mkdir -p ~/mathft_jax_logs && cd ~/mathft_jax && { ")
    assert "| tee ~/mathft_jax_logs/$(hostname).log" in remote
    assert "echo $! > ~/mathft_jax_logs/$(hostname).pid" in remote
    # The remote command line, parsed by the worker's shell, is the original command.
    inner = remote[remote.index("{ ") + 2: remote.index(" 2>&1 &")]
    assert shlex.split(inner) == cmd

    (stop,) = _dry("tpu", "--tpu=my-v4", "--zone=us-central2-b", "--stop", "--dry_run")
    assert stop == ssh[:-1] + ["--command=kill -TERM $(cat ~/mathft_jax_logs/$(hostname).pid)"]


def test_tpu_refuses_a_local_model_dir():
    r = subprocess.run([RUN_SH, "tpu", "--tpu=t", "--zone=z", "--dry_run", "--", "python3", "-m",
                        "mathft_jax.train", "--gin_bindings=train.model_dir='/tmp/run'"],
                       capture_output=True, text=True, cwd=REPO, timeout=HANG_LIMIT_S)
    assert r.returncode == 2 and "model_dir must be a gs:// path" in r.stderr


def test_gpu_dry_run_prints_one_command_per_node():
    lines = _dry("gpu", "--nodes=2", "--gpus_per_node=4", "--coordinator=10.0.0.1:1234",
                 "--dry_run", "--", "python", "-m", "mathft_jax.train", "--gin_file=a b.gin")
    assert lines == [["env", "MATHFT_COORDINATOR=10.0.0.1:1234", "MATHFT_NUM_PROCESSES=2",
                      f"MATHFT_PROCESS_ID={i}", "CUDA_VISIBLE_DEVICES=0,1,2,3", "python", "-m",
                      "mathft_jax.train", "--gin_file=a b.gin"] for i in (0, 1)]


def test_help_documents_every_mode():
    r = subprocess.run([RUN_SH, "--help"], capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert r.returncode == 0
    for word in ("local", "tpu", "gpu", "--processes", "--devices_per_process", "--setup",
                 "--dry_run", "--node_rank", "gs://", "SIGTERM"):
        assert word in r.stdout, word


# ----------------------------------------------------------------------------- bad input

INIT = [PY, "-c", "from mathft_jax import distributed; distributed.initialize()"]


def _init_alone(**env):
    """Bounded time: it exits by itself (its 5 s init timeout); the limit only catches a hang."""
    return subprocess.run(INIT, capture_output=True, text=True, timeout=BAD_INPUT_TIMEOUT_S,
                          env=_env(MATHFT_NUM_PROCESSES="2", MATHFT_INIT_TIMEOUT="5", **env))


def test_initialize_rejects_inconsistent_arguments_before_touching_jax():
    from mathft_jax.core import distributed
    with pytest.raises(distributed.DistributedInitError, match="not in \\[0, 2\\)"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(distributed.DistributedInitError, match="needs a coordinator address"):
        distributed.initialize(None, num_processes=2, process_id=0)
    assert not distributed._initialized


def test_wrong_coordinator_address_fails_clearly_in_bounded_time():
    r = _init_alone(MATHFT_COORDINATOR=f"127.0.0.1:{_free_port()}", MATHFT_PROCESS_ID="1")
    assert r.returncode != 0 and "nothing accepted connections at the coordinator" in r.stderr
    r = _init_alone(MATHFT_COORDINATOR="no-such-host.invalid:1234", MATHFT_PROCESS_ID="1")
    assert r.returncode != 0 and "does not resolve" in r.stderr
    r = _init_alone(MATHFT_COORDINATOR="localhost", MATHFT_PROCESS_ID="1")
    assert r.returncode != 0 and "is not host:port" in r.stderr


def test_missing_peer_fails_clearly_in_bounded_time():
    r = _init_alone(MATHFT_COORDINATOR=f"127.0.0.1:{_free_port()}", MATHFT_PROCESS_ID="0")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "not all processes joined the coordinator" in r.stderr


def test_port_in_use_fails_clearly_in_bounded_time(launcher):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = launcher(["local", "--processes=2", f"--port={port}", "--grace=5", "--", *INIT])
        assert run.wait(timeout=BAD_INPUT_TIMEOUT_S) != 0
    out = run.output()
    assert f"coordinator port {port} is already in use" in out
    assert "[run.sh] p0 (pid" in out and run.leftovers() == []


# ----------------------------------------------------------------------------- multislice


def test_multislice_mesh_puts_only_the_dcn_axis_across_slices():
    """make_mesh.dcn_data=2 on two 4-chip slices: the slice index varies along `data`
    only, so fsdp/tensor collectives stay on ICI. (Fake devices: only their slice_index
    matters to create_hybrid_device_mesh.)"""
    import dataclasses
    from mathft_jax.models import partitioning

    @dataclasses.dataclass(frozen=True)
    class FakeDevice:
        id: int
        slice_index: int
        platform: str = "cpu"
        device_kind: str = "cpu"

    devices = [FakeDevice(i, i // 4) for i in range(8)]
    mesh = partitioning.make_mesh(fsdp=2, tensor=2, dcn_data=2, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices == np.arange(2)[:, None, None]).all(), slices
    mesh = partitioning.make_mesh(fsdp=-1, dcn_fsdp=2, devices=devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    # DCN-major: the first 4 fsdp positions are slice 0, the next 4 slice 1.
    assert list(np.vectorize(lambda d: d.slice_index)(mesh.devices)[0, :, 0]) == [0] * 4 + [1] * 4
