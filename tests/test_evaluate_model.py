"""`python -m mathft_jax.evaluate_model`: its settings, its one-line errors, the table, grading
resumed and graders compared (fast); and the command on all six benchmarks, killed and
resumed, on a tiny random Llama with a tokenizer trained on MATH (slow)."""
import inspect
import json
import os
import signal
import subprocess
import sys

import pytest

from mathft_jax import evaluate, evaluate_model
from mathft_jax.core.errors import DataError, UsageError
from mathft_jax.evaluate_model import BENCHMARKS, EvalConfig
from mathft_jax.results import benchmark_report, candidates, voting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problems(n, right_every):
    """n problems of two samples, both right on every `right_every`-th problem."""
    return [voting.GradedProblem((i % right_every == 0,) * 2, (0, 0), (i % right_every == 0,),
                                 None) for i in range(n)]


def _result(n, right_every, prompt="plain"):
    return {**evaluate.summarize_problems(_problems(n, right_every), k=1, n_resamples=200),
            "grading": {"grader": "mathft"}, "prompt": prompt}


def test_table_has_a_row_per_benchmark_and_says_where_problems_are_few():
    table = benchmark_report.benchmark_table({"math500": _result(500, 2),
                                              "aime24": _result(30, 3)})
    head, rule, math500, aime24 = table.splitlines()[:4]
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "benchmark", "Pass@1", "Maj1@N", "Pass@N", "problems", "N", "grader", "prompt", "note"]
    cells = [c.strip() for c in math500.strip("|").split("|")]
    assert cells[0] == "math500" and cells[4:8] == ["500", "2", "mathft", "plain"]
    assert cells[1].startswith("50.0 [") and cells[8] == ""  # MATH500: +-4.4 at most
    low, high = map(float, cells[1][len("50.0 ["):-1].split(", "))
    assert low < 50 < high
    cells = [c.strip() for c in aime24.strip("|").split("|")]
    assert cells[0] == "aime24" and cells[4] == "30" and cells[1].startswith("33.3 [")
    assert cells[8] == "few problems: a 95% CI spans up to ±18 pts"


def test_the_widest_interval_follows_the_problem_count():
    assert round(100 * benchmark_report.widest_half_width(30), 1) == 17.9   # AIME24
    assert round(100 * benchmark_report.widest_half_width(40), 1) == 15.5   # AMC23
    assert round(100 * benchmark_report.widest_half_width(500), 1) == 4.4   # MATH500
    # flagged below 97 problems (+-10 points)
    assert benchmark_report._note(96) and not benchmark_report._note(97)


def test_greedy_is_one_sample_at_temperature_zero(tmp_path):
    config = EvalConfig(checkpoint="ckpt", out=str(tmp_path), greedy=True, num_samples=8,
                        temperature=0.7)
    assert config.sampling()["num_samples"] == 1 and config.sampling()["temperature"] == 0.0
    infer_cfg = evaluate_model.infer_config(config, "gsm8k")
    assert (infer_cfg.num_samples, infer_cfg.temperature, infer_cfg.task) == (1, 0.0, "gsm8k")
    sampled = evaluate_model.infer_config(EvalConfig(checkpoint="ckpt", out=str(tmp_path),
                                                     num_samples=4, temperature=0.7), "aime24")
    assert (sampled.num_samples, sampled.temperature) == (4, 0.7)


def test_each_benchmark_gets_its_prompt_format(tmp_path):
    def infer_prompt(name, **fields):
        config = EvalConfig(checkpoint="ckpt", out=str(tmp_path), **fields).validate()
        return evaluate_model.infer_config(config, name).prompt

    assert infer_prompt("math500").name == "plain"
    assert infer_prompt("gsm8k", prompt="fewshot").name == "gsm8k_cot"
    assert infer_prompt("aime24", prompt="fewshot").name == "minerva_math"
    chat = infer_prompt("amc23", prompt="chat", system_prompt="Reason.")
    assert (chat.name, chat.system) == ("chat", "Reason.")
    assert infer_prompt("amc23", prompt="chat").system is None  # the template's own default
    with pytest.raises(UsageError, match="--system_prompt is a chat turn: it needs "
                                         "--prompt=chat, not --prompt=plain"):
        EvalConfig(checkpoint="ckpt", out=str(tmp_path), system_prompt="Reason.").validate()


