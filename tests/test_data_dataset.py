"""seqio tasks and get_dataset: counts, feature conversion, packing, determinism, sharding,
exact resume, over-long handling, evaluator pairs, the SSFT mixture."""
import collections
import json
import logging
import pathlib

import gin
import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from mathft_jax.data import dataset, metrics, packing, tasks  # noqa: E402

FIXTURE = pathlib.Path(__file__).parent / "data" / "prm800k_labels_fixture.jsonl"
BYTES = seqio.ByteVocabulary()
EOS = BYTES.eos_id


def _segments(batch):
    """(row, segment id, slice) of every example in a batch."""
    for row, ids in enumerate(batch["decoder_segment_ids"]):
        for segment in np.unique(ids[ids > 0]):
            where = np.flatnonzero(ids == segment)
            yield row, int(segment), slice(int(where[0]), int(where[-1]) + 1), len(where)


def _example_keys(iterator):
    """The token sequence of every example an iterator yields, in order."""
    return [tuple(b["decoder_target_tokens"][row, span]) for b in iterator
            for row, _, span, _ in _segments(b)]


def _batches(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------- tasks


def test_every_task_is_registered():
    tasks.ensure_registered()
    for name in tasks.TASK_NAMES:
        assert isinstance(seqio.get_mixture_or_task(name), seqio.Task)
    assert isinstance(seqio.get_mixture_or_task("math_ssft_mix"), seqio.Mixture)


def test_task_counts_and_features(data_dir):
    counts = {name: len(dataset.load_examples(name, split)) for name, split in
              [("math_ssft_math", "train"), ("math500", "test"), ("math_test5k", "test")]}
    assert counts == {"math_ssft_math": 11998, "math500": 500, "math_test5k": 5000}
    train_ids = {ex["problem_id"] for ex in dataset.load_examples("math_ssft_math", "train")}
    assert not train_ids & {ex["problem_id"] for ex in dataset.load_examples("math500", "test")}
    for ex in dataset.load_examples("math500", "test")[:50]:
        assert ex["targets"][-1] == EOS and EOS not in ex["inputs"]
        prompt = BYTES.decode(ex["inputs"])
        assert prompt.startswith("Problem:\n") and prompt.endswith("\n\nSolution:\n")
        assert "\\boxed" in BYTES.decode(ex["targets"])


def test_math500_metric_grades_answers(data_dir):
    examples = dataset.load_examples("math500", "test")[:40]
    task = dataset.get_provider("math500")
    golds = [task.postprocess_fn(None, example=ex, is_target=True) for ex in examples]
    solutions = [ex["targets_pretokenized"] for ex in examples]
    preds = [task.postprocess_fn(s, is_target=False) for s in solutions]
    [metric] = task.metric_fns
    assert metric(golds, preds) == {"answer_accuracy": 100.0}
    wrong = preds[:30] + ["\\text{nonsense}"] * 10
    assert metric(golds, wrong)["answer_accuracy"] == pytest.approx(75.0)
    assert metrics.postprocess_answer("no box here") is None


def test_missing_prm800k_files_fail_only_when_used():
    with pytest.raises(FileNotFoundError, match="prm800k_label_files.paths"):
        dataset.load_examples("math_ssft_prm800k", "train")


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="has no split 'train'"):
        dataset.load_examples("math500", "train")


# ----------------------------------------------------------------------------- conversion


def test_unpacked_rows_equal_seqio_prefix_lm_converter(data_dir):
    examples = [ex for ex in dataset.load_examples("math500", "test")
                if len(ex["inputs"]) <= 400 and len(ex["targets"]) <= 300][:16]
    assert len(examples) == 16
    lengths = {"inputs": 400, "targets": 300}
    tf_ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": ex["inputs"], "targets": ex["targets"]} for ex in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
    converter = seqio.PrefixLMFeatureConverter(pack=False, loss_on_targets_only=True)
    theirs = list(converter(tf_ds, lengths).as_numpy_iterator())
    ours = packing.rows_from_examples([(ex["inputs"], ex["targets"]) for ex in examples], 700)
    for row, expected in enumerate(theirs):
        real = ours["decoder_segment_ids"][row] == 1
        assert real.sum() == len(examples[row]["inputs"]) + len(examples[row]["targets"])
        for name, values in expected.items():
            if name == "decoder_input_tokens":
                # seqio's unpacked shift carries EOS into the first padding position; ours,
                # like seqio's packed output, keeps padding 0. Real positions agree.
                values, mine = values[real], ours[name][row][real]
                assert not ours[name][row][~real].any()
            else:
                mine = ours[name][row]
            assert np.array_equal(mine, values), (row, name)


