"""The recipe end to end: `python -m mathft_jax.pipeline --gin_file=gin_configs/runs/mtsf.gin`.

Stages (each under its own directory of `pipeline.run_dir`, skipped once complete, so a
killed pipeline resumes in the stage it was in; train and infer stages resume within
themselves too):

  1 ssft           SSFT: MLE on solutions                         (gin scope `ssft`)
  2 sample_train   N candidates per training problem              (gin scope `sample_train`)
  3 scr_data       grade them; evaluator-data statistics
  4 scr            evaluator from the SSFT checkpoint             (gin scope `scr`)
  5 mtsf           SSFT again from the SCR checkpoint (MTSF)      (gin scope `mtsf`)
  6 sample_eval    N samples per evaluation problem, for the SSFT and the MTSF generator
                                                                   (gin scope `sample_eval`)
  7 score          S(X|P) of every evaluation candidate by the evaluator of stage 4
  8 evaluate       Pass@1, Pass@N, Maj1@N, MajK@N, RR.All, RR.Top-K, W.RR, W.RR.MajK with
                   bootstrap intervals; results.json, report.md and plots

`pipeline.variant` picks the paper's variants: "ssft" (1, 6, 8), "ssft_scr" (1-4, 6-8) or
"mtsf" (all); and MTSF's control, "mtsf_control" (1, 5, 6, 8): stage 5 continues SSFT from
the SSFT checkpoint with no evaluator stage between, so MTSF's gain can be told apart from
that of its extra SSFT steps. Beyond the paper (issue #17, docs/rl.md), each from the SSFT
checkpoint: "dpo" (1-3, then `dpo_data`: preference pairs of the graded training candidates
with the SSFT model's reference log-likelihoods, then `dpo`: DPO on them, gin scope `dpo`;
6, 8) and "grpo" (1, then `grpo`: `mathft_jax.rl` on the training problems, gin scope
`grpo`; 6, 8). `pipeline.evaluator_checkpoint` adds stage 7 to a variant without an scr
stage, scoring with another run's evaluator. Per-stage trainer and sampler settings are gin
scopes, e.g. `ssft/train.total_steps = 400`, `scr/train.objective = @evaluator_objective`.
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.pipeline")


import dataclasses
import json
import time
from typing import Optional, Sequence

import gin
from absl import logging

from mathft_jax import evaluate, grading
from mathft_jax.core import (atomic, cli_errors, distributed, metrics_writer, preemption,
                             provenance, settings, storage)
from mathft_jax.results import candidates, report
from mathft_jax.core.preemption import Preempted

VARIANTS = {
    "ssft": ("ssft", "sample_eval", "evaluate"),
    "ssft_scr": ("ssft", "sample_train", "scr_data", "scr", "sample_eval", "score", "evaluate"),
    "mtsf": ("ssft", "sample_train", "scr_data", "scr", "mtsf", "sample_eval", "score", "evaluate"),
    "mtsf_control": ("ssft", "mtsf", "sample_eval", "evaluate"),
    "dpo": ("ssft", "sample_train", "scr_data", "dpo_data", "dpo", "sample_eval", "evaluate"),
    "grpo": ("ssft", "grpo", "sample_eval", "evaluate"),
}
GENERATORS = ("ssft", "mtsf", "dpo", "grpo")  # stages whose checkpoint is sampled and evaluated
DONE = "DONE.json"
SCOPED_STAGES = ("ssft", "sample_train", "scr", "mtsf", "sample_eval", "dpo", "grpo")  # gin scopes
TRAIN_STAGES = ("ssft", "scr", "mtsf", "dpo")
# Sampling stages and the generators each samples from.
SAMPLE_STAGES = {"sample_train": lambda generators: ["ssft"],
                 "sample_eval": lambda generators: generators}
# Bindings that change where or how fast, not what a stage computes; `variant` (and
# `evaluator_checkpoint`) pick the stages, and each stage's own inputs are compared as its
# resolved TrainConfig/InferConfig (score and evaluate: the evaluator of
# `evaluator_checkpoint`), so one SSFT can serve several variants.
NOT_SETTINGS = ("pipeline.run_dir", "pipeline.stop_after", "pipeline.processes",
                "pipeline.ignore_config_changes", "pipeline.variant", "scr_candidates_file.path",
                "preference_file.path", "pipeline.evaluator_checkpoint")


class Run:
    """Paths of one pipeline run (local or `gs://`) and its per-stage completion markers."""

    def __init__(self, run_dir: str):
        self.root = str(storage.path(run_dir))

    def stage_dir(self, stage: str) -> str:
        return storage.join(self.root, stage)

    def done(self, stage: str) -> bool:
        return storage.exists(storage.join(self.stage_dir(stage), DONE))

    def mark_done(self, stage: str, info: dict) -> None:
        if not distributed.is_main_process():
            return
        atomic.write_json(storage.join(self.stage_dir(stage), DONE), info, indent=1)

    # artefacts
    def checkpoint(self, stage: str) -> str:
        return storage.join(self.stage_dir(stage), "checkpoints")

    def train_candidates(self) -> str:
        return storage.join(self.stage_dir("sample_train"), "candidates.jsonl")

    def graded_train_candidates(self) -> str:
        return storage.join(self.stage_dir("scr_data"), "graded.jsonl")

    def eval_candidates(self, generator: str, scored: bool = False) -> str:
        stage = "score" if scored else "sample_eval"
        return storage.join(self.stage_dir(stage), f"{generator}.jsonl")

    def preferences(self) -> str:
        return storage.join(self.stage_dir("dpo_data"), "preferences.jsonl")

    def results(self) -> str:
        return storage.join(self.stage_dir("evaluate"), "results.json")


@gin.configurable("pipeline")
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The recipe's settings, bound in gin as `pipeline.<field>`.

    ssft_task: the SSFT seqio task (MATH: math_ssft_math, math_ssft_prm800k, math_ssft_mix).
    scr_task: scr_pairwise (margin, `evaluator_objective`), scr_pointwise (xent,
    `lm_objective`), scr_steps_pairwise (line prefixes) or scr_sequence_pairwise (pairs in
    generation format, `sequence_objective`: a likelihood evaluator, scored with
    `score_records.method='likelihood'`), built from the graded training candidates.
    sample_task / *_split: the problems `infer` samples (a source of mathft_jax.data.sources).
    evaluator_checkpoint: an SCR evaluator checkpoint (e.g. another run's scr/checkpoints)
    to score the evaluation samples of a variant without an scr stage (ssft, mtsf_control,
    dpo, grpo): adds the `score` stage, so RR.All, RR.Top-K and W.RR are reported for its
    generators too (bench/replicate.py scores DPO and GRPO with the margin run's evaluator).
    stop_after: stop after this stage (e.g. 'ssft', to look at the SSFT model first); a
    later run on the same run_dir goes on from there.
    ignore_config_changes: reuse finished stages even when their recorded gin bindings
    (`<stage>/bindings.json`) differ from this run's; by default such a rerun stops before
    any compute and names the bindings that differ.
    """

    run_dir: Optional[str] = None
    variant: str = "mtsf"
    ssft_task: str = "synthetic_arith_steps"
    init_checkpoint: Optional[str] = None
    scr_task: str = "scr_pairwise"
    sample_task: str = "synthetic_arith_steps"
    train_split: str = "train"
    eval_split: str = "test"
    k: int = 8
    bootstrap_resamples: int = 1000
    processes: Optional[int] = None
    grader: str = "mathft"  # who judges answers (scr_data, grpo's reward, evaluate): grading.GRADERS
    evaluator_checkpoint: Optional[str] = None
    stop_after: Optional[str] = None
    ignore_config_changes: bool = False

    def validate(self) -> "PipelineConfig":
        if not self.run_dir:
            raise settings.SettingError("pipeline.run_dir is not set")
        if self.variant not in VARIANTS:
            raise settings.SettingError(f"pipeline.variant={self.variant!r}; expected one of "
                                        f"{sorted(VARIANTS)}")
        settings.check("pipeline", k=self.k, bootstrap_resamples=self.bootstrap_resamples,
                       processes=self.processes)
        try:
            grading.get_grader(self.grader)
        except ValueError as error:
            raise settings.SettingError(f"pipeline.grader: {error}") from None
        if self.evaluator_checkpoint and "scr" in VARIANTS[self.variant]:
            raise settings.SettingError(
                f"pipeline.evaluator_checkpoint is for variants without an scr stage; variant "
                f"{self.variant!r} scores with its own evaluator")
        if "score" in VARIANTS[self.variant]:
            _check_score_method(self.scr_task)
        if self.stop_after is not None and self.stop_after not in self.stages:
            raise settings.SettingError(
                f"pipeline.stop_after={self.stop_after!r} is not a stage of variant "
                f"{self.variant!r}: {', '.join(self.stages)}")
        return self

    @property
    def stages(self) -> tuple:
        stages = VARIANTS[self.variant]
        if self.evaluator_checkpoint and "score" not in stages:  # score before evaluate
            stages = stages[:-1] + ("score", stages[-1])
        return stages

    def evaluator(self, run: "Run") -> str:
        """The checkpoint of the evaluator that scores: the run's scr stage's, or the given one."""
        return self.evaluator_checkpoint or run.checkpoint("scr")

    @property
    def generators(self) -> list:
        return [g for g in GENERATORS if g in self.stages]


