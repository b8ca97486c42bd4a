"""Plan a run on a TPU slice: compile each stage's programs for it, measure, judge.

`plan(gin_files, bindings, topology, stages)` parses the run's gin configuration (as every
entry point does), builds the mesh from libtpu's compile-only devices with the project's
`make_mesh` and `Partitioner`, takes each stage's settings from the pipeline
(`pipeline.STAGES[stage].configs`), compiles every program (`planning.stages`) and returns, per
program and per chip: memory against the chip's HBM, XLA's and the HLO's FLOPs and bytes
beside the analytic count, collectives, the roofline, and whether it fits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import gin

from mathft_jax import pipeline
from mathft_jax.core import gin_utils, provenance
from mathft_jax.models import partitioning
from mathft_jax.models.config import DecoderConfig
from mathft_jax.planning import compile as compile_lib, stages as stages_lib
from mathft_jax.planning.chips import Topology
from mathft_jax.planning.roofline import Roofline

PLACEHOLDER_RUN_DIR = "planned-run"  # stage settings name paths in it; nothing is written


@dataclasses.dataclass
class ProgramPlan:
    key: str
    measurement: compile_lib.Measurement
    roofline: Roofline
    analytic_flops: float  # per chip per call
    hbm_bytes: float  # the chip's

    @property
    def fits(self) -> bool:
        return self.measurement.peak_bytes <= self.hbm_bytes

    @property
    def spare(self) -> float:
        """The share of HBM left at the program's peak (negative: over by that share)."""
        return 1.0 - self.measurement.peak_bytes / self.hbm_bytes

    def to_json(self) -> dict:
        return {"program": self.key, "fits": self.fits, "hbm_bytes": self.hbm_bytes,
                "spare": self.spare, "analytic_flops": self.analytic_flops,
                "xla_flops_vs_analytic": _ratio(self.measurement.xla_flops, self.analytic_flops),
                "hlo_flops_vs_analytic": _ratio(self.measurement.hlo.matmul_flops,
                                                self.analytic_flops),
                "memory": self.measurement.to_json(), "roofline": self.roofline.to_json()}


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


@dataclasses.dataclass
class Setup:
    """What one gin configuration plans with."""
    cfg: DecoderConfig
    partitioner: partitioning.Partitioner
    run_configs: dict  # {stage: pipeline.STAGES[stage].configs(ctx)}
    stages: tuple  # the variant's stages


def setup(gin_files: Sequence[str], bindings: Sequence[str], devices: list,
          slices: int = 1, search_paths: Sequence[str] = ()) -> Setup:
    """Parse the run's gin configuration and build what its stages run with, on `devices`."""
    gin.clear_config()
    gin_utils.parse_gin(gin_files, bindings, search_paths)
    cfg = DecoderConfig().validate()
    mesh = _mesh(devices, slices)
    partitioner = partitioning.Partitioner.create(cfg, mesh)
    config = pipeline.PipelineConfig(run_dir=PLACEHOLDER_RUN_DIR).validate()
    ctx = pipeline.Context(config, pipeline.Run(config.run_dir), config.stages)
    with provenance.unrecorded():
        run_configs = {stage: pipeline.STAGES[stage].configs(ctx) for stage in config.stages}
    return Setup(cfg, partitioner, run_configs, config.stages)


def _mesh(devices: list, slices: int):
    """`make_mesh` as gin configures it; several slices tile the data axis over DCN unless
    gin says how (`make_mesh.dcn_*`)."""
    dcn = math.prod(_query(f"make_mesh.dcn_{axis}", 1) for axis in partitioning.MESH_AXES)
    if slices > 1 and dcn == 1:
        return partitioning.make_mesh(devices=devices, dcn_data=slices)
    if dcn != slices:
        raise ValueError(f"make_mesh.dcn_* multiply to {dcn} slices, --slices={slices}")
    return partitioning.make_mesh(devices=devices)


def _query(name: str, default):
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def programs(s: Setup, stages: Sequence[str], prompt_len: int) -> list:
    out = []
    for stage in stages:
        out += stages_lib.stage_programs(stage, s.run_configs, s.cfg, s.partitioner, prompt_len)
    return out


def plan_program(program: stages_lib.Program, topology: Topology, devices: list,
                 hlo_dir: Optional[str] = None) -> ProgramPlan:
    """Compile one program and judge it against the chip (its HLO text into `hlo_dir`)."""
    hlo_path = (None if hlo_dir is None else
                f"{hlo_dir}/{program.key.replace('/', '_')}.hlo.txt")
    m = compile_lib.measure(program.lower(), devices, program.loop_trips,
                            program.lower.input_bytes, hlo_path)
    chips = topology.num_chips
    analytic = program.model_flops / chips
    roof = Roofline.of(topology.chip, m.hlo.matmul_flops, m.hlo.hbm_bytes, m.hlo.ici_bytes,
                       m.hlo.dcn_bytes, analytic, program.tokens)
    return ProgramPlan(program.key, m, roof, analytic, topology.chip.hbm_bytes)


def check_stages(wanted: Sequence[str], available: Sequence[str]) -> list:
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"--stages: {unknown} not in the run's variant ({', '.join(available)})")
    return list(wanted)
