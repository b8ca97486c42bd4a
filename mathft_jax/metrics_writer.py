"""Training metrics to TensorBoard event files and `metrics.jsonl`, from process 0 only."""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

from absl import logging

from mathft_jax import distributed


class MetricsWriter:
    def __init__(self, model_dir: str):
        self.enabled = distributed.is_main_process()
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(model_dir, exist_ok=True)
        self.jsonl_path = os.path.join(model_dir, "metrics.jsonl")
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(model_dir, "tb"))
        except ImportError:  # TensorBoard is optional; metrics.jsonl always works
            logging.warning("tensorboardX not installed: writing metrics.jsonl only")
        logging.info("metrics: %s and TensorBoard events under %s", self.jsonl_path,
                     os.path.join(model_dir, "tb"))

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({f"{prefix}/{k}": float(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