def _main_exit(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_model.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return exit_info.value.code, err


def test_one_line_errors(capsys, tmp_path):
    code, err = _main_exit(capsys, "--checkpoint=c", f"--out={tmp_path}",
                           "--benchmarks=math500,gsm9k")
    assert code == 2 and err == ("evaluate_model: error: --benchmarks: unknown benchmark gsm9k; "
                                 "known: " + ", ".join(BENCHMARKS))
    code, err = _main_exit(capsys, "--checkpoint=ckpt", f"--out={tmp_path}", "--greedy",
                           "--num_samples=4")
    assert code == 2 and "--greedy samples once: drop --num_samples=4" in err
    code, err = _main_exit(capsys, f"--checkpoint={tmp_path / 'nope'}", f"--out={tmp_path}")
    assert code == 2 and f"--checkpoint={tmp_path / 'nope'}: checkpoint not found" in err
    code, err = _main_exit(capsys, "--checkpoint=c", f"--out={tmp_path}", "--prompt=fancy")
    assert code == 2 and "--prompt=fancy: expected one of" in err


def test_absent_data_names_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("MATHFT_DATA_DIR", str(tmp_path / "nodata"))
    with pytest.raises(DataError, match=rf"gsm8k: no data at {tmp_path}/nodata/benchmarks/gsm8k/"
                                        rf"test.jsonl.* read from {tmp_path}/nodata "
                                        r"\(MATHFT_DATA_DIR"):
        evaluate_model.check_data(EvalConfig(checkpoint="c", out="o", benchmarks=("gsm8k",)))


def test_a_rerun_asking_for_other_samples_stops(tmp_path):
    evaluate_model.check_settings(EvalConfig(checkpoint="c", out=str(tmp_path), num_samples=4))
    evaluate_model.check_settings(EvalConfig(checkpoint="c", out=str(tmp_path), num_samples=4,
                                             grader="prm800k"))  # grading may change
    with pytest.raises(UsageError, match=r"holds samples drawn with num_samples=4 \(now 8\)"):
        evaluate_model.check_settings(EvalConfig(checkpoint="c", out=str(tmp_path),
                                                 num_samples=8))


def _olympiad_records():
    """A multiple-answer problem and a Numerical one with a tolerance, as the readers make
    them (data/benchmarks.py), with samples right and wrong."""
    def samples(*texts):
        return [{"text": t, "answer": None} for t in texts]
    return [
        {"problem_id": "olympiadbench/1", "problem": "p", "gold": ["69", "84"],
         "samples": samples("so $\\boxed{84, 69}$", "so $\\boxed{69}$",
                            "$\\boxed{69}$ and $\\boxed{84}$", "no answer")},
        {"problem_id": "olympiadbench/2", "problem": "p", "gold": "0.5", "gold_tolerance": 0.1,
         "answer_type": "Numerical",
         "samples": samples("so $\\boxed{0.55}$", "so $\\boxed{0.7}$", "so $\\boxed{0.5}$",
                            "so $\\boxed{2}$")},
    ]


def test_compare_graders_on_list_golds_and_tolerance(tmp_path, monkeypatch):
    pytest.importorskip("math_verify")
    from mathft_jax.grading import extract_answer
    records = _olympiad_records()
    for record in records:
        for s in record["samples"]:
            s["answer"] = extract_answer(s["text"])
    path = tmp_path / "olympiadbench" / "candidates.jsonl"
    path.parent.mkdir()
    candidates.write_candidates(str(path), records)
    config = EvalConfig(checkpoint="c", out=str(tmp_path), benchmarks=("olympiadbench",),
                        compare_graders=("mathft", "math_verify"), processes=1, k=1)
    result = evaluate_model.grade(config, "olympiadbench", str(path), progress=False)
    comparison = result["comparison"]
    assert comparison["samples"] == 8 and comparison["agree"] == 8
    for grader in ("mathft", "math_verify"):
        assert comparison["metrics"][grader]["pass_at_1"]["value"] == pytest.approx(0.5)
        assert comparison["metrics"][grader]["pass_at_n"]["value"] == 1.0
    assert result["metrics"]["pass_at_1"]["value"] == pytest.approx(0.5)
    assert (tmp_path / "olympiadbench" / "disagreements.jsonl").read_text() == ""
    table = benchmark_report.comparison_table({"olympiadbench": result})
    assert table.splitlines()[0] == ("| benchmark | samples | agree | Pass@1 mathft | "
                                     "Maj1@N mathft | Pass@1 math_verify | Maj1@N math_verify |")
    # Maj1@N: every answer its own cluster, the first (right on both problems) ranks first
    assert table.splitlines()[2] == "| olympiadbench | 8 | 100.0% | 50.0 | 100.0 | 50.0 | 100.0 |"

    # graded once: the same grading settings read results.json; others grade again
    calls = []
    grade_records = evaluate.grade_records

    def counted(*args, **kwargs):
        called = inspect.signature(grade_records).bind(*args, **kwargs)
        called.apply_defaults()
        calls.append(called.arguments["grader"])
        return grade_records(*args, **kwargs)

    monkeypatch.setattr(evaluate, "grade_records", counted)
    assert evaluate_model.grade(config, "olympiadbench", str(path), progress=False) == \
        json.loads(json.dumps(result))
    assert calls == []
    from mathft_jax.grading import graders  # a grader's new version grades again
    monkeypatch.setattr(graders, "MATHFT_VERSION", graders.MATHFT_VERSION + " (next)")
    evaluate_model.grade(config, "olympiadbench", str(path), progress=False)
    assert calls == ["mathft", "mathft", "math_verify"]
    calls.clear()
    other = EvalConfig(checkpoint="c", out=str(tmp_path), benchmarks=("olympiadbench",),
                       grader="math_verify", processes=1, k=1)
    assert "comparison" not in evaluate_model.grade(other, "olympiadbench", str(path),
                                                    progress=False)
    assert calls == ["math_verify"]


def test_references_are_the_benchmarks_own_solutions(tmp_path, data_dir):
    config = EvalConfig(checkpoint=None, out=str(tmp_path), references=True, max_problems=3,
                        processes=1, k=1).validate()
    assert config.sampling() == {"references": True, "max_problems": 3} and config.samples == 1
    for name in ("amc23", "aime24"):
        records = candidates.read_candidates(evaluate_model.write_references(config, name))
        assert len(records) == 3 and all(len(r["samples"]) == 1 for r in records)
        assert all(r["extraction_policy"] == "lenient" for r in records)
        result = evaluate_model.grade(config, name, str(tmp_path / name / "candidates.jsonl"),
                                      progress=False)
        assert result["prompt"] == "references" and result["n_problems"] == 3
    text = records[0]["samples"][0]["text"]  # AIME24's solution, as written
    assert text == json.loads((data_dir / "benchmarks/aime24/test.jsonl").open().readline())[
        "solution"]
    amc = candidates.read_candidates(str(tmp_path / "amc23" / "candidates.jsonl"))
    assert amc[0]["samples"][0] == {"text": f"The answer is $\\boxed{{{amc[0]['gold']}}}$.",
                                    "answer": amc[0]["gold"]}  # AMC23 has no solutions
    with pytest.raises(UsageError, match="--checkpoint=CKPT is required.*unless --references"):
        EvalConfig(checkpoint=None, out=str(tmp_path)).validate()


def test_graders_compared_read_answers_as_the_records_were_read(tmp_path):
    """A lenient run's answer sentence: the agreement reads it as the metrics do."""
    pytest.importorskip("math_verify")
    records = [{"problem_id": "gsm8k/test/0", "problem": "p", "gold": "7",
                "extraction_policy": "lenient",
                "samples": [{"text": "She pays $7 in all.\n#### 7", "answer": "7"}]}]
    summary, disagreements = evaluate.compare_graders_on(records, ("mathft", "math_verify"),
                                                         k=1, processes=1, progress=False)
    assert (summary["policy"], summary["agree"], disagreements) == ("lenient", 1, [])
    assert evaluate.recorded_policy(records + [{**records[0], "extraction_policy": "strict"}]) \
        == "strict"


# ----------------------------------------------------------------------------- the command


def _tiny_checkpoint(tmp_path, data_dir):
    """A tiny random Llama with a tokenizer trained on MATH and Qwen2.5's ChatML template."""
    from chat_tokenizers import CHATML
    from real_path_utils import math_lines, save_tiny_llama, train_tokenizer
    from mathft_jax.convert.import_hf import import_checkpoint
    tok_dir = tmp_path / "tokenizer"
    train_tokenizer(math_lines(data_dir, 500), tok_dir, vocab_size=384)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    hf_model = save_tiny_llama(tmp_path / "hf_model", tok_dir, vocab_size=384)
    import_checkpoint(hf_model, tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.slow
def test_six_benchmarks_killed_resumed_and_tabled(tmp_path, data_dir):
    pytest.importorskip("transformers")
    from xla_env import FAST_COMPILE
    from chat_tokenizers import QWEN_SYSTEM
    ckpt = _tiny_checkpoint(tmp_path, data_dir)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "mathft_jax.evaluate_model", f"--checkpoint={ckpt}",
           f"--benchmarks={','.join(BENCHMARKS)}", "--num_samples=2", "--max_problems=3",
           "--max_decode_len=8", "--batch_size=2", "--processes=1", f"--out={out}",
           "--prompt=chat", f"--system_prompt={QWEN_SYSTEM}",
           "--gin_bindings=infer.truncate_prompts=True"]
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE,
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=log,
                             text=True)
    seen = []
    for line in first.stdout:  # stopped (SIGTERM) as it starts on GSM8K, MATH500 done
        seen.append(line)
        if line.startswith("gsm8k: "):
            first.send_signal(signal.SIGTERM)
    first.wait()
    assert first.returncode == 75, "".join(seen) + (tmp_path / "first.log").read_text()[-4000:]
    assert "infer preempted after 0 of 3 problems" in (tmp_path / "first.log").read_text()
    assert (out / "math500" / "results.json").exists()
    assert not (out / "gsm8k" / "candidates.jsonl").exists()
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "math500: sampled already" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| benchmark | Pass@1 | Maj1@N | Pass@N | problems | N | grader")
    assert [row.split("|")[1].strip() for row in rows[2:]] == list(BENCHMARKS)
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4:8] == ["3", "2", "mathft", "chat"]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == list(BENCHMARKS)
    for name in BENCHMARKS:
        records = candidates.read_candidates(str(out / name / "candidates.jsonl"))
        assert len(records) == 3 and all(len(r["samples"]) == 2 for r in records)
        assert all((r["prompt_format"], r["system_prompt"]) == ("chat", QWEN_SYSTEM)
                   for r in records)
        assert [k for k, _ in results[name]["curves"]["pass_at_n"]] == [1, 2]
        assert (out / f"accuracy_{name}.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "![aime24: accuracy against k](accuracy_aime24.png)" in report
