"""Candidates I/O, grading, evaluate_records and the command line."""
import json
import os
import subprocess
import sys

import pytest

from mathft_jax import evaluate
from mathft_jax.results import candidates

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


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "cands.jsonl"
    candidates.write_candidates(str(path), RECORDS)
    assert candidates.read_candidates(str(path)) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["cands.jsonl"]  # no temporary left


def test_a_refused_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "cands.jsonl"
    candidates.write_candidates(str(path), RECORDS)
    with pytest.raises(candidates.CandidatesError):
        candidates.write_candidates(str(path), [{"problem_id": 1}])
    assert candidates.read_candidates(str(path)) == RECORDS  # a failed write leaves the old file


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from mathft_jax.core import atomic
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
    from mathft_jax.core import atomic
    old = os.umask(0o022)
    try:
        atomic.write_text(str(tmp_path / "report.md"), "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644  # mkstemp alone: 0o600


BAD_LINES = [
    ("{not json", "Expecting"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": []}', "samples"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": [{"text": "", "answer": 3}]}', "answer"),
    ('{"problem_id": "x", "problem": "", "gold": "1", "samples": [{"text": "", "score": "hi"}]}', "score"),
    ('{"problem_id": "a", "problem": "", "gold": "1", "samples": [{"text": ""}]}', "duplicate"),
]


def _with_bad_third_line(tmp_path, bad_line):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(RECORDS[0]), "", bad_line, json.dumps(RECORDS[1])]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad_line, reason", BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path, bad_line, reason):
    path = _with_bad_third_line(tmp_path, bad_line)
    with pytest.raises(candidates.CandidatesError, match=f"{path}:3: .*{reason}"):
        candidates.read_candidates(str(path))


@pytest.mark.parametrize("bad_line", [line for line, _ in BAD_LINES])
def test_bad_line_is_counted_when_skipped(tmp_path, bad_line):
    path = _with_bad_third_line(tmp_path, bad_line)
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


def test_evaluate_records_values():
    result = evaluate.evaluate_records(RECORDS, k=1, processes=1, progress=False)
    metrics = {name: entry["value"] for name, entry in result["metrics"].items()}
    assert metrics["pass_at_1"] == pytest.approx((2 / 4 + 1 / 4 + 3 / 4) / 3)
    assert metrics["maj1_at_n"] == pytest.approx(2 / 3)   # a: {0.5,1/2} wins; b: 8 wins; c: (1,2)
    assert metrics["rr_all"] == pytest.approx(1 / 3)      # a: 0.9 -> 0.5 ok; b: 9 wrong; c: (2,1) wrong
    assert metrics["wrr"] == pytest.approx(2 / 3)         # a: 1.7 vs 0.1; b: 8 (0.4) < 9 (0.9); c: 1.0
    assert result["n_samples"] == {"total": 12, "min": 4, "max": 4}


def test_evaluate_records_is_the_same_in_two_processes():
    one = evaluate.evaluate_records(RECORDS, k=1, processes=1, progress=False)
    assert evaluate.evaluate_records(RECORDS, k=1, processes=2, progress=False) == one


def test_markdown_table_of_the_metrics():
    table = evaluate.markdown_table(evaluate.evaluate_records(RECORDS, k=1, processes=1, progress=False))
    assert "| Maj1@N | 66.67 |" in table and "W.RR.Maj1" in table


def _command_with_a_bad_fourth_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in RECORDS] + ["garbage"]) + "\n")
    return [sys.executable, "-m", "mathft_jax.evaluate", f"--candidates={path}", "--k=2",
            f"--out={tmp_path / 'm.json'}", "--processes=1"]


