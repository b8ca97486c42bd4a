"""Readers: MATH (both layouts), PRM800K math_splits and label files, bad input."""
import collections
import json
import logging
import pathlib

import pytest

from mathft_jax.data import readers

FIXTURE = pathlib.Path(__file__).parent / "data" / "prm800k_labels_fixture.jsonl"


# ----------------------------------------------------------------------------- shared data counts


def test_math_counts(data_dir):
    train = readers.read_math(data_dir / "math", "train")
    test = readers.read_math(data_dir / "math", "test")
    assert (len(train), len(test)) == (7500, 5000)
    assert len({p.problem_id for p in train + test}) == 12500
    # Two train solutions write `\boxed 2` without braces; only the real grader reads those.
    assert sum(p.answer is None for p in train + test) <= 2


def test_math500_count(data_dir):
    math500 = readers.read_math_splits(data_dir / "prm800k/math_splits/test.jsonl")
    assert len(math500) == 500
    assert all(p.answer for p in math500)


def test_prm800k_train_split_reads_null_answers_from_the_solution_and_skips_empty_boxes(
        data_dir, caplog):
    path = data_dir / "prm800k/math_splits/train.jsonl"
    assert len(readers.read_math_splits(path)) == 12000
    with caplog.at_level(logging.WARNING):
        kept = readers.read_math_splits(path, require_answer=True)
    assert len(kept) == 11998
    answers = {p.problem_id: p.answer for p in kept}
    # `answer: null` beside a solution ending in `\boxed 2` / `\boxed 9`: read from it
    assert answers["train/algebra/24014.json"] == "2" and answers["train/algebra/25040.json"] == "9"
    # `answer: ""` and an empty `\boxed{}`: nothing to grade against, skipped and named
    assert "skipped 2 of 12000 problems without an answer" in caplog.text
    assert "train/number_theory/7115.json, train/number_theory/7117.json" in caplog.text


def _problems_file(tmp_path, rows, name="problems.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"problem": f"p{i}", "solution": "s", "unique_id": f"id{i}",
                                        **row}) + "\n" for i, row in enumerate(rows)))
    return path


def test_math_answers_numbers_and_empty_answers(tmp_path, caplog):
    path = _problems_file(tmp_path, [
        {"answer": 0}, {"answer": 4.5}, {"answer": None, "solution": "so $\\boxed 7$."},
        {"answer": "  ", "solution": "$\\boxed{12}$"}, {"answer": "", "solution": "$\\boxed{}$"},
        {"solution": "no box"}])
    assert [p.answer for p in readers.read_jsonl_problems(path)] == ["0", "4.5", "7", "12", None, None]
    with caplog.at_level(logging.WARNING):
        kept = readers.read_jsonl_problems(path, require_answer=True)
    assert [p.problem_id for p in kept] == ["id0", "id1", "id2", "id3"]
    assert "skipped 2 of 6 problems without an answer" in caplog.text and "id4, id5" in caplog.text
    for value in ([1], True, float("nan")):
        bad = _problems_file(tmp_path, [{"answer": "1"}, {"answer": value}], "bad.jsonl")
        with pytest.raises(readers.DataFormatError, match=r"bad.jsonl:2: 'answer' must be a "
                           r"string or a finite number, not"):
            readers.read_jsonl_problems(bad)


def test_problems_to_sample_skip_those_without_an_answer_and_name_repeated_ids(tmp_path, caplog):
    from mathft_jax.data import sources
    path = _problems_file(tmp_path, [{"answer": "1"}, {"answer": "", "solution": "$\\boxed{}$"}])
    with caplog.at_level(logging.WARNING):
        records = sources.problem_records("math500", "test", problems_file=str(path))
    assert records == [{"problem_id": "id0", "problem": "p0", "gold": "1"}]  # never gold ""
    assert "skipped 1 of 2 problems without an answer" in caplog.text
    twice = _problems_file(tmp_path, [{"answer": "1", "unique_id": "a"}, {"answer": "2", "unique_id": "a"}],
                           "twice.jsonl")
    with pytest.raises(readers.DataFormatError, match="problem ids are not unique: 'a'"):
        sources.problem_records("math500", "test", problems_file=str(twice))
    unanswered = _problems_file(tmp_path, [{"solution": "no box"}], "unanswered.jsonl")
    with pytest.raises(readers.DataFormatError, match="no problem has an answer"):
        sources.problem_records("math500", "test", problems_file=str(unanswered))


