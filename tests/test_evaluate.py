"""Candidates I/O, grading, evaluate_records and the command line."""
import json
import os
import subprocess
import sys

import pytest

from mathft_jax import candidates, evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(problem_id, gold, answers, scores=None):
    samples = [{"text": f"... \\boxed{{{a}}}", "answer": a} for a in answers]
    for sample, score in zip(samples, scores or []):
        sample["score"] = score
    return {"problem_id": problem_id, "problem": "Q", "gold": gold, "samples": samples, "extra": 1}


RECORDS = [
    record("a", "\\frac{1}{2}", ["0.5", "1/2", "2", None], [0.9, 0.8, 0.1, 0.5]),
    record("b", "7", ["7", "8", "8", "9"], [0.2, 0.3, 0.1, 0.9]),
    record("c", "(1,2)", ["(1, 2)", "(2,1)", "(1,2)", "(1,2)"], [0.5, 0.6, 0.2, 0.3]),
]


def test_write_then_read_round_trip_is_atomic(tmp_path):
    path = tmp_path / "sub" / "cands.jsonl"
    candidates.write_candidates(str(path), RECORDS)
    assert candidates.read_candidates(str(path)) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["cands.jsonl"]  # no temporary left
    with pytest.raises(candidates.CandidatesError):
        candidates.write_candidates(str(path), [{"problem_id": 1}])
    assert candidates.read_candidates(str(path)) == RECORDS  # a failed write leaves the old file


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from mathft_jax import atomic
    path = tmp_path / "results.json"
    atomic.write_json(str(path), {"step": 1})

    def interrupted(src, dst):
        raise KeyboardInterrupt  # a crash after the new text is written, before the rename
    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(str(path), {"step": 2})
    assert path.read_text() == '{"step": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_files_get_the_mode_a_plain_open_would(tmp_path):
    from mathft_jax import atomic
    old = os.umask(0o022)
    try:
        atomic.write_text(str(tmp_path / "report.md"), "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644  # mkstemp alone: 0o600


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Expecting"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": []}', "samples"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": [{"text": "", "answer": 3}]}', "answer"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": [{"text": "", "score": "hi"}]}', "score"),
    ('{"problem_id": "a", "problem": "", "gold": "1", "samples": [{"text": ""}]}', "duplicate"),
])
def test_bad_line_names_file_and_line_or_is_counted(tmp_path, bad_line, reason):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(RECORDS[0]), "", bad_line, json.dumps(RECORDS[1])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(candidates.CandidatesError, match=f"{path}:3: .*{reason}"):
        candidates.read_candidates(str(path))
    records, bad = candidates.read_candidates_report(str(path), skip_bad_lines=True)
    assert [r["problem_id"] for r in records] == ["a", "b"]
    assert [b.line for b in bad] == [3]


def test_grade_candidates_fills_correct():
    graded = candidates.grade_candidates([json.loads(json.dumps(r)) for r in RECORDS], processes=1,
                                         progress=False)
    assert [s["correct"] for s in graded[0]["samples"]] == [True, True, False, False]
    assert [s["correct"] for s in graded[2]["samples"]] == [True, False, True, True]


def test_answer_is_extracted_when_the_key_is_absent():
    assert candidates.sample_answer({"text": "so \\boxed{4}"}) == "4"
    assert candidates.sample_answer({"text": "so \\boxed{4}", "answer": None}) is None


def test_evaluate_records_values_and_determinism():
    result = evaluate.evaluate_records(RECORDS, k=1, processes=1, progress=False)
    metrics = {name: entry["value"] for name, entry in result["metrics"].items()}
    assert metrics["pass_at_1"] == pytest.approx((2 / 4 + 1 / 4 + 3 / 4) / 3)
    assert metrics["maj1_at_n"] == pytest.approx(2 / 3)   # a: {0.5,1/2} wins; b: 8 wins; c: (1,2)
    assert metrics["rr_all"] == pytest.approx(1 / 3)      # a: 0.9 -> 0.5 ok; b: 9 wrong; c: (2,1) wrong
    assert metrics["wrr"] == pytest.approx(2 / 3)         # a: 1.7 vs 0.1; b: 8 (0.4) < 9 (0.9); c: 1.0
    assert result["n_samples"] == {"total": 12, "min": 4, "max": 4}
    again = evaluate.evaluate_records(RECORDS, k=1, processes=2, progress=False)
    assert again == result
    table = evaluate.markdown_table(result)
    assert "| Maj1@N | 66.67 |" in table and "W.RR.Maj1" in table


def test_command_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in RECORDS] + ["garbage"]) + "\n")
    out = tmp_path / "m.json"
    command = [sys.executable, "-m", "mathft_jax.evaluate", f"--candidates={path}", "--k=2",
               f"--out={out}", "--processes=1"]
    failed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0 and f"{path}:4" in failed.stderr
    done = subprocess.run(command + ["--skip_bad_lines"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| Pass@1 |" in done.stdout and "skipped 1 bad line" in done.stdout
    result = json.loads(out.read_text())
    assert result["skipped_lines"]["count"] == 1 and result["n_problems"] == 3
    assert result["metrics"]["maj1_at_n"]["value"] == pytest.approx(2 / 3)
