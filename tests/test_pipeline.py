"""The recipe end to end on a seconds-scale synthetic config (gin_configs/runs/smoke.gin):
every stage's outputs exist and are well-formed, and a pipeline killed during SCR resumes
there and finishes. Also: every run gin file parses."""
import glob
import json
import math
import os
import signal
import subprocess
import sys

import gin
import pytest

from mathft_jax import pipeline
from mathft_jax.core import gin_utils
from mathft_jax.results import candidates, voting
from waiting import HANG_LIMIT_S, wait_for
from xla_env import one_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _context(cfg):
    return pipeline.Context(cfg, pipeline.Run(cfg.run_dir), cfg.stages)


def _pipeline(run_dir, *bindings, log=None):
    cmd = [sys.executable, "-m", "mathft_jax.pipeline", "--gin_file=gin_configs/runs/smoke.gin",
           f"--gin_bindings=pipeline.run_dir='{run_dir}'", "--gin_bindings=scr/train.total_steps=40",
           *[f"--gin_bindings={b}" for b in bindings]]
    env = one_device_env()
    if log is None:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=HANG_LIMIT_S)
    # In the background, stderr goes to a file: an unread pipe fills up and stalls the run.
    with open(log, "w") as file:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=file)


@pytest.mark.slow
def test_pipeline_killed_during_scr_resumes_and_finishes(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "killed.log"
    proc = _pipeline(run, log=log)
    scr_ckpts = run / "scr" / "checkpoints"

    def scr_saved():  # a complete SCR checkpoint: a step directory holding params
        return scr_ckpts.is_dir() and any(p.name.isdigit() and (p / "params").is_dir()
                                          for p in scr_ckpts.iterdir())
    wait_for(scr_saved, "an SCR checkpoint", proc, output=log.read_text)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "ssft" / "DONE.json").exists() and (run / "scr_data" / "DONE.json").exists()
    assert not (run / "scr" / "DONE.json").exists()

    out = _pipeline(run)
    assert out.returncode == 0, out.stderr[-4000:]
    log = out.stderr
    assert "ssft: already complete" in log and "scr_data: already complete" in log
    assert "resuming after unit" in log  # SCR continued from its checkpoint, not from scratch
    scr_metrics = [json.loads(line) for line in open(run / "scr" / "checkpoints" / "metrics.jsonl")]
    assert scr_metrics[-1]["step"] == 40

    # Every stage is complete and its outputs are well-formed.
    for stage in ("ssft", "sample_train", "scr_data", "scr", "mtsf", "sample_eval", "score", "evaluate"):
        assert (run / stage / "DONE.json").exists(), stage
    for stage in ("ssft", "scr", "mtsf"):
        assert glob.glob(str(run / stage / "checkpoints" / "[0-9]*" / "params")), stage
    train_c = candidates.read_candidates(str(run / "sample_train" / "candidates.jsonl"))
    assert len(train_c) == 16 and all(len(r["samples"]) == 8 for r in train_c)
    graded = candidates.read_candidates(str(run / "scr_data" / "graded.jsonl"))
    assert all(isinstance(s["correct"], bool) for r in graded for s in r["samples"])
    stats = json.loads((run / "scr_data" / "DONE.json").read_text())
    assert stats["pairs"]["pairs"] > 0 and stats["problems"] == 16
    for gen in ("ssft", "mtsf"):
        scored = candidates.read_candidates(str(run / "score" / f"{gen}.jsonl"))
        assert all(0.0 <= s["score"] <= 1.0 for r in scored for s in r["samples"])
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert set(results) == {"ssft", "mtsf"}
    for res in results.values():
        assert set(res["metrics"]) == set(voting.METRICS)
        for m in res["metrics"].values():
            assert m["value"] is not None and m["ci_low"] <= m["value"] <= m["ci_high"]
    report = (run / "evaluate" / "report.md").read_text()
    assert "RR.Top-2" in report and "| Pass@1 |" in report
    assert "Evaluator diagnostics and baselines (MTSF generator's candidates)" in report
    assert "![training curves](training.png)" in report  # ssft, scr and mtsf logged a loss
    for png in ("accuracy_vs_n.png", "ssft_vs_mtsf.png", "evaluator_ssft.png", "evaluator_mtsf.png",
                "training.png"):
        assert (run / "evaluate" / png).read_bytes()[:4] == b"\x89PNG"
    assert "| Pass@1 |" in out.stdout  # the table is printed at the end

    # MTSF's control shares this SSFT and continues it with no evaluator stage between.
    control = tmp_path / "control"
    control.mkdir()
    os.symlink(run / "ssft", control / "ssft")
    out = _pipeline(control, "pipeline.variant='mtsf_control'")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"initialising parameters from {control / 'ssft' / 'checkpoints'}" in out.stderr
    assert sorted(p.name for p in control.iterdir()) == ["evaluate", "mtsf", "sample_eval", "ssft"]
    assert set(json.loads((control / "evaluate" / "results.json").read_text())) == {"ssft", "mtsf"}

    # The likelihood evaluator: an SCR stage on generation-format pairs, scoring by exp(mean
    # token log-probability). At learning rate 0 it is the SSFT model, so a score is the sampler's
    # recorded likelihood of the sample, exp(logprob / num_tokens), where the sample ended on
    # its EOS (the scorer appends one to every text) and its text encodes back to the tokens
    # sampled (this barely trained model also samples ids that decode to no text).
    lik = tmp_path / "likelihood"
    lik.mkdir()
    for stage in ("ssft", "sample_train", "scr_data", "sample_eval"):
        os.symlink(run / stage, lik / stage)
    out = _pipeline(lik, "pipeline.variant='ssft_scr'", "scr/learning_rate_schedule.peak=0.0",
                    "scr/train.total_steps=1", "scr/train.checkpoint_every=1",
                    "pipeline.scr_task='scr_sequence_pairwise'",
                    "scr/train.objective=@sequence_objective", "score_records.method='likelihood'",
                    "pipeline.ignore_config_changes=True")
    assert out.returncode == 0, out.stderr[-4000:]
    scored = candidates.read_candidates(str(lik / "score" / "ssft.jsonl"))
    ended = [s for r in scored for s in r["samples"] if s["num_tokens"] < 48]
    same = [s["score"] == pytest.approx(math.exp(s["logprob"] / s["num_tokens"]), rel=1e-3)
            for s in ended if len(s["text"].encode("utf-8")) + 1 == s["num_tokens"]]
    print("likelihood scores equal to the recorded ones:", sum(same), "of", len(same), len(ended))
    assert len(same) > 10 and all(same)


