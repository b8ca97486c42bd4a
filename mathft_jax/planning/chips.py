"""TPU chips the planner compiles for, with their published figures, and slice names.

Every figure is per chip and comes from the page in its `source` field. ICI bandwidth is
one direction of one link (the Scaling Book's unit, which the roofline needs: a ring
collective along one mesh axis drives two links of each chip, one each way); `ici_links`
is how many a chip has (a 3D torus: 6, a 2D torus: 4). DCN bandwidth is a chip's share of
its host's data-centre network, the path between slices.

A topology is `<chip>:<dims>` as users write it (`v5p:2x2x2`, `v5e:4x4`); `libtpu_name`
gives the name libtpu's topology API takes (v5p chips are `v5` there).
"""
from __future__ import annotations

import dataclasses
import math

SCALING_BOOK = "https://jax-ml.github.io/scaling-book/tpus/"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_bf16_flops: float  # dense, per second
    hbm_bandwidth: float  # bytes/s
    ici_link_bandwidth: float  # bytes/s, one direction of one link
    ici_links: int
    dcn_bandwidth: float  # bytes/s per chip, between slices
    libtpu_prefix: str  # the chip's name in libtpu topology strings
    chip_config: str  # libtpu's chip_config_name: "megacore" where two cores act as one
    source: str  # where HBM, FLOP/s and HBM bandwidth come from
    network_source: str  # where the ICI and DCN figures come from

    def fits(self, nbytes: float) -> bool:
        return nbytes <= self.hbm_bytes


CHIPS = {
    # Cloud TPU v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s.
    "v4": Chip("v4", 32 * 2 ** 30, 275e12, 1.2e12, 4.5e10, 6, 6.25e9, "v4", "megacore",
               "https://cloud.google.com/tpu/docs/v4", SCALING_BOOK),
    # Cloud TPU v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, 1,600 Gbps ICI (4 ports);
    # DCN 6.4 Tbps a pod of 256 chips = 25 Gbps a chip.
    "v5e": Chip("v5e", 16e9, 197e12, 8.19e11, 4.5e10, 4, 3.125e9, "v5e", "default",
                "https://cloud.google.com/tpu/docs/v5e", SCALING_BOOK),
    # Cloud TPU v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s, ICI 1,200 GB/s a chip
    # both ways over 6 links; DCN 50 Gbps a chip.
    "v5p": Chip("v5p", 95 * 2 ** 30, 459e12, 2.765e12, 9e10, 6, 6.25e9, "v5", "megacore",
                "https://cloud.google.com/tpu/docs/v5p", SCALING_BOOK),
    # Cloud TPU v6e (Trillium): 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s, 3,584 Gbps ICI
    # (4 ports); DCN 25.6 Tbps a pod of 256 chips = 100 Gbps a chip.
    "v6e": Chip("v6e", 32e9, 918e12, 1.64e12, 9e10, 4, 1.25e10, "v6e", "default",
                "https://cloud.google.com/tpu/docs/v6e", SCALING_BOOK),
}


class TopologyError(ValueError):
    """A topology string that names no known chip or no valid slice shape."""


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: Chip
    dims: tuple  # chips along each ICI axis of one slice
    slices: int = 1

    @classmethod
    def parse(cls, text: str, slices: int = 1) -> "Topology":
        name, _, shape = text.partition(":")
        if name not in CHIPS:
            raise TopologyError(f"--topology={text!r}: unknown chip {name!r}; expected one of "
                                f"{sorted(CHIPS)} as <chip>:<AxB[xC]>, e.g. v5p:2x2x2")
        try:
            dims = tuple(int(d) for d in shape.split("x"))
        except ValueError:
            dims = ()
        chip = CHIPS[name]
        want = 3 if chip.ici_links == 6 else 2
        if len(dims) != want or min(dims) < 1:
            raise TopologyError(f"--topology={text!r}: {name} slices are {want}-D, e.g. "
                                f"{name}:{'x'.join(['2'] * want)}")
        if slices < 1:
            raise TopologyError(f"--slices={slices} must be >= 1")
        return cls(chip, dims, slices)

    @property
    def name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.dims))}"

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.libtpu_prefix}:{'x'.join(map(str, self.dims))}"

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.dims)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.slices

    def __str__(self) -> str:
        return self.name + (f" x {self.slices} slices" if self.slices > 1 else "")
