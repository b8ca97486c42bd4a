"""Helpers shared by the trainer tests: a tiny config and an in-memory resumable iterator."""
import numpy as np

from mathft_jax.models import DecoderConfig

# For a CLI test that trains on the synthetic task: 2,000 problems in the train split, not
# 20,000, which every process would tokenise before its first step (gin_configs/runs/smoke.gin's).
SMALL_TRAIN_SPLIT = "--gin_bindings=synthetic_problems.split_sizes={'train': 2000}"

TINY = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, max_seq_len=64)


class ArrayIterator:
    """Deterministic batches of a fixed pool of sequences, with get_state/set_state.

    Row r of batch k is sequence (k * batch + r) % pool; the first `prompt_len` tokens of
    each row are a prompt, masked out of the loss.
    """

    def __init__(self, batch_size=8, length=16, pool=64, vocab=64, prompt_len=4, seed=0,
                 poison_step=None, poison_token=None):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(1, vocab, size=(pool, length + 1)).astype(np.int32)
        self.batch_size, self.length, self.prompt_len = batch_size, length, prompt_len
        self.poison_step, self.poison_token = poison_step, poison_token
        self.k = 0

    def __iter__(self):
        return self

    def __next__(self):
        idx = (self.k * self.batch_size + np.arange(self.batch_size)) % len(self.data)
        rows = self.data[idx]
        weights = np.ones((self.batch_size, self.length), np.int32)
        weights[:, : self.prompt_len] = 0
        batch = {
            "decoder_input_tokens": rows[:, :-1].copy(),
            "decoder_target_tokens": rows[:, 1:].copy(),
            "decoder_loss_weights": weights,
            "decoder_segment_ids": np.ones((self.batch_size, self.length), np.int32),
            "decoder_positions": np.broadcast_to(np.arange(self.length, dtype=np.int32),
                                                 (self.batch_size, self.length)).copy(),
        }
        self.k += 1
        if self.poison_step is not None and self.k == self.poison_step:
            batch["decoder_target_tokens"][0, -1] = self.poison_token
        return batch

    def get_state(self):
        return {"k": self.k}

    def set_state(self, state):
        self.k = int(state["k"])