def _check_score_method(scr_task: str) -> None:
    """The run's own evaluator is read the way it was trained: an evaluator of sequence pairs
    in generation format by its likelihood, a label evaluator by its label."""
    try:
        method = gin.query_parameter("score_records.method")
    except ValueError:  # unbound: the default
        method = "label"
    if (scr_task == "scr_sequence_pairwise") != (method == "likelihood"):
        raise settings.SettingError(
            f"pipeline.scr_task={scr_task!r} with score_records.method={method!r}: an "
            "evaluator trained on scr_sequence_pairwise scores with method='likelihood', and "
            "method='likelihood' needs that task (gin_configs/runs/ssft_scr_likelihood.gin)")


def pipeline(config: Optional[PipelineConfig] = None, **fields) -> dict:
    """Run (or resume) the recipe; returns the evaluation results. config defaults to
    `PipelineConfig()` from gin; `fields` replace some of its settings."""
    cfg = settings.resolve(PipelineConfig, config, **fields)
    run = Run(cfg.run_dir)
    stages, generators = cfg.stages, cfg.generators
    logging.info("pipeline %s in %s: %s", cfg.variant, run.root, " -> ".join(stages))
    if "scr" in stages:  # the scr tasks read it (bound before the check: it is a setting)
        with gin.unlock_config():
            gin.bind_parameter("scr_candidates_file.path", run.graded_train_candidates())
    if "dpo" in stages:  # the dpo_pairs task reads it
        with gin.unlock_config():
            gin.bind_parameter("preference_file.path", run.preferences())
    with provenance.unrecorded():  # every stage's settings, checked before anything runs
        configs = {stage: stage_configs(cfg, run, stage) for stage in stages}
    resolved = {stage: _resolved(cfg, run, stage, configs[stage]) for stage in stages}
    distributed.check_shared_dir(run.root)
    if not cfg.ignore_config_changes:
        for stage in stages:
            if run.done(stage):
                provenance.check_unchanged(
                    run.stage_dir(stage), f"stage {stage} in {run.root}",
                    "pipeline.ignore_config_changes", NOT_SETTINGS, resolved[stage],
                    _field_defaults(configs[stage]))
    steps = {
        "ssft": lambda: _train_stage(cfg, run, "ssft"),
        "sample_train": lambda: _sample_stage(cfg, run, "sample_train", "ssft"),
        "scr_data": lambda: _scr_data_stage(run, cfg.processes, cfg.grader),
        "scr": lambda: _train_stage(cfg, run, "scr"),
        "mtsf": lambda: _train_stage(cfg, run, "mtsf"),
        "dpo_data": lambda: _dpo_data_stage(cfg, run),
        "dpo": lambda: _train_stage(cfg, run, "dpo"),
        "grpo": lambda: _grpo_stage(cfg, run),
        "sample_eval": lambda: {g: _sample_stage(cfg, run, "sample_eval", g) for g in generators},
        "score": lambda: {g: score_stage(run, g, cfg.evaluator(run)) for g in generators},
        "evaluate": lambda: _evaluate_stage(run, generators, "score" in stages, cfg.k,
                                            cfg.bootstrap_resamples, cfg.processes, cfg.grader,
                                            [s for s in stages if s in TRAIN_STAGES + ("grpo",)]),
    }
    for index, stage in enumerate(stages, 1):
        if run.done(stage):
            _announce(f"[{index}/{len(stages)}] {stage}: already complete")
        else:
            _announce(f"[{index}/{len(stages)}] {stage}")
            t0 = time.time()
            info = steps[stage]() or {}
            distributed.barrier(f"pipeline_{stage}")
            provenance.record(run.stage_dir(stage), provenance.binding_record(
                [s for s in stages[:index] if s in SCOPED_STAGES], NOT_SETTINGS,
                resolved[stage]))
            run.mark_done(stage, {"seconds": round(time.time() - t0, 1), **_jsonable(info)})
            # A training stage installs the SIGTERM handler (preemption.install); a SIGTERM
            # during a later stage then only sets the flag: sampling stops after its chunk
            # (infer), scoring and grading when they end, here. Before any training stage,
            # SIGTERM ends the process: sampling resumes by chunk.
            if index < len(stages) and distributed.any_process(preemption.requested()):
                raise Preempted(f"pipeline preempted after stage {stage}; rerun to resume")
        if stage == cfg.stop_after:
            return {}
    return json.loads(storage.read_text(run.results()))


