"""The planner compiles each stage's programs for TPU slices with libtpu (no TPU needed).

Skipped where libtpu is absent (`pip install -e '.[test]'` brings it, through the `tpu`
extra). Small shapes keep the compiles to seconds: the tiny model, rows of 64 tokens.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mathft_jax.planning import compile as compile_lib, planner
from mathft_jax.planning.chips import Topology

pytestmark = pytest.mark.skipif(
    not compile_lib.libtpu_available(),
    reason="libtpu is not installed: the planner's TPU compiles need it (pip install -e '.[tpu]')")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "gin_configs/models/tiny.gin"
# Every stage's settings small: rows of 64 tokens, 4 samples of 16 tokens.
SMALL_SHAPES = ["train.batch_size = 8", "train.sequence_length = 64", "infer.num_samples = 4",
                "infer.max_decode_len = 16", "infer.batch_size = 2",
                "score_records.batch_size = 8", "grpo.prompts_per_iteration = 2",
                "grpo.num_generations = 4", "grpo.max_decode_len = 16",
                "grpo.sequence_length = 64", "make_preferences.batch_size = 8",
                "dpo/train.batch_size = 8"]
PROMPT_LEN = 32


def _plan(model: str, run: str, topology: str, bindings=(), stages=None):
    compile_lib.quiet_libtpu()
    topo = Topology.parse(topology)
    devices = compile_lib.abstract_devices(topo)
    setup = planner.setup([model, f"gin_configs/runs/{run}.gin"], SMALL_SHAPES + list(bindings),
                          devices)
    wanted = stages or [s for s in setup.stages if s not in planner.stages_lib.HOST_ONLY]
    mesh_devices = list(setup.partitioner.mesh.devices.flat)
    return setup, {p.key: planner.plan_program(p, topo, mesh_devices)
                   for p in planner.programs(setup, wanted, PROMPT_LEN)}


@pytest.fixture(scope="module")
def tiny_ssft():
    return _plan(TINY, "ssft", "v5e:2x2", stages=["ssft"])


def test_train_step_flops_match_the_analytic_count(tiny_ssft):
    """XLA counts an unrolled step's FLOPs within 5% of models.sizes (6N + attention: the
    matmuls, no elementwise work); the HLO's matmul count is the analytic count."""
    _, plans = tiny_ssft
    plan = plans["ssft/train_step"]
    assert plan.measurement.xla_flops == pytest.approx(plan.analytic_flops, rel=0.05)
    assert plan.measurement.hlo.matmul_flops == pytest.approx(plan.analytic_flops, rel=0.01)
    assert plan.fits and 0 < plan.measurement.peak_bytes < 0.01 * plan.hbm_bytes


def test_scanned_micro_batched_step_counted_per_trip():
    """XLA's cost analysis counts a loop body once (layers scanned, micro-batches scanned:
    8x too few here); the planner's HLO count multiplies by the trips."""
    _, plans = _plan(TINY, "ssft", "v5e:2x2", stages=["ssft"],
                     bindings=["DecoderConfig.scan_layers = True",
                               "ssft/train.micro_batches = 2"])
    plan = plans["ssft/train_step"]
    assert plan.measurement.xla_flops < 0.2 * plan.analytic_flops
    assert plan.measurement.hlo.matmul_flops == pytest.approx(plan.analytic_flops, rel=0.01)
    assert plan.measurement.hlo.unknown_trip_counts == []


def test_no_parameter_replicated_over_fsdp(tiny_ssft):
    """Every parameter the rules shard over fsdp arrives at the compiled step sharded so."""
    setup, _ = tiny_ssft
    program = planner.programs(setup, ["ssft"], PROMPT_LEN)[0]
    compiled = program.lower().compile()
    state_shardings = compiled.input_shardings[0][0]
    targets = setup.partitioner.param_targets(setup.cfg)
    checked = 0
    for got, want in zip(jax.tree_util.tree_leaves(state_shardings.params),
                         jax.tree_util.tree_leaves(targets)):
        if "fsdp" in jax.tree_util.tree_leaves(tuple(want.sharding.spec)):
            checked += 1
            assert got.shard_shape(want.shape) == want.sharding.shard_shape(want.shape), (
                got, want.sharding)
            assert got.shard_shape(want.shape) != want.shape
    assert checked >= 4 * setup.cfg.num_layers  # every layer's matrices


