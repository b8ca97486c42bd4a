"""Compile the recipe's stages for TPU slices, one row of docs/SCALE.md at a time.

    python bench/scale.py --rows=llama3_8b/ssft/v5p:2x2x2,palm_8b/ssft/v5p:2x2x2 \\
        --out=bench/results/scale

A row is model/stage/topology: `python -m mathft_jax.plan` with the model's gin, the MATH
recipe's run gin (gin_configs/runs/mtsf_math.gin, or grpo_math.gin / a dpo variant for
those stages), the paper's N = 64 (math_base.gin), and the given extra bindings. Each row
runs in its own process, one after another (an 8B compile holds several GB of memory and
both cores of a small machine for minutes: run it alone, e.g. under `flock`), and its plan
goes to <out>/<model>_<stage>_<topology>.json with the compile's wall time and the machine.
A markdown line per row is printed for docs/SCALE.md.

Big compiles are benchmarks, not tests: tests/test_plan.py compiles the tiny models.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_GIN = {"grpo": "gin_configs/runs/grpo_math.gin"}  # the others: mtsf_math.gin
GB = 1e9


def command(model: str, stage: str, topology: str, out: str, bindings=()) -> list[str]:
    run = RUN_GIN.get(stage, "gin_configs/runs/mtsf_math.gin")
    return [sys.executable, "-m", "mathft_jax.plan", f"--gin_file=gin_configs/models/{model}.gin",
            f"--gin_file={run}", f"--topology={topology}", f"--stages={stage}", "--noknobs",
            f"--output={out}", *(f"--gin_bindings={b}" for b in bindings)]


def machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})"


def markdown(plan: dict, seconds: float, cmd: list[str]) -> str:
    """| model | stage | slice | per-chip GB (peak / HBM) | fits | MFU bound | bound by | compile |"""
    rows = []
    for p in plan["programs"]:
        peak, hbm = p["memory"]["peak_bytes"] / GB, p["hbm_bytes"] / GB
        roof = p["roofline"]
        # XLA:TPU refused the program: no HLO, so no roofline to bound MFU by
        speed = ("n/a (refused for HBM) | n/a" if p["memory"].get("out_of_memory") else
                 f"{100 * roof['mfu_bound']:.1f}% | {roof['bound_by']}")
        rows.append(f"| {p['program']} | {plan['topology']} | {peak:.1f} / {hbm:.0f} | "
                    f"{'yes' if p['fits'] else 'NO'} ({100 * p['spare']:+.0f}%) | "
                    f"{speed} | {seconds:.0f} s |")
    shown = " ".join(c for c in cmd[1:] if not c.startswith("--output"))
    return "\n".join(rows) + f"\n<!-- python {shown} -->"


def reanalyse(plan_path: str, hlo_dir: str) -> dict:
    """Read a plan's programs again from the HLO text it kept (`plan --hlo_dir`), with this
    checkout's HLO analysis and roofline: the same compiled programs, no recompile."""
    from mathft_jax.planning import hlo as hlo_lib  # noqa: PLC0415
    from mathft_jax.planning.chips import CHIPS  # noqa: PLC0415
    from mathft_jax.planning.roofline import Roofline  # noqa: PLC0415
    with open(plan_path) as f:
        plan = json.load(f)
    chip = CHIPS[plan["chip"]["name"]]
    for p in plan["programs"]:
        with open(os.path.join(hlo_dir, p["program"].replace("/", "_") + ".hlo.txt")) as f:
            analysis = hlo_lib.analyse(f.read())
        p["memory"]["hlo"] = analysis.to_json()
        p["hlo_flops_vs_analytic"] = analysis.matmul_flops / p["analytic_flops"]
        roof = Roofline.of(chip, analysis.matmul_flops, analysis.hbm_bytes, analysis.ici_bytes,
                           analysis.dcn_bytes, p["analytic_flops"],
                           p["roofline"]["tokens_per_step"])
        p["roofline"] = roof.to_json()
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reanalyse", nargs=2, metavar=("PLAN_JSON", "HLO_DIR"),
                        help="re-read a plan's kept HLO (single-slice plans) and print it")
    parser.add_argument("--rows", default="",
                        help="comma-separated model/stage/topology, e.g. palm_8b/ssft/v5p:2x2x2")
    parser.add_argument("--out", default="bench/results/scale")
    parser.add_argument("--bindings", action="append", default=[],
                        help="extra gin bindings for every row (repeatable)")
    args = parser.parse_args()
    if args.reanalyse:
        plan = reanalyse(*args.reanalyse)
        with open(args.reanalyse[0], "w") as f:
            json.dump(plan, f, indent=1)
        print(markdown(plan, plan.get("bench", {}).get("wall_s", 0.0), ["", "(reanalysed)"]))
        return
    os.makedirs(args.out, exist_ok=True)
    for row in args.rows.split(","):
        model, stage, topology = row.split("/")
        out = os.path.join(args.out, f"{model}_{stage}_{topology.replace(':', '-')}.json")
        cmd = command(model, stage, topology, out, args.bindings)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        print(proc.stdout, flush=True)
        if not os.path.exists(out):
            print(f"{row}: no plan (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            continue
        with open(out) as f:
            plan = json.load(f)
        plan["bench"] = {"wall_s": seconds, "machine": machine(), "command": cmd[1:],
                         "exit": proc.returncode}
        with open(out, "w") as f:
            json.dump(plan, f, indent=1)
        print(markdown(plan, seconds, cmd), flush=True)


if __name__ == "__main__":
    main()