def _announce(line: str) -> None:
    """Stage headers: to the log, and to the console of process 0 (quiet runs too)."""
    logging.info(line)
    if distributed.is_main_process():
        print(line, flush=True)


def _jsonable(info):
    return json.loads(json.dumps(info, default=str))


def _train_config(cfg: PipelineConfig, run: Run, stage: str):
    """A training stage's TrainConfig: its gin scope's settings plus where it reads and
    writes (SSFT from the imported checkpoint, SCR from SSFT, MTSF from SCR)."""
    from mathft_jax import train as train_lib
    task = {"scr": cfg.scr_task, "dpo": "dpo_pairs"}.get(stage, cfg.ssft_task)
    init = {"ssft": cfg.init_checkpoint, "scr": run.checkpoint("ssft"),
            "mtsf": run.checkpoint("scr" if "scr" in cfg.stages else "ssft"),
            "dpo": run.checkpoint("ssft")}[stage]
    with gin.config_scope(stage):
        return train_lib.TrainConfig(model_dir=run.checkpoint(stage), task=task,
                                     init_checkpoint=init).validate()


def stage_configs(cfg: PipelineConfig, run: Run, stage: str) -> dict:
    """The typed configs a stage runs with, validated: {"train": TrainConfig,
    "grpo": GrpoConfig, "infer[<generator>]": InferConfig}, those the stage has."""
    configs = {"train": _train_config(cfg, run, stage)} if stage in TRAIN_STAGES else {}
    if stage == "grpo":
        configs["grpo"] = _grpo_config(cfg, run)
    for generator in SAMPLE_STAGES.get(stage, lambda generators: [])(cfg.generators):
        configs[f"infer[{generator}]"] = _infer_config(cfg, run, stage, generator)
    return configs


