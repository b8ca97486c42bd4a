"""bench/replicate.py's report on fake results: which cells and tables it builds from the
runs present, the paired gains, GRPO against the control per seed, and the runs it runs."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("replicate", os.path.join(REPO, "bench", "replicate.py"))
replicate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replicate)

METRICS = ("pass_at_1", "maj1_at_n", "majk_at_n", "rr_all", "rr_topk", "wrr_majk")


def _res(**generators):
    """results.json of one run: {generator: pass_at_1 as a fraction}; other metrics follow."""
    return {g: {"k": 4, "n_samples": {"max": 16}, "n_problems": 160,
                "metrics": {m: {"value": None if (m == "rr_topk" and v is None) else
                                (v or 0.0) + 0.1 * i}
                            for i, m in enumerate(METRICS)}}
            for g, v in generators.items()}


def _seed(ssft, grpo, control):
    return {"steps_margin": _res(ssft=ssft, mtsf=ssft + 0.02),
            "control": _res(ssft=ssft, mtsf=control),
            "dpo": _res(ssft=ssft, dpo=ssft + 0.01),
            "grpo": _res(ssft=ssft, grpo=grpo)}


def test_rl_cells_paired_gains_and_grpo_against_the_control():
    per_seed = [_seed(0.2, 0.35, 0.3), _seed(0.3, 0.32, 0.36)]
    rows = replicate.cells(per_seed, 4, {"GRPO": [2.0, 4.0]}, seeds=[5, 7])
    sections = {r[0] for r in rows}
    # no steps_xent or terse: their sections and rows are left out, not filled with errors
    assert sections == {"ssft", "mtsf", "control", "rl", "rl_gain", "grpo_vs_control"}
    assert not any("xent" in r[1] for r in rows)
    cell = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert cell[("rl", "GRPO", "pass_at_1")] == pytest.approx([35.0, 32.0])
    assert cell[("rl", "GRPO", "extra_minutes")] == [2.0, 4.0]
    assert cell[("rl_gain", "DPO", "pass_at_1")] == pytest.approx([1.0, 1.0])
    assert cell[("rl_gain", "control: SSFT continued", "maj1_at_n")] == pytest.approx([10.0, 6.0])
    assert cell[("grpo_vs_control", "7", "GRPO - control")] == pytest.approx([-4.0])
    assert replicate.wins(rows) == (1, 2)
    text = replicate.sections(rows, 4)
    assert "## DPO and GRPO against MTSF and its control" in text
    assert "| GRPO | 33.5 ± 1.5 | 43.5 ± 1.5 | 73.5 ± 1.5 | 3.0 ± 1.0 |" in text
    assert "| | Pass@1 | Maj1@N | RR.Top-4 | extra stage time (min) |" in text
    assert "(seeds on which it beats the control: GRPO 1 of 2)" in text
    assert "| 7 | 30.0 | 36.0 | 32.0 | -4.0 |" in text
    assert "Steps-style" not in text  # no terse run


def test_a_missing_metric_is_a_dash_not_an_error():
    per_seed = [{"grpo": _res(ssft=0.2, grpo=None)}]
    per_seed[0]["grpo"]["grpo"]["metrics"]["rr_topk"]["value"] = None
    rows = replicate.cells(per_seed, 4)
    assert replicate.table(rows, "rl_gain", 4).splitlines()[-1] == "| GRPO | -20.0 | -20.0 | — |"


def test_selected_runs_bring_the_run_they_share_stages_with():
    assert replicate.selected_runs("grpo,control") == ["steps_margin", "control", "grpo"]
    assert replicate.selected_runs("terse") == ["terse"]
    assert replicate.selected_runs("likelihood") == ["steps_margin", "likelihood"]
    assert replicate.selected_runs("") == list(replicate.RUNS)
    with pytest.raises(SystemExit, match="unknown"):
        replicate.selected_runs("ppo")
    assert replicate.run_bindings("dpo", "/r/seed0") == [
        "pipeline.evaluator_checkpoint='/r/seed0/steps_margin/scr/checkpoints'"]


def test_extra_minutes_read_shared_stages_through_their_links(tmp_path):
    margin, grpo = tmp_path / "seed0" / "steps_margin", tmp_path / "seed0" / "grpo"
    for stage, seconds in (("sample_train", 60), ("scr_data", 6), ("scr", 54), ("mtsf", 120)):
        (margin / stage).mkdir(parents=True)
        (margin / stage / "DONE.json").write_text(json.dumps({"seconds": seconds}))
    (grpo / "grpo").mkdir(parents=True)
    (grpo / "grpo" / "DONE.json").write_text(json.dumps({"seconds": 300}))
    replicate.share_stages(str(margin), str(tmp_path / "seed0" / "dpo"),
                           ("sample_train", "scr_data"))
    minutes = replicate.extra_minutes(str(tmp_path), [0])
    assert minutes == {"MTSF (margin)": [4.0], "GRPO": [5.0]}  # DPO has not finished
    rows = {row for row, _, _ in replicate.RL_ROWS}
    assert set(replicate.EXTRA_STAGES) == rows - {"SSFT"}  # each method's cost has its row


def test_grpo_process_gets_its_own_rows_and_win_count():
    per_seed = [dict(_seed(0.2, 0.35, 0.3), grpo_process=_res(ssft=0.2, grpo=0.31)),
                dict(_seed(0.3, 0.32, 0.36), grpo_process=_res(ssft=0.3, grpo=0.37))]
    rows = replicate.cells(per_seed, 4, seeds=[5, 7])
    cell = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert cell[("rl", "GRPO (process reward)", "pass_at_1")] == pytest.approx([31.0, 37.0])
    assert cell[("grpo_vs_control", "5", "GRPO (process reward) - control")] == pytest.approx([1.0])
    assert replicate.wins(rows, "GRPO (process reward)") == (2, 2)
    assert replicate.wins(rows) == (1, 2)
    text = replicate.sections(rows, 4)
    assert "beats the control: GRPO 1 of 2, GRPO (process reward) 2 of 2)" in text
    # Only the process run: its comparison stands alone.
    alone = [{k: v for k, v in seed.items() if k != "grpo"} for seed in per_seed]
    text = replicate.sections(replicate.cells(alone, 4, seeds=[5, 7]), 4)
    assert "beats the control: GRPO (process reward) 2 of 2)" in text
    assert "GRPO 1 of 2" not in text


def test_the_likelihood_evaluator_gets_a_row_beside_the_papers():
    res = lambda rr: {g: {"metrics": {m: {"value": rr if m == "rr_topk" else 0.3}  # noqa: E731
                                      for m in replicate.METRICS}} for g in ("ssft", "mtsf")}
    rows = replicate.cells([{"steps_margin": res(0.2), "likelihood": res(0.35)}], k=4)
    text = replicate.table(rows, "ssft", 4)
    assert "| SSFT generator, margin evaluator | 30.0 | 30.0 | 30.0 | 30.0 | 20.0 | 30.0 |" in text
    assert "| SSFT generator, likelihood evaluator | 30.0 | 30.0 | 30.0 | 30.0 | 35.0 | 30.0 |" in text


def _test_samples(run_dir, generator, correct_counts, problems=None):
    """A run's graded test samples: problem i has correct_counts[i] of 4 samples right."""
    from mathft_jax.results import candidates
    records = [{"problem_id": f"p{i}", "problem": f"{i} + 1?", "gold": str(i + 1),
                "samples": [{"text": f"\\boxed{{{i + 1 if s < right else 0}}}",
                             "answer": str(i + 1 if s < right else 0)} for s in range(4)]}
               for i, right in enumerate(correct_counts)][:problems]
    for stage in ("sample_eval", "evaluate"):
        os.makedirs(os.path.join(run_dir, stage), exist_ok=True)
    candidates.write_candidates(os.path.join(run_dir, "sample_eval", f"{generator}.jsonl"), records)
    with open(os.path.join(run_dir, "evaluate", "results.json"), "w") as f:
        json.dump({generator: {"grading": {"grader": "mathft", "policy": "strict",
                                           "re_extracted": False}}}, f)
    replicate.paired.pass_rates.cache_clear()