def test_command_line_stops_at_a_bad_line(tmp_path):
    failed = subprocess.run(_command_with_a_bad_fourth_line(tmp_path), cwd=REPO,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and f"{tmp_path / 'c.jsonl'}:4" in failed.stderr


def test_command_line_skips_bad_lines_when_asked(tmp_path):
    command, out = _command_with_a_bad_fourth_line(tmp_path), tmp_path / "m.json"
    plot = tmp_path / "evaluator.png"
    done = subprocess.run(command + ["--skip_bad_lines", f"--plot={plot}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| Pass@1 |" in done.stdout and "skipped 1 bad line" in done.stdout
    assert "| evaluator S |" in done.stdout and "| RR.Top-2 − Maj1@N |" in done.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"
    result = json.loads(out.read_text())
    assert result["skipped_lines"]["count"] == 1 and result["n_problems"] == 3
    assert result["metrics"]["maj1_at_n"]["value"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- bad input

GOOD_LINE = json.dumps(record("ok", "1", ["1", "2"], [0.5, 0.5]))


def _bad_candidates(tmp_path, lines: list[bytes]) -> str:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _line_two(text: str):
    return lambda tmp_path: _bad_candidates(tmp_path, [GOOD_LINE.encode(), text.encode()])


NEGATIVE = json.dumps(record("neg", "1", ["1", "2"], [0.5, -1]))
UNKNOWN_METHOD = json.dumps(record("meth", "1", ["1", "2"], [0.5, 0.5]) | {"score_method": "vibes"})
BAD_INPUTS = {  # name: (make the --candidates path, extra flags, exit code, message)
    "missing file": (lambda t: str(t / "nope.jsonl"), [], 2, "--candidates={path}: no such file"),
    "directory": (lambda t: str(t), [], 2, "--candidates={path}: is a directory"),
    "empty file": (lambda t: _bad_candidates(t, [b""]), [], 1, "{path}: no candidates records (empty"),
    "not UTF-8": (lambda t: _bad_candidates(t, [GOOD_LINE.encode(), b'{"problem_id": "\xff\xfe"}']),
                  [], 1, "{path}:2: not UTF-8 text (byte 0xff"),
    "malformed": (_line_two("{not json"), [], 1, "{path}:2: Expecting property name"),
    "negative score": (_line_two(NEGATIVE), [], 1, "{path}:2: samples[1].score is -1: scores must be >= 0"),
    "unknown score_method": (_line_two(UNKNOWN_METHOD), [], 1,
                             "{path}:2: 'score_method' must be one of ['label', 'likelihood']"),
    "k=0": (_line_two(GOOD_LINE.replace('"ok"', '"ok2"')), ["--k=0"], 2, "flag --k=0: 0 is not a positive"),
    "k<0": (_line_two(GOOD_LINE.replace('"ok"', '"ok2"')), ["--k=-3"], 2, "flag --k=-3: -3 is not a positive"),
    "k not int": (_line_two(GOOD_LINE.replace('"ok"', '"ok2"')), ["--k=two"], 2, "flag --k=two:"),
    "processes=0": (_line_two(GOOD_LINE.replace('"ok"', '"ok2"')), ["--processes=0"], 2, "flag --processes=0"),
}


def _evaluate_cli(*args):
    # The environment passes on (PYTHONPATH included), so the subprocess runs this checkout.
    return subprocess.run([sys.executable, "-m", "mathft_jax.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _snapshot(directory):
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_file_or_flag_is_one_line_with_its_exit_code_and_writes_nothing(tmp_path, name):
    make, flags, code, message = BAD_INPUTS[name]
    path = make(tmp_path)
    before = _snapshot(tmp_path)
    one_process = [] if any(f.startswith("--processes") for f in flags) else ["--processes=1"]
    out = _evaluate_cli(f"--candidates={path}", *flags, *one_process)
    assert out.returncode == code, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("evaluate: error: "), out.stderr
    assert message.format(path=path) in errors[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert _snapshot(tmp_path) == before  # no metrics JSON, no temporary file


def test_missing_candidates_flag_is_a_usage_error():
    out = _evaluate_cli()
    assert out.returncode == 2 and out.stderr.strip().endswith("--candidates=FILE is required")


@pytest.mark.parametrize("flag", ["--debug", "--verbosity=1"])
def test_debug_or_verbosity_adds_the_traceback(tmp_path, flag):
    path = _line_two("{not json")(tmp_path)
    out = _evaluate_cli(f"--candidates={path}", flag)
    assert out.returncode == 1 and "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"evaluate: error: {path}:2: ")


def test_all_lines_skipped_is_bad_data(tmp_path):
    path = _bad_candidates(tmp_path, [b"{not json", b"[]"])
    with pytest.raises(candidates.CandidatesError, match="all 2 non-blank lines were bad"):
        evaluate.evaluate_file(path, skip_bad_lines=True, processes=1, progress=False)


# ----------------------------------------------------------------------------- graders

# Three samples the graders read differently (docs/grading.md's table): a boxed 1/2 (all
# agree), an unboxed "The answer is 0.5" (only lenient extraction finds it), and an
# unreduced 2/4 (mathft reduces it; PRM800K's rules do not).
GRADER_RECORD = {"problem_id": "g", "problem": "?", "gold": "\\frac{1}{2}", "samples": [
    {"text": "so $\\boxed{\\frac12}$"}, {"text": "The answer is 0.5."},
    {"text": "the answer is $\\boxed{\\frac{2}{4}}$"}]}


def _strict_and_lenient():
    return [evaluate.evaluate_records([GRADER_RECORD], k=1, processes=1, progress=False, **kw)
            for kw in ({}, {"policy": "lenient"})]


def test_policy_reextracts():
    strict, lenient = _strict_and_lenient()
    assert strict["metrics"]["pass_at_n"]["value"] == 1.0
    assert lenient["metrics"]["pass_at_1"]["value"] > strict["metrics"]["pass_at_1"]["value"]


def test_the_json_names_the_grader_and_policy():
    strict, lenient = _strict_and_lenient()
    assert strict["grading"]["grader"] == "mathft" and strict["grading"]["policy"] == "strict"
    assert lenient["grading"] == {**lenient["grading"], "policy": "lenient", "re_extracted": True}


def test_compare_graders_reports_agreement_and_writes_disagreements(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(GRADER_RECORD) + "\n")
    out = tmp_path / "m.json"
    done = subprocess.run([sys.executable, "-m", "mathft_jax.evaluate", f"--candidates={path}",
                           "--k=1", f"--out={out}", "--processes=1",
                           "--compare_graders=mathft,prm800k"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    comparison = json.loads(out.read_text())["comparison"]
    assert comparison["samples"] == 3 and comparison["agree"] == 2
    lines = (tmp_path / "m.disagreements.jsonl").read_text().splitlines()
    [row] = [json.loads(line) for line in lines]
    assert row["sample"] == 2 and row["verdicts"] == {"mathft": True, "prm800k": False}
    assert "graders agree on 2 of 3 samples" in done.stdout


@pytest.mark.parametrize("flag,message", [("--grader=nope", "unknown grader"),
                                          ("--policy=loose", "--policy=loose"),
                                          ("--compare_graders=mathft", "at least two")])
def test_bad_grading_flags_are_usage_errors(tmp_path, flag, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(GRADER_RECORD) + "\n")
    done = subprocess.run([sys.executable, "-m", "mathft_jax.evaluate", f"--candidates={path}",
                           flag], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
