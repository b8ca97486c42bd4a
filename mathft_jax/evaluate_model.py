"""One model on the standard benchmark suite, in one command:

    python -m mathft_jax.evaluate_model --checkpoint=CKPT \\
        --benchmarks=math500,gsm8k,aime24,amc23,minerva_math,olympiadbench \\
        --num_samples=N --prompt=plain --out=DIR

CKPT is a model_dir written by import_hf or training (or one of its steps): its model.gin
and vocab.gin give the model and the tokenizer. For each benchmark, `infer` samples N
solutions per problem into DIR/<benchmark>/candidates.jsonl and `evaluate`'s functions grade
and cluster them (DIR/<benchmark>/results.json); then one table is printed (a row per
benchmark: Pass@1, Maj1@N and Pass@N with 95% bootstrap intervals, problems, grader, prompt)
and DIR/report.md is written with a plot per benchmark of Pass@k and Maj1@k against k
(`results/benchmark_report.py`). `--greedy` is N = 1 at temperature 0. `--references`
grades the benchmarks' own solutions instead of samples (no checkpoint), so that
`--compare_graders=mathft,math_verify` shows how the graders read the gold answers.

A thin entry point over `infer` and `evaluate` rather than a pipeline variant: there is no
training stage, and each benchmark is already the unit infer and evaluate work in.
Resumable: a benchmark whose candidates file is complete is not sampled again, one killed
mid-sampling resumes at its last chunk (infer's), and a benchmark graded under the same
grading settings is not graded again. DIR/settings.json keeps what the samples depend on; a
rerun that asks for other samples in the same DIR stops, naming the settings. SIGTERM stops
after the chunk being sampled (exit 75).

Errors are one line (exit 2: a usage error, an unknown benchmark, a missing checkpoint;
exit 1: data, e.g. a benchmark file absent from the data directory, `MATHFT_DATA_DIR`).
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (as the absl entry points do)
    from mathft_jax.core import preemption as _preemption
    _preemption.install()  # first: SIGTERM stops between chunks, keeping what is written
    import sys as _sys
    from mathft_jax.evaluate_model import main as _main
    _main()
    _sys.exit(0)


import argparse
import dataclasses
import json
from typing import Optional, Sequence

from mathft_jax import evaluate
from mathft_jax.core import atomic, cli_errors, storage
from mathft_jax.core.errors import DataError, UsageError
from mathft_jax.data import prompts
from mathft_jax.results import benchmark_report, candidates

BENCHMARKS = ("math500", "gsm8k", "aime24", "amc23", "minerva_math", "olympiadbench")
# data/prompts.py's formats, and `fewshot`: each benchmark's own few-shot prompt
# (`prompts.fewshot_for`: GSM8K's 8-shot chain of thought, Minerva's 4-shot MATH prompt)
FEWSHOT = "fewshot"
PROMPTS = (prompts.PLAIN, FEWSHOT, *prompts.FORMAT_NAMES[1:])
SETTINGS_FILE = "settings.json"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation: the model, the benchmarks, how it samples and how it is graded.
    `max_decode_len`/`batch_size` None: infer's (gin `infer.*`, default 512 and 8)."""

    checkpoint: Optional[str]
    out: str
    benchmarks: tuple[str, ...] = BENCHMARKS
    num_samples: int = 8
    greedy: bool = False
    temperature: float = 1.0
    prompt: str = "plain"
    system_prompt: Optional[str] = None  # chat's system turn (None: the template's default)
    max_problems: Optional[int] = None
    max_decode_len: Optional[int] = None
    batch_size: Optional[int] = None
    seed: int = 0
    grader: str = "mathft"
    compare_graders: tuple[str, ...] = ()
    k: int = 8
    processes: Optional[int] = None
    references: bool = False  # grade the benchmarks' own solutions: no model, no sampling

    @property
    def samples(self) -> int:
        return 1 if self.greedy or self.references else self.num_samples

    def sampling(self) -> dict:
        """What the samples depend on (kept in DIR/settings.json, compared on a rerun)."""
        if self.references:
            return {"references": True, "max_problems": self.max_problems}
        return {"checkpoint": self.checkpoint, "num_samples": self.samples,
                "temperature": 0.0 if self.greedy else self.temperature, "prompt": self.prompt,
                "system_prompt": self.system_prompt,
                "max_problems": self.max_problems, "max_decode_len": self.max_decode_len,
                "seed": self.seed}

    def grading(self) -> dict:
        """What the grades depend on, the graders' versions included: a benchmark graded so
        before is not graded again."""
        from mathft_jax.grading import GRADERS
        return {"grader": self.grader, "compare_graders": list(self.compare_graders),
                "k": self.k, "versions": {name: GRADERS[name].version() for name in
                                          sorted({self.grader, *self.compare_graders})}}

    def validate(self) -> "EvalConfig":
        """Usage errors before any work (the checkpoint and the data are checked by `run`)."""
        unknown = [name for name in self.benchmarks if name not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise UsageError(f"--benchmarks: unknown benchmark {', '.join(unknown) or '(none)'}; "
                             f"known: {', '.join(BENCHMARKS)}")
        if len(set(self.benchmarks)) != len(self.benchmarks):
            raise UsageError(f"--benchmarks={','.join(self.benchmarks)}: a benchmark is named twice")
        if not self.references and not self.checkpoint:
            raise UsageError("--checkpoint=CKPT is required (a model_dir from import_hf or "
                             "train), unless --references")
        if self.prompt not in PROMPTS:
            raise UsageError(f"--prompt={self.prompt}: expected one of {', '.join(PROMPTS)}")
        if self.system_prompt is not None and self.prompt != "chat":
            raise UsageError(f"--system_prompt is a chat turn: it needs --prompt=chat, not "
                             f"--prompt={self.prompt}")
        for name, value in (("num_samples", self.num_samples), ("k", self.k),
                            ("max_problems", self.max_problems),
                            ("max_decode_len", self.max_decode_len),
                            ("batch_size", self.batch_size), ("processes", self.processes)):
            if value is not None and value < 1:
                raise UsageError(f"--{name}={value}: must be >= 1")
        if self.temperature < 0:
            raise UsageError(f"--temperature={self.temperature}: must be >= 0 (0 = greedy)")
        evaluate.check_grading(self.grader, None, self.compare_graders)
        if storage.exists(self.out) and not storage.path(self.out).is_dir():
            raise UsageError(f"--out={self.out}: is a file, not a directory")
        return self


# ----------------------------------------------------------------------------- the run


def benchmark_dir(config: EvalConfig, name: str) -> str:
    return storage.join(config.out, name)


def check_data(config: EvalConfig) -> dict[str, int]:
    """{benchmark: problems}, read before anything is sampled: a benchmark file absent from
    the data directory is one line naming the path and where the data is looked for."""
    from mathft_jax.data import paths, sources
    counts = {}
    for name in config.benchmarks:
        try:
            records = sources.problem_records(name, "test")
        except FileNotFoundError as error:
            raise DataError(f"{name}: no data at {error.filename or error}; the benchmarks are "
                            f"read from {paths.data_root()} (MATHFT_DATA_DIR, else "
                            "../shared/data beside the checkout)") from None
        counts[name] = len(sources.first(records, config.max_problems, "--max_problems"))
    return counts


def check_checkpoint(checkpoint: str) -> list[str]:
    """The gin files of the checkpoint's model_dir (model.gin, vocab.gin where present)."""
    from mathft_jax.convert import checkpoints, model_files
    try:
        checkpoints.resolve_params_dir(checkpoint)
        model_dir = model_files.find_model_dir(checkpoint)
    except FileNotFoundError as error:
        raise UsageError(f"--checkpoint={checkpoint}: {error}") from None
    return [str(model_dir / name) for name in (model_files.MODEL_GIN, model_files.VOCAB_GIN)
            if (model_dir / name).exists()]


def check_settings(config: EvalConfig) -> None:
    """DIR/settings.json: written on the first run, compared on every later one."""
    path = storage.join(config.out, SETTINGS_FILE)
    wanted = config.sampling()
    if storage.exists(path):
        kept = json.loads(storage.path(path).read_text())
        changed = [f"{key}={kept.get(key)!r} (now {value!r})" for key, value in wanted.items()
                   if kept.get(key) != value]
        if changed:
            raise UsageError(f"--out={config.out} holds samples drawn with {', '.join(changed)}; "
                             "use another --out, or the same settings to resume")
    else:
        atomic.write_json(path, wanted, indent=1)


def prompt_config(config: EvalConfig, name: str):
    """The benchmark's prompt format (`fewshot`: the benchmark's own few-shot prompt); chat's
    template is read beside the checkpoint's tokenizer.json."""
    format_name = prompts.fewshot_for(name) if config.prompt == FEWSHOT else config.prompt
    return prompts.PromptConfig(name=format_name, system=config.system_prompt)


def infer_config(config: EvalConfig, name: str):
    """The benchmark's InferConfig: the flags over gin's `infer.*` (the checkpoint's model)."""
    from mathft_jax import infer
    fields = {"max_decode_len": config.max_decode_len, "batch_size": config.batch_size}
    return infer.InferConfig(
        checkpoint=config.checkpoint,
        output_path=storage.join(benchmark_dir(config, name), "candidates.jsonl"), task=name,
        split="test", max_problems=config.max_problems, num_samples=config.samples,
        temperature=0.0 if config.greedy else config.temperature, seed=config.seed,
        prompt=prompt_config(config, name),
        **{key: value for key, value in fields.items() if value is not None}).validate()


def sample(config: EvalConfig, name: str, progress: bool = True) -> str:
    """The benchmark's candidates file; a complete one is kept as it is."""
    from mathft_jax import infer
    infer_cfg = infer_config(config, name)
    if storage.exists(infer_cfg.output_path):
        print(f"{name}: sampled already ({infer_cfg.output_path})", flush=True)
        return infer_cfg.output_path
    return infer.infer(infer_cfg, progress=progress)


def write_references(config: EvalConfig, name: str) -> str:
    """The benchmark's own solutions as a candidates file, one sample a problem (the boxed
    gold where a benchmark gives no solution: AMC23), answers read by the lenient policy
    (GSM8K's `#### 72` line): what the graders make of the gold answers as written."""
    from mathft_jax.data import sources
    from mathft_jax.grading import extract_answer
    path = storage.join(benchmark_dir(config, name), "candidates.jsonl")
    if storage.exists(path):
        return path
    records = []
    for problem in sources.first(sources.problems(name, "test", require_answer=True),
                                 config.max_problems, "--max_problems"):
        record = sources.problem_record(problem)
        gold = record["gold"] if isinstance(record["gold"], str) else ", ".join(record["gold"])
        text = problem.solution or f"The answer is $\\boxed{{{gold}}}$."
        records.append({**record, "extraction_policy": "lenient", "samples": [
            {"text": text, "answer": extract_answer(text, policy="lenient")}]})
    candidates.write_candidates(path, records)
    return path


def grade(config: EvalConfig, name: str, path: str, progress: bool = True) -> dict:
    """The benchmark's results (`evaluate.summarize_problems`, what graded it, the prompt
    format, the accuracy-against-k curves and the graders compared), kept in results.json
    and reused while the grading settings are the same."""
    out = storage.join(benchmark_dir(config, name), "results.json")
    if storage.exists(out):
        kept = json.loads(storage.path(out).read_text())
        if kept.get("grading_settings") == config.grading():
            return kept
    records = candidates.read_candidates(path)
    problems = evaluate.grade_records(records, config.processes, progress, grader=config.grader)
    result = {**evaluate.summarize_problems(problems, config.k),
              "grading": evaluate.grading_info(records, None, config.grader),
              "grading_settings": config.grading(),
              "prompt": "references" if config.references else prompt_config(config, name).name,
              "system_prompt": config.system_prompt,
              "curves": benchmark_report.curves_of(problems, config.k)}
    if config.compare_graders:
        result["comparison"], disagreements = evaluate.compare_graders_on(
            records, config.compare_graders, config.k, config.processes, progress)
        atomic.write_text(storage.join(benchmark_dir(config, name), "disagreements.jsonl"),
                          "".join(json.dumps(d, ensure_ascii=False) + "\n"
                                  for d in disagreements))
    atomic.write_json(out, result, indent=1)
    return result


def run(config: EvalConfig, gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
        progress: bool = True) -> dict:
    """Sample and grade every benchmark, then the table and the report; {benchmark: result}."""
    from mathft_jax.core import distributed, gin_utils
    config.validate()
    model_gin = [] if config.references else check_checkpoint(config.checkpoint)
    distributed.initialize()
    gin_utils.parse_gin([*model_gin, *gin_files], gin_bindings)
    counts = check_data(config)
    for name in config.benchmarks if not config.references else ():
        infer_config(config, name)  # every setting checked before the first sample
    check_settings(config)
    results = {}
    for name in config.benchmarks:
        print(f"{name}: {counts[name]} problems, N = {config.samples}", flush=True)
        # every process samples: sampling is collective
        path = write_references(config, name) if config.references else \
            sample(config, name, progress)
        if distributed.is_main_process():  # grading is host work; process 0 writes
            results[name] = grade(config, name, path, progress)
    if distributed.is_main_process():
        atomic.write_json(storage.join(config.out, "results.json"), results, indent=1)
        model = "The reference solutions" if config.references else config.checkpoint
        report = benchmark_report.write_benchmark_report(
            config.out, results, f"{model} on {', '.join(config.benchmarks)}")
        print("\n" + benchmark_report.benchmark_table(results))
        compared = benchmark_report.comparison_table(results)
        if compared:
            print("\n" + compared)
        print(f"\nreport: {report}", flush=True)
    return results


# ----------------------------------------------------------------------------- entry point


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_model", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None,
                   help="model_dir from import_hf or train, or one of its step directories")
    p.add_argument("--out", required=True, help="the run's directory (resumable)")
    p.add_argument("--benchmarks", type=_names, default=BENCHMARKS,
                   help=f"comma list of {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--num_samples", type=int, default=None,
                   help=f"N samples per problem (default {EvalConfig.num_samples})")
    p.add_argument("--greedy", action="store_true", help="N = 1 at temperature 0")
    p.add_argument("--temperature", type=float, default=EvalConfig.temperature)
    p.add_argument("--prompt", default=EvalConfig.prompt,
                   help=f"one of {', '.join(PROMPTS)} (docs/benchmarks.md); fewshot: each "
                        "benchmark's own few-shot prompt")
    p.add_argument("--system_prompt", default=None,
                   help="chat's system turn, e.g. Qwen2.5-Math's 'Please reason step by step, "
                        "and put your final answer within \\boxed{}.' (default: the "
                        "template's own)")
    p.add_argument("--max_problems", type=int, default=None,
                   help="the first M problems of each benchmark (a quick look)")
    p.add_argument("--max_decode_len", type=int, default=None, help="default infer's (512)")
    p.add_argument("--batch_size", type=int, default=None, help="problems a step (infer's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grader", default="mathft", help="mathft, prm800k or math_verify")
    p.add_argument("--compare_graders", type=_names, default=(),
                   help="e.g. mathft,math_verify: each benchmark's metrics under each")
    p.add_argument("--k", type=int, default=EvalConfig.k, help="K of MajK@N in results.json")
    p.add_argument("--processes", type=int, default=None, help="grading processes")
    p.add_argument("--references", action="store_true",
                   help="grade each benchmark's own solutions instead of a model's samples "
                        "(with --compare_graders: how the graders read the gold answers)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="more gin files (after the checkpoint's model.gin and vocab.gin)")
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="gin bindings, e.g. infer.engine='static'")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parser().parse_args(argv)
    if args.greedy and args.num_samples not in (None, 1):
        cli_errors.exit_with(UsageError(f"--greedy samples once: drop --num_samples="
                                        f"{args.num_samples}"), 2, "evaluate_model")
    args.num_samples = args.num_samples or EvalConfig.num_samples
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)}
    cli_errors.guard(lambda: run(EvalConfig(**fields), args.gin_file, args.gin_bindings),
                     "evaluate_model", args.debug)
