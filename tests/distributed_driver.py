"""One process of a multi-process crash/preemption test: trains the tiny test model on
ArrayIterator (no seqio, so it starts in seconds). Run it under launch/run.sh local.

usage: python tests/distributed_driver.py MODEL_DIR TOTAL_STEPS CHECKPOINT_EVERY [--sleep S]
Prints "DONE process=<i> start_step=<s> final_step=<f> preempted=<bool>" at the end.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from mathft_jax.core import distributed  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("total_steps", type=int)
    p.add_argument("checkpoint_every", type=int)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per batch (slows the run)")
    a = p.parse_args()
    distributed.initialize()  # before anything touches a JAX backend

    import jax
    from train_utils import TINY, ArrayIterator
    from mathft_jax import train

    class SlowIterator(ArrayIterator):
        def __next__(self):
            time.sleep(a.sleep)
            return super().__next__()

    r = train.train(model_dir=a.model_dir, total_steps=a.total_steps, batch_size=8,
                    sequence_length=16, model=TINY, data_iterator=SlowIterator(),
                    checkpoint_every=a.checkpoint_every, keep_checkpoints=2, progress=False)
    print(f"DONE process={jax.process_index()} start_step={r.start_step} "
          f"final_step={r.final_step} preempted={r.preempted}", flush=True)


if __name__ == "__main__":
    main()