def _resolved(cfg: PipelineConfig, run: Run, stage: str,
              configs: Optional[dict] = None) -> dict:
    """A stage's settings as this run resolves them (`stage_configs`, made here when not
    given), for the rerun check: {"train.task": repr, "infer[mtsf].num_samples": repr, ...},
    paths inside the run written relative to it (a stage shared with another run directory
    compares equal)."""
    if configs is None:
        configs = stage_configs(cfg, run, stage)
    out = {f"{name}.{field.name}": provenance.stable_repr(getattr(config, field.name))
           for name, config in configs.items() for field in dataclasses.fields(config)}
    if stage in ("score", "evaluate") and cfg.evaluator_checkpoint:  # another run's evaluator:
        # a rerun that adds it to a finished run stops at a stale evaluate (unscored) stage
        out[f"{stage}.evaluator"] = provenance.stable_repr(cfg.evaluator_checkpoint)
    return {key: value.replace(run.root, "<run_dir>") for key, value in out.items()}


def _field_defaults(configs: dict) -> dict:
    """The code defaults of the settings `_resolved` records, by the same keys: a setting
    added since a stage ran is absent from its record, and at its default (the behaviour
    from before it existed) it is no change. Fields without a plain default (a
    default_factory) have none here, so adding one always counts as a change."""
    return {f"{name}.{field.name}": provenance.stable_repr(field.default)
            for name, config in configs.items() for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING}


