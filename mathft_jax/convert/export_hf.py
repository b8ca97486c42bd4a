"""`python -m mathft_jax.convert.export_hf --checkpoint=CKPT --out=DIR`: our checkpoint
as an HF directory that `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads.

The model config comes from `CKPT/model.gin` (written by import_hf) or `--gin_file`; an
imported checkpoint's `hf/` directory supplies the token ids and tokenizer files. DIR
appears only once config.json and every safetensors shard are written.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Optional, Sequence

from mathft_jax import partitioning
from mathft_jax import checkpoints
from mathft_jax.convert import hf, model_gin
from mathft_jax.convert.import_hf import HF_SUBDIR
from mathft_jax.convert.staging import staged_dir


def export_checkpoint(checkpoint, out, *, gin_file=None, dtype: Optional[str] = None,
                      max_shard_bytes: int = hf.DEFAULT_SHARD_BYTES, mesh=None) -> None:
    checkpoint = pathlib.Path(checkpoint)
    cfg = model_gin.read_model_gin(gin_file or checkpoint / model_gin.MODEL_GIN)
    side = checkpoint / HF_SUBDIR
    extra = hf.read_hf_config(side) if (side / hf.CONFIG_FILE).exists() else None
    # default: the imported checkpoint's own dtype (params are float32 for training)
    dtype = dtype or (hf.checkpoint_dtype(extra) if extra else None)
    with staged_dir(out) as tmp:
        mesh = mesh if mesh is not None else partitioning.make_mesh()
        params = checkpoints.load_params(str(checkpoint), cfg, mesh)
        hf.save_hf(tmp, cfg, params, extra=extra, dtype=dtype, max_shard_bytes=max_shard_bytes,
                   side_files_from=side if side.is_dir() else None)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint (import_hf output or model_dir)")
    parser.add_argument("--out", required=True, help="HF directory to create")
    parser.add_argument("--gin_file", default=None, help="model config (default CKPT/model.gin)")
    parser.add_argument("--dtype", default=None,
                        help="tensor dtype (default: the imported checkpoint's, else the params')")
    parser.add_argument("--max_shard_bytes", type=int, default=hf.DEFAULT_SHARD_BYTES)
    args = parser.parse_args(argv)
    export_checkpoint(args.checkpoint, args.out, gin_file=args.gin_file, dtype=args.dtype,
                      max_shard_bytes=args.max_shard_bytes)
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
