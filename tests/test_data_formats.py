"""Prompt formats, evaluator pair/pointwise sampling, and the synthetic curriculum."""
import collections

import gin
import pytest

from mathft_jax.data import formats, synthetic


def test_generation_template():
    assert formats.generation_prompt("What is 2+2?") == "Problem:\nWhat is 2+2?\n\nSolution:\n"


def test_evaluator_template():
    assert formats.evaluator_prompt("P?", "S.") == (
        "Here is a math problem: P?\nHere is a candidate solution: S.\n"
        "The above candidate solution is")
    assert (formats.evaluator_target(True), formats.evaluator_target(False)) == (" correct", " incorrect")


def test_templates_are_gin_configurable():
    with gin.unlock_config():
        gin.parse_config("generation_prompt.template = 'Q: {problem}\\nA: '")
    try:
        assert formats.generation_prompt("x") == "Q: x\nA: "
    finally:
        gin.clear_config()
    assert formats.generation_prompt("x").startswith("Problem:\n")


def _records(num_problems=6, n_correct=3, n_incorrect=5):
    return [{"problem_id": f"p{i}", "problem": f"Problem {i}", "samples":
             [{"text": f"good {i}.{j}", "correct": True} for j in range(n_correct)]
             + [{"text": f"bad {i}.{j}", "correct": False} for j in range(n_incorrect)]}
            for i in range(num_problems)]


@pytest.mark.parametrize("sampling", ["uniform", "round_robin"])
def test_pairs_are_distinct_correct_incorrect_and_seeded(sampling):
    examples, stats = formats.pairwise_examples(_records(), num_pairs=10, sampling=sampling, seed=3)
    assert stats["pairs"] == 6 * 10 and len(examples) == 4 * 60
    pairs = collections.defaultdict(list)
    for ex in examples:
        pairs[ex["pair_id"]].append(ex)
    for pos_c, pos_i, neg_c, neg_i in pairs.values():
        assert [e["is_positive"] for e in (pos_c, pos_i, neg_c, neg_i)] == [1, 1, 0, 0]
        assert [e["label_correct"] for e in (pos_c, pos_i, neg_c, neg_i)] == [1, 0, 1, 0]
        assert pos_c["inputs"] == pos_i["inputs"] and neg_c["inputs"] == neg_i["inputs"]
        assert "good" in pos_c["inputs"] and "bad" in neg_c["inputs"]
        assert pos_c["problem_id"] == neg_c["problem_id"]
        assert pos_c["targets"] == neg_c["targets"] == " correct"
        assert pos_i["targets"] == neg_i["targets"] == " incorrect"
    per_problem = collections.defaultdict(set)
    for pos, _, neg, _ in pairs.values():
        per_problem[pos["problem_id"]].add((pos["inputs"], neg["inputs"]))
    assert all(len(s) == 10 for s in per_problem.values())  # no repeated pair
    again, _ = formats.pairwise_examples(_records(), num_pairs=10, sampling=sampling, seed=3)
    other, _ = formats.pairwise_examples(_records(), num_pairs=10, sampling=sampling, seed=4)
    assert again == examples and other != examples


def test_round_robin_uses_every_candidate_evenly():
    examples, _ = formats.pairwise_examples(_records(1, 3, 5), num_pairs=10, sampling="round_robin")
    uses = collections.Counter(ex["inputs"] for ex in examples if ex["label_correct"])
    good = [n for text, n in uses.items() if "good" in text]
    bad = [n for text, n in uses.items() if "bad" in text]
    assert sorted(good) == [3, 3, 4] and bad == [2] * 5


def test_pairs_capped_by_available_and_one_sided_problems_counted():
    records = _records(1, 2, 2) + [
        {"problem_id": "all_good", "problem": "q", "samples": [{"text": "a", "correct": True}]},
        {"problem_id": "all_bad", "problem": "q", "samples": [{"text": "b", "correct": False}] * 3},
    ]
    examples, stats = formats.pairwise_examples(records, num_pairs=10)
    assert stats["pairs"] == 4 and len(examples) == 16
    assert (stats["problems"], stats["problems_without_correct"], stats["problems_without_incorrect"]) == (3, 1, 1)


def test_duplicate_candidate_texts_are_deduplicated():
    record = {"problem_id": "d", "problem": "q", "samples": [
        {"text": "same", "correct": True}] * 4 + [{"text": "wrong", "correct": False}] * 4}
    _, stats = formats.pairwise_examples([record], num_pairs=10)
    assert stats["pairs"] == 1