def _infer_config(cfg: PipelineConfig, run: Run, stage: str, generator: str):
    from mathft_jax import infer
    split, output = ((cfg.train_split, run.train_candidates()) if stage == "sample_train"
                     else (cfg.eval_split, run.eval_candidates(generator)))
    with gin.config_scope(stage):
        return infer.InferConfig(checkpoint=run.checkpoint(generator), output_path=output,
                                 task=cfg.sample_task, split=split).validate()


def _train_stage(cfg: PipelineConfig, run: Run, stage: str) -> dict:
    from mathft_jax import train as train_lib
    config = _train_config(cfg, run, stage)
    with gin.config_scope(stage):  # the optimizer, schedule and objective are scoped too
        result = train_lib.train(config)
    if result.preempted:
        raise Preempted(f"stage {stage} preempted at step {result.final_step}; rerun to resume")
    return {"final_step": result.final_step, "last_metrics": result.last_metrics}


def _sample_stage(cfg: PipelineConfig, run: Run, stage: str, generator: str) -> dict:
    from mathft_jax import infer
    config = _infer_config(cfg, run, stage, generator)
    with gin.config_scope(stage):
        infer.infer(config)
    return {"output": config.output_path}


def _scr_data_stage(run: Run, processes: Optional[int], grader: str = "mathft") -> dict:
    """Grade the training candidates and count what the evaluator data will hold."""
    from mathft_jax.data import formats
    records = candidates.read_candidates(run.train_candidates())
    graded = candidates.grade_candidates(records, processes=processes, grader=grader)
    if distributed.is_main_process():
        candidates.write_candidates(run.graded_train_candidates(), graded)
    _, pair_stats = formats.pairwise_examples(graded)
    _, point_stats = formats.pointwise_examples(graded)
    n = sum(len(r["samples"]) for r in graded)
    correct = sum(bool(s.get("correct")) for r in graded for s in r["samples"])
    stats = {"problems": len(graded), "samples": n, "correct_fraction": correct / max(n, 1),
             "pairs": dict(pair_stats), "pointwise": dict(point_stats)}
    logging.info("evaluator data: %s", stats)
    if not pair_stats.get("pairs"):
        raise cli_errors.DataError(
            "no (correct, incorrect) pairs in the training candidates: the SSFT model is always "
            f"right or always wrong ({stats}); train longer or sample more")
    return stats


def _dpo_data_stage(cfg: PipelineConfig, run: Run) -> dict:
    """Preference pairs of the graded training candidates, with the SSFT checkpoint's
    log-likelihoods as DPO's reference, at the `dpo` stage's sequence length."""
    from mathft_jax.scoring import reference
    return reference.make_preferences(
        output_path=run.preferences(), reference_checkpoint=run.checkpoint("ssft"),
        candidates_path=run.graded_train_candidates(),
        sequence_length=_train_config(cfg, run, "dpo").sequence_length)


def _grpo_config(cfg: PipelineConfig, run: Run):
    """The grpo stage's GrpoConfig: gin scope `grpo`, from the SSFT checkpoint, on the
    training split of the sampled task, its `correct` reward judged by `pipeline.grader` (as
    the scr_data and evaluate stages judge); a supervised term (`grpo.sft_weight`) learns
    the SSFT task's solutions unless `grpo.sft_task` names others."""
    from mathft_jax.rl import loop
    with gin.config_scope("grpo"):
        config = loop.GrpoConfig(model_dir=run.checkpoint("grpo"),
                                 init_checkpoint=run.checkpoint("ssft"), task=cfg.sample_task,
                                 split=cfg.train_split, grader=cfg.grader).validate()
    if config.sft_weight and config.sft_task is None:  # (unset without: no change to a record)
        config = dataclasses.replace(config, sft_task=cfg.ssft_task)
    return config


