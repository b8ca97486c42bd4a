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
from typing import Callable, Mapping, Optional

import gin
from absl import logging

from mathft_jax import evaluate
from mathft_jax.core import (atomic, cli_errors, distributed, metrics_writer, preemption,
                             provenance, settings, storage)
from mathft_jax.core.preemption import Preempted
from mathft_jax.grading import get_grader
from mathft_jax.results import candidates, report

DONE = "DONE.json"
# Bindings that change where or how fast, not what a stage computes; `variant` (and
# `evaluator_checkpoint`) pick the stages, and each stage's own inputs are compared as its
# resolved TrainConfig/InferConfig (score and evaluate: the evaluator of
# `evaluator_checkpoint`), so one SSFT can serve several variants.
NOT_SETTINGS = ("pipeline.run_dir", "pipeline.stop_after", "pipeline.processes",
                "pipeline.ignore_config_changes", "pipeline.variant", "scr_candidates_file.path",
                "preference_file.path", "pipeline.evaluator_checkpoint")


# ------------------------------------------------------------------------------ the table


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the recipe, declared once (STAGES).

    run:       the stage's function, given the run's `Context`; returns what DONE.json keeps.
    scope:     the gin scope of its settings (`ssft/train.total_steps`), or None.
    reads:     the artefacts of earlier stages it reads, as "stage.artefact"; "a|b.artefact"
               reads the first of stages a, b that the variant has. Checked before stage 1.
    writes:    its artefacts: name -> path under the stage's directory ("{generator}" for one
               file per generator).
    configs:   the typed configs it runs with ({"train": TrainConfig, "infer[ssft]": ...}),
               built and validated before stage 1 and compared with a finished stage's record
               on a rerun.
    generator: its checkpoint is a generator: sampled by sample_eval and evaluated.
    training:  what a training stage trains on (`Training`), or None.
    """

    name: str
    run: Callable[["Context"], Optional[dict]]
    scope: Optional[str] = None
    reads: tuple = ()
    writes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    configs: Callable[["Context"], dict] = lambda ctx: {}
    generator: bool = False
    training: Optional["Training"] = None


@dataclasses.dataclass(frozen=True)
class Training:
    """A training stage's task (from the pipeline's settings), the checkpoint it starts from
    (a read; None: `pipeline.init_checkpoint`) and the file its task reads (a read, passed as
    `TrainConfig.data_file`)."""

    task: Callable[["PipelineConfig"], str]
    init: Optional[str] = None
    data: Optional[str] = None


class Run:
    """Paths of one pipeline run (local or `gs://`) and its per-stage completion markers."""

    def __init__(self, run_dir: str):
        self.root = str(storage.path(run_dir))

    def stage_dir(self, stage: str) -> str:
        return storage.join(self.root, stage)

    def artefact(self, stage: str, name: str, generator: str = "") -> str:
        """Where `stage` writes its artefact `name` (STAGES[stage].writes)."""
        return storage.join(self.stage_dir(stage),
                            STAGES[stage].writes[name].format(generator=generator))

    def checkpoint(self, stage: str) -> str:
        return self.artefact(stage, "checkpoint")

    def done(self, stage: str) -> bool:
        return storage.exists(storage.join(self.stage_dir(stage), DONE))

    def mark_done(self, stage: str, info: dict) -> None:
        if not distributed.is_main_process():
            return
        atomic.write_json(storage.join(self.stage_dir(stage), DONE), info, indent=1)


@dataclasses.dataclass(frozen=True)
class Context:
    """What a stage function is given: the run's settings, its paths, the variant's stages."""

    cfg: "PipelineConfig"
    run: Run
    stages: tuple

    @property
    def generators(self) -> list:
        return [s for s in self.stages if STAGES[s].generator]

    def source(self, read: str) -> str:
        """The stage that provides a read ("scr|ssft.checkpoint" -> "scr" or "ssft")."""
        choices, _ = read.split(".")
        return next(s for s in choices.split("|") if s in self.stages)

    def input(self, read: str, generator: str = "") -> str:
        """The path of a read artefact of an earlier stage."""
        return self.run.artefact(self.source(read), read.split(".")[1], generator)

    def evaluator(self) -> str:
        """The checkpoint of the evaluator that scores: the run's scr stage's, or the given one."""
        return self.cfg.evaluator_checkpoint or self.run.checkpoint("scr")


# ------------------------------------------------------------------------------ the stages
# Each stage's function, then the table. A new stage is one function and one table entry (and
# its gin scope's settings in a gin file): docs/ARCHITECTURE.md, "Adding a stage".

def _task_needs(task: str) -> dict:
    """The TrainConfig fields a task's rows fix: pair tasks are read in whole groups by their
    own objective (unpacked), and pointwise evaluator rows by the LM loss."""
    from mathft_jax.training import objectives  # noqa: PLC0415
    pairs = {"scr_pairwise": objectives.evaluator_objective,
             "scr_steps_pairwise": objectives.evaluator_objective,
             "scr_sequence_pairwise": objectives.sequence_objective,
             "dpo_pairs": objectives.dpo_objective}
    if task in pairs:
        return {"objective": pairs[task], "pack": False}
    if task == "scr_pointwise":
        return {"objective": objectives.lm_objective}
    return {}


def _train_config(ctx: Context, stage: str):
    """A training stage's TrainConfig: its gin scope's settings plus where it reads and writes
    (SSFT from the imported checkpoint, SCR from SSFT, MTSF from SCR) and what its task needs:
    set where only an unscoped default says otherwise, an error where the stage's own scope
    binds another value."""
    from mathft_jax import train as train_lib  # noqa: PLC0415
    spec = STAGES[stage].training
    task = spec.task(ctx.cfg)
    init = ctx.input(spec.init) if spec.init else ctx.cfg.init_checkpoint
    data_file = ctx.input(spec.data) if spec.data else None
    with gin.config_scope(stage):
        config = train_lib.TrainConfig(model_dir=ctx.run.checkpoint(stage), task=task,
                                       init_checkpoint=init, data_file=data_file)
    own = provenance.explicit_bindings(["train"], [stage])
    needs = {}
    for field, value in _task_needs(task).items():
        if getattr(config, field) != value and f"{stage}/train.{field}" in own:
            raise settings.SettingError(
                f"{stage}/train.{field}={own[f'{stage}/train.{field}']}: stage {stage} trains "
                f"on {task}, which needs train.{field}={provenance.stable_repr(value)}; drop "
                "the binding or choose another task")
        needs[field] = value
    return dataclasses.replace(config, **needs).validate()


def _train_stage(ctx: Context, stage: str) -> dict:
    from mathft_jax import train as train_lib  # noqa: PLC0415
    config = _train_config(ctx, stage)
    with gin.config_scope(stage):  # the data pipeline and the objective's settings are scoped
        result = train_lib.train(config)
    if result.preempted:
        raise Preempted(f"stage {stage} preempted at step {result.final_step}; rerun to resume")
    return {"final_step": result.final_step, "last_metrics": result.last_metrics}


def _sampled(ctx: Context, stage: str) -> list:
    """The generators a sampling stage samples: SSFT's for the training problems, every
    generator's for the evaluation problems."""
    return ["ssft"] if stage == "sample_train" else ctx.generators