def test_pointwise_examples_are_balanced():
    examples, stats = formats.pointwise_examples(_records(4, 2, 7), max_per_class=8)
    labels = collections.Counter(ex["targets"] for ex in examples)
    assert labels == {" correct": 8, " incorrect": 8}
    assert all((ex["targets"] == " correct") == bool(ex["is_positive"]) for ex in examples)
    capped, _ = formats.pointwise_examples(_records(4, 5, 7), max_per_class=3)
    assert collections.Counter(ex["targets"] for ex in capped) == {" correct": 12, " incorrect": 12}


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    assert synthetic.synthetic_problems("validation", seed=7) == synthetic.synthetic_problems(
        "validation", seed=7)


def test_synthetic_follows_its_seed():
    assert synthetic.synthetic_problems("validation", seed=7) != synthetic.synthetic_problems(
        "validation", seed=8)


def test_synthetic_splits_are_disjoint():
    splits = {s: synthetic.synthetic_problems(s, split_sizes={"train": 3000}) for s in synthetic.SPLITS}
    assert [len(splits[s]) for s in synthetic.SPLITS] == [3000, 500, 500]
    texts = {s: {p.problem for p in ps} for s, ps in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]
    # Disjoint also as arithmetic: no test chain appears in train under another phrasing.
    steps = {s: {p.solution for p in ps} for s, ps in splits.items()}
    assert not steps["train"] & steps["test"]


@pytest.mark.parametrize("style", synthetic.STYLES)
def test_synthetic_solutions_are_right_and_end_boxed(style):
    for p in synthetic.synthetic_problems("test", style=style, level=3):
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
        if style == "steps":
            lines = p.solution.splitlines()[:-1]
            for line in lines:  # every step's arithmetic checks out (exact division)
                lhs, rhs = line.split(" = ")
                assert eval(lhs.replace("/", "//")) == int(rhs)
                a, op, b = lhs.split()
                assert op != "/" or int(a) % int(b) == 0
            assert len(lines) == int(p.subject.split("/")[1].split("_")[0])
        else:
            expression = p.solution.split(" = ")[0]
            assert eval(expression) == int(p.answer)  # "/" is exact, so true division agrees


def test_synthetic_default_fits_tiny_sequence_length():
    longest = max(len(formats.generation_prompt(p.problem) + p.solution)
                  for p in synthetic.synthetic_problems("validation"))
    assert longest <= 256


def test_synthetic_knobs_change_difficulty():
    easy = synthetic.synthetic_problems("test", level=1)
    hard = synthetic.synthetic_problems("test", num_ops=(6, 6), max_operand=30, max_value=999)
    assert all(p.subject in ("arithmetic/1_ops", "arithmetic/2_ops") for p in easy)
    assert all(p.subject == "arithmetic/6_ops" for p in hard)
    assert max(int(p.answer) for p in hard) > 99 >= max(int(p.answer) for p in easy)
    with pytest.raises(ValueError, match="unknown synthetic level"):
        synthetic.synthetic_problems("test", level=9)


def test_sequence_pairs_use_the_generation_prompt():
    examples, stats = formats.sequence_pair_examples(_records(2, 2, 3), num_pairs=4, seed=0)
    assert stats["pairs"] == 8 and len(examples) == 16
    for pos, neg in zip(examples[0::2], examples[1::2]):
        assert pos["pair_id"] == neg["pair_id"] and (pos["is_positive"], neg["is_positive"]) == (1, 0)
        assert pos["inputs"] == neg["inputs"] == formats.generation_prompt(
            f"Problem {pos['problem_id'][1:]}")
        assert "good" in pos["targets"] and "bad" in neg["targets"]


HELDOUT_RECORDS = [{"problem_id": f"train/{i}"} for i in range(1000)]


def test_evaluator_heldout_splits_by_problem():
    records = HELDOUT_RECORDS
    out = formats.evaluator_heldout(records, "validation", fraction=0.2)
    kept = formats.evaluator_heldout(records, "train", fraction=0.2)
    assert len(kept) + len(out) == 1000 and 150 < len(out) < 250
    assert {r["problem_id"] for r in kept}.isdisjoint(r["problem_id"] for r in out)
    assert formats.evaluator_heldout(records, "validation") == []  # default: all train
    with pytest.raises(ValueError, match="fraction"):
        formats.evaluator_heldout(records, "train", fraction=1.5)


