"""Host-side batching: prompt checks, padding into rows, bucketed lengths, row counts."""
import numpy as np
import pytest

from mathft_jax.sampling import batching


@pytest.mark.parametrize("n,want", [(0, 16), (1, 16), (16, 16), (17, 32), (33, 64), (64, 64),
                                    (65, 128)])
def test_bucket_length_is_the_next_power_of_two_from_the_minimum(n, want):
    assert batching.bucket_length(n) == want


def test_bucket_length_minimum():
    assert batching.bucket_length(3, minimum=1) == 4
    assert batching.bucket_length(1, minimum=1) == 1
    assert batching.bucket_length(5, minimum=64) == 64


def test_pad_prompts_right_pads_and_fills_dummy_rows():
    tokens, lengths = batching.pad_prompts([[5, 9, 2], [7], [3, 4]], rows=5, length=4)
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32
    np.testing.assert_array_equal(tokens, [[5, 9, 2, 0], [7, 0, 0, 0], [3, 4, 0, 0],
                                           [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 2, 1, 1])  # dummies: one (pad) token


def test_pad_prompts_default_length_is_the_longest_prompts_bucket():
    tokens, lengths = batching.pad_prompts([list(range(1, 18)), [1]], rows=2)
    assert tokens.shape == (2, 32)
    np.testing.assert_array_equal(lengths, [17, 1])
    np.testing.assert_array_equal(tokens[0, :17], np.arange(1, 18))
    assert (tokens[0, 17:] == batching.PAD_ID).all()


def test_pad_prompts_needs_room():
    with pytest.raises(ValueError, match="3 prompts do not fit in 2 rows"):
        batching.pad_prompts([[1], [2], [3]], rows=2)


@pytest.mark.parametrize("items,shards,per_row,want", [
    (5, 1, 1, 5),    # one shard: as many rows as items
    (3, 4, 1, 4),    # rows padded up to a multiple of the shards
    (8, 4, 1, 8),
    (9, 4, 1, 12),
    (1, 4, 8, 1),    # 8 sequences split 4 ways: no dummy row
    (3, 4, 2, 4),    # 6 sequences do not split 4 ways; 8 do
    (1, 4, 3, 4),    # 3 shares no factor with 4: whole multiples of 4 rows
    (3, 8, 6, 4),    # 6 = 2 x 3: rows in multiples of 8 / 2
    (0, 4, 2, 0),
])
def test_rows_for(items, shards, per_row, want):
    rows = batching.rows_for(items, shards, per_row)
    assert rows == want
    assert (rows * per_row) % shards == 0
    assert all((r * per_row) % shards for r in range(items, rows))  # the fewest


def test_check_prompts_truncates_keeping_start_token_and_tail():
    kept = batching.check_prompts([list(range(100, 170))], 64, truncate=True)[0]
    assert len(kept) == 64 and kept[0] == 100 and kept[1] == 107 and kept[-1] == 169
    assert batching.check_prompts([np.array([3, 4])], 8, truncate=False) == [[3, 4]]
    assert isinstance(batching.check_prompts([np.array([3, 4])], 8, truncate=False)[0][0], int)


@pytest.mark.parametrize("prompts,match", [
    ([], "contexts is empty"),
    ([[1, 2], []], r"contexts\[1\] is empty"),
    ([[1, 2, 3]], r"contexts\[0\] has 3 tokens, more than the model's max_seq_len=2"),
])
def test_check_prompts_errors_name_what(prompts, match):
    with pytest.raises(ValueError, match=match):
        batching.check_prompts(prompts, 2, truncate=False, what="contexts")
