"""The benchmark sources (data/benchmarks.py): counts as ../shared/data/README.md states them,
gold answers read by each benchmark's rule, and every gold answer graded equal to itself and
to a re-rendered form over each whole set (docs/benchmarks.md)."""
import json
import re

import pytest

from gold_forms import gold_forms
from mathft_jax.results import candidates
from mathft_jax.data import benchmarks, readers, sources
from mathft_jax.grading import grade

NAMES = ("gsm8k", "aime24", "amc23", "minerva_math", "olympiadbench")


def readme_counts(data_dir) -> dict[str, int]:
    """`| benchmarks/<name>/test.jsonl | 1,319 | ...` rows of the data README."""
    rows = re.findall(r"^\| `benchmarks/(\w+)/test\.jsonl` \| ([\d,]+) \|",
                      (data_dir / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


@pytest.fixture(scope="module")
def records(data_dir):
    return {name: sources.problem_records(name, "test") for name in NAMES}


def test_counts_match_the_data_readme(data_dir, records):
    counts = readme_counts(data_dir)
    assert set(counts) == set(NAMES)
    assert {name: len(found) for name, found in records.items()} == counts
    assert counts == {"gsm8k": 1319, "aime24": 30, "amc23": 40, "minerva_math": 272,
                      "olympiadbench": 675}


def test_gold_rules_on_the_real_files(data_dir, records):
    raw = {name: [json.loads(line) for line in
                  (data_dir / "benchmarks" / name / "test.jsonl").read_text().splitlines()]
           for name in NAMES}
    gsm8k = records["gsm8k"]
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r["gold"]) for r in gsm8k)  # separators gone
    assert any("," in row["answer"].rsplit("####", 1)[1] for row in raw["gsm8k"])
    assert [r["gold"] for r in records["amc23"]][:1] == ["27"]  # 27.0 in the file
    assert all(r["gold"] == row["answer"] for r, row in zip(records["aime24"], raw["aime24"]))
    olympiad = records["olympiadbench"]
    multiple = [r for r, row in zip(olympiad, raw["olympiadbench"]) if row["is_multiple_answer"]]
    # 94 flagged: 91 lists; a lone tuple twice, and prose around its math once, stay one string
    assert len(multiple) == 94 and sum(isinstance(r["gold"], list) for r in olympiad) == 91
    numerical = [r for r in olympiad if r.get("answer_type") == "Numerical"]
    assert all(r["gold_tolerance"] == 1e-8 for r in numerical if r["gold"] != "4.2")
    assert {r["gold_tolerance"] for r in numerical if r["gold"] == "4.2"} == {0.1}
    assert all("gold_tolerance" not in r for r in olympiad if r.get("answer_type") != "Numerical")


@pytest.mark.parametrize("final, multiple, parts", [
    ("$69$,$84$", True, ("69", "84")),
    ("1,3,5", True, ("1", "3", "5")),
    ("$(1,1), (3,2)$", True, ("(1,1)", "(3,2)")),
    ("$(2,4)$", False, ("(2,4)",)),
    ("$1,3$", False, ("1,3",)),
    ("$221,$8$", True, ("221", "8")),
    ("$(1,2)$", True, ("(1,2)",)),
    ("$f(x)=x$, where $a$ is any integer", True, ("$f(x)=x$, where $a$ is any integer",)),
    ("$x$ or $y$", False, ("$x$ or $y$",)),
])
def test_olympiadbench_parts(final, multiple, parts):
    assert benchmarks.olympiadbench_parts(final, multiple) == parts


@pytest.mark.parametrize("answer, gold", [("#### 1,234", "1234"), ("x\n#### -7", "-7"),
                                          ("#### 1,234,567", "1234567"), ("#### 0.5", "0.5")])
def test_gsm8k_gold(answer, gold):
    assert benchmarks.gsm8k_gold(answer) == gold


def test_bad_records_name_their_line(tmp_path, monkeypatch):
    for name, line, message in (
            ("gsm8k", {"idx": 0, "question": "q", "answer": "no final line"}, "####"),
            ("amc23", {"id": 0, "problem": "q", "answer": "27"}, "JSON number"),
            ("minerva_math", {"idx": 0, "problem": "q", "solution": "none"}, "boxed"),
            ("olympiadbench", {"id": 0, "question": "q", "final_answer": [],
                               "is_multiple_answer": False}, "final_answer")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.setattr(benchmarks.paths, "benchmarks_dir", lambda: tmp_path)
    for name, message in (("gsm8k", "####"), ("amc23", "JSON number"),
                          ("minerva_math", "boxed"), ("olympiadbench", "final_answer")):
        with pytest.raises(readers.DataFormatError, match=f"test.jsonl:1: .*{message}"):
            benchmarks.read_benchmark(name)
    with pytest.raises(ValueError, match="only a 'test' split"):
        sources.problems("gsm8k", "train")


def test_every_gold_grades_equal_to_itself_and_its_rerenderings(records):
    failures, checked = [], 0
    for name, found in records.items():
        for record in found:
            gold, tolerance = record["gold"], candidates.record_tolerance(record)
            for form in gold_forms(gold, name):
                checked += 1
                sample = {"text": f"So the answer is $\\boxed{{{form}}}$."}
                if not candidates.grade_sample(sample, gold, tolerance=tolerance):
                    failures.append((name, record["problem_id"], form, gold))
    assert checked > 2 * 2336
    assert not failures, f"{len(failures)} of {checked}: {failures[:10]}"


def test_multiple_answer_problems_need_every_part(records):
    multiple = [r for r in records["olympiadbench"] if isinstance(r["gold"], list)]
    assert len(multiple) == 91
    for record in multiple:
        gold = record["gold"]
        for missing in range(len(gold)):
            partial = ", ".join(gold[:missing] + gold[missing + 1:])
            assert not grade(f"\\boxed{{{partial}}}", gold).correct, (record["problem_id"], partial)
        assert not grade(f"\\boxed{{{', '.join(gold + [gold[0]])}}}", gold).correct  # one extra
        assert grade(" and ".join(f"\\boxed{{{part}}}" for part in gold), gold).correct
