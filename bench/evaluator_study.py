"""Evaluator study (issue #16): when does the SCR evaluator beat majority voting?

    .venv/bin/python bench/evaluator_study.py --seeds=0,1,2 --out_dir=runs/evaluator_study

On the synthetic curriculum with the tiny model (gin_configs/runs/synthetic_base.gin), per
seed and per generator (SSFT length: how strong the generator is), one base run trains
SSFT, samples and grades `--train_problems` training problems (the evaluator's data) and
the test problems. Every evaluator setting then reuses that base (its stages are linked,
so settings differ only in what the SCR stage does) and runs SCR -> score -> evaluate.

A setting varies the evaluator's data (problems, pairs per problem, steps), its loss
(margin, xent, a mix), its labels (the paper's words, or one token each), its template
(the paper's, or the generation prompt followed by the question) and its form (a label
read after the candidate, or a likelihood evaluator: `_setting(evaluator="likelihood")`).
For each it reports:
held-out pair accuracy (10% of the training problems, never trained on), and on the test
problems the within-problem pair accuracy and AUC of S, RR.Top-K, W.RR.MajK and Maj1@N,
with the generator's own mean log-probability (RR.LL.Top-K) as the baseline to beat.
Per base run it also reports what a verifier faces with no evaluator trained (`curriculum`):
the share of right training answers reached through a wrong arithmetic line, and how a
perfect step checker would re-rank the test samples. Settings may train on process labels
(`evaluator_labels.kind='process'`: a right answer with a wrong step counts as wrong).
Results: <out_dir>/study.json, <out_dir>/curriculum.json and, with --results_md, markdown
tables with mean +- std over seeds plus two plots. Finished stages are skipped, so a rerun
resumes; --report_only tabulates what has finished and runs nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
from replicate import share_stages  # noqa: E402  (the same links between runs)
BASE_GIN = "gin_configs/runs/ssft_scr.gin"
LIKELIHOOD_GIN = "gin_configs/evaluators/likelihood.gin"  # the likelihood evaluator's one home
HELDOUT = 0.1  # share of the training problems held out from the evaluator's training
# The generation prompt, then the evaluator's question: the candidate is read in the very
# format the SSFT model was trained to write it in.
GENERATION_TEMPLATE = ("Problem:\\n{problem}\\n\\nSolution:\\n{solution}\\n\\n"
                       "The above candidate solution is")

# Generator strength: SSFT steps (synthetic_base.gin: 350; `make demo` now takes 650).
GENERATORS = {
    "ssft350": ["ssft/train.total_steps=350"],
    "ssft1000": ["ssft/train.total_steps=1000"],
    # Twice the layers: the evaluator is the generator's copy, so this is its depth too.
    "ssft1000_8l": ["ssft/train.total_steps=1000", "DecoderConfig.num_layers=8"],
}


def _setting(problems=1024, pairs=4, steps=80, batch=16, loss="margin", labels="words",
             template="paper", lr=1e-3, data="solutions", supervision="outcome",
             evaluator="label"):
    """gin bindings of one evaluator setting (SCR-side only: the base stages are shared).
    evaluator="likelihood": no label; the SCR stage fine-tunes the generator's copy with the
    sequence margin loss on (P, X+), (P, X-) generation-format pairs, and a candidate's score
    is exp(its mean token log-probability) under it (`score_records.method`), which starts,
    before any step, as (about) the generator's own RR.LL ranking. Its held-out pair accuracy
    compares summed log-likelihoods, as `sequence_objective` trains them; the test's compares
    the scores (means): the same order for equal-length candidates. loss, labels, template
    and data="prefixes" are the label evaluator's and do not apply."""
    if evaluator not in ("label", "likelihood"):
        raise ValueError(f"evaluator={evaluator!r}: 'label' or 'likelihood'")
    if evaluator == "likelihood" and (data, loss, labels, template) != (
            "solutions", "margin", "words", "paper"):
        raise ValueError("a likelihood evaluator takes no loss, labels, template or prefixes")
    weights = {"margin": (1.0, 0.2), "xent": (0.0, 1.0), "mix": (1.0, 1.0)}[loss]
    b = [f"evaluator_heldout.max_train_problems={problems}",
         f"pairwise_examples.num_pairs={pairs}",
         f"scr/train.total_steps={steps}", f"scr/train.batch_size={batch}",
         f"scr/learning_rate_schedule.peak={lr}",
         f"scr/learning_rate_schedule.warmup_steps={max(steps // 10, 1)}",
         f"evaluator_objective.margin_weight={weights[0]}",
         f"evaluator_objective.xent_weight={weights[1]}",
         # Held-out pair accuracy four times a run, over the whole held-out split.
         f"scr/train.eval_every={max(steps // 4, 1)}", "scr/train.eval_steps=100000",
         f"evaluator_labels.kind='{supervision}'"]
    if labels == "single":  # one byte each: the label is one decision, not 8-10 tokens
        b += ["evaluator_target.positive='Y'", "evaluator_target.negative='N'"]
    if data == "prefixes":  # every labelled line prefix; a sample scores its worst prefix
        b += ["pipeline.scr_task='scr_steps_pairwise'", "score_records.steps=True"]
    if template == "generation":
        b += [f"evaluator_prompt.template='{GENERATION_TEMPLATE}'"]
    if evaluator == "likelihood":  # the file's settings, then this setting's pairs and lr
        b = gin_file_bindings(LIKELIHOOD_GIN) + b + [f"sequence_pair_examples.num_pairs={pairs}"]
    return b