def test_math_folder_layout_matches_jsonl(data_dir, tmp_path):
    """The original per-problem layout, written from the shared JSON lines at test time."""
    rows = [json.loads(line) for line in (data_dir / "math/test.jsonl").open()][:60]
    for row in rows:
        file = tmp_path / "MATH" / row["unique_id"]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({k: row[k] for k in ("problem", "level", "type", "solution")}))
    from_folder = {p.problem_id: p for p in readers.read_math(tmp_path / "MATH", "test")}
    assert len(from_folder) == len(rows)
    for row in rows:
        p = from_folder[row["unique_id"]]
        assert (p.problem, p.solution, p.subject) == (row["problem"], row["solution"], row["type"])
        assert p.answer is not None and f"\\boxed{{{p.answer}}}" in p.solution


# ----------------------------------------------------------------------------- PRM800K labels


def test_prm800k_fixture_keeps_only_correct_finished_solutions():
    stats = collections.Counter()
    problems = readers.read_prm800k_labels(FIXTURE, stats)
    assert [p.answer for p in problems] == ["11", "\\frac{3}{4}"]
    assert problems[0].solution == ("Multiplication first: $4\\cdot 2=8$.\nThen $3+8=11$.\n\n"
                                    "\\boxed{11}")
    # The human-written step replaces the rejected completion; the Answer section is boxed.
    assert problems[1].solution == ("Divide top and bottom by $2$.\nThat gives $\\frac{3}{4}$."
                                    "\n\n\\boxed{\\frac{3}{4}}")
    assert stats == {"kept": 2, "finish_reason=found_error": 1, "finish_reason=give_up": 1,
                     "answer_not_equal_to_ground_truth": 1, "step_without_chosen_completion": 1,
                     "no_answer_section": 1}
    assert all("# Answer" not in p.solution for p in problems)


def test_prm800k_real_label_samples(data_dir):
    """18 real records (5 phase 1, 13 phase 2): 4 finished with a solution, all correct."""
    stats = collections.Counter()
    problems = readers.read_prm800k_labels(data_dir / "prm800k/label_samples.jsonl", stats)
    assert sum(stats.values()) == 18
    assert stats["finish_reason=found_error"] == 13 and stats["finish_reason=give_up"] == 1
    assert stats["kept"] == len(problems) == 4
    for p in problems:
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
        assert "# Answer" not in p.solution and p.problem


def test_boxed_answer_section_rewrites_only_the_final_section():
    text, answer = readers.boxed_answer_section("So $x=2$.\n\n# Answer\n\n2\n")
    assert (text, answer) == ("So $x=2$.\n\n\\boxed{2}", "2")
    assert readers.boxed_answer_section("No answer here.") is None
    assert readers.boxed_answer_section("# Answer\n\n") is None


# ----------------------------------------------------------------------------- bad input


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "solution": "\\\\boxed{1}"}\n\n{"problem": oops}\n')
    with pytest.raises(readers.DataFormatError, match=rf"{path}:3: malformed JSON"):
        readers.read_jsonl_problems(path)


@pytest.mark.parametrize("missing", ["problem", "solution"])
def test_missing_field_is_named(tmp_path, missing):
    record = {"problem": "What is 1+1?", "solution": "\\boxed{2}"}
    del record[missing]
    path = tmp_path / "missing.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(readers.DataFormatError, match=rf"{path}:1: .*'{missing}'"):
        readers.read_jsonl_problems(path)


def test_prm800k_missing_steps_is_named(tmp_path):
    record = json.loads(FIXTURE.read_text().splitlines()[0])
    del record["label"]["steps"]
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(readers.DataFormatError, match="'label.steps'"):
        readers.read_prm800k_labels(path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(readers.DataFormatError, match="empty file"):
        readers.read_math(path)
    with pytest.raises(readers.DataFormatError, match="empty file"):
        readers.read_prm800k_labels(path)


def test_missing_math_location_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MATH data not found"):
        readers.read_math(tmp_path / "nowhere", "train")


def test_candidates_are_graded_where_correct_is_absent(tmp_path):
    path = tmp_path / "candidates.jsonl"
    rows = [{"problem_id": "p1", "problem": "1+1?", "gold": "2", "samples": [
        {"text": "so \\boxed{2}", "answer": "2"},
        {"text": "so \\boxed{3}", "answer": None},
        {"text": "x", "answer": "2", "correct": False}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [record] = readers.read_candidates(path)
    assert [s["correct"] for s in record["samples"]] == [True, False, False]


def test_asking_for_more_problems_than_a_source_has_warns_and_gives_them_all(caplog):
    from mathft_jax.data import sources
    records = sources.problem_records("synthetic_arith_steps", "test")
    with caplog.at_level(logging.WARNING):
        assert sources.first(records, len(records), "infer.max_problems") == records
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert sources.first(records, len(records) + 1, "infer.max_problems") == records
    assert f"infer.max_problems={len(records) + 1}, but there are only {len(records)}" in caplog.text
    assert sources.first(records, 3, "infer.max_problems") == records[:3]
