"""seqio tasks and mixtures of mathft_jax, registered from the parsed gin configuration.

Every task has output features `inputs` (the prompt; no EOS) and `targets` (the solution or
evaluator label; EOS appended), tokenised with the task vocabulary, plus text features
`problem_id`, `answer` (gold answer, generation tasks) and, for the evaluator tasks, the
integers `pair_id` / `is_positive` / `label_correct` (see docs/data.md).

Gin: data paths (`mathft_jax.data.paths`), the vocabulary (`get_vocabulary.name_or_path`), the
formats and the synthetic knobs are gin parameters. Nothing is registered at import: a task
registered with the defaults before gin is parsed would silently train on the byte
vocabulary. Every reader of a task (`dataset.get_dataset`, `load_examples`) calls
`ensure_registered()` first, which (re-)registers all tasks whenever the gin-bound
vocabulary, paths or mixture rates differ from the last registration, so the values bound
in gin (in the current gin scope) always win. Nothing is read until a task's data is first
requested, so a missing file (e.g. PRM800K label files) is an error only for the task that
needs it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from mathft_jax.core import storage
from mathft_jax.data import formats, metrics, paths, prompts, readers, sources, synthetic, vocab

GENERATION_EVAL_TASKS = ("math500", "math_test5k")
SYNTHETIC_TASKS = {"synthetic_arith_steps": "steps", "synthetic_arith_terse": "terse"}
SSFT_MIXTURE = "math_ssft_mix"
# Evaluator-format tasks: the target is the label (" correct" / " incorrect") alone, with no
# EOS, so training and `scoring.score_solutions` compute the same label log-likelihood for
# any vocabulary (no eos id to keep in agreement).
# scr_steps_pairwise: the pairs of scr_pairwise over labelled solution prefixes
# (formats.step_records), for an evaluator scored with `score_records.steps = True`.
EVALUATOR_LABEL_TASKS = ("scr_pairwise", "scr_pointwise", "scr_steps_pairwise")
TASK_NAMES = ("math_ssft_math", "math_ssft_prm800k", *GENERATION_EVAL_TASKS,
              *SYNTHETIC_TASKS, *EVALUATOR_LABEL_TASKS,
              "scr_sequence_pairwise", "dpo_pairs")


# ----------------------------------------------------------------------------- examples


def generation_examples(problems: Iterable[readers.Problem]) -> list[dict]:
    """(prompt, solution) examples in the gin-bound prompt format (`prompt_format.*`): a chat
    model is fine-tuned in its own template, its target closed by its end-of-turn token."""
    prompt_format = prompts.gin_format()
    return [{
        "inputs": prompt_format.prompt_text(p.problem),
        "targets": prompt_format.target(p.solution),
        "answer": p.answer_text,
        "problem_id": p.problem_id,
    } for p in problems]


def _prm800k_problems(files: Sequence) -> list[readers.Problem]:
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"math_ssft_prm800k: PRM800K label files not found: {missing}. They are not shipped "
            "with ../shared/data; bind prm800k_label_files.paths = [...].")
    return readers.read_prm800k_labels(files)


def _candidates(path) -> list[dict]:
    if path is None:
        raise ValueError("scr_pairwise / scr_pointwise / scr_sequence_pairwise need a graded "
                         "candidates file: set train.data_file or bind "
                         "scr_candidates_file.path = '...'.")
    return readers.read_candidates(path)


def _preference_examples(path) -> list[dict]:
    from mathft_jax.data import preferences  # noqa: PLC0415
    if path is None:
        raise ValueError("dpo_pairs needs a preference file with reference log-likelihoods: "
                         "set train.data_file or bind preference_file.path = '...' "
                         "(python -m mathft_jax.scoring.reference)")
    return preferences.preference_examples(preferences.read_preferences(str(path)))


def examples_to_dataset(examples: list[dict], name: str) -> tf.data.Dataset:
    if not examples:
        raise ValueError(f"{name}: no examples (see the log for what was skipped)")
    columns = {key: [ex[key] for ex in examples] for key in examples[0]}
    return tf.data.Dataset.from_tensor_slices(columns)


def _source(name: str, loaders: dict[str, Callable[[], list[dict]]]) -> seqio.DataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # order is get_dataset's job (seeded, exactly resumable)
        return examples_to_dataset(loaders[split](), f"{name}/{split}")

    return seqio.FunctionDataSource(dataset_fn, splits=list(loaders))


# ----------------------------------------------------------------------------- registration


def _add_task(name: str, loaders: dict, vocabulary: seqio.Vocabulary, with_metric: bool,
              add_eos: bool = True) -> None:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=_source(name, loaders),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=add_eos),
        },
        postprocess_fn=metrics.postprocess_answer if with_metric else None,
        metric_fns=[metrics.answer_accuracy] if with_metric else [],
    )


def _run_file(data_file: Optional[str], bound: Callable):
    """The file a task built from a run's own outputs reads: `data_file` where given, else
    the gin-bound one (`bound()`: `paths.scr_candidates_file` or `paths.preference_file`)."""
    return storage.path(data_file) if data_file else bound()


def _task_loaders(data_file: Optional[str] = None) -> dict[str, dict[str, Callable[[], list[dict]]]]:
    """Per task, per split: a zero-argument loader (sources read their paths from gin when
    it runs; ensure_registered re-registers, dropping cached examples, when they change).
    data_file: the scr_* tasks' graded candidates file and dpo_pairs' preference file, in
    place of the gin-bound ones."""
    label_files = paths.prm800k_label_files()
    candidates_file = _run_file(data_file, paths.scr_candidates_file)
    preference_file = _run_file(data_file, paths.preference_file)

    def generation(read: Callable, *args, **kwargs) -> Callable[[], list[dict]]:
        return lambda: generation_examples(read(*args, **kwargs))

    def evaluator(build: Callable) -> dict[str, Callable[[], list[dict]]]:
        return {split: (lambda split=split: build(formats.evaluator_labels(
            formats.evaluator_heldout(_candidates(candidates_file), split)))[0])
            for split in ("train", "validation")}

    loaders = {
        "math_ssft_math": {"train": generation(sources.problems, "math500", "train",
                                               require_answer=True)},
        "math_ssft_prm800k": {"train": generation(_prm800k_problems, label_files)},
        "math500": {"test": generation(sources.problems, "math500", "test")},
        "math_test5k": {"test": generation(sources.problems, "math", "test")},
        "scr_pairwise": evaluator(formats.pairwise_examples),
        "scr_pointwise": evaluator(formats.pointwise_examples),
        "scr_steps_pairwise": evaluator(lambda records: formats.pairwise_examples(
            formats.step_records(records))),
        "scr_sequence_pairwise": evaluator(lambda records: formats.sequence_pair_examples(
            records, format_of=prompts.sampled_format)),
        "dpo_pairs": {"train": lambda: _preference_examples(preference_file)},
    }
    for name in SYNTHETIC_TASKS:  # the task and its source share the name
        # Knobs are read from gin when the split is first loaded.
        loaders[name] = {split: generation(sources.problems, name, split)
                         for split in synthetic.SPLITS}
    return loaders


_registered_with: Optional[tuple] = None  # what the current registration was built from


@gin.configurable
def ssft_mix_rates(rates: Sequence[float] = (1.0, 1.0)) -> tuple:
    """`math_ssft_mix`'s rates for math_ssft_math and math_ssft_prm800k."""
    return tuple(float(r) for r in rates)


