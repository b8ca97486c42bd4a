"""Each break of the real user's path (issue #10): an imported tokenizer, gin-bound
vocabulary and data, the evaluator's label likelihoods, micro-batched evaluator pairs.
Every test here failed on the code before the fix, and is named for what it checks."""
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tokenizers")

from mathft_jax.models import partitioning  # noqa: E402
from mathft_jax.scoring import evaluator
from mathft_jax.training import objectives, optim, trainer
from mathft_jax.data import dataset, formats, vocab  # noqa: E402
from mathft_jax.models import Decoder, DecoderConfig  # noqa: E402
from mathft_jax.models.decoder import init_params  # noqa: E402

from real_path_utils import BOS, EOS, train_tokenizer  # noqa: E402

LINES = [f"Problem {i}: what is {i} + {i + 1}? The answer is $\\boxed{{{2 * i + 1}}}$. "
         f"Steps: {i} plus {i + 1} makes {2 * i + 1}, and x^2 = \\frac{{1}}{{2}}." for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    return train_tokenizer(LINES, tmp_path_factory.mktemp("tok"), vocab_size=300)


@pytest.fixture
def hf_vocab_bound(tokenizer_json):
    """`vocab.gin` as import_hf writes it: the tokenizer with BOS 1 and EOS 2."""
    gin.parse_config([f"get_vocabulary.name_or_path = '{tokenizer_json}'",
                      f"get_vocabulary.bos_id = {BOS}", f"get_vocabulary.eos_id = {EOS}"])
    return vocab.get_vocabulary()


def test_hf_tokenizer_encodes_inside_tf_data_and_tf_function(tokenizer_json):
    v = vocab.HfTokenizerVocabulary(str(tokenizer_json), bos_id=BOS, eos_id=EOS)
    texts = LINES[:4]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(v.encode_tf)
    assert [ids.tolist() for ids in ds.as_numpy_iterator()] == [v.encode(t) for t in texts]
    encode = tf.function(lambda s: v.encode_tf(s))
    assert encode(tf.constant(texts[0])).numpy().tolist() == v.encode(texts[0])


def test_tasks_follow_the_vocabulary_bound_in_gin_after_import(hf_vocab_bound):
    """The tasks module is imported (and was once registered) long before gin is parsed;
    reading a task must use the vocabulary bound now, with its BOS as the start token."""
    gin.bind_parameter("synthetic_problems.split_sizes", {"train": 200})  # any size shows it
    examples = dataset.load_examples("synthetic_arith_steps", "train")
    first = examples[0]
    assert first["inputs"].tolist() == hf_vocab_bound.encode(first["inputs_pretokenized"])
    assert first["targets"][-1] == EOS
    it = dataset.get_dataset("synthetic_arith_steps", "train", 128, 4, pack=False)
    batch = next(it)
    assert int(batch["decoder_input_tokens"][0, 0]) == BOS  # not seqio's 0


def _candidates_file(tmp_path):
    rows = [{"problem_id": f"p{i}", "problem": f"What is {i}+{i}?", "gold": str(2 * i),
             "samples": [{"text": f"{i}+{i}={2 * i + d}, so \\boxed{{{2 * i + d}}}",
                          "answer": str(2 * i + d), "correct": d == 0} for d in (0, 1)]}
            for i in range(3)]
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_evaluator_training_and_scoring_compute_the_same_label_likelihood(hf_vocab_bound, tmp_path):
    """For a vocabulary whose EOS is 2, a training row's log-likelihood is the label's
    log-probability exactly as scoring computes it (no p(EOS | label) in one of them)."""
    with gin.unlock_config():
        gin.bind_parameter("scr_candidates_file.path", str(_candidates_file(tmp_path)))
        gin.bind_parameter("pairwise_examples.num_pairs", 1)
    v = hf_vocab_bound
    cfg = DecoderConfig(vocab_size=v.vocab_size, num_layers=2, d_model=32, num_heads=4,
                        num_kv_heads=2, head_dim=8, mlp_dim=64, max_seq_len=256, dtype="float32")
    params = nn.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    batch = next(dataset.get_dataset("scr_pairwise", "train", 256, 4, pack=False, shuffle=False))
    rows = objectives._row_log_likelihoods(Decoder(cfg), params,
                                           {k: jnp.asarray(x) for k, x in batch.items()}, 0)
    example = dataset.load_examples("scr_pairwise", "train")[0]
    assert EOS not in example["targets"].tolist()
    prompt = example["inputs_pretokenized"]  # the template, filled: read P and X back
    problem = prompt.split("Here is a math problem: ")[1].split("\nHere is a candidate")[0]
    solution = prompt.split("Here is a candidate solution: ")[1].split("\nThe above")[0]
    labels = (formats.evaluator_target(True), formats.evaluator_target(False))
    context = [BOS] + v.encode(formats.evaluator_prompt(problem, solution))
    assert context[1:] == example["inputs"].tolist()
    label_ids = tuple(evaluator.encode_label(v, t) for t in labels)
    logps = evaluator.label_logprobs(params, jnp.asarray([context]), jnp.asarray([len(context)]),
                                   cfg=cfg, labels=label_ids)
    # rows 0, 1 = (X+, correct), (X+, incorrect): the first pair's positive solution
    np.testing.assert_allclose(np.asarray(rows[:2]), np.asarray(logps[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("objective,group", [(objectives.evaluator_objective, 4),
                                             (objectives.sequence_objective, 2)],
                         ids=["evaluator", "sequence"])
def test_micro_batches_keep_objective_row_groups_whole(objective, group):
    cfg = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_seq_len=32, dtype="float32")
    assert objectives.rows_per_group(objective) == group
    rng = np.random.RandomState(0)
    b, t = 4 * group, 12
    tokens = rng.randint(1, cfg.vocab_size, (b, t + 1)).astype(np.int32)
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": (rng.rand(b, t) > 0.5).astype(np.float32),
             "pair_id": np.repeat(np.arange(4, dtype=np.int32), group)}
    opt, sched = optim.make_optimizer(), optim.learning_rate_schedule()
    _, sh = trainer.abstract_state(cfg, opt, partitioning.Partitioner.single_device(cfg))
    state = trainer.init_state(cfg, opt, sh, seed=0)
    _, one = jax.jit(trainer.make_train_step(cfg, opt, sched, objective, micro_batches=1))(state, batch)
    _, two = jax.jit(trainer.make_train_step(cfg, opt, sched, objective, micro_batches=2))(state, batch)
    for key in ("loss", "pair_accuracy", "grad_norm"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)


def test_run_paths_keep_gs_urls():
    """`os.path.abspath('gs://b/x')` is `<cwd>/gs:/b/x`: run paths must stay URLs."""
    from mathft_jax import pipeline
    from mathft_jax.core import storage
    run = pipeline.Run("gs://bucket/runs/x")
    assert run.checkpoint("ssft") == "gs://bucket/runs/x/ssft/checkpoints"
    assert run.artefact("score", "candidates", "mtsf") == "gs://bucket/runs/x/score/mtsf.jsonl"
    assert str(storage.path("gs://bucket/a")) == "gs://bucket/a"
    assert storage.path("rel").is_absolute()
