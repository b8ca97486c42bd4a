"""Reading and writing HF safetensors checkpoints one tensor at a time.

`ShardedReader` resolves `model.safetensors.index.json` (or a single `model.safetensors`),
checks that every shard is there and readable before anything is converted, and reads
one tensor per call. `write_sharded` writes tensors produced one at a time into shards
of bounded size plus the index. Only `safetensors` (numpy flavour) is needed; bfloat16
comes back as ml_dtypes.bfloat16.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import jax.numpy as jnp  # jnp.dtype knows bfloat16
import numpy as np

from mathft_jax.convert.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class ShardedReader:
    """The tensors of an HF directory: names, shapes and dtypes up front, values on demand."""

    def __init__(self, hf_dir):
        from safetensors import safe_open  # noqa: PLC0415 (optional dependency)

        self._safe_open = safe_open
        self.dir = pathlib.Path(hf_dir)
        self._handles: Dict[str, object] = {}
        self.meta: Dict[str, Tuple[str, Tuple[int, ...], str]] = {}  # name -> (file, shape, dtype)
        weight_map = self._weight_map()
        for file in sorted(set(weight_map.values())):
            handle = self._handle(file)
            for name in handle.keys():
                sl = handle.get_slice(name)
                self.meta[name] = (file, tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        for name, file in weight_map.items():
            if name not in self.meta:
                raise ConversionError(f"{self.dir / INDEX_FILE}: tensor {name!r} is listed in "
                                      f"shard {file} but that file does not hold it")

    def _weight_map(self) -> Dict[str, str]:
        index = self.dir / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ConversionError(f"{index}: not a safetensors index ({e})") from e
            missing = sorted({f for f in weight_map.values() if not (self.dir / f).exists()})
            if missing:
                raise ConversionError(f"{index}: shard file(s) missing from {self.dir}: "
                                      f"{', '.join(missing)}")
            return weight_map
        if (self.dir / SINGLE_FILE).exists():
            return {name: SINGLE_FILE for name in self._handle(SINGLE_FILE).keys()}
        raise ConversionError(f"{self.dir}: neither {INDEX_FILE} nor {SINGLE_FILE} found")

    def _handle(self, file: str):
        if file not in self._handles:
            path = self.dir / file
            try:
                self._handles[file] = self._safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors raises its own SafetensorError / OSError
                raise ConversionError(f"{path}: not a readable safetensors file "
                                      f"(truncated or corrupt?): {e}") from e
        return self._handles[file]

    def names(self) -> List[str]:
        return list(self.meta)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.meta[name][1]

    def dtype(self, name: str) -> str:
        return self.meta[name][2]

    def read(self, name: str) -> np.ndarray:
        """One tensor, as a fresh numpy array (the file itself is memory-mapped)."""
        file = self.meta[name][0]
        try:
            return self._handle(file).get_tensor(name)
        except Exception as e:
            raise ConversionError(f"{self.dir / file}: cannot read tensor {name!r}: {e}") from e

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


TensorSpec = Tuple[str, Tuple[int, ...], str, Callable[[], np.ndarray]]  # name, shape, dtype, produce


def write_sharded(out_dir, tensors: Sequence[TensorSpec], max_shard_bytes: int) -> List[str]:
    """Write tensors into shards of at most `max_shard_bytes` (a larger tensor gets its own
    shard) plus the index; one shard is written as plain `model.safetensors` (HF's habit).
    Each tensor is produced only while its shard is written. Returns the file names."""
    from safetensors.numpy import save_file  # noqa: PLC0415 (optional dependency)

    out_dir = pathlib.Path(out_dir)
    shards = _plan(tensors, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for file, shard in zip(names, shards):
        arrays = {}
        for name, shape, dtype, produce in shard:
            value = np.asarray(produce()).astype(jnp.dtype(dtype), copy=False)
            if value.shape != tuple(shape):
                raise ConversionError(f"tensor {name!r}: produced shape {value.shape}, "
                                      f"expected {tuple(shape)}")
            arrays[name] = value
            weight_map[name] = file
            total += value.nbytes
        save_file(arrays, str(out_dir / file), metadata={"format": "pt"})
        del arrays
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names


def _plan(tensors: Iterable[TensorSpec], max_shard_bytes: int) -> List[List[TensorSpec]]:
    shards: List[List[TensorSpec]] = [[]]
    size = 0
    for spec in tensors:
        nbytes = math.prod(spec[1]) * jnp.dtype(spec[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards
