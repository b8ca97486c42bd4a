"""Toy-scale replication of Liu et al. (2023) on the synthetic curriculum, over seeds.

    .venv/bin/python bench/replicate.py --seeds=0,1,2 --out_dir=runs/replicate \
        --results_md=docs/RESULTS.md                            # the canonical tables
    .venv/bin/python bench/replicate.py --seeds=0,1,2 --runs=steps_margin,control,dpo,grpo \
        --gin_bindings="evaluator_objective.xent_weight=0.5"     # a regime change, every run

Per seed (the trainer's data order and initialisation, the sampler's rng, GRPO's prompts):
  steps_margin  MTSF with the margin evaluator, SSFT on "steps" (PRM800K-like) solutions
  steps_xent    the same SSFT run and training samples, then the xent evaluator and MTSF
  terse         SSFT only, on "terse" (MATH-like) solutions
  control       MTSF's control: steps_margin's SSFT continued for MTSF's steps and schedule
                with no evaluator stage between (gin_configs/runs/mtsf_control.gin)
  dpo           DPO from steps_margin's SSFT on its graded training samples (dpo.gin)
  grpo          GRPO from steps_margin's SSFT (grpo.gin)
  grpo_process  the same with the process reward (grpo_process.gin)
  grpo_dynamic  grpo with dynamic sampling: batches of groups whose rewards differ
                (grpo_dynamic.gin)
  grpo_sft      grpo plus a supervised term: each policy step also learns the control's
                batch of reference solutions, at the control's schedule (grpo_sft.gin)
  grpo_sft_dynamic  grpo_sft with grpo_dynamic's sampling (grpo_sft_dynamic.gin)
  grpo_sft_wide grpo_sft with 4x the prompts an iteration: 8,000 rollouts, not equal
                extra compute (grpo_sft_wide.gin)
  likelihood    steps_margin's SSFT samples re-ranked by a likelihood evaluator instead of
                the paper's (ssft_scr_likelihood.gin: SCR on the same training samples as
                generation-format pairs, scored by exp(mean token log-probability); the
                evaluator study's finding, docs/RESULTS.md)
control, dpo and the grpo runs train no evaluator: steps_margin's scores their test samples
(`pipeline.evaluator_checkpoint`), so their RR.Top-K is comparable with MTSF's.

Equal extra compute (EXTRA_COMPUTE, written into the report): every method after SSFT takes
the same 100 generator optimizer steps as MTSF's stage; the methods that learn from sampled
training solutions get about the 2,048 that MTSF samples (128 problems x 16; grpo_sft_wide,
a diagnostic, 8,000); the measured
stage time of each method's extra stages (DONE.json, shared stages counted in each method
that uses them) is reported beside the metrics.

The settings are gin_configs/runs/synthetic_base.gin's (`make demo` adds the likelihood
evaluator and 650 SSFT steps to them), plus the
`--gin_file`s and `--gin_bindings` given, applied to every run after its own gin file. It
writes docs/RESULTS.md: mean +- std over seeds per cell (and each GRPO run's Pass@1 against
the control's per seed, with an interval paired over problems), the command and the machine, from
every run whose results exist for all seeds (`--runs` picks what to run; runs whose stages
another shares are run too). Stages of finished runs are skipped, so a rerun resumes.
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
sys.path.insert(0, os.path.join(REPO, "bench"))
import paired_pass_at_1 as paired  # noqa: E402
RUNS = {
    "steps_margin": ["gin_configs/runs/mtsf.gin"],
    "steps_xent": ["gin_configs/runs/mtsf_xent.gin"],
    "terse": ["gin_configs/runs/ssft.gin"],
    "control": ["gin_configs/runs/mtsf_control.gin"],
    "dpo": ["gin_configs/runs/dpo.gin"],
    "grpo": ["gin_configs/runs/grpo.gin"],
    "grpo_process": ["gin_configs/runs/grpo_process.gin"],
    "grpo_dynamic": ["gin_configs/runs/grpo_dynamic.gin"],
    "grpo_sft": ["gin_configs/runs/grpo_sft.gin"],
    "grpo_sft_dynamic": ["gin_configs/runs/grpo_sft_dynamic.gin"],
    "grpo_sft_wide": ["gin_configs/runs/grpo_sft_wide.gin"],
    "likelihood": ["gin_configs/runs/ssft_scr_likelihood.gin"],
}
# Stages a run takes from steps_margin's, so that they differ only where they should.
SHARED_STAGES = {"steps_xent": ("ssft", "sample_train", "scr_data"), "control": ("ssft",),
                 "dpo": ("ssft", "sample_train", "scr_data"), "grpo": ("ssft",),
                 "grpo_process": ("ssft",), "grpo_dynamic": ("ssft",), "grpo_sft": ("ssft",),
                 "grpo_sft_dynamic": ("ssft",), "grpo_sft_wide": ("ssft",),
                 "likelihood": ("ssft", "sample_train", "scr_data", "sample_eval")}
# Runs with no evaluator of their own, scored by steps_margin's (its scr stage).
SCORED_BY_MARGIN = ("control", "dpo", "grpo", "grpo_process", "grpo_dynamic", "grpo_sft",
                    "grpo_sft_dynamic", "grpo_sft_wide")
# Each method's stages beyond SSFT (by its row in RL_ROWS): (run, stages), for its cost.
EXTRA_STAGES = {"MTSF (margin)": ("steps_margin", ("sample_train", "scr_data", "scr", "mtsf")),
                "control: SSFT continued": ("control", ("mtsf",)),
                "DPO": ("dpo", ("sample_train", "scr_data", "dpo_data", "dpo")),
                "GRPO": ("grpo", ("grpo",)),
                "GRPO (process reward)": ("grpo_process", ("grpo",)),
                "GRPO (dynamic sampling)": ("grpo_dynamic", ("grpo",)),
                "GRPO + supervised term": ("grpo_sft", ("grpo",)),
                "GRPO + supervised term, dynamic sampling": ("grpo_sft_dynamic", ("grpo",)),
                "GRPO + supervised term, 4x rollouts": ("grpo_sft_wide", ("grpo",))}
# The rows of the DPO/GRPO comparison: (row, run, generator).
RL_ROWS = (("SSFT", "steps_margin", "ssft"), ("MTSF (margin)", "steps_margin", "mtsf"),
           ("control: SSFT continued", "control", "mtsf"), ("DPO", "dpo", "dpo"),
           ("GRPO", "grpo", "grpo"), ("GRPO (process reward)", "grpo_process", "grpo"),
           ("GRPO (dynamic sampling)", "grpo_dynamic", "grpo"),
           ("GRPO + supervised term", "grpo_sft", "grpo"),
           ("GRPO + supervised term, dynamic sampling", "grpo_sft_dynamic", "grpo"),
           ("GRPO + supervised term, 4x rollouts", "grpo_sft_wide", "grpo"))
EXTRA_COMPUTE = """\
"Equal extra compute" is the same extra budget after the shared SSFT checkpoint: every
method takes **100 generator optimizer steps** (MTSF's `mtsf` stage; the control's SSFT
continued at MTSF's schedule; DPO's `dpo` stage; GRPO's 50 iterations x 2 policy steps),
and the methods that learn from sampled training solutions get **about 2,048 of them**:
MTSF and DPO share `sample_train`'s 128 problems x 16 samples; GRPO samples its own
on-policy, 50 iterations x 5 prompts x 8 generations = 2,000 (with dynamic sampling, up to
4 rounds of 5 prompts an iteration: up to 8,000; `grpo/prompts_sampled` in its
metrics.jsonl counts them). GRPO with a supervised term and 4x rollouts (20 prompts an
iteration: 8,000) is outside this budget: it asks what more samples buy. MTSF spends 80 more optimizer steps on its evaluator; the
control samples nothing. Equal steps are not equal FLOPs: MTSF's and the control's steps
see 16 packed 256-token rows (4,096 tokens); DPO's 16 pairs are 32 unpacked rows (~130
real tokens each) plus one reference pass over the pairs; GRPO's 40 unpacked 256-token
rows hold ~125 real tokens each, and each iteration adds two teacher-forced passes (the
sampling policy's and the reference's log-probs); GRPO with a supervised term adds the
control's 16 packed rows to each of its steps. The table therefore gives each method's
measured time on its extra stages (DONE.json; stages shared with MTSF counted in each
method that uses them), so the real cost is visible."""
LABELS = {"extra_minutes": "extra stage time (min)"}
FINDINGS = "## Findings"
METRICS = ("pass_at_1", "pass_at_n", "maj1_at_n", "majk_at_n", "rr_all", "rr_topk", "wrr",
           "wrr_majk")
TERSE_BINDINGS = ["pipeline.ssft_task='synthetic_arith_terse'",
                  "pipeline.sample_task='synthetic_arith_terse'"]


def run_pipeline(run_dir: str, gin_files: list, seed: int, extra: list, log) -> None:
    cmd = [sys.executable, "-m", "mathft_jax.pipeline"]
    cmd += [f"--gin_file={f}" for f in gin_files]
    bindings = [f"pipeline.run_dir='{run_dir}'", f"train.seed={seed}", f"infer.seed={seed}",
                f"grpo.seed={seed}"] + extra
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


def selected_runs(names: str) -> list:
    """The runs to run, in RUNS order: those named, plus steps_margin where one of them
    takes stages or the evaluator from it."""
    wanted = set(names.split(",")) if names else set(RUNS)
    unknown = sorted(wanted - set(RUNS))
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; expected some of {list(RUNS)}")
    if wanted & (set(SHARED_STAGES) | set(SCORED_BY_MARGIN)):
        wanted.add("steps_margin")
    return [name for name in RUNS if name in wanted]


def run_bindings(name: str, base: str) -> list:
    """A run's own bindings beyond the seed's (base: the seed's directory)."""
    out = list(TERSE_BINDINGS) if name == "terse" else []
    if name in SCORED_BY_MARGIN:
        out.append(f"pipeline.evaluator_checkpoint='{base}/steps_margin/scr/checkpoints'")
    return out


def stage_seconds(run_dir: str, stage: str):
    """A stage's compute seconds from its DONE.json (through a shared stage's link); None
    where it has not finished."""
    done = os.path.join(run_dir, stage, "DONE.json")
    if not os.path.exists(done):
        return None
    with open(done) as f:
        return json.load(f)["seconds"]


def extra_minutes(out_dir: str, seeds: list) -> dict:
    """{method: [minutes of its extra stages, per seed]} for the methods of EXTRA_STAGES."""
    out = {}
    for method, (run, stages) in EXTRA_STAGES.items():
        per_seed = [[stage_seconds(os.path.join(out_dir, f"seed{seed}", run), stage)
                     for stage in stages] for seed in seeds]
        if all(None not in seconds for seconds in per_seed):
            out[method] = [sum(seconds) / 60 for seconds in per_seed]
    return out


def stage_minutes(out_dir: str, seeds: list, runs=RUNS) -> float:
    """Compute time of every stage of every run, from the stages' DONE.json (shared stages
    counted once), so a resumed replication still reports what the work took."""
    total = 0.0
    for seed in seeds:
        for name in runs:
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


def value(res: dict, generator: str, metric: str):
    v = res[generator]["metrics"][metric]["value"]
    return None if v is None else 100 * v


def _minus(a, b):
    return None if a is None or b is None else a - b


def cells(per_seed: list, k: int, minutes: dict | None = None, seeds=None) -> list:
    """(section, row, column, values over seeds), for the runs that per_seed holds (each
    seed's {run: results}; `seeds` names them, default 0, 1, ...); a section or row whose
    runs are missing is left out. minutes: `extra_minutes`."""
    have = set(per_seed[0]) if per_seed else set()
    out = []

    def add(section, row, column, run, fn):
        if all(r in have for r in run):
            out.append((section, row, column, [fn(r) for r in per_seed]))

    for name in ("pass_at_1", "maj1_at_n"):
        add("style", "steps (PRM800K-like)", name, ["steps_margin", "terse"],
            lambda r: value(r["steps_margin"], "ssft", name))
        add("style", "terse (MATH-like)", name, ["terse"], lambda r: value(r["terse"], "ssft", name))
    for name in ("pass_at_1", "maj1_at_n", "majk_at_n", "rr_all", "rr_topk", "wrr_majk"):
        add("ssft", "SSFT generator, margin evaluator", name, ["steps_margin"],
            lambda r: value(r["steps_margin"], "ssft", name))
        add("ssft", "SSFT generator, xent evaluator", name, ["steps_xent"],
            lambda r: value(r["steps_xent"], "ssft", name))
        add("ssft", "SSFT generator, likelihood evaluator", name, ["likelihood"],
            lambda r: value(r["likelihood"], "ssft", name))
    for name in ("pass_at_1", "maj1_at_n", "rr_topk"):
        add("mtsf", "SSFT", name, ["steps_margin"], lambda r: value(r["steps_margin"], "ssft", name))
        add("mtsf", "MTSF (margin)", name, ["steps_margin"],
            lambda r: value(r["steps_margin"], "mtsf", name))
        add("mtsf", "MTSF (xent)", name, ["steps_xent"], lambda r: value(r["steps_xent"], "mtsf", name))
    # Paired gains over the same SSFT checkpoint, each against its own run's SSFT samples.
    for name in ("pass_at_1", "maj1_at_n"):
        for row, run in (("MTSF (margin)", "steps_margin"), ("MTSF (xent)", "steps_xent"),
                         ("control: SSFT continued, no evaluator stage", "control")):
            add("control", row, name, [run],
                lambda r: _minus(value(r[run], "mtsf", name), value(r[run], "ssft", name)))
    # DPO and GRPO against MTSF and its control: absolute, cost, and paired gains.
    for row, run, generator in RL_ROWS:
        for name in ("pass_at_1", "maj1_at_n", "rr_topk"):
            add("rl", row, name, [run], lambda r: value(r[run], generator, name))
        if minutes and row in minutes and run in have:
            out.append(("rl", row, "extra_minutes", minutes[row]))
        if generator != "ssft":
            for name in ("pass_at_1", "maj1_at_n", "rr_topk"):
                add("rl_gain", row, name, [run], lambda r: _minus(value(r[run], generator, name),
                                                                  value(r[run], "ssft", name)))
    grpo_runs = [(row, run) for row, run, _ in RL_ROWS if run.startswith("grpo") and run in have]
    if "control" in have and grpo_runs:
        for seed, r in zip(seeds or range(len(per_seed)), per_seed):
            ssft, control = value(r["control"], "ssft", "pass_at_1"), value(r["control"], "mtsf", "pass_at_1")
            columns = [("SSFT (control's run)", ssft), ("control", control)]
            for row, run in grpo_runs:
                grpo = value(r[run], "grpo", "pass_at_1")
                columns += [(row, grpo), (f"{row} - control", _minus(grpo, control))]
            for column, v in columns:
                out.append(("grpo_vs_control", str(seed), column, [v]))
    return out


def _cell(values: list) -> str:
    if any(v is None for v in values):
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def table(rows: list, section: str, k: int, first: str = "") -> str:
    """A markdown table of one section of `cells` ("" where the section has no rows)."""
    from mathft_jax.results.voting import metric_label
    picked = [r for r in rows if r[0] == section]
    if not picked:
        return ""
    cols = list(dict.fromkeys(r[2] for r in picked))

    def label(c):
        return LABELS.get(c) or (metric_label(c, k) if c in METRICS else c)

    lines = [f"| {first} | ".replace("|  |", "| |") + " | ".join(label(c) for c in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    for row in dict.fromkeys(r[1] for r in picked):
        vals = {r[2]: r[3] for r in picked if r[1] == row}
        lines.append(f"| {row} | " + " | ".join(_cell(vals[c]) if c in vals else ""
                                                 for c in cols) + " |")
    return "\n".join(lines)


def paired_pass_at_1(run_a: str, gen_a: str, run_b: str, gen_b: str) -> tuple:
    """(a - b, low, high) in points: Pass@1 of `run_a`'s `gen_a` test samples (sample_eval/)
    minus `run_b`'s `gen_b`, paired over problems (bench/paired_pass_at_1.py), each graded as
    its evaluate stage graded it (results.json's grader, and policy where it re-extracted)."""
    rates = []
    for run, generator in ((run_a, gen_a), (run_b, gen_b)):
        grading = results(run)[generator]["grading"]
        policy = grading["policy"] if grading.get("re_extracted") else None
        rates.append(paired.pass_rates(os.path.join(run, "sample_eval", f"{generator}.jsonl"),
                                       policy, grading["grader"]))
    if rates[0].keys() != rates[1].keys():
        raise SystemExit(f"{run_a} and {run_b} sampled different test problems")
    return paired.paired_difference(*rates)[:3]


def grpo_intervals(out_dir: str, seeds: list, runs: list) -> dict:
    """{(seed, row): paired_pass_at_1 of the GRPO row's run against the control}."""
    if "control" not in runs:
        return {}
    return {(seed, row): paired_pass_at_1(os.path.join(out_dir, f"seed{seed}", run), "grpo",
                                          os.path.join(out_dir, f"seed{seed}", "control"), "mtsf")
            for seed in seeds for row, run, _ in RL_ROWS if run.startswith("grpo") and run in runs}


def interval_table(intervals: dict) -> str:
    """Seeds by GRPO rows, each cell "difference [low, high]"."""
    seeds = list(dict.fromkeys(seed for seed, _ in intervals))
    methods = list(dict.fromkeys(row for _, row in intervals))
    lines = ["| seed | " + " | ".join(f"{m} - control" for m in methods) + " |",
             "| --- |" + " ---: |" * len(methods)]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(
            "{:+.1f} [{:+.1f}, {:+.1f}]".format(*intervals[seed, m]) for m in methods) + " |")
    return "\n".join(lines)


def wins(rows: list, method: str = "GRPO") -> tuple:
    """(seeds where `method`'s Pass@1 beats the control's, seeds compared)."""
    diffs = [r[3][0] for r in rows if r[0] == "grpo_vs_control" and r[2] == f"{method} - control"]
    return sum(d is not None and d > 0 for d in diffs), len(diffs)


def complete_runs(out_dir: str, seeds: list) -> list:
    """The runs whose results exist for every seed, in RUNS order."""
    return [name for name in RUNS if all(os.path.exists(os.path.join(
        out_dir, f"seed{seed}", name, "evaluate", "results.json")) for seed in seeds)]


def sections(rows: list, k: int, intervals: dict | None = None) -> str:
    """The report's tables, each under its heading where it has rows (intervals:
    `grpo_intervals`)."""
    parts = []
    style = table(rows, "style", k)
    if style:
        parts.append(f"## Steps-style against terse-style SSFT (finer-grained solutions help?)\n\n{style}")
    if table(rows, "ssft", k):
        parts.append(f"## The SSFT generator, voting and re-ranking\n\n{table(rows, 'ssft', k)}")
    if table(rows, "mtsf", k):
        parts.append(f"## SSFT against MTSF\n\n{table(rows, 'mtsf', k)}")
    if table(rows, "control", k):
        parts.append(f"""MTSF's gain over its own SSFT, against the control's: the same SSFT checkpoint continued
for the MTSF stage's steps and schedule with no evaluator stage between (percentage points;
each run's SSFT row is sampled in that run, so the differences are paired):

{table(rows, "control", k)}""")
    if table(rows, "rl", k):
        counts = [(method, *wins(rows, method)) for method, run, _ in RL_ROWS
                  if run.startswith("grpo")]
        beats = ", ".join(f"{m} {w} of {n}" for m, w, n in counts if n)
        versus = (f"\n\nGRPO against the control, Pass@1 per seed, all from the same SSFT "
                  f"checkpoint (seeds on which it beats the control: {beats}):\n\n"
                  f"{table(rows, 'grpo_vs_control', k, 'seed')}" if beats else "")
        if intervals:
            versus += ("\n\nThe same differences with a 95% interval, paired over the test "
                       "problems (bootstrap; it covers the test set, which problems and their "
                       f"sampled solutions, not training's randomness):\n\n"
                       f"{interval_table(intervals)}")
        parts.append(f"""## DPO and GRPO against MTSF and its control

Each from the same seed's SSFT checkpoint (steps_margin's `ssft`, linked); RR.Top-{k} of
every generator by the same seed's margin evaluator (steps_margin's `scr`).

{EXTRA_COMPUTE}

{table(rows, "rl", k)}

Gain over the SSFT samples of the method's own run (percentage points, paired):

{table(rows, "rl_gain", k)}{versus}""")
    return "\n\n".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out_dir", default="runs/replicate")
    p.add_argument("--runs", default="", help=f"comma-separated runs to run (default: all of "
                   f"{','.join(RUNS)}); the report covers every run finished for all seeds")
    p.add_argument("--gin_file", action="append", default=[],
                   help="a gin file for every run, after its own (the regime); repeatable")
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="a gin binding for every run, last (the regime); repeatable")
    p.add_argument("--results_md", default="",
                   help="where the report goes (default <out_dir>/RESULTS.md); "
                   "docs/RESULTS.md only when named, so a variant run cannot overwrite it")
    p.add_argument("--note", default="", help="how the runs were made (load, resumes), for the record")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "log.txt"), "a") as log:
        for seed in seeds:
            print(f"seed {seed}", flush=True)
            base = os.path.join(out_dir, f"seed{seed}")
            for name in selected_runs(args.runs):
                if name in SHARED_STAGES:
                    share_stages(f"{base}/steps_margin", f"{base}/{name}", SHARED_STAGES[name])
                run_pipeline(f"{base}/{name}", RUNS[name] + args.gin_file, seed,
                             run_bindings(name, base) + args.gin_bindings, log)
    runs = complete_runs(out_dir, seeds)
    per_seed = [{name: results(os.path.join(out_dir, f"seed{seed}", name)) for name in runs}
                for seed in seeds]
    minutes = stage_minutes(out_dir, seeds, runs)
    first = per_seed[0][runs[0]]
    some = next(iter(first.values()))
    k, n, problems = some["k"], some["n_samples"]["max"], some["n_problems"]
    rows = cells(per_seed, k, extra_minutes(out_dir, seeds), seeds)
    command = "python bench/replicate.py " + shlex.join(sys.argv[1:])
    regime = ""
    if args.gin_file or args.gin_bindings:
        regime = (" The regime differs from those files by, for every run: "
                  + ", ".join(f"`{x}`" for x in args.gin_file + args.gin_bindings) + ".")
    text = f"""# Toy-scale replication

Liu et al. (2023)'s recipe at toy scale: the ~1M-parameter `tiny` model on the synthetic
arithmetic curriculum (level 2), settings of `gin_configs/runs/synthetic_base.gin` (those
of `make demo` before it took 650 SSFT steps and the likelihood evaluator): SSFT 350
steps, SCR 80 steps, MTSF 100 steps, N = {n} samples, K = {k},
{problems} test problems.{regime} Values are percentages, mean ± std over seeds {seeds}
(the seed sets the trainer's data order and initialisation and the sampler's rng).
Runs: {", ".join(runs)}.

Command: `{command}` ({minutes:.0f} minutes of stage time, summed from the stages'
DONE.json){'; ' + args.note if args.note else ''}.
Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.

{sections(rows, k, grpo_intervals(out_dir, seeds, runs))}

## Per seed

```json
{json.dumps([{name: {g: {m: None if v["value"] is None else round(100 * v["value"], 2)
                               for m, v in res[g]["metrics"].items()}
                    for g in res} for name, res in r.items()} for r in per_seed], indent=None)}
```
"""
    path = (os.path.join(REPO, args.results_md) if args.results_md
            else os.path.join(out_dir, "RESULTS.md"))
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