@pytest.fixture(scope="module")
def packed_synthetic():
    it = dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8, seed=5, num_epochs=1)
    return list(it)


def test_packing_keeps_examples_whole_and_weights_exactly_targets(packed_synthetic):
    pairs = {(ex["inputs_pretokenized"], ex["targets_pretokenized"])
             for ex in dataset.load_examples("synthetic_arith_steps", "validation")}
    seen = 0
    for batch in packed_synthetic:
        assert all(v.dtype == np.int32 and v.shape == (8, 256) for v in batch.values())
        pad = batch["decoder_segment_ids"] == 0
        assert not batch["decoder_loss_weights"][pad].any() and not batch["decoder_target_tokens"][pad].any()
        for row, _, span, n in _segments(batch):
            assert span.stop - span.start == n, "a segment is contiguous"
            tokens = batch["decoder_target_tokens"][row, span]
            weights = batch["decoder_loss_weights"][row, span].astype(bool)
            assert np.array_equal(batch["decoder_positions"][row, span], np.arange(n))
            assert batch["decoder_input_tokens"][row, span.start] == 0
            assert np.array_equal(batch["decoder_input_tokens"][row, span][1:], tokens[:-1])
            # The weighted tokens are exactly the target (solution + EOS), the rest the prompt.
            target, prompt = BYTES.decode(tokens[weights]), BYTES.decode(tokens[~weights])
            assert tokens[weights][-1] == EOS and weights[-1] and not weights[0]
            assert (prompt, target) in pairs
            causal = batch["decoder_causal_attention"][row, span]
            assert causal.sum() == len(prompt.encode()) + 1
            seen += 1
    assert seen == 500
    assert max(b["decoder_segment_ids"].max() for b in packed_synthetic) > 1, "rows hold several"


def test_unpacked_rows_have_segment_one_and_positions(data_dir):
    batch = next(dataset.get_dataset("math500", "test", 512, 4, pack=False, shuffle=False))
    ids = batch["decoder_segment_ids"]
    assert set(np.unique(ids)) <= {0, 1} and (ids[:, 0] == 1).all()
    for row in range(4):
        n = int(ids[row].sum())
        assert np.array_equal(batch["decoder_positions"][row, :n], np.arange(n))
        assert not batch["decoder_positions"][row, n:].any()


# ----------------------------------------------------------------------------- order


def test_same_seed_same_batches_other_seed_other_batches():
    make = lambda seed: dataset.get_dataset("synthetic_arith_terse", "test", 256, 8, seed=seed)  # noqa: E731
    _assert_same(_batches(make(11), 6), _batches(make(11), 6))
    assert not np.array_equal(next(make(11))["decoder_target_tokens"], next(make(12))["decoder_target_tokens"])


@pytest.mark.parametrize("pack", [True, False])
def test_two_shards_are_disjoint_and_complete(pack):
    def shard(i):
        return _example_keys(dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8, seed=3,
                                                 shard=(i, 2), pack=pack, num_epochs=1))
    everything = _example_keys(dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8,
                                                   seed=3, pack=pack, num_epochs=1))
    first, second = shard(0), shard(1)
    assert len(everything) == len(set(everything)) == 500
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(everything)
    assert abs(len(first) - len(second)) <= 1


def test_state_restores_exactly_across_epochs():
    make = lambda epochs=None: dataset.get_dataset(  # noqa: E731
        "synthetic_arith_steps", "validation", 512, 8, seed=9, num_epochs=epochs)
    epoch_batches = len(list(make(epochs=1)))
    it = make()
    _batches(it, epoch_batches - 3)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    assert state["epoch"] == 0 and state["cursor"] > 0
    expected = _batches(it, 10)  # crosses into epoch 1
    assert it.get_state()["epoch"] == 1
    resumed = make()
    resumed.set_state(state)
    _assert_same(expected, _batches(resumed, 10))
    # Epochs are reshuffled: epoch 1 does not repeat epoch 0's order.
    both = _example_keys(make(epochs=2))
    assert sorted(both[:500]) == sorted(both[500:]) and both[:500] != both[500:]


def test_state_of_another_configuration_is_refused():
    it = dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8, seed=9)
    other = dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8, seed=10)
    with pytest.raises(ValueError, match="another configuration.*seed"):
        other.set_state(it.get_state())


