"""Every boxed solution in MATH (train, test) and MATH500 grades equal to its reference answer."""
import json

from mathft_jax.grading import answer_key, extract_answer, is_equiv, normalize


def reference_box(solution: str) -> str | None:
    """Last \\boxed{} content, by an independent brace count (not the code under test)."""
    start = solution.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed")
    for pos in range(begin, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[pos], 0)
        if depth == 0:
            return solution[begin + 1:pos].strip() or None  # `\boxed{}` states no answer
    return None


def check_file(path, reference_of):
    failures, checked = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        reference = reference_of(row)
        if reference is None:
            continue
        checked += 1
        extracted = extract_answer(row["solution"])
        prm_style = extract_answer(f"Some steps.\n\n# Answer\n\n{reference}")
        if not (is_equiv(extracted, reference) and is_equiv(prm_style, reference)
                and is_equiv(reference, normalize(reference))
                and answer_key(f"${reference}$") == answer_key(reference)):
            failures.append((row["unique_id"], extracted, reference))
    return checked, failures


def test_math_train_and_test(data_dir):
    for split in ("train", "test"):
        checked, failures = check_file(data_dir / "math" / f"{split}.jsonl",
                                       lambda row: reference_box(row["solution"]))
        assert checked > 4000
        assert not failures, f"{split}: {len(failures)} exceptions, first: {failures[:10]}"


def test_math500(data_dir):
    checked, failures = check_file(data_dir / "prm800k" / "math_splits" / "test.jsonl",
                                   lambda row: row["answer"])
    assert checked == 500
    assert not failures, f"{len(failures)} exceptions: {failures[:10]}"
