"""Where a profiled step's device time went: kernels grouped by kind, and the top kernels.

    python bench/profile_summary.py trace.xplane.pb [--top=25]

Reads the `*.xplane.pb` that `jax.profiler.trace` writes (with `jax.profiler.ProfileData`,
no TensorFlow needed). On a GPU it sums the kernels of the device planes; on a CPU, where
there is no device plane, the XLA ops on the host threads (events with an `hlo_op`). Busy
time is the union of the kernels' intervals, so kernels overlapping on several streams
count once; the window is first start to last end. `bench/mfu.py --profile_dir` calls
`summarize` on the steps it profiles.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
from typing import Iterable, List, Tuple

# First match wins; patterns are matched against the lower-cased kernel or op name.
KINDS: Tuple[Tuple[str, str], ...] = (
    ("attention", r"fmha|flash|cudnn|attention"),
    # cuBLAS (xmma, nvjet on Hopper), Triton and CUTLASS GEMMs; XLA:CPU's YNNPACK dot fusions
    ("matmul", r"gemm|xmma|nvjet|cutlass|cublas|wgmma|matmul|\bdot\b|dot_|convolution|ynn"),
    ("collective", r"nccl|all-reduce|all_reduce|all-gather|all_gather|reduce-scatter|"
                   r"reduce_scatter|collective|all-to-all"),
    ("copy", r"memcpy|memset|copy"),
    ("reduction", r"reduce"),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other (elementwise, fusions)"


def kernel_events(profile) -> List[Tuple[str, float, float]]:
    """(name, start_ns, duration_ns) of every device kernel, or of every XLA op on a CPU."""
    device = [p for p in profile.planes if p.name.startswith("/device:")]
    out = []
    if device:
        for plane in device:
            # kernels live on the "Stream #N" lines; other lines, where present, re-count them
            streams = [line for line in plane.lines if line.name.startswith("Stream")]
            for line in streams or plane.lines:
                out += [(e.name, e.start_ns, e.duration_ns) for e in line.events
                        if e.duration_ns > 0]
        return out
    for plane in profile.planes:
        for line in plane.lines:
            for e in line.events:
                stats = dict(e.stats)
                if "hlo_op" in stats and e.duration_ns > 0:
                    out.append((str(stats["hlo_op"]), e.start_ns, e.duration_ns))
    return out


def busy_ns(intervals: Iterable[Tuple[float, float]]) -> float:
    """Length of the union of [start, start + duration) intervals."""
    total, end = 0.0, float("-inf")
    for start, dur in sorted(intervals):
        stop = start + dur
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize(path: str, top: int = 25) -> dict:
    import jax
    events = kernel_events(jax.profiler.ProfileData.from_file(path))
    if not events:
        return {"path": path, "error": "no kernels or XLA ops in the trace"}
    by_name = collections.defaultdict(lambda: [0, 0.0])
    by_kind = collections.Counter()
    for name, _, dur in events:
        by_name[name][0] += 1
        by_name[name][1] += dur
        by_kind[kind_of(name)] += dur
    total = sum(by_kind.values())
    window = max(s + d for _, s, d in events) - min(s for _, s, _ in events)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "path": path, "kernels": len(events), "kernel_ms": total / 1e6,
        "busy_ms": busy_ns((s, d) for _, s, d in events) / 1e6, "window_ms": window / 1e6,
        "by_kind": {k: {"ms": v / 1e6, "share": v / total} for k, v in by_kind.most_common()},
        "top": [{"name": n[:120], "kind": kind_of(n), "count": c, "ms": d / 1e6,
                 "share": d / total} for n, (c, d) in ranked],
    }


def print_table(summary: dict) -> None:
    if "error" in summary:
        print(f"{summary['path']}: {summary['error']}")
        return
    print(f"{summary['path']}: {summary['kernels']} kernels, {summary['kernel_ms']:.1f} ms of "
          f"kernels, device busy {summary['busy_ms']:.1f} ms of a {summary['window_ms']:.1f} ms "
          "window")
    for kind, v in summary["by_kind"].items():
        print(f"  {kind:32s} {v['ms']:9.2f} ms  {100 * v['share']:5.1f}%")
    print("  top kernels:")
    for row in summary["top"]:
        print(f"  {row['ms']:9.2f} ms  {100 * row['share']:5.1f}%  x{row['count']:<5d} "
              f"{row['kind'][:10]:10s} {row['name']}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", help="*.xplane.pb files")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", action="store_true", help="print JSON, not a table")
    a = p.parse_args(argv)
    for path in a.paths:
        s = summarize(path, a.top)
        print(json.dumps(s)) if a.json else print_table(s)


if __name__ == "__main__":
    main()