def test_max_examples_keeps_the_first_examples_and_is_part_of_the_state():
    def make(max_examples=None, **kw):
        return dataset.get_dataset("synthetic_arith_steps", "validation", 256, 8, seed=3,
                                   num_epochs=1, max_examples=max_examples, **kw)
    first_50 = _example_keys(make(shuffle=False))[:50]
    kept = _example_keys(make(50))
    assert len(kept) == 50 and sorted(kept) == sorted(first_50)
    assert make(50, pack=False).stats["examples"] == 50
    with pytest.raises(ValueError, match="another configuration.*max_examples"):
        make(60).set_state(make(50).get_state())
    with pytest.raises(ValueError, match="max_examples=0: must be at least 1"):
        make(0)


def test_finite_iteration_ends_and_covers_every_example():
    it = dataset.get_dataset("synthetic_arith_terse", "test", 256, 16, num_epochs=2, pack=False)
    batches = list(it)
    rows = sum(int((b["decoder_segment_ids"][:, 0] == 1).sum()) for b in batches)
    assert rows == 1000 and len(batches) == 63  # 2 x 500 rows in batches of 16


@pytest.mark.parametrize("drop", [False, True])
def test_overlong_examples_truncated_or_dropped_and_logged(data_dir, caplog, drop):
    with caplog.at_level(logging.INFO):
        it = dataset.get_dataset("math500", "test", 256, 8, shuffle=False, num_epochs=1,
                                 drop_overlong=drop)
    overlong = sum(len(ex["inputs"]) + len(ex["targets"]) > 256
                   for ex in dataset.load_examples("math500", "test"))
    assert it.stats["overlong"] == overlong > 0
    assert it.stats["dropped" if drop else "truncated"] == overlong
    assert f"{overlong} of 500 examples longer than 256 tokens" in caplog.text
    keys = _example_keys(it)
    assert len(keys) == (500 - overlong if drop else 500)
    assert max(map(len, keys)) <= 256


def test_truncation_keeps_short_targets_and_prompt_cue():
    inputs, targets = np.arange(10, 400), np.array([7, 8, 1])
    fit_in, fit_tgt = packing.fit_to_length(inputs, targets, 100)
    assert np.array_equal(fit_tgt, targets) and np.array_equal(fit_in, inputs[-97:])
    fit_in, fit_tgt = packing.fit_to_length(np.arange(20), np.arange(500), 100)
    assert len(fit_in) == 20 and np.array_equal(fit_tgt, np.arange(80))


# ----------------------------------------------------------------------------- gin-bound tasks