def test_paired_interval_of_grpo_against_the_control(tmp_path):
    seed = tmp_path / "seed3"
    _test_samples(str(seed / "control"), "mtsf", [1, 2, 0, 4, 2, 1])
    _test_samples(str(seed / "grpo_sft"), "grpo", [2, 2, 1, 4, 3, 1])  # +1 sample on 3 of 6
    diff, low, high = replicate.paired_pass_at_1(str(seed / "grpo_sft"), "grpo",
                                                 str(seed / "control"), "mtsf")
    assert diff == pytest.approx(100 * 3 / 24)
    assert 0.0 <= low < diff < high <= 25.0  # every problem gains 0 or 25 points
    intervals = replicate.grpo_intervals(str(tmp_path), [3],
                                         ["steps_margin", "control", "grpo_sft"])
    assert list(intervals) == [(3, "GRPO + supervised term")]
    table = replicate.interval_table(intervals)
    assert table.splitlines()[-1] == f"| 3 | {diff:+.1f} [{low:+.1f}, {high:+.1f}] |"
    assert replicate.grpo_intervals(str(tmp_path), [3], ["grpo_sft"]) == {}  # no control
    _test_samples(str(seed / "control"), "mtsf", [1, 2, 0], problems=3)
    with pytest.raises(SystemExit, match="different test problems"):
        replicate.paired_pass_at_1(str(seed / "grpo_sft"), "grpo", str(seed / "control"), "mtsf")


def test_paired_pass_at_1_script_on_two_files(tmp_path):
    import subprocess
    import sys
    _test_samples(str(tmp_path / "old"), "ssft", [1, 2, 0, 4, 2, 1])
    _test_samples(str(tmp_path / "new"), "ssft", [2, 2, 1, 4], problems=4)
    files = [str(tmp_path / run / "sample_eval" / "ssft.jsonl") for run in ("new", "old")]
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "paired_pass_at_1.py"),
                          *files], capture_output=True, text=True, check=True).stdout
    # over the 4 problems both hold: 9/16 against 7/16 right
    assert out.startswith("Pass@1 56.2 - 43.8 = +12.5 [")
    assert out.rstrip().endswith("points over 4 problems (paired bootstrap, 95%)")
