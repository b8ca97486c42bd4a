"""`get_dataset`: feature-converted, per-process-sharded numpy batches, resumable exactly.

A split is tokenised once by its seqio task and kept in memory (MATH-sized data). The order
is then pure arithmetic on (seed, epoch): each epoch permutes the split's units (an example,
or both members of an evaluator pair), process `i` of `n` takes every n-th unit from offset
i, and rows are filled greedily in that order. So the position is two integers, the epoch and
the cursor into this process's units of that epoch: `get_state()` returns them (JSON), and
`set_state()` restores them with no replay. Mixtures draw, per epoch, a number of units from
each task proportional to its rate (sum over tasks = total units).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from typing import Iterator, Mapping, Optional, Union

import gin
import numpy as np
import seqio

from mathft_jax.data import packing, vocab

STATE_VERSION = 1
ROW_FEATURES = packing.ROW_FEATURES
_EXAMPLE_CACHE: "weakref.WeakKeyDictionary[seqio.Task, dict]" = weakref.WeakKeyDictionary()


def _decoded(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def get_provider(name: str, data_file: Optional[str] = None) -> Union[seqio.Task, seqio.Mixture]:
    """The task or mixture `name`, registered from the gin configuration as it is now (and
    `data_file`, the file of a task built from a run's outputs: `tasks._task_loaders`)."""
    from mathft_jax.data import tasks  # noqa: PLC0415 (tasks imports this module's users)
    tasks.ensure_registered(data_file)
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as e:
        known = sorted(seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())
        raise ValueError(f"{name!r} is not a registered seqio task or mixture; "
                         f"known: {', '.join(known)}") from e


def load_examples(task_name: str, split: str, data_file: Optional[str] = None) -> list[dict]:
    """Every example of a task's split, tokenised (numpy `inputs`, `targets` with EOS) plus its
    text and integer features; loaded once per registration of the task."""
    task = get_provider(task_name, data_file)
    if not isinstance(task, seqio.Task):
        raise ValueError(f"{task_name} is a mixture; load its tasks one by one")
    if split not in task.splits:
        raise ValueError(f"{task_name} has no split {split!r}; it has {list(task.splits)}")
    per_split = _EXAMPLE_CACHE.setdefault(task, {})
    if split not in per_split:
        ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
        per_split[split] = [{k: _decoded(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
    return per_split[split]


# ----------------------------------------------------------------------------- units


@dataclasses.dataclass
class _Units:
    """The examples of a task or mixture, fitted to length, grouped into units."""

    examples: list  # (inputs, targets, row features) per example
    units: list  # per task: array of units, each unit a tuple of example indices
    rates: list  # per task

    @property
    def num_units(self) -> int:
        return sum(len(u) for u in self.units)


def _group(examples: list[dict]) -> list[list[int]]:
    """Consecutive examples sharing a `pair_id` form one unit; others are units alone."""
    units: list[list[int]] = []
    for i, ex in enumerate(examples):
        if "pair_id" in ex and units and examples[units[-1][0]].get("pair_id") == ex["pair_id"]:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def _build_units(name: str, split: str, length: int, drop_overlong: bool,
                 max_examples: Optional[int] = None,
                 data_file: Optional[str] = None) -> tuple[_Units, dict]:
    provider = get_provider(name, data_file)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    rates = [provider.get_rate(t) if isinstance(provider, seqio.Mixture) else 1.0 for t in tasks]
    examples, units = [], []
    stats = {"examples": 0, "overlong": 0, "dropped": 0, "truncated": 0}
    for task in tasks:
        task_units, task_examples = [], load_examples(task.name, split, data_file)
        for unit in _group(task_examples)[:max_examples]:
            members = [task_examples[i] for i in unit]
            overlong = [len(m["inputs"]) + len(m["targets"]) > length for m in members]
            stats["examples"] += len(members)
            stats["overlong"] += sum(overlong)
            if drop_overlong and any(overlong):
                stats["dropped"] += len(members)
                continue
            stats["truncated"] += sum(overlong)
            first = len(examples)
            for m in members:
                fitted = packing.fit_to_length(m["inputs"], m["targets"], length)
                examples.append((*fitted, {k: type(pad)(m[k]) for k, pad in ROW_FEATURES.items()
                                              if k in m}))
            task_units.append(tuple(range(first, len(examples))))
        units.append(task_units)
    logging.info("%s/%s: %d of %d examples longer than %d tokens (%d truncated, %d dropped)",
                 name, split, stats["overlong"], stats["examples"], length,
                 stats["truncated"], stats["dropped"])
    return _Units(examples, units, rates), stats


# ----------------------------------------------------------------------------- iterator


class DatasetIterator:
    """Infinite (or `num_epochs`) iterator of batches; see the module docstring.

    Batches: dict of int32 [batch, length] arrays (`packing.FEATURES`), plus int32 [batch]
    `pair_id` / `is_positive` / `label_correct` for unpacked evaluator tasks (and float32 [batch]
    `ref_log_likelihood` for `dpo_pairs`). Rows past the
    end of a finite iteration are all padding (zero loss weight, `pair_id` -1).
    """

    def __init__(self, units: _Units, config: dict, start_id: int, num_epochs: Optional[int]):
        self._units, self._config = units, config
        self._start_id, self._num_epochs = start_id, num_epochs
        self._epoch, self._cursor = 0, 0
        self._order_cache: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))
        count = config["shard"][1]
        if units.num_units < count:
            raise ValueError(f"{config['task']}/{config['split']}: {units.num_units} units cannot "
                             f"be split over {count} shards")
        # A unit is addressed globally as (task offset + index within its task).
        self._offsets = np.cumsum([0] + [len(u) for u in units.units])
        self._flat_units = [unit for task_units in units.units for unit in task_units]

    # -- order ------------------------------------------------------------------------------

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self._config["seed"], *key])

    def _task_draws(self, epoch: int, task: int, n: int) -> np.ndarray:
        """`n` unit indices of one task: whole permutations, repeated as needed."""
        size = len(self._units.units[task])
        if not self._config["shuffle"]:
            return np.resize(np.arange(size), n)
        reps = [self._rng(epoch, task, k).permutation(size) for k in range(math.ceil(n / size))]
        return np.concatenate(reps)[:n] if reps else np.zeros(0, np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """This shard's global unit ids for one epoch."""
        if self._order_cache[0] == epoch:
            return self._order_cache[1]
        total, rates = self._units.num_units, np.asarray(self._units.rates, float)
        counts = np.round(total * rates / rates.sum()).astype(int)
        parts = [self._offsets[t] + self._task_draws(epoch, t, n)
                 for t, n in enumerate(counts) if len(self._units.units[t])]
        order = np.concatenate(parts)
        if self._config["shuffle"]:
            order = self._rng(epoch).permutation(order)
        index, count = self._config["shard"]
        order = order[index::count]
        self._order_cache = (epoch, order)
        return order

    def _peek(self) -> Optional[tuple]:
        """The next unit (a tuple of example indices), or None at the end of `num_epochs`."""
        while self._num_epochs is None or self._epoch < self._num_epochs:
            order = self._epoch_order(self._epoch)
            if self._cursor < len(order):
                return self._flat_units[order[self._cursor]]
            self._epoch, self._cursor = self._epoch + 1, 0
        return None

    # -- batches ----------------------------------------------------------------------------

    def _unit_length(self, unit: tuple) -> int:
        return sum(len(self._units.examples[i][0]) + len(self._units.examples[i][1]) for i in unit)

    def _fill_packed(self, batch: dict, batch_size: int, length: int) -> int:
        rows = 0
        for row in range(batch_size):
            position, segment = 0, 0
            while (unit := self._peek()) is not None and position + self._unit_length(unit) <= length:
                for i in unit:
                    inputs, targets, _ = self._units.examples[i]
                    segment += 1
                    position = packing.write_segment(batch, row, position, segment, inputs,
                                                     targets, self._start_id)
                self._cursor += 1
            rows += segment > 0
            if unit is None:
                break
        return rows

    def _fill_unpacked(self, batch: dict, batch_size: int) -> int:
        row = 0
        while (unit := self._peek()) is not None and row + len(unit) <= batch_size:
            for i in unit:
                inputs, targets, features = self._units.examples[i]
                packing.write_segment(batch, row, 0, 1, inputs, targets, self._start_id)
                for key, value in features.items():
                    batch[key][row] = value
                row += 1
            self._cursor += 1
        return row

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch_size, length = self._config["batch_size"], self._config["length"]
        batch = packing.empty_batch(batch_size, length)
        if self._config["pack"]:
            rows = self._fill_packed(batch, batch_size, length)
        else:
            for key, pad in self._row_feature_pads().items():
                batch[key] = np.full((batch_size,), pad, _row_dtype(pad))
            rows = self._fill_unpacked(batch, batch_size)
        if rows == 0:
            raise StopIteration
        return batch

    def _row_feature_pads(self) -> dict:
        first = self._units.examples[0][2] if self._units.examples else {}
        return {k: ROW_FEATURES[k] for k in first}

    # -- state ------------------------------------------------------------------------------

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch is determined by it and the config."""
        return {"version": STATE_VERSION, "epoch": int(self._epoch), "cursor": int(self._cursor),
                "config": dict(self._config)}

    def set_state(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')} != {STATE_VERSION}")
        saved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in state["config"].items()}
        mine = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._config.items()}
        if saved != mine:
            diff = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine)
                    if saved.get(k) != mine.get(k)}
            raise ValueError(f"data iterator state is for another configuration: {diff}")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])


def _row_dtype(pad) -> type:
    return np.float32 if isinstance(pad, float) else np.int32


def total_length(sequence_length: Union[int, Mapping[str, int]]) -> int:
    """Decoder length: an int, or a seqio-style {"inputs": a, "targets": b} summed."""
    return int(sequence_length if isinstance(sequence_length, int) else sum(sequence_length.values()))


@gin.configurable
def get_dataset(task_or_mixture: str, split: str, sequence_length: Union[int, Mapping[str, int]],
                batch_size: int, shuffle: bool = True, seed: int = 0,
                shard: tuple[int, int] = (0, 1), pack: bool = True, drop_overlong: bool = False,
                num_epochs: Optional[int] = None,
                max_examples: Optional[int] = None,
                data_file: Optional[str] = None) -> DatasetIterator:
    """Feature-converted numpy batches of a registered task or mixture (see DatasetIterator).

    `shard=(jax.process_index(), jax.process_count())`: each process gets a disjoint share,
    all processes together get everything; every process must use the same seed.
    Over-long examples are truncated (`packing.fit_to_length`) or, with `drop_overlong`,
    dropped; counts are logged and kept in `iterator.stats`. `num_epochs=None` repeats
    forever, reshuffling every epoch. `max_examples` keeps only the first that many examples
    of each task's split (an evaluator pair counts as one), for data-scaling studies: e.g.
    `ssft/get_dataset.max_examples = 500` trains SSFT on 500 worked solutions.
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"get_dataset.max_examples={max_examples}: must be at least 1")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    length = total_length(sequence_length)
    units, stats = _build_units(task_or_mixture, split, length, drop_overlong, max_examples,
                                data_file)
    unit_size = max((len(unit) for task_units in units.units for unit in task_units), default=1)
    if unit_size > 1 and (pack or batch_size % unit_size):
        raise ValueError(f"{task_or_mixture} yields groups of {unit_size} rows (evaluator pairs): "
                         f"use pack=False and a batch size divisible by {unit_size}")
    provider = get_provider(task_or_mixture, data_file)
    config = {"task": task_or_mixture, "split": split, "length": length, "batch_size": batch_size,
              "shuffle": shuffle, "seed": seed, "shard": [index, count], "pack": pack,
              "drop_overlong": drop_overlong, "num_units": units.num_units}
    if max_examples is not None:  # only where set, so older checkpoints' states still match
        config["max_examples"] = max_examples
    start_id = vocab.decoder_start_id(provider.output_features["targets"].vocabulary)
    iterator = DatasetIterator(units, config, start_id, num_epochs)
    iterator.stats = stats
    return iterator


def task_batches(task: str, split: str, sequence_length: int, batch_size: int, seed: int,
                 pack: bool, shuffle: bool = True, num_epochs: Optional[int] = None,
                 setting: str = "train.task", data_file: Optional[str] = None) -> DatasetIterator:
    """A training stage's batches of `task` (the trainer's, GRPO's supervised term): every
    process the same global batch, resumable with get_state / set_state. An unknown task is
    a ValueError naming `setting`, the binding that chose it."""
    try:
        get_provider(task, data_file)  # registers the tasks from the gin configuration
    except ValueError as e:
        raise ValueError(f"{setting}={e}") from e
    return get_dataset(task, split, sequence_length, batch_size, shuffle=shuffle, seed=seed,
                       pack=pack, num_epochs=num_epochs, data_file=data_file)