@pytest.mark.parametrize("name", sorted(os.path.relpath(p, os.path.join(REPO, "gin_configs"))
                                        for pattern in ("runs/*.gin", "demo/*.gin")
                                        for p in glob.glob(os.path.join(REPO, "gin_configs",
                                                                        pattern))))
def test_run_configs_parse(name):
    gin.clear_config()
    try:
        files = ([] if "math" not in name else ["gin_configs/models/tiny.gin"])
        gin_utils.parse_gin(files + [f"gin_configs/{name}"])
        if "base" not in name:  # the *_base.gin files are shared settings, not runs
            assert gin.query_parameter("pipeline.variant") in pipeline.VARIANTS
    finally:
        gin.clear_config()


def test_grpo_supervised_term_learns_the_ssft_tasks_solutions(tmp_path):
    """grpo.sft_weight > 0: the solutions are the SSFT task's unless grpo.sft_task names
    others; without the term sft_task stays unset, so grpo stages recorded before the option
    are no change."""
    cfg = pipeline.PipelineConfig(run_dir=str(tmp_path), variant="grpo",
                                  ssft_task="synthetic_arith_terse")
    config = lambda: pipeline._grpo_config(_context(cfg))  # noqa: E731
    try:
        assert config().sft_task is None
        gin.bind_parameter("grpo/grpo.sft_weight", 1.0)
        assert config().sft_task == "synthetic_arith_terse"
        gin.bind_parameter("grpo/grpo.sft_task", "synthetic_arith_steps")
        assert config().sft_task == "synthetic_arith_steps"
    finally:
        gin.clear_config()


def test_unknown_variant_is_a_clear_error(tmp_path):
    from mathft_jax import pipeline
    with pytest.raises(ValueError, match="pipeline.variant='best'"):
        pipeline.pipeline(run_dir=str(tmp_path), variant="best")


