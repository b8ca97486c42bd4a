"""Toy-scale replication of Liu et al. (2023) on the synthetic curriculum, over seeds.

    .venv/bin/python bench/replicate.py --seeds=0,1,2 --out_dir=runs/replicate

Per seed (the trainer's data order and initialisation, and the sampler's rng):
  steps_margin  MTSF with the margin evaluator, SSFT on "steps" (PRM800K-like) solutions
  steps_xent    the same SSFT run and training samples, then the xent evaluator and MTSF
  terse         SSFT only, on "terse" (MATH-like) solutions
  control       MTSF's control: steps_margin's SSFT continued for MTSF's steps and schedule
                with no evaluator stage between (gin_configs/runs/mtsf_control.gin)
The settings are gin_configs/runs/synthetic_base.gin's (those of `make demo`). It writes
docs/RESULTS.md: mean +- std over seeds per cell, the command and the machine. Stages of
finished runs are skipped, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "steps_margin": ["gin_configs/runs/mtsf.gin"],
    "steps_xent": ["gin_configs/runs/mtsf_xent.gin"],
    "terse": ["gin_configs/runs/ssft.gin"],
    "control": ["gin_configs/runs/mtsf_control.gin"],
}
# Stages a run takes from steps_margin's, so that they differ only where they should.
SHARED_STAGES = {"steps_xent": ("ssft", "sample_train", "scr_data"), "control": ("ssft",)}
FINDINGS = "## Findings"
TERSE_BINDINGS = ["pipeline.ssft_task='synthetic_arith_terse'",
                  "pipeline.sample_task='synthetic_arith_terse'"]


def run_pipeline(run_dir: str, gin_files: list, seed: int, extra: list, log) -> None:
    cmd = [sys.executable, "-m", "mathft_jax.pipeline"]
    cmd += [f"--gin_file={f}" for f in gin_files]
    bindings = [f"pipeline.run_dir='{run_dir}'", f"train.seed={seed}", f"infer.seed={seed}"] + extra
    cmd += [f"--gin_bindings={b}" for b in bindings]
    env = dict(os.environ, XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.time()
    subprocess.run(cmd + ["--verbosity=-1"], cwd=REPO, env=env, check=True, stdout=log, stderr=log)
    print(f"  {os.path.basename(run_dir)}: {time.time() - t0:.0f} s", flush=True)


def share_stages(src: str, dst: str, stages) -> None:
    """Link stages of the margin run into another run (its SSFT, training samples, ...)."""
    os.makedirs(dst, exist_ok=True)
    for stage in stages:
        link = os.path.join(dst, stage)
        if not os.path.exists(link):
            os.symlink(os.path.join(src, stage), link)


def stage_minutes(out_dir: str, seeds: list) -> float:
    """Compute time of every stage of every run, from the stages' DONE.json (shared stages
    counted once), so a resumed replication still reports what the work took."""
    total = 0.0
    for seed in seeds:
        for name in RUNS:
            run = os.path.join(out_dir, f"seed{seed}", name)
            for stage in os.listdir(run):
                done = os.path.join(run, stage, "DONE.json")
                if not os.path.islink(os.path.join(run, stage)) and os.path.exists(done):
                    with open(done) as f:
                        total += json.load(f)["seconds"]
    return total / 60


def results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "evaluate", "results.json")) as f:
        return json.load(f)


def value(res: dict, generator: str, metric: str) -> float:
    return 100 * res[generator]["metrics"][metric]["value"]


def cells(per_seed: list, k: int) -> list:
    """(section, row, column, values over seeds)."""
    out = []
    for name in ("pass_at_1", "maj1_at_n"):
        out.append(("style", "steps (PRM800K-like)", name, [value(r["steps_margin"], "ssft", name) for r in per_seed]))
        out.append(("style", "terse (MATH-like)", name, [value(r["terse"], "ssft", name) for r in per_seed]))
    for name in ("pass_at_1", "maj1_at_n", "majk_at_n", "rr_all", "rr_topk", "wrr_majk"):
        out.append(("ssft", "SSFT generator, margin evaluator", name,
                    [value(r["steps_margin"], "ssft", name) for r in per_seed]))
        out.append(("ssft", "SSFT generator, xent evaluator", name,
                    [value(r["steps_xent"], "ssft", name) for r in per_seed]))
    for name in ("pass_at_1", "maj1_at_n", "rr_topk"):
        out.append(("mtsf", "SSFT", name, [value(r["steps_margin"], "ssft", name) for r in per_seed]))
        out.append(("mtsf", "MTSF (margin)", name, [value(r["steps_margin"], "mtsf", name) for r in per_seed]))
        out.append(("mtsf", "MTSF (xent)", name, [value(r["steps_xent"], "mtsf", name) for r in per_seed]))
    # Paired gains over the same SSFT checkpoint, each against its own run's SSFT samples.
    for name in ("pass_at_1", "maj1_at_n"):
        for row, run in (("MTSF (margin)", "steps_margin"), ("MTSF (xent)", "steps_xent"),
                         ("control: SSFT continued, no evaluator stage", "control")):
            out.append(("control", row, name, [value(r[run], "mtsf", name) - value(r[run], "ssft", name)
                                               for r in per_seed]))
    return out


def table(rows: list, section: str, k: int) -> str:
    from mathft_jax.voting import metric_label
    picked = [r for r in rows if r[0] == section]
    cols = list(dict.fromkeys(r[2] for r in picked))
    lines = ["| | " + " | ".join(metric_label(c, k) for c in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for row in dict.fromkeys(r[1] for r in picked):
        vals = {r[2]: r[3] for r in picked if r[1] == row}
        lines.append(f"| {row} | " + " | ".join(
            f"{np.mean(vals[c]):.1f} ± {np.std(vals[c]):.1f}" for c in cols) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out_dir", default="runs/replicate")
    p.add_argument("--results_md", default="docs/RESULTS.md")
    p.add_argument("--note", default="", help="how the runs were made (load, resumes), for the record")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    per_seed = []
    with open(os.path.join(out_dir, "log.txt"), "a") as log:
        for seed in seeds:
            print(f"seed {seed}", flush=True)
            base = os.path.join(out_dir, f"seed{seed}")
            for name, gin_files in RUNS.items():
                if name in SHARED_STAGES:
                    share_stages(f"{base}/steps_margin", f"{base}/{name}", SHARED_STAGES[name])
                run_pipeline(f"{base}/{name}", gin_files, seed,
                             TERSE_BINDINGS if name == "terse" else [], log)
            per_seed.append({name: results(f"{base}/{name}") for name in RUNS})
    minutes = stage_minutes(out_dir, seeds)
    k = per_seed[0]["steps_margin"]["ssft"]["k"]
    n = per_seed[0]["steps_margin"]["ssft"]["n_samples"]["max"]
    problems = per_seed[0]["steps_margin"]["ssft"]["n_problems"]
    rows = cells(per_seed, k)
    command = "python bench/replicate.py " + shlex.join(sys.argv[1:])
    text = f"""# Toy-scale replication

Liu et al. (2023)'s recipe at toy scale: the ~1M-parameter `tiny` model on the synthetic
arithmetic curriculum (level 2), settings of `gin_configs/runs/synthetic_base.gin` (those
of `make demo`): SSFT 350 steps, SCR 80 steps, MTSF 100 steps, N = {n} samples, K = {k},
{problems} test problems. Values are percentages, mean ± std over seeds {seeds}
(the seed sets the trainer's data order and initialisation and the sampler's rng).

Command: `{command}` ({minutes:.0f} minutes of stage time, summed from the stages'
DONE.json){'; ' + args.note if args.note else ''}.
Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.

## Steps-style against terse-style SSFT (finer-grained solutions help?)

{table(rows, "style", k)}

## The SSFT generator, voting and re-ranking

{table(rows, "ssft", k)}

## SSFT against MTSF

{table(rows, "mtsf", k)}

MTSF's gain over its own SSFT, against the control's: the same SSFT checkpoint continued
for the MTSF stage's steps and schedule with no evaluator stage between (percentage points;
each run's SSFT row is sampled in that run, so the differences are paired):

{table(rows, "control", k)}

## Per seed

```json
{json.dumps([{name: {g: {m: None if v["value"] is None else round(100 * v["value"], 2)
                               for m, v in res[g]["metrics"].items()}
                    for g in res} for name, res in r.items()} for r in per_seed], indent=None)}
```
"""
    path = os.path.join(REPO, args.results_md)
    if os.path.exists(path):  # the hand-written reading of the tables is kept
        with open(path) as f:
            old = f.read()
        if FINDINGS in old:
            text += "\n" + old[old.index(FINDINGS):]
    with open(path, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
