"""bench/mfu.py runs end to end (tiny model on CPU); the real figures come from a GPU."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from waiting import HANG_LIMIT_S
from xla_env import one_device_env

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mfu_smoke_prints_train_and_decode_figures(tmp_path):
    env = one_device_env(JAX_PLATFORMS="cpu")
    out, profiles = tmp_path / "mfu.json", tmp_path / "profiles"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "mfu.py"), "--smoke", f"--out={out}",
                        f"--profile_dir={profiles}"],
                       capture_output=True, text=True, env=env, timeout=HANG_LIMIT_S)
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
    # each measured set-up was profiled: its trace kept, where the time went summarised
    for train in trains:
        prof = train["profile"]
        assert os.path.getsize(prof["path"]) > 0 and prof["steps"] == 2 and prof["kernels"] > 0
        assert prof["by_kind"]["matmul"]["ms"] > 0
        assert abs(sum(k["share"] for k in prof["by_kind"].values()) - 1) < 1e-9
        assert 0 < prof["busy_ms"] <= prof["window_ms"]
    assert sorted(p.name for p in profiles.iterdir()) == [
        "smoke_tiny_c0_none_xla.xplane.pb", "smoke_tiny_c8_full_xla.xplane.pb"]
    # same weights, same batch: the fused loss's first-step loss equals the plain one's
    assert abs(trains[0]["loss"] - trains[1]["loss"]) < 1e-5 * trains[0]["loss"]
    # cuDNN attention can't run on a CPU: the error is recorded and the run goes on
    assert failed["attention_impl"] == "cudnn" and "cuDNN" in failed["error"]
    assert "mfu" not in failed
    assert decode["kind"] == "decode" and decode["generated_tokens"] == 2 * 2 * 8
    assert decode["tokens_per_s"] > 0


def _bench_module(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_summary_counts_overlaps_once_and_sorts_kernels_by_kind():
    ps = _bench_module("profile_summary")
    assert ps.busy_ns([(0, 10), (5, 10), (30, 5), (31, 1)]) == 20
    assert ps.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert ps.kind_of("nvjet_hsh_256x128_64x4_2x1_v_bz_coopB_TNT") == "matmul"
    assert ps.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert ps.kind_of("ncclDevKernel_AllReduce_Sum_f32_RING_LL") == "collective"
    assert ps.kind_of("input_reduce_fusion_3") == "reduction"
    assert ps.kind_of("loop_multiply_fusion") == "other (elementwise, fusions)"


def test_variants_parse_with_defaults():
    mfu = _bench_module("mfu")
    assert mfu.parse_variants("0,256:none,512:full:cudnn") == [
        (0, "dots_no_batch", "xla"), (256, "none", "xla"), (512, "full", "cudnn")]
