"""bench/evaluator_study.py's pure parts: settings bind only SCR-side values, the table
aggregates seeds and counts wins, and the results section is replaced in place."""
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("evaluator_study", REPO / "bench" / "evaluator_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

ROW = dict(heldout_pair_accuracy=0.6, test_pair_accuracy=0.62, test_auc=0.76, rr_topk=25.0,
           wrr_majk=35.6, maj1_at_n=31.9, rr_ll_topk=36.2, rr_topk_minus_maj1=-6.9,
           scr_pairs_seen=1200)


def test_settings_touch_only_the_scr_stage():
    # The base stages (SSFT, sampling) are shared between settings, so a setting may only
    # bind what the SCR, score and evaluate stages read.
    allowed = ("scr/", "evaluator_", "pairwise_examples.", "sequence_pair_examples.",
               "score_records.", "pipeline.scr_task")
    for name, (_, bindings) in study.SETTINGS.items():
        for b in bindings:
            assert b.startswith(allowed), (name, b)
    assert study._pairs_seen(study._setting(steps=300, batch=32)) == 300 * 8
    # a generation-format pair is 2 rows, and its evaluator scores by likelihood
    likelihood = study._setting(steps=300, batch=32, evaluator="likelihood")
    assert study._pairs_seen(likelihood) == 300 * 16
    assert "score_records.method='likelihood'" in likelihood
    with pytest.raises(ValueError, match="takes no loss, labels, template or prefixes"):
        study._setting(evaluator="likelihood", data="prefixes")
    with pytest.raises(ValueError, match="evaluator='lik'"):
        study._setting(evaluator="lik")


def test_markdown_aggregates_seeds_and_counts_wins():
    win = dict(ROW, rr_topk=33.0, rr_topk_minus_maj1=1.1, heldout_pair_accuracy=None)
    text = study.markdown({"ssft350": {"gen_300": {0: ROW}, "demo": {0: ROW, 1: win}}})
    gen_row = next(l for l in text.splitlines() if l.startswith("| gen_300"))
    demo_row = next(l for l in text.splitlines() if l.startswith("| demo"))
    assert "| 1 | 0.600 | 0.620 |" in gen_row and gen_row.endswith("0/1 seeds |")
    assert "| 2 | 0.600 | 0.620 ± 0.000 |" in demo_row  # a missing value is left out
    assert "29.0 ± 4.0" in demo_row and demo_row.endswith("1/2 seeds |")


def test_write_section_replaces_its_own_text_only(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Findings\nhand-written\n")
    data = {"ssft350": {"gen_300": {0: ROW}}}
    study.write_section(str(path), data, "first table")
    study.write_section(str(path), data, "second table")
    text = path.read_text()
    assert text.startswith("# Results\n\n## Findings\nhand-written\n")
    assert "second table" in text and "first table" not in text
    assert text.count(study.BEGIN) == 1 and (tmp_path / "RESULTS_evaluator_study.png").exists()


def test_curriculum_counts_lucky_answers_and_scores_a_perfect_step_checker(tmp_path):
    import json

    def write(path, records):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def sample(text):
        return {"text": text, "answer": text.rsplit("{", 1)[1].rstrip("}"), "logprob": -1.0,
                "num_tokens": 1}
    good, lucky, bad = ("2 + 2 = 4\n\\boxed{4}", "2 + 2 = 5\n5 - 1 = 4\n\\boxed{4}",
                        "2 + 2 = 5\n\\boxed{5}")
    write(tmp_path / "sample_train" / "candidates.jsonl", [
        {"problem_id": "t", "problem": "2 + 2?", "gold": "4",
         "samples": [sample(good), sample(lucky), sample(lucky), sample(bad)]}])
    # The wrong answer wins the vote (3 of 4); the checker picks the one right sample.
    write(tmp_path / "sample_eval" / "ssft.jsonl", [
        {"problem_id": "e", "problem": "2 + 2?", "gold": "4",
         "samples": [sample(bad), sample(bad), sample(good), sample(bad)]}])
    (tmp_path / "sample_eval" / "config.gin").write_text("pipeline.grader = 'mathft'\npipeline.k = 4\n")
    assert study.study_k(str(tmp_path)) == 4
    c = study.curriculum(str(tmp_path), k=4)
    assert c["lucky_share"] == 2 / 3  # 2 of the 3 right training samples
    assert c["step_check_pair_accuracy"] == 1.0 and c["step_check_rr_topk"] == 100.0
    assert c["maj1_at_n"] == 0.0
    row = study.curriculum_markdown({"ssft350": {0: c, 1: c}}).splitlines()[-1]
    assert row.startswith("| ssft350 | 2 | 0.667 ± 0.000 | 1.000 ± 0.000 | 100.0 ± 0.0 |")
