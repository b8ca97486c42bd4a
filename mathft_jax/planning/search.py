"""`plan --search`: the meshes and batch sizes that fit a slice, ranked by roofline tokens/s.

For one stage, every (data, fsdp, tensor) split of a slice's chips that the model allows
(tensor divides heads, mlp and vocabulary; fsdp divides d_model), and for each the largest
batch that fits: the stage's rows (`train.batch_size`, GRPO's prompts, or infer's decode
`slots`) doubled from the smallest the mesh can split until a compile no longer fits (at most
`max_doublings` times). Every point is a real compile of the stage's programs; the stage
fits when all of them do, and is as fast as its slowest program allows per token.
"""
from __future__ import annotations

from typing import Sequence

from mathft_jax.planning import planner
from mathft_jax.planning.chips import Topology


def mesh_splits(chips: int) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) with data x fsdp x tensor = chips, tensor and data powers of two."""
    out = []
    tensor = 1
    while tensor <= chips:
        data = 1
        while data * tensor <= chips:
            if chips % (data * tensor) == 0:
                out.append((data, chips // (data * tensor), tensor))
            data *= 2
        tensor *= 2
    return out


def batch_binding(stage: str, setup: planner.Setup) -> tuple[str, int]:
    """The binding that sizes the stage's batch, and its smallest value on this mesh."""
    configs = setup.run_configs[stage]
    shards = setup.partitioner.batch_shards
    if "train" in configs:
        unit = configs["train"].micro_batches * configs["train"].rows_per_group
        return f"{stage}/train.batch_size", unit * shards
    if "grpo" in configs:
        return f"{stage}/grpo.prompts_per_iteration", shards
    return f"{stage}/infer.slots", shards


def search(gin_files: Sequence[str], bindings: Sequence[str], topology: Topology, devices: list,
           stage: str, prompt_len: int, max_doublings: int = 6) -> list[dict]:
    results = []
    chips = topology.chips_per_slice
    for data, fsdp, tensor in mesh_splits(chips):
        mesh = [f"make_mesh.data = {data}", f"make_mesh.fsdp = {fsdp}",
                f"make_mesh.tensor = {tensor}"]
        try:
            setup = planner.setup(gin_files, list(bindings) + mesh, devices, topology.slices)
        except ValueError as error:  # the model does not split this way
            results.append({"mesh": (data, fsdp, tensor), "error": str(error)[:200]})
            continue
        name, size = batch_binding(stage, setup)
        best = None
        for _ in range(max_doublings + 1):
            point = _plan_point(gin_files, list(bindings) + mesh + [f"{name} = {size}"],
                                topology, devices, stage, prompt_len)
            if point is None or not point["fits"]:
                break
            best = {"mesh": (data, fsdp, tensor), "binding": f"{name} = {size}", **point}
            size *= 2
        results.append(best or {"mesh": (data, fsdp, tensor), "error": "no batch fits"})
    fitting = sorted((r for r in results if "error" not in r), key=lambda r: -r["tokens_per_s"])
    return fitting + [r for r in results if "error" in r]


def _plan_point(gin_files, bindings, topology, devices, stage, prompt_len):
    try:
        setup = planner.setup(gin_files, bindings, devices, topology.slices)
        plans = [planner.plan_program(p, topology, list(setup.partitioner.mesh.devices.flat))
                 for p in planner.programs(setup, [stage], prompt_len)]
    except ValueError:
        return None
    slowest = max(plans, key=lambda p: p.roofline.step_s / max(p.roofline.tokens, 1))
    return {"fits": all(p.fits for p in plans),
            "peak_gb": max(p.measurement.peak_bytes for p in plans) / 1e9,
            "step_s": slowest.roofline.step_s, "tokens_per_s": slowest.roofline.tokens_per_s,
            "mfu_bound": slowest.roofline.mfu_bound, "bound_by": slowest.roofline.bound_by,
            "programs": [p.key for p in plans]}