def _infer_config(ctx: Context, stage: str, generator: str):
    from mathft_jax import infer  # noqa: PLC0415
    split = ctx.cfg.train_split if stage == "sample_train" else ctx.cfg.eval_split
    output = ctx.run.artefact(stage, "candidates", generator)
    with gin.config_scope(stage):
        return infer.InferConfig(checkpoint=ctx.run.checkpoint(generator), output_path=output,
                                 task=ctx.cfg.sample_task, split=split).validate()


def _infer_configs(ctx: Context, stage: str) -> dict:
    return {f"infer[{g}]": _infer_config(ctx, stage, g) for g in _sampled(ctx, stage)}


def _sample_stage(ctx: Context, stage: str, generator: str) -> dict:
    from mathft_jax import infer  # noqa: PLC0415
    config = _infer_config(ctx, stage, generator)
    with gin.config_scope(stage):
        infer.infer(config)
    return {"output": config.output_path}


def _sampling(ctx: Context, stage: str) -> dict:
    outputs = {g: _sample_stage(ctx, stage, g) for g in _sampled(ctx, stage)}
    return outputs["ssft"] if stage == "sample_train" else outputs


def _scr_data_stage(ctx: Context) -> dict:
    """Grade the training candidates and count what the evaluator data will hold."""
    from mathft_jax.data import formats  # noqa: PLC0415
    records = candidates.read_candidates(ctx.input("sample_train.candidates"))
    graded = candidates.grade_candidates(records, processes=ctx.cfg.processes,
                                         grader=ctx.cfg.grader)
    if distributed.is_main_process():
        candidates.write_candidates(ctx.run.artefact("scr_data", "graded"), graded)
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


