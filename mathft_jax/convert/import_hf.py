"""`python -m mathft_jax.convert.import_hf --hf_dir=DIR --out=CKPT`: an HF model as our
checkpoint.

CKPT holds the parameters (`checkpoints.save_params`, read by `train.init_checkpoint`,
`infer` and `export_hf`), stored in the checkpoint's own dtype (exact, compact), and the
model files every model_dir has (`mathft_jax.convert.model_files`): `model.gin` (the
DecoderConfig: float32 parameters, so fine-tuning keeps float32 master weights and
optimizer state, and the checkpoint's dtype as the compute dtype; `load_params` casts),
`vocab.gin` and `tokenizer/` (the tokenizer as `get_vocabulary`, with its special ids,
when the HF directory has a tokenizer.json) and `hf/` (config.json and the tokenizer and
generation files, which export carries back). CKPT appears only once all of it is written.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

from mathft_jax.convert import checkpoints, model_files
from mathft_jax.core import cli_errors
from mathft_jax.models import partitioning
from mathft_jax.convert import hf, tokenizer
from mathft_jax.convert.staging import staged_dir


def import_checkpoint(hf_dir, out, *, dtype: Optional[str] = None, scan_layers: bool = False,
                      mesh=None):
    """Convert `hf_dir` into the checkpoint directory `out`; returns model.gin's DecoderConfig.

    dtype: store the parameters, and run the model, in this dtype instead (model.gin then
    says so for both).
    """
    hf_dir, out = pathlib.Path(hf_dir), pathlib.Path(out).absolute()
    # The tokenizer first: a bad one (no EOS) fails before the weights are read.
    has_tokenizer = (hf_dir / tokenizer.TOKENIZER_JSON).exists()
    vocabulary = tokenizer.hf_tokenizer_files(hf_dir) if has_tokenizer else None
    with staged_dir(out) as tmp:
        cfg, params = hf.load_hf(hf_dir, mesh=mesh if mesh is not None else partitioning.make_mesh(),
                                 dtype=dtype, scan_layers=scan_layers)
        checkpoints.save_params(str(tmp), params)
        del params
        if dtype is None:  # train with float32 master weights; compute in the checkpoint's
            cfg = cfg.replace(param_dtype="float32")
        comment = (f"Imported from {hf_dir.absolute()} by mathft_jax.convert.import_hf.\n"
                   "Parameters are float32 for fine-tuning (bind DecoderConfig.param_dtype to "
                   "the compute dtype to halve inference memory).")
        model_files.write_model_files(tmp, cfg, vocabulary, hf_side_dir=hf_dir, comment=comment,
                                      final_dir=out)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", required=True, help="HF model directory (config.json, *.safetensors)")
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--dtype", default=None,
                        help="store and run the model in this dtype (default: stored as the "
                             "checkpoint's, float32 parameters and the checkpoint's compute dtype)")
    parser.add_argument("--scan_layers", action="store_true", help="stack layers for nn.scan")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    cfg = cli_errors.guard(lambda: import_checkpoint(args.hf_dir, args.out, dtype=args.dtype,
                                                     scan_layers=args.scan_layers),
                           "import_hf", args.debug)
    print(f"wrote {args.out}: {cfg.family}, {cfg.num_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, {cfg.param_dtype}", file=sys.stderr)


if __name__ == "__main__":
    main()