def gin_file_bindings(path: str) -> list:
    """A gin file of plain bindings as `--gin_bindings` (`name=value`), so that a setting
    starts from the file and overrides what it varies after it."""
    bindings = []
    with open(os.path.join(REPO, path)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line or line.startswith(("include", "import")):
                raise ValueError(f"{path}: {line!r} is not a plain binding")
            name, value = line.split("=", 1)
            bindings.append(f"{name.strip()}={value.strip()}")
    return bindings


# name -> (what it varies, bindings). "demo" is synthetic_base.gin's SCR stage (make demo's
# until it took the likelihood evaluator); the others vary it.
SETTINGS = {
    "demo": ("the base SCR (128 problems, 4 pairs, 80 steps)", _setting(problems=128)),
    "data_1k": ("1024 problems, 4 pairs, 80 steps", _setting()),
    "data_1k_300": ("1024 problems, 4 pairs, 300 steps", _setting(steps=300)),
    "data_1k_10p_600": ("1024 problems, 10 pairs, 600 steps", _setting(pairs=10, steps=600)),
    "xent_300": ("xent loss, 300 steps", _setting(steps=300, loss="xent")),
    "mix_300": ("margin + xent, 300 steps", _setting(steps=300, loss="mix")),
    "single_300": ("single-token labels, 300 steps", _setting(steps=300, labels="single")),
    "single_1200": ("single-token labels, 10 pairs, 1200 steps",
                    _setting(pairs=10, steps=1200, labels="single")),
    "gen_300": ("generation template, 300 steps", _setting(steps=300, template="generation")),
    "gen_single_300": ("generation template, single-token labels, 300 steps",
                       _setting(steps=300, template="generation", labels="single")),
    "prefixes_300": ("line prefixes labelled step by step, 300 steps",
                     _setting(steps=300, data="prefixes")),
    "lr1e-4_300": ("peak learning rate 1e-4 instead of 1e-3, 300 steps",
                   _setting(steps=300, lr=1e-4)),
    "process_300": ("process labels (right answer and no wrong step), 300 steps",
                    _setting(steps=300, supervision="process")),
    "process_single_300": ("process labels, single-token labels, 300 steps",
                           _setting(steps=300, labels="single", supervision="process")),
    "process_single_1200": ("process labels, single-token labels, 10 pairs, 1200 steps",
                            _setting(pairs=10, steps=1200, labels="single", supervision="process")),
    "prefixes_process_300": ("line prefixes with process labels, 300 steps",
                             _setting(steps=300, data="prefixes", supervision="process")),
    "prefixes_process_1200": ("line prefixes with process labels, 10 pairs, 1200 steps",
                              _setting(pairs=10, steps=1200, data="prefixes",
                                       supervision="process")),
    # The likelihood evaluator keeps the generator's own signal at step 0; these ask whether
    # training on the pairs adds to it (a small learning rate: the generator is the start).
    "lik_300": ("likelihood evaluator: sequence margin, lr 1e-5, 300 steps",
                _setting(steps=300, lr=1e-5, evaluator="likelihood")),
    "lik_lr1e-4_300": ("likelihood evaluator: sequence margin, lr 1e-4, 300 steps",
                       _setting(steps=300, lr=1e-4, evaluator="likelihood")),
    "lik_process_300": ("likelihood evaluator, process labels, lr 1e-5, 300 steps",
                        _setting(steps=300, lr=1e-5, evaluator="likelihood",
                                 supervision="process")),
}


def run_pipeline(run_dir: str, seed: int, bindings: list, log) -> float:
    cmd = [sys.executable, "-m", "mathft_jax.pipeline", f"--gin_file={BASE_GIN}"]
    bindings = [f"pipeline.run_dir='{run_dir}'", f"train.seed={seed}", f"infer.seed={seed}",
                f"evaluator_heldout.fraction={HELDOUT}"] + bindings
    # The study makes its runs from shared stages itself, so the rerun check is off.
    bindings.append("pipeline.ignore_config_changes=True")
    cmd += [f"--gin_bindings={b}" for b in bindings] + ["--verbosity=-1"]
    env = dict(os.environ, XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.time()
    log.write(f"\n$ {shlex.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=log, stderr=log)
    return time.time() - t0


def heldout_pair_accuracy(run_dir: str) -> float | None:
    """The SCR stage's last held-out pair accuracy (the trainer's eval/ metrics)."""
    path = os.path.join(run_dir, "scr", "checkpoints", "metrics.jsonl")
    if not os.path.exists(path):
        return None
    value = None
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "eval/pair_accuracy" in row:
                value = row["eval/pair_accuracy"]
    return value


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def study_k(base: str) -> int:
    """The base run's K (`pipeline.k` in its operative config), which its settings use."""
    with open(os.path.join(base, "sample_eval", "config.gin")) as f:
        match = re.search(r"^pipeline\.k = (\d+)$", f.read(), re.M)
    if not match:
        raise SystemExit(f"{base}/sample_eval/config.gin has no pipeline.k")
    return int(match[1])


def curriculum(base: str, k: int) -> dict:
    """What a verifier faces on one base run, with no evaluator trained:
    lucky_share: of the training samples graded right, the share with a wrong "a op b = c"
      line (a right answer from wrong arithmetic; outcome labels call it right);
    step_check_*: a perfect step checker as the re-ranker of the test samples, S = 1 where
      no line is wrong and 0 where one is: its within-problem pair accuracy against the
      graded answers (a tied pair counts half, as for any S) and its RR.Top-K (ties go to
      the first sample, as for any S), K the base run's (`study_k`);
    maj1_at_n and rr_ll_topk (the generator's mean log-probability) beside them."""
    from mathft_jax.results import diagnostics, voting  # noqa: PLC0415  (the repo's package)
    from mathft_jax.data import formats  # noqa: PLC0415
    right = [s for r in read_jsonl(os.path.join(base, "sample_train", "candidates.jsonl"))
             for s, ok in zip(r["samples"], voting.grade_problem(r).correct) if ok]
    records = read_jsonl(os.path.join(base, "sample_eval", "ssft.jsonl"))
    checked = [dataclasses.replace(voting.grade_problem(r), scores=tuple(
        0.0 if formats.has_wrong_step(s["text"]) else 1.0 for s in r["samples"]))
        for r in records]
    per = [voting.problem_metrics(p, k) | diagnostics.problem_baselines(p, k) for p in checked]
    mean = lambda key: 100 * float(np.mean([m[key] for m in per]))  # noqa: E731
    lucky = [formats.has_wrong_step(s["text"]) for s in right]
    return {"lucky_share": float(np.mean(lucky)) if lucky else None,
            "step_check_pair_accuracy": diagnostics.pair_accuracy(
                [p.scores for p in checked], [p.correct for p in checked])["value"],
            "step_check_rr_topk": mean("rr_topk"), "maj1_at_n": mean("maj1_at_n"),
            "rr_ll_topk": mean("rr_ll_topk")}


def summary(run_dir: str, bindings: list) -> dict:
    with open(os.path.join(run_dir, "evaluate", "results.json")) as f:
        res = json.load(f)["ssft"]
    m, d = res["metrics"], res["diagnostics"]
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return {
        "heldout_pair_accuracy": heldout_pair_accuracy(run_dir),
        "test_pair_accuracy": d["evaluator"]["pair_accuracy"]["value"],
        "test_auc": d["evaluator"]["auc"],
        "loglik_pair_accuracy": d["loglik"]["pair_accuracy"]["value"],
        "pass_at_1": pct(m["pass_at_1"]["value"]),
        "maj1_at_n": pct(m["maj1_at_n"]["value"]),
        "rr_topk": pct(m["rr_topk"]["value"]),
        "wrr_majk": pct(m["wrr_majk"]["value"]),
        "rr_ll_topk": pct(d["baselines"]["rr_ll_topk"]["value"]),
        "rr_topk_minus_maj1": pct(d["deltas"]["rr_topk - maj1_at_n"]["value"]),
        "scr_pairs_seen": _pairs_seen(bindings),
    }


def _pairs_seen(bindings: list) -> int:
    """Evaluator pairs the SCR stage trains on: steps x pairs per batch (4 rows a label pair,
    2 a generation-format pair)."""
    value = dict(b.split("=", 1) for b in bindings)
    rows = 2 if value.get("scr/train.objective") == "@sequence_objective" else 4
    return int(value["scr/train.total_steps"]) * int(value["scr/train.batch_size"]) // rows


def run_study(out_dir: str, seeds: list, generators: list, settings: list,
              train_problems: int, report_only: bool = False) -> tuple[dict, dict]:
    """({generator: {setting: {seed: summary}}}, {generator: {seed: curriculum}}).
    report_only: run nothing; summarise the runs already finished."""
    study, bases = {}, {}
    with open(os.path.join(out_dir, "log.txt"), "a") as log:
        for seed in seeds:
            for gen in generators:
                root = os.path.join(out_dir, f"seed{seed}", gen)
                base = os.path.join(root, "base")
                base_bindings = GENERATORS[gen] + [
                    f"sample_train/infer.max_problems={train_problems}"]
                if not os.path.exists(os.path.join(base, "sample_eval", "DONE.json")):
                    if report_only:
                        continue
                    # SSFT, the evaluator's data and the test samples, once per generator
                    # (its SCR stage is synthetic_base.gin's, on the base's data: setting "demo").
                    secs = run_pipeline(base, seed, base_bindings + ["pipeline.stop_after='sample_eval'"]
                                        + SETTINGS["demo"][1], log)
                    print(f"seed {seed} {gen} base: {secs:.0f} s", flush=True)
                bases.setdefault(gen, {})[seed] = curriculum(base, study_k(base))
                for name in settings:
                    run = os.path.join(root, name)
                    if not os.path.exists(os.path.join(run, "evaluate", "DONE.json")):
                        if report_only:
                            continue
                        share_stages(base, run, ("ssft", "sample_train", "scr_data", "sample_eval"))
                        # The linked stages were made beside another SCR setting: settings
                        # bind only SCR-side values, so the rest is the base's.
                        secs = run_pipeline(run, seed, base_bindings + SETTINGS[name][1], log)
                        print(f"seed {seed} {gen} {name}: {secs:.0f} s", flush=True)
                    study.setdefault(gen, {}).setdefault(name, {})[seed] = summary(run, SETTINGS[name][1])
    return study, bases


COLUMNS = (("heldout_pair_accuracy", "held-out pair acc", 1), ("test_pair_accuracy", "test pair acc", 1),
           ("test_auc", "test AUC", 1), ("rr_topk", "RR.Top-K", 0), ("wrr_majk", "W.RR.MajK", 0),
           ("maj1_at_n", "Maj1@N", 0), ("rr_ll_topk", "RR.LL.Top-K", 0),
           ("rr_topk_minus_maj1", "RR.Top-K − Maj1@N", 0))


CURRICULUM_COLUMNS = (("lucky_share", "right answers with a wrong step", 1),
                      ("step_check_pair_accuracy", "step checker: test pair acc", 1),
                      ("step_check_rr_topk", "step checker: RR.Top-K", 0),
                      ("maj1_at_n", "Maj1@N", 0), ("rr_ll_topk", "RR.LL.Top-K", 0))


def curriculum_markdown(bases: dict) -> str:
    """Per generator, what the verifier faces (`curriculum`), mean +- std over seeds."""
    lines = ["\n### What a verifier faces (no evaluator trained)\n",
             "| generator | seeds | " + " | ".join(c[1] for c in CURRICULUM_COLUMNS) + " |",
             "| --- | ---: |" + " ---: |" * len(CURRICULUM_COLUMNS)]
    for gen, per_seed in bases.items():
        lines.append(f"| {gen} | {len(per_seed)} | " + " | ".join(
            _cell([s[key] for s in per_seed.values()], scale)
            for key, _, scale in CURRICULUM_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(values: list, scale: int) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    digits = 3 if scale else 1
    if len(vals) == 1:  # one seed: no spread to show
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def markdown(study: dict) -> str:
    lines = []
    for gen, rows in study.items():
        lines += [f"\n### Generator {gen}\n",
                  "| setting | seeds | " + " | ".join(c[1] for c in COLUMNS) + " | RR.Top-K > Maj1@N |",
                  "| --- | ---: |" + " ---: |" * (len(COLUMNS) + 1)]
        for name, per_seed in rows.items():
            wins = sum(s["rr_topk"] > s["maj1_at_n"] for s in per_seed.values())
            lines.append(f"| {name}: {SETTINGS[name][0]} | {len(per_seed)} | " + " | ".join(
                _cell([s[key] for s in per_seed.values()], scale) for key, _, scale in COLUMNS)
                + f" | {wins}/{len(per_seed)} seeds |")
    return "\n".join(lines)


def plots(study: dict, path: str) -> None:
    """Pair accuracy against evaluator data; RR.Top-K - Maj1@N against pair accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    # a marker per generator, a colour per setting: no two points share both
    names = sorted({name for rows in study.values() for name in rows})
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    for (gen, rows), marker in zip(study.items(), "os^vDP*X"):
        for name, per_seed in rows.items():
            s = list(per_seed.values())
            pairs = [v["scr_pairs_seen"] for v in s]
            acc = [v["test_pair_accuracy"] for v in s]
            delta = [v["rr_topk_minus_maj1"] for v in s]
            style = dict(s=16, marker=marker, color=colours[name])
            a.set_xscale("log"), a.scatter(pairs, acc, **style)
            b.scatter(acc, delta, label=f"{gen}/{name}", **style)
    a.set_xlabel("evaluator pairs trained on"), a.set_ylabel("test within-problem pair accuracy")
    b.axhline(0, color="grey", lw=1), b.axvline(0.75, color="grey", lw=1, ls="--")
    b.set_xlabel("test within-problem pair accuracy"), b.set_ylabel("RR.Top-K − Maj1@N (points)")
    b.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--generators", default="ssft350")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--train_problems", type=int, default=1024)
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: tabulate the seeds, generators and settings finished")
    p.add_argument("--out_dir", default="runs/evaluator_study")
    p.add_argument("--results_md", default="",
                   help="update the study's section of this markdown file (and a plot beside)")
    args = p.parse_args()
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    study, bases = run_study(out_dir, seeds, args.generators.split(","),
                             args.settings.split(","), args.train_problems, args.report_only)
    with open(os.path.join(out_dir, "study.json"), "w") as f:
        json.dump(study, f, indent=1)
    with open(os.path.join(out_dir, "curriculum.json"), "w") as f:
        json.dump(bases, f, indent=1)
    table = curriculum_markdown(bases) + "\n" + markdown(study)
    print(table)
    if args.results_md:
        write_section(os.path.join(REPO, args.results_md), study, table)


BEGIN, END = "<!-- evaluator_study:begin -->", "<!-- evaluator_study:end -->"


def write_section(path: str, study: dict, table: str) -> None:
    """The study's table, plot, command and machine between markers in `path` (appended the
    first time), so the hand-written text around it, and replicate.py's tables, stay."""
    plot = os.path.splitext(path)[0] + "_evaluator_study.png"
    plots(study, plot)
    seeds = sorted({seed for rows in study.values() for per in rows.values() for seed in per})
    section = (f"{BEGIN}\nCommand: `python bench/evaluator_study.py {shlex.join(sys.argv[1:])}` "
               f"(seeds {seeds}). Machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
               f"Python {platform.python_version()}.\n{table}\n\n"
               f"![evaluator study]({os.path.basename(plot)})\n{END}")
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
