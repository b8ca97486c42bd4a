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

`--adapter=PEFT_DIR` (a folder `peft`'s `save_pretrained` wrote for a LoRA on DIR's model):
CKPT is then a LoRA checkpoint (convert/lora_checkpoints.py): DIR imported as above into
CKPT/base, the adapters as CKPT's step 0 (convert/peft_format.py) and lora.json naming the
base by path and hash; training goes on from it, sampling and export read it.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

from mathft_jax.convert import checkpoints, lora_checkpoints, model_files, peft_format
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
    out = pathlib.Path(out).absolute()
    with staged_dir(out) as tmp:
        return _import_into(tmp, out, pathlib.Path(hf_dir), dtype, scan_layers, mesh)


def import_adapter(hf_dir, adapter_dir, out, *, dtype: Optional[str] = None,
                   scan_layers: bool = False, mesh=None):
    """A PEFT LoRA adapter folder on the HF model `hf_dir` as the LoRA checkpoint `out`:
    the base imported into `out/base`, the adapters as `out`'s step 0 with lora.json naming
    that base (convert/lora_checkpoints.py). Returns (DecoderConfig, LoraConfig)."""
    out = pathlib.Path(out).absolute()
    with staged_dir(out) as tmp:
        cfg = _import_into(tmp / lora_checkpoints.SEED_BASE, out / lora_checkpoints.SEED_BASE,
                           pathlib.Path(hf_dir), dtype, scan_layers, mesh)
        lora, adapters = peft_format.read_adapter(adapter_dir, cfg)
        checkpoints.save_params(str(tmp), adapters)
        base_params = pathlib.Path(checkpoints.resolve_params_dir(
            str(tmp / lora_checkpoints.SEED_BASE)))
        base = {"params": str(out / base_params.relative_to(tmp)),  # where it will live
                "hash": lora_checkpoints.content_hash(str(base_params))}
        lora_checkpoints.record_run(str(tmp), lora, base)
        model_files.write_model_files(
            tmp, cfg, _vocabulary(pathlib.Path(hf_dir)),
            hf_side_dir=hf_dir, final_dir=out,
            comment=f"Imported from {pathlib.Path(adapter_dir).absolute()} (PEFT LoRA) on "
                    f"{pathlib.Path(hf_dir).absolute()} by mathft_jax.convert.import_hf.")
    return cfg, lora


def _import_into(tmp: pathlib.Path, out: pathlib.Path, hf_dir: pathlib.Path, dtype,
                 scan_layers: bool, mesh):
    """The checkpoint of `hf_dir` written into `tmp`, which will be moved to `out`."""
    # The tokenizer first: a bad one (no EOS) fails before the weights are read.
    vocabulary = _vocabulary(hf_dir)
    cfg, params = hf.load_hf(hf_dir, mesh=mesh if mesh is not None else partitioning.make_mesh(),
                             dtype=dtype, scan_layers=scan_layers)
    checkpoints.save_params(str(tmp), params)
    del params
    cfg = _trained_config(cfg, dtype)
    comment = (f"Imported from {hf_dir.absolute()} by mathft_jax.convert.import_hf.\n"
               "Parameters are float32 for fine-tuning (bind DecoderConfig.param_dtype to "
               "the compute dtype to halve inference memory).")
    model_files.write_model_files(tmp, cfg, vocabulary, hf_side_dir=hf_dir, comment=comment,
                                  final_dir=out)
    return cfg


def _vocabulary(hf_dir: pathlib.Path):
    has_tokenizer = (hf_dir / tokenizer.TOKENIZER_JSON).exists()
    return tokenizer.hf_tokenizer_files(hf_dir) if has_tokenizer else None


def _trained_config(cfg, dtype: Optional[str]):
    """model.gin's config: without a dtype asked for, float32 master weights for training,
    computing in the checkpoint's dtype."""
    return cfg.replace(param_dtype="float32") if dtype is None else cfg


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", required=True, help="HF model directory (config.json, *.safetensors)")
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--dtype", default=None,
                        help="store and run the model in this dtype (default: stored as the "
                             "checkpoint's, float32 parameters and the checkpoint's compute dtype)")
    parser.add_argument("--scan_layers", action="store_true", help="stack layers for nn.scan")
    parser.add_argument("--adapter", default=None,
                        help="a PEFT LoRA adapter folder on --hf_dir's model: --out is then a "
                             "LoRA checkpoint (the base in --out/base)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    if args.adapter:
        cfg, lora = cli_errors.guard(lambda: import_adapter(
            args.hf_dir, args.adapter, args.out, dtype=args.dtype, scan_layers=args.scan_layers),
            "import_hf", args.debug)
        adapters = f", LoRA rank {lora.rank} on {','.join(lora.targets)}"
    else:
        cfg = cli_errors.guard(lambda: import_checkpoint(args.hf_dir, args.out, dtype=args.dtype,
                                                         scan_layers=args.scan_layers),
                               "import_hf", args.debug)
        adapters = ""
    print(f"wrote {args.out}: {cfg.family}, {cfg.num_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, {cfg.param_dtype}{adapters}", file=sys.stderr)


if __name__ == "__main__":
    main()