def test_evaluator_checkpoint_adds_the_score_stage(tmp_path):
    """Another run's evaluator scores a variant without an scr stage (replicate's DPO, GRPO)."""
    cfg = pipeline.PipelineConfig(run_dir=str(tmp_path), variant="grpo",
                                  evaluator_checkpoint="other/scr/checkpoints").validate()
    assert cfg.stages == ("ssft", "grpo", "sample_eval", "score", "evaluate")
    assert _context(cfg).evaluator() == "other/scr/checkpoints"
    own = pipeline.PipelineConfig(run_dir=str(tmp_path), variant="ssft_scr")
    assert _context(own).evaluator() == str(tmp_path / "scr" / "checkpoints")
    # recorded with the score and evaluate stages: a finished unscored run that is given an
    # evaluator later stops at its stale evaluate stage instead of skipping it
    assert pipeline._resolved(_context(cfg), "evaluate", {}) == {
        "evaluate.evaluator": "'other/scr/checkpoints'"}
    assert pipeline._resolved(_context(own), "evaluate", {}) == {}  # as before the option
    with pytest.raises(ValueError, match="evaluator_checkpoint is for variants without an scr"):
        pipeline.PipelineConfig(run_dir=str(tmp_path), variant="mtsf",
                                evaluator_checkpoint="x").validate()


def test_evaluate_stage_grades_on_the_main_process_only(tmp_path, monkeypatch):
    """Other processes skip grading (only process 0 writes); they wait at the stage barrier."""
    def no_grading(*args, **kwargs):
        raise AssertionError("a non-main process graded")

    monkeypatch.setattr(pipeline.distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(pipeline.evaluate, "grade_records", no_grading)
    monkeypatch.setattr(pipeline.candidates, "read_candidates", no_grading)
    ctx = _context(pipeline.PipelineConfig(run_dir=str(tmp_path), variant="mtsf"))
    info = pipeline._evaluate_stage(ctx)
    assert info == {"generators": ["ssft", "mtsf"]}
    assert not os.path.exists(ctx.run.stage_dir("evaluate"))


def test_a_sigterm_during_a_stage_stops_the_pipeline_after_it(tmp_path, monkeypatch):
    from mathft_jax.core import preemption
    gin.clear_config()
    gin_utils.parse_gin(["gin_configs/runs/smoke.gin"],
                        [f"pipeline.run_dir='{tmp_path}'", "pipeline.variant='ssft'"])
    ran = []

    def sampling(ctx, stage, generator):  # a SIGTERM arrives while it samples
        ran.append(stage)
        preemption._requested.set()  # noqa: SLF001 (what the handler does)
    monkeypatch.setattr(pipeline, "_train_stage", lambda ctx, stage: ran.append(stage))
    monkeypatch.setattr(pipeline, "_sample_stage", sampling)
    try:
        with pytest.raises(pipeline.Preempted, match="preempted after stage sample_eval; rerun"):
            pipeline.pipeline()
    finally:
        preemption.reset()
        gin.clear_config()
    assert ran == ["ssft", "sample_eval"]  # the stage it was in finished; evaluate did not run
    assert (tmp_path / "sample_eval" / "DONE.json").exists()
    assert not (tmp_path / "evaluate").exists()


def test_training_curves_leave_out_a_missing_or_unreadable_metrics_file(tmp_path, caplog):
    run = pipeline.Run(str(tmp_path))
    for stage, text in (("ssft", '{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra'),
                        ("scr", '{"step": 1, "train/loss": 1.0}\n')):
        os.makedirs(run.checkpoint(stage))
        with open(os.path.join(run.checkpoint(stage), "metrics.jsonl"), "w") as f:
            f.write(text)
    found = pipeline._training_metrics(run, ["ssft", "scr", "mtsf"])  # mtsf: never trained
    assert found == {"scr": [{"step": 1, "train/loss": 1.0}]}
    assert "ssft/checkpoints/metrics.jsonl: unreadable, no training curves of ssft" in caplog.text


def test_the_score_method_must_fit_the_evaluator_trained(tmp_path):
    """A label evaluator is read by its label and one trained on sequence pairs (generation
    format) by its likelihood; a mismatch would score silently wrong, so it stops first."""
    from mathft_jax.scoring import evaluator  # noqa: F401 (registers score_records)
    likelihood = dict(run_dir=str(tmp_path), variant="ssft_scr", scr_task="scr_sequence_pairwise")
    with pytest.raises(pipeline.settings.SettingError, match="with score_records.method='label'"):
        pipeline.PipelineConfig(**likelihood).validate()
    gin.clear_config()
    try:
        gin.bind_parameter("score_records.method", "likelihood")
        pipeline.PipelineConfig(**likelihood).validate()
        with pytest.raises(pipeline.settings.SettingError, match="needs that task"):
            pipeline.PipelineConfig(run_dir=str(tmp_path), variant="mtsf").validate()
        # a variant without an scr stage is scored by another run's evaluator: not checked
        pipeline.PipelineConfig(run_dir=str(tmp_path), variant="grpo",
                                evaluator_checkpoint="other/scr/checkpoints").validate()
    finally:
        gin.clear_config()


def _smoke(tmp_path, *bindings):
    gin.clear_config()
    gin_utils.parse_gin(["gin_configs/runs/smoke.gin"],
                        [f"pipeline.run_dir='{tmp_path}'", *bindings])
    return pipeline.PipelineConfig().validate()


def test_a_variant_sets_what_its_stages_tasks_need(tmp_path):
    """smoke.gin packs every stage (train.pack = True); switched to DPO, the dpo stage trains
    its pairs unpacked with the DPO loss, before any compute."""
    from mathft_jax.training import objectives
    try:
        ctx = _context(_smoke(tmp_path, "pipeline.variant='dpo'"))
        config = pipeline._train_config(ctx, "dpo")
        assert (config.pack, config.objective) == (False, objectives.dpo_objective)
        assert pipeline._train_config(ctx, "ssft").pack  # a generation task: as bound
    finally:
        gin.clear_config()


def test_a_stage_scoped_binding_against_its_tasks_need_fails_naming_it(tmp_path):
    try:
        cfg = _smoke(tmp_path, "pipeline.variant='dpo'", "dpo/train.pack=True")
        with pytest.raises(pipeline.settings.SettingError,
                           match=r"dpo/train.pack=True: stage dpo trains on dpo_pairs, which "
                                 r"needs train.pack=False"):
            pipeline.prepare(cfg)
        assert not (tmp_path / "ssft").exists()  # before any compute
    finally:
        gin.clear_config()


def test_a_variant_whose_stage_reads_what_no_earlier_stage_writes_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.VARIANTS, "no_sampling", ("ssft", "scr_data", "evaluate"))
    with pytest.raises(pipeline.settings.SettingError,
                       match="stage scr_data reads sample_train.candidates, which no earlier"):
        pipeline.PipelineConfig(run_dir=str(tmp_path), variant="no_sampling").validate()