def _dpo_data_stage(ctx: Context) -> dict:
    """Preference pairs of the graded training candidates, with the SSFT checkpoint's
    log-likelihoods as DPO's reference, at the `dpo` stage's sequence length."""
    from mathft_jax.scoring import reference  # noqa: PLC0415
    dpo = _train_config(ctx, "dpo")
    return reference.make_preferences(
        output_path=ctx.run.artefact("dpo_data", "preferences"),
        reference_checkpoint=ctx.input("ssft.checkpoint"),
        candidates_path=ctx.input("scr_data.graded"),
        sequence_length=dpo.sequence_length, model=dpo.model)


def _grpo_config(ctx: Context):
    """The grpo stage's GrpoConfig: gin scope `grpo`, from the SSFT checkpoint, on the
    training split of the sampled task, its `correct` reward judged by `pipeline.grader` (as
    the scr_data and evaluate stages judge); a supervised term (`grpo.sft_weight`) learns
    the SSFT task's solutions unless `grpo.sft_task` names others."""
    from mathft_jax.rl import loop  # noqa: PLC0415
    cfg = ctx.cfg
    with gin.config_scope("grpo"):
        config = loop.GrpoConfig(model_dir=ctx.run.checkpoint("grpo"),
                                 init_checkpoint=ctx.input("ssft.checkpoint"),
                                 task=cfg.sample_task, split=cfg.train_split,
                                 grader=cfg.grader).validate()
    if config.sft_weight and config.sft_task is None:  # (unset without: no change to a record)
        config = dataclasses.replace(config, sft_task=cfg.ssft_task)
    return config


def _grpo_stage(ctx: Context) -> dict:
    from mathft_jax.rl import loop  # noqa: PLC0415
    config = _grpo_config(ctx)
    with gin.config_scope("grpo"):  # the objective's and the rewards' settings are scoped
        result = loop.grpo(config)
    if result.preempted:
        raise Preempted(f"stage grpo preempted at iteration {result.final_iteration}; "
                        "rerun to resume")
    return {"final_iteration": result.final_iteration, "last_metrics": result.last_metrics}


def score_stage(run: Run, generator: str, evaluator_dir: str) -> dict:
    """Fill every evaluation sample's `score` by the SCR evaluator checkpoint `evaluator_dir`
    (`Context.evaluator`): its S(X|P), or its likelihood of the sample
    (`score_records.method`)."""
    from mathft_jax.convert import lora_checkpoints  # noqa: PLC0415
    from mathft_jax.data import vocab as vocab_lib  # noqa: PLC0415
    from mathft_jax.models import partitioning  # noqa: PLC0415
    from mathft_jax.models.config import DecoderConfig  # noqa: PLC0415
    from mathft_jax.scoring import evaluator  # noqa: PLC0415
    records = candidates.read_candidates(run.artefact("sample_eval", "candidates", generator))
    cfg = DecoderConfig().validate()
    partitioner = partitioning.Partitioner.create(cfg)
    params = lora_checkpoints.load_model(evaluator_dir, cfg, partitioner)
    scored = evaluator.score_records(params, cfg, vocab_lib.get_vocabulary(), records,
                                     partitioner=partitioner)
    if distributed.is_main_process():
        candidates.write_candidates(run.artefact("score", "candidates", generator), records)
    return {"scored": scored}


