"""Knobs that could bring a program that does not fit under HBM, each compiled again.

A knob is gin bindings added to the run's (scoped to the program's stage where the setting
is per stage): more micro-batches, a remat policy that saves less, the output projection
applied a chunk of positions at a time, Adafactor's factored moments, fewer decode slots,
or a tensor-parallel mesh axis. The planner compiles the program again with each and
reports its peak memory; the knobs are independent (not combined), so the report says
which single change is enough.
"""
from __future__ import annotations

from typing import Sequence

from mathft_jax.planning import planner
from mathft_jax.planning.chips import Topology
from mathft_jax.planning.stages import Program


def candidates(program: Program, setup: planner.Setup) -> list[tuple[str, list]]:
    """(what, gin bindings) of each knob that applies to the program."""
    stage, cfg = program.stage, setup.cfg
    configs = setup.run_configs.get(stage, {})
    out = []
    if program.training:
        train = configs.get("train") or configs.get("grpo")
        field = "train" if "train" in configs else "grpo"
        if train is not None and field == "train" and not train.pack:
            pass  # unpacked units: micro-batches must keep whole units, tried below all the same
        if train is not None and cfg.remat_policy != "full":
            out.append(("remat_policy='full'", ["DecoderConfig.remat_policy = 'full'"]))
        if train is not None:
            rows = train.batch_size if field == "train" else (
                train.prompts_per_iteration * train.num_generations)
            for factor in (2, 4):
                mb = train.micro_batches * factor
                if rows % (mb * setup.partitioner.batch_shards) == 0:
                    out.append((f"micro_batches={mb}", [f"{stage}/{field}.micro_batches = {mb}"]))
            name = getattr(train.objective, "__name__", "")
            if name and field == "train":
                out.append((f"{name}.loss_chunk=256", [f"{stage}/{name}.loss_chunk = 256"]))
            out.append(("adafactor", [f"{stage}/make_optimizer.name = 'adafactor'"]))
    else:
        infers = [c for k, c in configs.items() if k.startswith("infer")]
        if infers and infers[0].engine == "continuous":
            slots = infers[0].slots or infers[0].batch_size * infers[0].num_samples
            for factor in (2, 4):
                if slots // factor >= setup.partitioner.batch_shards:
                    out.append((f"slots={slots // factor}",
                                [f"{stage}/infer.slots = {slots // factor}"]))
    tensor = setup.partitioner.mesh.shape["tensor"]
    for t in (2, 4):
        if t > tensor and setup.partitioner.mesh.size % t == 0 and cfg.num_heads % t == 0 \
                and cfg.mlp_dim % t == 0 and cfg.vocab_size % t == 0:
            out.append((f"mesh tensor={t}", [f"make_mesh.tensor = {t}"]))
    return out


def try_knobs(program: Program, plan: planner.ProgramPlan, setup: planner.Setup,
              topology: Topology, gin_files: Sequence[str], bindings: Sequence[str],
              prompt_len: int, devices: list) -> list[dict]:
    """Compile `program` again under each knob; the original configuration is parsed back
    afterwards (later programs lower under it)."""
    results = []
    try:
        for what, extra in candidates(program, setup):
            try:
                s = planner.setup(gin_files, list(bindings) + extra, devices, topology.slices)
                again = next(p for p in planner.programs(s, [program.stage], prompt_len)
                             if p.key == program.key)
                knob_plan = planner.plan_program(again, topology,
                                                 list(s.partitioner.mesh.devices.flat))
                results.append({"knob": what, "bindings": extra, "fits": knob_plan.fits,
                                "peak_bytes": knob_plan.measurement.peak_bytes,
                                "temp_bytes": knob_plan.measurement.temp_bytes,
                                "spare": knob_plan.spare,
                                "step_s": knob_plan.roofline.step_s})
            except Exception as error:  # noqa: BLE001 (a knob that cannot apply is reported)
                results.append({"knob": what, "bindings": extra, "error": str(error)[:300]})
    finally:
        planner.setup(gin_files, bindings, devices, topology.slices)
    return results