def _grpo_stage(cfg: PipelineConfig, run: Run) -> dict:
    from mathft_jax.rl import loop
    config = _grpo_config(cfg, run)
    with gin.config_scope("grpo"):  # the optimizer, schedule, objective and rewards too
        result = loop.grpo(config)
    if result.preempted:
        raise Preempted(f"stage grpo preempted at iteration {result.final_iteration}; rerun to resume")
    return {"final_iteration": result.final_iteration, "last_metrics": result.last_metrics}


def score_stage(run: Run, generator: str, evaluator_dir: str) -> dict:
    """Fill every evaluation sample's `score` by the SCR evaluator checkpoint `evaluator_dir`
    (`PipelineConfig.evaluator`): its S(X|P), or its likelihood of the sample
    (`score_records.method`)."""
    from mathft_jax.convert import checkpoints
    from mathft_jax.models import partitioning
    from mathft_jax.scoring import evaluator
    from mathft_jax.data import vocab as vocab_lib
    from mathft_jax.models.config import DecoderConfig
    records = candidates.read_candidates(run.eval_candidates(generator))
    cfg = DecoderConfig().validate()
    partitioner = partitioning.Partitioner.create(cfg)
    params = checkpoints.load_params(evaluator_dir, cfg, partitioner)
    scored = evaluator.score_records(params, cfg, vocab_lib.get_vocabulary(), records,
                                     partitioner=partitioner)
    if distributed.is_main_process():
        candidates.write_candidates(run.eval_candidates(generator, scored=True), records)
    return {"scored": scored}


def _evaluate_stage(run: Run, generators: Sequence[str], scored: bool, k: int,
                    resamples: int, processes: Optional[int], grader: str,
                    trained: Sequence[str] = ()) -> dict:
    """Grade, summarise and report on process 0 only: grading is host work with no
    collective, and only process 0 writes. The others wait at the stage's barrier in
    `pipeline` and then read results.json. The barrier here first: on a resumed run it may
    be the first collective, and gloo (CPU) gives a late peer only 30 s to join that one.
    The report also plots the training curves of the `trained` stages that logged any."""
    distributed.barrier("pipeline_evaluate_start")
    if not distributed.is_main_process():
        return {"generators": list(generators)}
    out_dir = run.stage_dir("evaluate")
    records = {g: candidates.read_candidates(run.eval_candidates(g, scored)) for g in generators}
    graded = {g: evaluate.grade_records(records[g], processes, grader=grader) for g in generators}
    results = {g: {**evaluate.summarize_problems(problems, k, resamples),
                   "grading": evaluate.grading_info(records[g], None, grader)}
               for g, problems in graded.items()}
    report.write_report(out_dir, results, graded, k, _training_metrics(run, trained))
    atomic.write_json(run.results(), results, indent=1)
    return {"generators": list(generators)}


def _training_metrics(run: Run, stages: Sequence[str]) -> dict:
    """{stage: its metrics.jsonl rows} for the report's training curves. A file that is
    missing (a linked or older stage) or unreadable is left out, with a warning where it
    exists: a plot is not worth failing the run for."""
    found = {}
    for stage in stages:
        path = storage.join(run.checkpoint(stage), "metrics.jsonl")
        try:
            found[stage] = metrics_writer.read_metrics(run.checkpoint(stage))
        except (OSError, ValueError) as error:  # absent; a torn or foreign line
            if storage.exists(path):
                logging.warning("%s: unreadable, no training curves of %s (%s)", path, stage,
                                error)
    return found


def main(argv):
    del argv
    from mathft_jax.core import entry
    entry.parse_gin_flags()
    results = pipeline()
    if results and distributed.is_main_process():
        print(report.results_table(results), flush=True)
        run = Run(PipelineConfig().run_dir)
        print(f"\nreport: {storage.join(run.stage_dir('evaluate'), 'report.md')}", flush=True)