def _evaluate_stage(ctx: Context) -> dict:
    """Grade, summarise and report on process 0 only: grading is host work with no
    collective, and only process 0 writes. The others wait at the stage's barrier in
    `pipeline` and then read results.json. The barrier here first: on a resumed run it may
    be the first collective, and gloo (CPU) gives a late peer only 30 s to join that one.
    The report also plots the training curves of the training stages that logged any."""
    distributed.barrier("pipeline_evaluate_start")
    generators = ctx.generators
    if not distributed.is_main_process():
        return {"generators": generators}
    cfg, run = ctx.cfg, ctx.run
    read = STAGES["evaluate"].reads[0]  # the scored files, else the sampled ones
    records = {g: candidates.read_candidates(ctx.input(read, g)) for g in generators}
    graded = {g: evaluate.grade_records(records[g], cfg.processes, grader=cfg.grader)
              for g in generators}
    results = {g: {**evaluate.summarize_problems(problems, cfg.k, cfg.bootstrap_resamples),
                   "grading": evaluate.grading_info(records[g], None, cfg.grader)}
               for g, problems in graded.items()}
    trained = [s for s in ctx.stages if "checkpoint" in STAGES[s].writes]
    report.write_report(run.stage_dir("evaluate"), results, graded, cfg.k,
                        _training_metrics(run, trained))
    atomic.write_json(run.artefact("evaluate", "results"), results, indent=1)
    return {"generators": generators}


def _training_metrics(run: Run, stages) -> dict:
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


def _training(name: str, training: Training, generator: bool = False) -> Stage:
    return Stage(name, lambda ctx: _train_stage(ctx, name), scope=name,
                 reads=tuple(read for read in (training.init, training.data) if read),
                 writes={"checkpoint": "checkpoints"},
                 configs=lambda ctx: {"train": _train_config(ctx, name)}, generator=generator,
                 training=training)


def _sampling_stage(name: str, reads: tuple) -> Stage:
    return Stage(name, lambda ctx: _sampling(ctx, name), scope=name, reads=reads,
                 writes={"candidates": ("candidates.jsonl" if name == "sample_train"
                                        else "{generator}.jsonl")},
                 configs=lambda ctx: _infer_configs(ctx, name))


STAGES = {stage.name: stage for stage in (
    _training("ssft", Training(task=lambda cfg: cfg.ssft_task), generator=True),
    _sampling_stage("sample_train", reads=("ssft.checkpoint",)),
    Stage("scr_data", _scr_data_stage, reads=("sample_train.candidates",),
          writes={"graded": "graded.jsonl"}),
    _training("scr", Training(task=lambda cfg: cfg.scr_task, init="ssft.checkpoint",
                              data="scr_data.graded")),
    _training("mtsf", Training(task=lambda cfg: cfg.ssft_task, init="scr|ssft.checkpoint"),
              generator=True),
    Stage("dpo_data", _dpo_data_stage, reads=("ssft.checkpoint", "scr_data.graded"),
          writes={"preferences": "preferences.jsonl"}),
    _training("dpo", Training(task=lambda cfg: "dpo_pairs", init="ssft.checkpoint",
                              data="dpo_data.preferences"), generator=True),
    Stage("grpo", _grpo_stage, scope="grpo", reads=("ssft.checkpoint",),
          writes={"checkpoint": "checkpoints"}, configs=lambda ctx: {"grpo": _grpo_config(ctx)},
          generator=True),
    _sampling_stage("sample_eval", reads=()),  # every generator's checkpoint
    Stage("score", lambda ctx: {g: score_stage(ctx.run, g, ctx.evaluator())
                                for g in ctx.generators},
          reads=("sample_eval.candidates",), writes={"candidates": "{generator}.jsonl"}),
    Stage("evaluate", _evaluate_stage, reads=("score|sample_eval.candidates",),
          writes={"results": "results.json"}),
)}
VARIANTS = {
    "ssft": ("ssft", "sample_eval", "evaluate"),
    "ssft_scr": ("ssft", "sample_train", "scr_data", "scr", "sample_eval", "score", "evaluate"),
    "mtsf": ("ssft", "sample_train", "scr_data", "scr", "mtsf", "sample_eval", "score", "evaluate"),
    "mtsf_control": ("ssft", "mtsf", "sample_eval", "evaluate"),
    "dpo": ("ssft", "sample_train", "scr_data", "dpo_data", "dpo", "sample_eval", "evaluate"),
    "grpo": ("ssft", "grpo", "sample_eval", "evaluate"),
}