def test_evaluator_heldout_is_stable_under_order_and_subsets():
    records = HELDOUT_RECORDS
    out = formats.evaluator_heldout(records, "validation", fraction=0.2)
    again = formats.evaluator_heldout(records[::-1][:500], "validation", fraction=0.2)
    assert {r["problem_id"] for r in again} == {r["problem_id"] for r in out} & {
        r["problem_id"] for r in records[500:]}  # any order, any subset: the same problems


def test_evaluator_heldout_caps_only_the_train_split():
    records = HELDOUT_RECORDS
    out = formats.evaluator_heldout(records, "validation", fraction=0.2)
    kept = formats.evaluator_heldout(records, "train", fraction=0.2)
    first = formats.evaluator_heldout(records, "train", fraction=0.2, max_train_problems=7)
    assert first == kept[:7]  # the first problems of the train split, in file order
    assert formats.evaluator_heldout(records, "validation", fraction=0.2,
                                     max_train_problems=7) == out  # held-out split untouched


def test_step_checks_and_prefix_labels():
    assert [formats.check_step(s) for s in ("3 + 4 = 7", "12 / 4 = 3", "12 / 5 = 2", "2 * 6 = 13",
                                            " 9 - 11 = -2 ", "\\boxed{7}", "7 = 3 + 4")] == [
        True, True, False, False, True, None, None]
    text = "3 + 4 = 7\n7 * 2 = 15\n15 - 1 = 14\n\\boxed{14}"
    assert formats.solution_prefixes(text + "\n") == [
        "3 + 4 = 7", "3 + 4 = 7\n7 * 2 = 15", "3 + 4 = 7\n7 * 2 = 15\n15 - 1 = 14", text]
    assert formats.prefix_labels(text, False) == [True, False, False, False]
    assert formats.prefix_labels("3 + 4 = 7\n\\boxed{7}", True) == [True, True]
    # Wrong, yet every step checks out (a misread operand): the partial prefixes are unknown.
    assert formats.prefix_labels("3 + 5 = 8\n8 * 2 = 16\n\\boxed{16}", False) == [None, None, False]


def test_step_records_label_prefixes_and_drop_unknown_ones():
    records = [{"problem_id": "p", "problem": "Compute (3 + 4) * 2.", "samples": [
        {"text": "3 + 4 = 7\n7 * 2 = 14\n\\boxed{14}", "correct": True},
        {"text": "3 + 4 = 8\n8 * 2 = 16\n\\boxed{16}", "correct": False},
        {"text": "3 + 5 = 8\n\\boxed{8}", "correct": False}]}]
    (out,) = formats.step_records(records)
    assert out["problem"] == records[0]["problem"]
    assert [(s["text"].count("\n"), s["correct"]) for s in out["samples"]] == [
        (0, True), (1, True), (2, True), (0, False), (1, False), (2, False), (1, False)]
    examples, stats = formats.pairwise_examples(formats.step_records(records), num_pairs=50)
    assert stats["pairs"] == 3 * 4  # 3 right prefixes x 4 wrong ones, each pair once
    assert {e["targets"] for e in examples} == {" correct", " incorrect"}


def test_process_labels_mark_right_answers_from_wrong_steps_as_wrong():
    records = [{"problem_id": "p", "problem": "Start with 7, add 5, divide by 6.", "samples": [
        {"text": "7 + 5 = 12\n12 / 6 = 2\n\\boxed{2}", "correct": True},
        {"text": "7 + 5 = 14\n14 / 6 = 2\n\\boxed{2}", "correct": True},   # right by luck
        {"text": "7 + 5 = 12\n12 / 6 = 3\n\\boxed{3}", "correct": False},
        {"text": "Twelve over six.\n\\boxed{2}", "correct": True}]}]   # nothing to check
    assert formats.evaluator_labels(records) == records  # outcome: the paper's labels
    (out,) = formats.evaluator_labels(records, kind="process")
    assert [s["correct"] for s in out["samples"]] == [True, False, False, True]
    assert [s["text"] for s in out["samples"]] == [s["text"] for s in records[0]["samples"]]
    assert records[0]["samples"][1]["correct"] is True  # the input is not changed
    with pytest.raises(ValueError, match="evaluator_labels.kind='steps'"):
        formats.evaluator_labels(records, kind="steps")