def test_stages_read_the_first_provider_the_variant_has(tmp_path):
    mtsf = _context(pipeline.PipelineConfig(run_dir=str(tmp_path), variant="mtsf"))
    control = _context(pipeline.PipelineConfig(run_dir=str(tmp_path), variant="mtsf_control"))
    assert mtsf.input("scr|ssft.checkpoint") == str(tmp_path / "scr" / "checkpoints")
    assert control.input("scr|ssft.checkpoint") == str(tmp_path / "ssft" / "checkpoints")
    assert mtsf.input("score|sample_eval.candidates", "mtsf") == str(tmp_path / "score" / "mtsf.jsonl")
    assert control.generators == ["ssft", "mtsf"]


PRE_MOVE_RUN = os.path.join(REPO, "tests", "data", "pre_move_smoke_run")


def _pre_move_run(tmp_path):
    """The bindings.json of every stage of a smoke run (mtsf) made before the package's layer
    folders (it names mathft_jax.objectives, now training.objectives), each marked done."""
    run = tmp_path / "run"
    for stage in os.listdir(PRE_MOVE_RUN):
        (run / stage).mkdir(parents=True)
        (run / stage / "bindings.json").write_text(
            open(os.path.join(PRE_MOVE_RUN, stage, "bindings.json")).read())
        (run / stage / "DONE.json").write_text("{}")
    return run


def test_a_run_made_before_the_move_passes_the_rerun_check(tmp_path):
    run = _pre_move_run(tmp_path)
    assert '"@mathft_jax.objectives.lm_objective"' in (run / "ssft" / "bindings.json").read_text()
    try:
        pipeline.prepare(_smoke(run))
    finally:
        gin.clear_config()


def test_a_run_made_before_the_move_still_names_a_changed_setting(tmp_path):
    run = _pre_move_run(tmp_path)
    try:
        with pytest.raises(pipeline.provenance.ConfigChangedError,
                           match=r"stage ssft .*ssft/train.total_steps: 60 -> 61"):
            pipeline.prepare(_smoke(run, "ssft/train.total_steps=61"))
    finally:
        gin.clear_config()