# ------------------------------------------------------------------------------ the driver


@gin.configurable("pipeline")
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The recipe's settings, bound in gin as `pipeline.<field>`.

    ssft_task: the SSFT seqio task (MATH: math_ssft_math, math_ssft_prm800k, math_ssft_mix).
    scr_task: scr_pairwise (margin, `evaluator_objective`), scr_pointwise (xent,
    `lm_objective`), scr_steps_pairwise (line prefixes) or scr_sequence_pairwise (pairs in
    generation format, `sequence_objective`: a likelihood evaluator, scored with
    `score_records.method='likelihood'`), built from the graded training candidates. The
    scr stage trains with the task's objective, unpacked for the pair tasks.
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
    grader: str = "mathft"  # who judges answers (scr_data, grpo's reward, evaluate): GRADERS
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
            get_grader(self.grader)
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
        _check_reads(self)
        return self

    @property
    def stages(self) -> tuple:
        stages = VARIANTS[self.variant]
        if self.evaluator_checkpoint and "score" not in stages:  # score before evaluate
            stages = stages[:-1] + ("score", stages[-1])
        return stages

    @property
    def generators(self) -> list:
        return [s for s in self.stages if STAGES[s].generator]


def _check_reads(cfg: PipelineConfig) -> None:
    """Every artefact a stage reads is written by an earlier stage of the variant."""
    stages = cfg.stages
    for index, stage in enumerate(stages):
        for read in STAGES[stage].reads:
            choices = read.split(".")[0].split("|")
            if not any(s in stages[:index] for s in choices):
                raise settings.SettingError(
                    f"pipeline.variant={cfg.variant!r}: stage {stage} reads {read}, which no "
                    f"earlier stage of the variant writes ({' -> '.join(stages)})")


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
    ctx, resolved = prepare(settings.resolve(PipelineConfig, config, **fields))
    run, stages, cfg = ctx.run, ctx.stages, ctx.cfg
    for index, stage in enumerate(stages, 1):
        if run.done(stage):
            _announce(f"[{index}/{len(stages)}] {stage}: already complete")
        else:
            _announce(f"[{index}/{len(stages)}] {stage}")
            t0 = time.time()
            info = STAGES[stage].run(ctx) or {}
            distributed.barrier(f"pipeline_{stage}")
            scopes = [STAGES[s].scope for s in stages[:index] if STAGES[s].scope]
            provenance.record(run.stage_dir(stage), provenance.binding_record(
                scopes, NOT_SETTINGS, resolved[stage]))
            run.mark_done(stage, {"seconds": round(time.time() - t0, 1), **_jsonable(info)})
            # A training stage installs the SIGTERM handler (preemption.install); a SIGTERM
            # during a later stage then only sets the flag: sampling stops after its chunk
            # (infer), scoring and grading when they end, here. Before any training stage,
            # SIGTERM ends the process: sampling resumes by chunk.
            if index < len(stages) and distributed.any_process(preemption.requested()):
                raise Preempted(f"pipeline preempted after stage {stage}; rerun to resume")
        if stage == cfg.stop_after:
            return {}
    return json.loads(storage.read_text(run.artefact("evaluate", "results")))


