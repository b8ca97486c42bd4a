"""Training metrics to TensorBoard event files and `metrics.jsonl`, from process 0 only.

model_dir may be local or `gs://`. Object stores cannot append, so for a remote model_dir
the rows are kept and metrics.jsonl is rewritten whole on every `flush()` (the trainer
flushes at each checkpoint and at the end; the file stays small, one row a logged step),
and TensorBoard writes to a local staging folder whose files are copied up on flush.
"""
from __future__ import annotations

import json
import tempfile
import time
from typing import Mapping

from absl import logging

from mathft_jax.core import atomic, distributed, storage


class MetricsWriter:
    def __init__(self, model_dir: str):
        self.enabled = distributed.is_main_process()
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        self.remote = storage.is_remote(model_dir)
        storage.makedirs(model_dir)
        self.jsonl_path = storage.join(model_dir, "metrics.jsonl")
        self._tb_dir = storage.join(model_dir, "tb")
        if self.remote:
            self._rows = storage.read_text(self.jsonl_path) if storage.exists(self.jsonl_path) else ""
            self._tb_local = tempfile.mkdtemp(prefix="mathft_tb_")
        else:
            self._jsonl = open(self.jsonl_path, "a", buffering=1)
            self._tb_local = self._tb_dir
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(self._tb_local)
        except ImportError:  # TensorBoard is optional; metrics.jsonl always works
            logging.warning("tensorboardX not installed: writing metrics.jsonl only")
        logging.info("metrics: %s and TensorBoard events under %s", self.jsonl_path, self._tb_dir)

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({f"{prefix}/{k}": float(v) for k, v in metrics.items()})
        line = json.dumps(row) + "\n"
        if self.remote:
            self._rows += line
        else:
            self._jsonl.write(line)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))

    def flush(self) -> None:
        """Make everything written so far durable in model_dir (remote: upload it)."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.flush()
        if not self.remote:
            return
        atomic.write_text(self.jsonl_path, self._rows)
        local = storage.path(self._tb_local)
        for event_file in local.iterdir():
            (storage.path(self._tb_dir) / event_file.name).parent.mkdir(parents=True, exist_ok=True)
            (storage.path(self._tb_dir) / event_file.name).write_bytes(event_file.read_bytes())

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self.flush()
        if self._jsonl is not None:
            self._jsonl.close()


def read_metrics(model_dir: str) -> list[dict]:
    text = storage.read_text(storage.join(model_dir, "metrics.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]
