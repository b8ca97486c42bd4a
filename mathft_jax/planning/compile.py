"""Compile a program for TPU chips that are not here: libtpu's compile-only devices.

`abstract_devices(topology)` asks libtpu for a topology's devices (`jax.experimental.
topologies`, as MaxText's train_compile.py does); a mesh built from them by the project's
own `make_mesh` lowers and compiles real programs with XLA's TPU compiler, and nothing runs.
`measure(lowered)` compiles and reads per chip what XLA says (memory and cost analysis) and
what the HLO says (planning.hlo).

On a machine without TPU, libtpu looks for the TPU host it would run on (the accelerator type,
the worker addresses, the GCE metadata server) and prints errors when it finds none.
`LIBTPU_QUIET_ENV` answers those questions for a single compile-only host; `quiet_libtpu()`
sets each one the user has not set, before libtpu loads, and returns what it set so the
planner can say so.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Optional

from mathft_jax.planning import hlo
from mathft_jax.planning.chips import Topology

# libtpu's start-up questions, answered for a compile-only host (no TPU to find).
LIBTPU_QUIET_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",  # no GCE metadata server to ask for the TPU's identity
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",  # any valid type: the topology is given per compile
    "TPU_WORKER_HOSTNAMES": "localhost",  # one worker: this process
    "TPU_WORKER_ID": "0",
    # No TPU is claimed: several planners (test workers, a benchmark) may compile at once
    # instead of failing on libtpu's one-process lock file.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def quiet_libtpu() -> dict:
    """Set LIBTPU_QUIET_ENV's variables the user has not set; returns those set."""
    chosen = {k: v for k, v in LIBTPU_QUIET_ENV.items() if k not in os.environ}
    os.environ.update(chosen)
    return chosen


def libtpu_available() -> bool:
    from jax._src import xla_bridge  # noqa: PLC0415 (the one place JAX says where libtpu is)
    return xla_bridge.get_tpu_library_path() is not None


def abstract_devices(topology: Topology) -> list:
    """libtpu's compile-only devices of `topology` (all its slices)."""
    import jax  # noqa: PLC0415
    from jax.experimental.topologies import get_topology_desc  # noqa: PLC0415
    # JAX's persistent compilation cache cannot hold executables of compile-only devices
    # (reading one back needs a TPU client): this process compiles for them uncached.
    jax.config.update("jax_enable_compilation_cache", False)
    chip = topology.chip
    dims3 = tuple(topology.dims) + (1,) * (3 - len(topology.dims))
    # A slice wraps around (a torus) along axes of a full 4-chip cube side (3D chips) or a
    # full 16-chip side (2D pods), as Cloud TPU slices do.
    full = 4 if chip.ici_links == 6 else 16
    wrap = tuple(d >= full and d % full == 0 for d in dims3)
    kwargs = {"chip_config_name": chip.chip_config, "wrap": wrap}
    if topology.slices > 1:
        kwargs["num_slices"] = topology.slices
    return list(get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                  **kwargs).devices)


@dataclasses.dataclass
class Measurement:
    """One compiled program, per chip."""
    input_bytes: float  # the arguments as the run allocates them (unused ones included)
    argument_bytes: float  # the arguments the compiled program takes
    output_bytes: float
    alias_bytes: float
    temp_bytes: float
    generated_code_bytes: float
    xla_flops: float  # cost_analysis: while bodies counted once
    xla_bytes: float
    hlo: hlo.Analysis  # while bodies counted per trip
    compile_s: float
    # XLA:TPU's refusal when the program does not fit (then only the inputs and the
    # temporaries it says it needs are known, and the HLO is empty)
    out_of_memory: str = ""

    @property
    def peak_bytes(self) -> float:
        """What the program holds at its peak: its inputs, outputs that do not reuse an
        argument's buffer (donation), temporaries and the code."""
        return (max(self.input_bytes, self.argument_bytes) + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.generated_code_bytes)

    def to_json(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "hlo"}
        return {**out, "peak_bytes": self.peak_bytes, "hlo": self.hlo.to_json()}


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _exhausted_temporaries(message: str) -> Optional[float]:
    """The temporaries XLA:TPU says a program needs when it refuses it for HBM."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    match = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("inf")


def measure(lowered, devices: Optional[list] = None, loop_trips: Optional[dict] = None,
            input_bytes: float = 0.0, hlo_path: Optional[str] = None) -> Measurement:
    """Compile `lowered` and read its per-chip memory, cost and HLO analysis. `devices`: the
    program's device order (its mesh's), which tells each device's slice; `loop_trips`: the
    trip counts of its data-dependent loops (`hlo.Module.multiplicities`); `input_bytes`:
    its arguments' bytes on one device as the caller holds them; `hlo_path`: where to keep
    the compiled HLO text."""
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as error:  # noqa: BLE001 (XLA:TPU refuses a program over HBM)
        temp = _exhausted_temporaries(str(error))
        if temp is None:
            raise
        return Measurement(input_bytes, input_bytes, 0.0, 0.0, temp, 0.0, 0.0, 0.0,
                           hlo.Analysis(0.0, {}, 0.0, {}, [], []),
                           time.perf_counter() - t0, str(error).splitlines()[0][:300])
    seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    slices = [getattr(d, "slice_index", 0) or 0 for d in (devices or [])]
    text = compiled.as_text()
    if hlo_path:
        from mathft_jax.core import atomic  # noqa: PLC0415
        atomic.write_text(hlo_path, text)
    analysis = hlo.analyse(text, lambda i: slices[i] if i < len(slices) else 0,
                           loop_trips)
    return Measurement(
        input_bytes=input_bytes, argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        generated_code_bytes=memory.generated_code_size_in_bytes,
        xla_flops=float(cost.get("flops", 0.0)), xla_bytes=float(cost.get("bytes accessed", 0.0)),
        hlo=analysis, compile_s=seconds)