def prepare(cfg: PipelineConfig) -> tuple[Context, dict]:
    """Everything before stage 1: every stage's typed configs built and validated, and the
    finished stages' records compared with them (a rerun with other settings stops here,
    naming them). Returns the run's Context and each stage's resolved settings."""
    ctx = Context(cfg, Run(cfg.run_dir), cfg.stages)
    logging.info("pipeline %s in %s: %s", cfg.variant, ctx.run.root, " -> ".join(ctx.stages))
    with provenance.unrecorded():  # every stage's settings, checked before anything runs
        configs = {stage: STAGES[stage].configs(ctx) for stage in ctx.stages}
    resolved = {stage: _resolved(ctx, stage, configs[stage]) for stage in ctx.stages}
    distributed.check_shared_dir(ctx.run.root)
    if not cfg.ignore_config_changes:
        for stage in ctx.stages:
            if ctx.run.done(stage):
                provenance.check_unchanged(
                    ctx.run.stage_dir(stage), f"stage {stage} in {ctx.run.root}",
                    "pipeline.ignore_config_changes", NOT_SETTINGS, resolved[stage],
                    {**_field_defaults(configs[stage]), **_layout_fields(resolved[stage])})
    return ctx, resolved


def _announce(line: str) -> None:
    """Stage headers: to the log, and to the console of process 0 (quiet runs too)."""
    logging.info(line)
    if distributed.is_main_process():
        print(line, flush=True)


def _jsonable(info):
    return json.loads(json.dumps(info, default=str))


def _resolved(ctx: Context, stage: str, configs: dict) -> dict:
    """A stage's settings as this run resolves them (its `configs`), for the rerun check:
    {"train.task": repr, "infer[mtsf].num_samples": repr, ...}, paths inside the run written
    relative to it (a stage shared with another run directory compares equal). A field that
    holds a config of its own (the model) is left out: its gin bindings are recorded."""
    out = {f"{name}.{field.name}": provenance.stable_repr(getattr(config, field.name))
           for name, config in configs.items() for field in dataclasses.fields(config)
           if not dataclasses.is_dataclass(getattr(config, field.name))}
    if stage in ("score", "evaluate") and ctx.cfg.evaluator_checkpoint:  # another run's
        # evaluator: a rerun that adds it to a finished run stops at a stale evaluate stage
        out[f"{stage}.evaluator"] = provenance.stable_repr(ctx.cfg.evaluator_checkpoint)
    return {key: value.replace(ctx.run.root, "<run_dir>") for key, value in out.items()}


def _layout_fields(resolved: dict) -> dict:
    """The resolved fields the pipeline derives from the run's layout and that runs recorded
    before they existed lack (`train.data_file`, once a gin binding): at today's value they
    are no change."""
    return {key: value for key, value in resolved.items() if key == "train.data_file"}


def _field_defaults(configs: dict) -> dict:
    """The code defaults of the settings `_resolved` records, by the same keys: a setting
    added since a stage ran is absent from its record, and at its default (the behaviour
    from before it existed) it is no change. Fields without a plain default (a
    default_factory) have none here, so adding one always counts as a change."""
    return {f"{name}.{field.name}": provenance.stable_repr(field.default)
            for name, config in configs.items() for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING}


def main(argv):
    del argv
    from mathft_jax.core import entry
    entry.parse_gin_flags()
    results = pipeline()
    if results and distributed.is_main_process():
        print(report.results_table(results), flush=True)
        evaluate_dir = Run(PipelineConfig().run_dir).stage_dir("evaluate")
        print(f"\nreport: {storage.join(evaluate_dir, 'report.md')}", flush=True)