def _registration_key(vocabulary: seqio.Vocabulary, data_file: Optional[str] = None) -> tuple:
    # The bindings as a whole too: loaders read knobs (formats, held-out fraction, synthetic
    # difficulty) when they run, so any change of them must drop the cached examples.
    return (vocabulary, paths.math_splits_dir(), paths.math_dir(),
            tuple(paths.prm800k_label_files()), paths.scr_candidates_file(), data_file,
            ssft_mix_rates(), gin.config_str())


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None,
                   data_file: Optional[str] = None) -> None:
    """(Re-)registers every task and the `math_ssft_mix` mixture with the gin-bound data
    paths and rates (`data_file`: see `_task_loaders`). `vocabulary` defaults to the
    gin-configured `get_vocabulary()`."""
    global _registered_with
    vocabulary = vocabulary or vocab.get_vocabulary()
    for name, loaders in _task_loaders(data_file).items():
        with_metric = name in GENERATION_EVAL_TASKS or name in SYNTHETIC_TASKS
        _add_task(name, loaders, vocabulary, with_metric,
                  add_eos=name not in EVALUATOR_LABEL_TASKS)
    seqio.MixtureRegistry.remove(SSFT_MIXTURE)
    seqio.MixtureRegistry.add(SSFT_MIXTURE, list(zip(("math_ssft_math", "math_ssft_prm800k"),
                                                     ssft_mix_rates())))
    _registered_with = _registration_key(vocabulary, data_file)


def ensure_registered(data_file: Optional[str] = None) -> None:
    """Register the tasks from the gin configuration as it is now (current scope included)
    and `data_file` (see `_task_loaders`), unless the current registration was built from
    the same vocabulary, paths, data file and rates: re-registering drops the
    tokenised-example cache, so it happens only on a change."""
    vocabulary = vocab.get_vocabulary()
    if _registered_with != _registration_key(vocabulary, data_file):
        register_tasks(vocabulary, data_file)
