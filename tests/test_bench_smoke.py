"""The CPU benchmark scripts run end to end at toy sizes and write their JSON (the figures
themselves are in docs/PERFORMANCE.md; timings are never asserted)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
from waiting import HANG_LIMIT_S
from xla_env import one_device_env

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = one_device_env(TF_CPP_MIN_LOG_LEVEL="3")


def _run(script, *args):
    r = subprocess.run([sys.executable, str(REPO / "bench" / script), *args],
                       capture_output=True, text=True, env=ENV, timeout=HANG_LIMIT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_sampler_bench(tmp_path):
    out = tmp_path / "sampler.json"
    stdout = _run("sampler.py", "--vocabs=64,300", "--runs=3", f"--out={out}")
    rows = json.loads(out.read_text())["rows"]
    assert [r["vocab"] for r in rows] == [64, 300]
    assert all(r[k] > 0 for r in rows for k in ("gumbel_ms", "inverse_cdf_ms", "argmax_ms"))
    assert "| 64 x 300 |" in stdout


@pytest.mark.slow
def test_vs_transformers_bench(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "vs.json"
    stdout = _run("vs_transformers.py", "--models=tiny", "--samples=2", "--repeats=1",
                  "--matmuls", "--cores=1", f"--out={out}")
    result = json.loads(out.read_text())
    assert result["machine"]["cores_allowed"] == 1
    tiny = result["models"]["tiny"]
    assert set(tiny["decode"]) == {"greedy_N2", "sampled_N2"}
    assert all(r["ours_tok_s"] > 0 and r["transformers_tok_s"] > 0 for r in tiny["decode"].values())
    assert tiny["train_step"]["ours_step_s"] > 0 and len(result["matmuls"]) == 6
    assert "| tiny (0.1M) | decode greedy N=2 (tok/s) |" in stdout
