"""A roofline step time per chip: the slowest of compute, HBM traffic and collectives.

    compute = matmul FLOPs the program runs (remat's recomputation included; at least the
              analytic count, for kernels the HLO cannot count) / peak bf16
    hbm     = bytes its non-fused instructions read and write / HBM bandwidth
    ici     = bytes a chip sends in collectives within a slice / (2 x one ICI link, one way):
              a ring along one torus axis drives a link each way
    dcn     = bytes it sends between slices / its share of the DCN

Each term assumes the others overlap it perfectly, so the step time is a lower bound and
the MFU and tokens/s derived from it are upper bounds. MFU is the model's analytic FLOPs
(models.sizes, what PaLM's MFU counts) over step time x peak: remat's recomputation is
work the chip does but not model FLOPs.
"""
from __future__ import annotations

import dataclasses

from mathft_jax.planning.chips import Chip


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    hbm_s: float
    ici_s: float
    dcn_s: float
    model_flops: float  # analytic, per chip per step
    tokens: int  # per step, the whole program (all chips)
    peak_flops: float

    @classmethod
    def of(cls, chip: Chip, program_flops: float, hbm_bytes: float, ici_bytes: float,
           dcn_bytes: float, model_flops: float, tokens: int) -> "Roofline":
        # Kernels XLA cannot see into (Pallas' splash attention) hide their FLOPs from the
        # HLO count: the model's own count is then the better floor on the work.
        return cls(max(program_flops, model_flops) / chip.peak_bf16_flops, hbm_bytes / chip.hbm_bandwidth,
                   ici_bytes / (2 * chip.ici_link_bandwidth), dcn_bytes / chip.dcn_bandwidth,
                   model_flops, tokens, chip.peak_bf16_flops)

    @property
    def terms(self) -> dict:
        return {"compute": self.compute_s, "hbm": self.hbm_s, "ici": self.ici_s,
                "dcn": self.dcn_s}

    @property
    def step_s(self) -> float:
        return max(self.terms.values())

    @property
    def bound_by(self) -> str:
        return max(self.terms, key=self.terms.get)

    @property
    def mfu_bound(self) -> float:
        return self.model_flops / (self.step_s * self.peak_flops) if self.step_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s if self.step_s else 0.0

    def to_json(self) -> dict:
        return {**{f"{k}_s": v for k, v in self.terms.items()}, "step_s": self.step_s,
                "bound_by": self.bound_by, "mfu_bound": self.mfu_bound,
                "tokens_per_step": self.tokens, "tokens_per_s": self.tokens_per_s}
