"""Plan a run on TPU slices from a CPU box: `python -m mathft_jax.plan`.

    python -m mathft_jax.plan --gin_file=gin_configs/models/llama3_8b.gin \\
        --gin_file=gin_configs/runs/mtsf_math.gin --topology=v5p:2x2x2 [--slices=2] \\
        [--stages=ssft,sample_eval] [--output=plan.json]

Each stage's programs are compiled for the topology by XLA's TPU compiler (libtpu's
compile-only devices; nothing runs), with the run's own mesh, rules, remat, micro-batches,
loss chunking, optimizer and dtypes (planning/stages.py). Per chip it prints memory against
HBM and whether it fits, FLOPs (XLA's, the HLO's per loop trip, the analytic count), the
collectives and a roofline, and writes it all as JSON. Exit status 1 when any program does
not fit, after the knobs that would bring it under, each compiled again (`--knobs`).
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/entry.py)
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.plan")


import sys

from absl import flags

from mathft_jax.core import atomic, cli_errors, entry
from mathft_jax.planning import compile as compile_lib, knobs, planner, report, search
from mathft_jax.planning.chips import Topology, TopologyError

TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x2", "TPU slice: <chip>:<dims> with chip "
                               "v4, v5e, v5p or v6e, e.g. v5p:4x4x4, v5e:2x2.")
SLICES = flags.DEFINE_integer("slices", 1, "Slices joined over DCN (multislice).")
STAGES = flags.DEFINE_list("stages", [], "Pipeline stages to plan (default: every stage of "
                           "pipeline.variant that runs a device program).")
OUTPUT = flags.DEFINE_string("output", None, "Write the plan as JSON here.")
HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Also write each program's compiled HLO text "
                               "here (<stage>_<program>.hlo.txt).")
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 512, "Prompt tokens of sampling and scoring "
                                  "(rounded up to a power of two, as the samplers pad).")
SEARCH = flags.DEFINE_bool("search", False, "For each planned stage (default: ssft), the "
                           "(data, fsdp, tensor) meshes of the slice and the largest batch "
                           "that fits each, ranked by roofline tokens/s.")
KNOBS = flags.DEFINE_bool("knobs", True, "For a program that does not fit, compile the knobs "
                          "that could bring it under and report each.")


def main(argv):
    del argv
    chosen = compile_lib.quiet_libtpu()
    if not compile_lib.libtpu_available():
        raise cli_errors.UsageError("the planner compiles with libtpu: pip install "
                                    "'mathft_jax[tpu]' (or jax[tpu])")
    try:
        topology = Topology.parse(TOPOLOGY.value, SLICES.value)
    except TopologyError as error:
        raise cli_errors.UsageError(str(error)) from None
    print(report.environment_line(chosen), file=sys.stderr, flush=True)
    devices = compile_lib.abstract_devices(topology)
    files, bindings = entry.GIN_FILES.value, entry.GIN_BINDINGS.value
    setup = planner.setup(files, bindings, devices, topology.slices, entry.GIN_SEARCH_PATHS.value)
    available = [s for s in setup.stages if s not in planner.stages_lib.HOST_ONLY]
    try:
        stages = planner.check_stages(STAGES.value or available, available)
    except ValueError as error:
        raise cli_errors.UsageError(str(error)) from None
    if SEARCH.value:
        return _search(files, bindings, topology, devices, STAGES.value or ["ssft"], chosen)
    mesh_devices = list(setup.partitioner.mesh.devices.flat)
    print(report.header(topology, setup), flush=True)
    results = []
    for program in planner.programs(setup, stages, PROMPT_LEN.value):
        plan = planner.plan_program(program, topology, mesh_devices, HLO_DIR.value)
        print(report.row(plan), flush=True)
        result = plan.to_json()
        if not plan.fits and KNOBS.value:
            result["knobs"] = knobs.try_knobs(program, plan, setup, topology, files, bindings,
                                              PROMPT_LEN.value, devices)
            for line in report.knob_lines(result["knobs"]):
                print(line, flush=True)
        results.append(result)
    print(report.details(results), flush=True)
    out = {"topology": str(topology), "chip": report.chip_json(topology.chip),
           "mesh": dict(setup.partitioner.mesh.shape), "gin_files": list(files),
           "gin_bindings": list(bindings), "libtpu_env_set": chosen, "programs": results}
    if OUTPUT.value:
        atomic.write_json(OUTPUT.value, out, indent=1)
    if not all(r["fits"] for r in results):
        sys.exit(1)


def _search(files, bindings, topology, devices, stages, chosen) -> None:
    out = {"topology": str(topology), "libtpu_env_set": chosen, "search": {}}
    for stage in stages:
        ranked = search.search(files, bindings, topology, devices, stage, PROMPT_LEN.value)
        out["search"][stage] = ranked
        for line in report.search_lines(stage, ranked):
            print(line, flush=True)
    if OUTPUT.value:
        atomic.write_json(OUTPUT.value, out, indent=1)