@pytest.fixture(scope="module")
def scr_candidates(tmp_path_factory):
    """A candidates file: 12 problems with right and wrong samples, and one with only a right one."""
    path = tmp_path_factory.mktemp("scr") / "candidates.jsonl"
    rows = [{"problem_id": f"p{i}", "problem": f"What is {i}+{i}?", "gold": str(2 * i), "samples":
             [{"text": f"{i}+{i}={2 * i + d}, \\boxed{{{2 * i + d}}}", "answer": str(2 * i + d)}
              for d in (0, 0, 1, 2, 3)]} for i in range(12)]
    rows.append({"problem_id": "one_sided", "problem": "?", "gold": "1",
                 "samples": [{"text": "\\boxed{1}", "answer": "1"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def bound_tasks(scr_candidates):
    """Tasks re-registered after binding the PRM800K files and the candidates file with gin;
    after the test, registered again from no bindings (the tasks read gin when registered)."""
    gin.parse_config([f"prm800k_label_files.paths = ['{FIXTURE}']",
                      f"scr_candidates_file.path = '{scr_candidates}'", "pairwise_examples.num_pairs = 3"])
    tasks.register_tasks()
    yield
    gin.clear_config()
    tasks.register_tasks()


def test_pairwise_batches_keep_pairs_together(bound_tasks):
    it = dataset.get_dataset("scr_pairwise", "train", 512, 8, pack=False, seed=1, num_epochs=1)
    batches = list(it)
    pairs = set()
    for b in batches:
        for row in range(0, 8, 4):
            if b["pair_id"][row] < 0:
                assert (b["decoder_segment_ids"][row:] == 0).all()
                continue
            assert len(set(b["pair_id"][row:row + 4])) == 1
            assert list(b["is_positive"][row:row + 4]) == [1, 1, 0, 0]
            assert list(b["label_correct"][row:row + 4]) == [1, 0, 1, 0]
            for r, label in zip(range(row, row + 4), (" correct", " incorrect") * 2):
                weighted = b["decoder_target_tokens"][r][b["decoder_loss_weights"][r] == 1]
                assert BYTES.decode(weighted) == label and EOS not in weighted  # label alone, as scored
            pairs.add(int(b["pair_id"][row]))
    assert pairs == set(range(12 * 3))  # 12 two-sided problems x 3 pairs; the one-sided gives none
    with pytest.raises(ValueError, match="pack=False"):
        dataset.get_dataset("scr_pairwise", "train", 512, 8, pack=True)
    with pytest.raises(ValueError, match="divisible by 4"):
        dataset.get_dataset("scr_pairwise", "train", 512, 6, pack=False)


def test_pointwise_is_balanced(bound_tasks):
    examples = dataset.load_examples("scr_pointwise", "train")
    labels = collections.Counter(BYTES.decode(ex["targets"]) for ex in examples)
    assert labels == {" correct": 12, " incorrect": 12}  # 1 distinct correct text per problem


def test_ssft_mixture_draws_both_tasks_by_rate(bound_tasks, data_dir):
    prm = dataset.load_examples("math_ssft_prm800k", "train")
    assert len(prm) == 2  # the fixture's two usable solutions
    prm_targets = {tuple(ex["targets"]) for ex in prm}
    it = dataset.get_dataset("math_ssft_mix", "train", 1024, 8, seed=0, num_epochs=1)
    assert it.stats["examples"] == 11998 + 2
    keys = _example_keys(_batches(it, 100))
    from_prm = sum(any(k[-len(t):] == t for t in prm_targets) for k in keys)
    assert 0.4 < from_prm / len(keys) < 0.6  # equal rates by default


def test_evaluator_heldout_split_is_disjoint_by_problem(bound_tasks):
    whole = {ex["problem_id"] for ex in dataset.load_examples("scr_pairwise", "train")}
    with gin.unlock_config():
        gin.bind_parameter("evaluator_heldout.fraction", 0.3)
    train = {ex["problem_id"] for ex in dataset.load_examples("scr_pairwise", "train")}
    held = {ex["problem_id"] for ex in dataset.load_examples("scr_pairwise", "validation")}
    assert train and held and not train & held and train | held == whole


def test_scr_training_reports_heldout_pair_accuracy(bound_tasks, tmp_path):
    from mathft_jax import train
    from mathft_jax.core import metrics_writer
    from mathft_jax.training import objectives
    from mathft_jax.models import DecoderConfig
    with gin.unlock_config():
        gin.bind_parameter("evaluator_heldout.fraction", 0.3)
    model = DecoderConfig(vocab_size=384, num_layers=1, d_model=32, num_heads=2,
                          num_kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=512)
    train.train(model_dir=str(tmp_path / "scr"), task="scr_pairwise", total_steps=2,
                batch_size=8, sequence_length=512, pack=False, eval_every=1, eval_steps=2,
                objective=objectives.evaluator_objective, model=model, progress=False)
    rows = [r for r in metrics_writer.read_metrics(str(tmp_path / "scr")) if "eval/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["eval/pair_accuracy"] <= 1.0 for r in rows)


def test_evaluator_tasks_train_on_process_labels_when_bound(bound_tasks, tmp_path):
    path = tmp_path / "lucky.jsonl"
    samples = [{"text": "2 + 2 = 4\n\\boxed{4}", "answer": "4"},
               {"text": "2 + 2 = 5\n5 - 1 = 4\n\\boxed{4}", "answer": "4"},  # right by luck
               {"text": "2 + 2 = 5\n\\boxed{5}", "answer": "5"},
               {"text": "2 + 2 = 3\n\\boxed{3}", "answer": "3"}]
    path.write_text(json.dumps({"problem_id": "q", "problem": "2 + 2?", "gold": "4",
                                "samples": samples}) + "\n")

    def labels(kind):
        with gin.unlock_config():
            gin.bind_parameter("scr_candidates_file.path", str(path))
            gin.bind_parameter("evaluator_labels.kind", kind)
        tasks.register_tasks()
        return collections.Counter(
            (BYTES.decode(ex["inputs"]).count("= 5"), BYTES.decode(ex["targets"]))
            for ex in dataset.load_examples("scr_pointwise", "train"))
    # outcome: 2 right texts and 2 wrong, so both right ones, the lucky one (its "= 5")
    # among them, are " correct".
    assert labels("outcome") == {(0, " correct"): 1, (1, " correct"): 1,
                                 (1, " incorrect"): 1, (0, " incorrect"): 1}
    # process: the lucky text joins the wrong class: 1 right text, so 1 of each class,
    # and no text with "= 5" is " correct".
    got = labels("process")
    assert got[(0, " correct")] == 1 and sum(got.values()) == 2
    assert (1, " correct") not in got
