"""Subprocess driver for the crash-safety tests: trains the tiny test model on ArrayIterator.

usage: python tests/train_driver.py MODEL_DIR TOTAL_STEPS CHECKPOINT_EVERY [--sleep S]
       [--die_in_save_at STEP]
--die_in_save_at makes the process SIGKILL itself right after the async save of that step
has started, i.e. with a checkpoint half-written.
"""
import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: F401,E402  (fake devices, before JAX starts)

from train_utils import TINY, ArrayIterator  # noqa: E402

from mathft_jax import train  # noqa: E402
from mathft_jax.convert import checkpoints


class SlowIterator(ArrayIterator):
    def __init__(self, sleep, **kw):
        super().__init__(**kw)
        self.sleep = sleep

    def __next__(self):
        time.sleep(self.sleep)
        return super().__next__()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("total_steps", type=int)
    p.add_argument("checkpoint_every", type=int)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--die_in_save_at", type=int, default=None)
    a = p.parse_args()
    if a.die_in_save_at is not None:
        real_save = checkpoints.save

        def save_then_die(mngr, step, *args, **kw):
            real_save(mngr, step, *args, **kw)
            if step == a.die_in_save_at:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoints.save = save_then_die
    r = train.train(model_dir=a.model_dir, total_steps=a.total_steps, batch_size=8,
                    sequence_length=16, model=TINY, data_iterator=SlowIterator(a.sleep),
                    checkpoint_every=a.checkpoint_every, keep_checkpoints=2, progress=False)
    print(f"DONE final_step={r.final_step} preempted={r.preempted}", flush=True)


if __name__ == "__main__":
    main()
