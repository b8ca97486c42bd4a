"""bench/mfu.py runs end to end (tiny model on CPU); the real figures come from a GPU."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mfu_smoke_prints_train_and_decode_figures(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = tmp_path / "mfu.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "mfu.py"), "--smoke", f"--out={out}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(out.read_text())
    last_line = json.loads(r.stdout.strip().splitlines()[-1])
    assert last_line["kind"] == "summary" and last_line["results"] == summary["results"]
    *trains, failed, decode = summary["results"]
    # full logits without remat, then the fused loss with full remat
    assert [(t["loss_chunk"], t["remat_policy"]) for t in trains] == [(0, "none"), (8, "full")]
    for train in trains:
        assert train["kind"] == "train" and train["batch"] == 8 and 0 < train["mfu"] < 1
        assert train["tokens_per_s"] > 0 and train["loss"] > 0
    # same weights, same batch: the fused loss's first-step loss equals the plain one's
    assert abs(trains[0]["loss"] - trains[1]["loss"]) < 1e-5 * trains[0]["loss"]
    # cuDNN attention can't run on a CPU: the error is recorded and the run goes on
    assert failed["attention_impl"] == "cudnn" and "cuDNN" in failed["error"]
    assert "mfu" not in failed
    assert decode["kind"] == "decode" and decode["generated_tokens"] == 2 * 2 * 8
    assert decode["tokens_per_s"] > 0


def test_variants_parse_with_defaults():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mfu", REPO / "bench" / "mfu.py")
    mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mfu)
    assert mfu.parse_variants("0,256:none,512:full:cudnn") == [
        (0, "dots_no_batch", "xla"), (256, "none", "xla"), (512, "full", "cudnn")]
