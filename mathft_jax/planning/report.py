"""The planner's printed table and the JSON of a chip."""
from __future__ import annotations

import dataclasses

from mathft_jax.planning.chips import Chip

GB = 1e9
COLUMNS = (f"{'program':34} {'args':>6} {'out':>6} {'temp':>7} {'peak':>7} {'HBM':>5} "
           f"{'fits':>10} {'XLA/an':>6} {'HLO/an':>6} {'coll GB':>8} {'step ms':>9} "
           f"{'bound':>7} {'MFU<=':>6} {'tok/s':>10}")


def environment_line(chosen: dict) -> str:
    set_text = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "nothing (all set already)"
    return (f"plan: compiling with libtpu's compile-only devices; to keep libtpu from looking "
            f"for a TPU host it set {set_text}")


def header(topology, setup) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in setup.partitioner.mesh.shape.items())
    chip = topology.chip
    return (f"{topology} ({topology.num_chips} chips of {chip.hbm_bytes / GB:.1f} GB HBM, "
            f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16); mesh {mesh}; per chip, GB\n"
            + COLUMNS)


def row(plan) -> str:
    m, r = plan.measurement, plan.roofline
    fits = "yes" if plan.fits else "NO"
    fits += f" {100 * plan.spare:+.0f}%"
    xla = m.xla_flops / plan.analytic_flops if plan.analytic_flops else 0.0
    hlo = m.hlo.matmul_flops / plan.analytic_flops if plan.analytic_flops else 0.0
    coll = (m.hlo.ici_bytes + m.hlo.dcn_bytes) / GB
    if m.out_of_memory:  # XLA:TPU refused it: only inputs and temporaries are known
        return (f"{plan.key:34} {m.argument_bytes / GB:6.2f} {'?':>6} {m.temp_bytes / GB:7.2f} "
                f"{m.peak_bytes / GB:7.2f} {plan.hbm_bytes / GB:5.0f} {fits:>10}  (XLA:TPU "
                f"refused it: {m.out_of_memory[:90]})")
    return (f"{plan.key:34} {m.argument_bytes / GB:6.2f} {m.output_bytes / GB:6.2f} "
            f"{m.temp_bytes / GB:7.2f} {m.peak_bytes / GB:7.2f} {plan.hbm_bytes / GB:5.0f} "
            f"{fits:>10} {xla:6.2f} {hlo:6.2f} {coll:8.2f} {r.step_s * 1e3:9.2f} "
            f"{r.bound_by:>7} {100 * r.mfu_bound:5.1f}% {r.tokens_per_s:10.0f}")


def knob_lines(knobs: list) -> list[str]:
    out = []
    for k in knobs:
        if "error" in k:
            out.append(f"    knob {k['knob']:28} cannot apply: {k['error']}")
        else:
            verdict = "fits" if k["fits"] else "still over"
            out.append(f"    knob {k['knob']:28} peak {k['peak_bytes'] / GB:7.2f} GB "
                       f"({100 * k['spare']:+.0f}% spare): {verdict}")
    return out


def details(results: list) -> str:
    """The largest values of each program (what its memory holds) and its collectives."""
    lines = ["", "largest values per chip (op, shape, source):"]
    for r in results:
        lines.append(f"  {r['program']}:")
        for v in r["memory"]["hlo"]["largest"][:4]:
            lines.append(f"    {v['bytes'] / GB:8.3f} GB  {v['op']:12} {v['shape'][:48]:48} "
                         f"{v['source'][-70:]}")
        parts = r["memory"]["hlo"]["flops_by_part"]
        if parts:
            total = sum(parts.values()) or 1.0
            lines.append("    matmul FLOPs: " + ", ".join(
                f"{part} {100 * v / total:.1f}%" for part, v in sorted(parts.items())))
        colls = r["memory"]["hlo"]["collectives"]
        if colls:
            lines.append("    collectives: " + ", ".join(
                f"{kind} x{c['count']} {(c['ici_bytes'] + c['dcn_bytes']) / GB:.2f} GB"
                for kind, c in sorted(colls.items())))
    return "\n".join(lines)


def chip_json(chip: Chip) -> dict:
    return dataclasses.asdict(chip)


def search_lines(stage: str, ranked: list) -> list[str]:
    lines = [f"{stage}: meshes (data, fsdp, tensor) by roofline tokens/s",
             f"  {'mesh':>14} {'largest batch':36} {'peak GB':>8} {'step ms':>9} "
             f"{'tok/s':>10} {'MFU<=':>6} {'bound':>7}"]
    for r in ranked:
        mesh = "x".join(map(str, r["mesh"]))
        if "error" in r:
            lines.append(f"  {mesh:>14} {r['error'][:80]}")
        else:
            lines.append(f"  {mesh:>14} {r['binding']:36} {r['peak_gb']:8.2f} "
                         f"{r['step_s'] * 1e3:9.2f} {r['tokens_per_s']:10.0f} "
                         f"{100 * r['mfu_bound']:5.1f}% {r['bound_by']:>7}")
    return lines