def test_planned_argument_bytes_are_what_the_run_allocates():
    """On 8 fake CPU devices, the planned step's per-device argument bytes equal the bytes
    of the state and batch that `train` allocates there."""
    from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
    from mathft_jax.training.trainer import abstract_state, init_state
    devices = jax.devices()
    assert len(devices) == 8
    setup = planner.setup([TINY, "gin_configs/runs/ssft.gin"], SMALL_SHAPES, devices)
    program = planner.programs(setup, ["ssft"], PROMPT_LEN)[0]
    planned = planner.plan_program(program, Topology.parse("v5e:2x4"), devices).measurement
    optimizer = make_optimizer(schedule=learning_rate_schedule(train_steps=10))
    _, shardings = abstract_state(setup.cfg, optimizer, setup.partitioner)
    state = init_state(setup.cfg, optimizer, shardings, seed=0)
    train = setup.run_configs["ssft"]["train"]
    batch = {k: setup.partitioner.to_global(np.zeros(v.shape, v.dtype)) for k, v in
             planner.stages_lib.abstract_batch(setup.partitioner, train.batch_size,
                                               train.sequence_length).items()}
    on_first = sum(s.data.nbytes for x in jax.tree_util.tree_leaves((state, batch))
                   for s in x.addressable_shards if s.device == devices[0])
    assert planned.input_bytes == on_first
    # XLA's own figure leaves out the one feature the step never reads
    unused = train.batch_size * train.sequence_length * 4 // 8  # decoder_causal_attention
    assert planned.argument_bytes == on_first - unused


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_every_stage_compiles(topology):
    """Every stage of every variant (mtsf: ssft, sampling, scr, mtsf, score; dpo: the
    reference log-likelihoods and DPO; grpo: rollout, policy statistics, GRPO's step)
    compiles for the slice and fits; train steps' FLOPs match the analytic count. A stage
    that several variants share (ssft, sampling) is compiled once: the same program."""
    keys, planned = set(), set()
    for run in ("mtsf", "dpo", "grpo"):
        setup = planner.setup([TINY, f"gin_configs/runs/{run}.gin"], SMALL_SHAPES,
                              compile_lib.abstract_devices(Topology.parse(topology)))
        new = [s for s in setup.stages if s not in set(planner.stages_lib.HOST_ONLY) | planned]
        planned |= set(new)
        _, plans = _plan(TINY, run, topology, stages=new)
        for key, plan in plans.items():
            keys.add(key)
            assert plan.fits, key
            assert plan.roofline.step_s > 0 and plan.measurement.hlo.unknown_trip_counts == []
            if key.endswith("train_step"):
                assert plan.measurement.hlo.matmul_flops == pytest.approx(
                    plan.analytic_flops, rel=0.05), key
    assert {"ssft/train_step", "scr/train_step", "mtsf/train_step", "dpo/train_step",
            "grpo/train_step", "sample_eval/prefill", "sample_eval/decode_chunk",
            "score/label_logprobs", "dpo_data/reference_log_likelihoods",
            "grpo/rollout_generate", "grpo/policy_stats"} <= keys


def test_a_stage_that_cannot_fit_exits_non_zero(tmp_path):
    """A model too big for the slice: reported as not fitting, by how much, exit 1."""
    out = tmp_path / "plan.json"
    big = ["--gin_bindings=DecoderConfig.d_model = 4096",
           "--gin_bindings=DecoderConfig.mlp_dim = 65536",
           "--gin_bindings=DecoderConfig.num_layers = 8",  # 6.5B parameters, 78 GB with Adam
           "--gin_bindings=DecoderConfig.scan_layers = True"]
    # Without the libtpu answers an in-process plan of another test set in this worker.
    from mathft_jax.planning.compile import LIBTPU_QUIET_ENV
    env = {k: v for k, v in os.environ.items() if k not in LIBTPU_QUIET_ENV}
    env.update(PYTHONPATH=REPO, XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-m", "mathft_jax.plan", f"--gin_file={TINY}",
         "--gin_file=gin_configs/runs/ssft.gin", *big, "--topology=v5e:2x2", "--stages=ssft",
         "--noknobs", f"--output={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "ssft/train_step" in proc.stdout and " NO " in proc.stdout
    assert "TPU_WORKER_HOSTNAMES=localhost" in proc.stderr  # says what it set for libtpu
    assert "Failed to find host bounds" not in proc.stderr  # and libtpu stayed quiet
    import json
    plan = json.loads(out.read_text())["programs"][0]
    assert not plan["fits"] and plan["spare"] < 0
    assert plan["memory"]["peak_bytes"] > 16e9  # XLA:TPU's own count of the temporaries
    assert "RESOURCE_EXHAUSTED" in plan["memory"]["out_of_memory"]


@pytest.mark.slow
def test_knobs_are_compiled_again_and_name_what_fits():
    """On a chip with a little less HBM than a step needs (its [512, 512] attention scores
    dominate), the knobs are each compiled: more micro-batches or full remat bring it under,
    a tensor axis does not; the plan says which."""
    import dataclasses
    from mathft_jax.planning import knobs
    big = ["train.batch_size = 32", "train.sequence_length = 512"]
    setup, plans = _plan(TINY, "ssft", "v5e:2x2", stages=["ssft"], bindings=big)
    plan = plans["ssft/train_step"]
    topo = Topology.parse("v5e:2x2")
    topo = dataclasses.replace(topo, chip=dataclasses.replace(
        topo.chip, hbm_bytes=0.95 * plan.measurement.peak_bytes))
    program = planner.programs(setup, ["ssft"], PROMPT_LEN)[0]
    again = planner.plan_program(program, topo, list(setup.partitioner.mesh.devices.flat))
    assert not again.fits and again.spare == pytest.approx(1 - 1 / 0.95)
    tried = knobs.try_knobs(program, again, setup, topo, [TINY, "gin_configs/runs/ssft.gin"],
                            SMALL_SHAPES + big, PROMPT_LEN, compile_lib.abstract_devices(topo))
    by_name = {k["knob"]: k for k in tried}
    assert {"remat_policy='full'", "micro_batches=2", "micro_batches=4", "adafactor",
            "mesh tensor=2"} <= set(by_name)
    for name in ("remat_policy='full'", "micro_batches=2", "micro_batches=4"):
        assert by_name[name]["fits"] and by_name[name]["temp_bytes"] < 0.5 * (
            plan.measurement.temp_bytes), name
    assert not by_name["mesh tensor=2"]["fits"]
    # the run's own configuration is parsed back: the step plans as before
    assert planner.plan_program(planner.programs(setup, ["ssft"], PROMPT_LEN)[0], topo,
                                list(setup.partitioner.mesh.devices.flat)
                                ).measurement.peak_bytes == plan.measurement.peak_bytes


@pytest.mark.slow
def test_search_ranks_meshes_by_tokens_per_second():
    from mathft_jax.planning import search
    topo = Topology.parse("v5e:2x2")
    devices = compile_lib.abstract_devices(topo)
    ranked = search.search([TINY, "gin_configs/runs/ssft.gin"], SMALL_SHAPES, topo, devices,
                           "ssft", PROMPT_LEN, max_doublings=1)
    fitting = [r for r in ranked if "error" not in r]
    assert {r["mesh"] for r in ranked} == set(search.mesh_splits(4))
    assert fitting and all(r["fits"] for r in fitting)
    speeds = [r["tokens_per_s"] for r in fitting]
    assert speeds == sorted(speeds, reverse=True)
    # the largest batch tried: 2 doublings of the smallest the mesh splits
    assert all(r["binding"].startswith("ssft/train.batch_size") for r in fitting)


def test_mesh_splits():
    from mathft_jax.planning import search
    assert search.mesh_splits(4) == [(1, 4, 1), (2, 2, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2),
                                     (1, 1, 4)]
