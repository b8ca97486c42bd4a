"""Causal self-attention through Pallas' TPU splash-attention kernel (`attention_impl='splash'`).

XLA's attention (`Attention._xla_attention`) materialises every [length, length] score
matrix, and without remat the backward pass keeps each layer's: at 2 x 2048 tokens per chip
that is most of a llama3_8b SSFT step's temporaries on v5p (docs/SCALE.md). The splash
kernel (MaxText's default on TPU) computes attention a block of queries and keys at a time
with an online softmax, skips blocks the causal (or sliding-window) mask rules out, and
recomputes what its backward pass needs: no score matrix reaches HBM.

The kernel takes one sequence and one KV head's query group: q [g, t, hd], k and v [t, hd]
(`make_splash_mqa`), so grouped-query attention is a vmap over KV heads and the batch. Pallas
kernels are not partitioned by XLA's SPMD pass, so on a mesh it runs under `shard_map`: rows
split as the `batch` rule says, KV heads (or, when the rules replicate them, the query
groups) as `kv_heads` / `heads` say. Packed rows pass their segment ids (padding is segment
0 and attends only to padding, which no loss reads). Sequences must be a multiple of the
block (128, or 512 where it divides); shorter rows (initialisation's dummy token) take XLA's
attention. It compiles ahead of time for TPU topologies
(planning/) and, with `INTERPRET = True`, runs in Pallas' interpreter on CPU (the tests).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

INTERPRET = False  # Pallas' interpreter instead of the TPU kernel (tests on CPU)
MIN_BLOCK = 128


def block_size(length: int) -> int:
    for block in (512, MIN_BLOCK):
        if length % block == 0:
            return block
    raise ValueError(f"attention_impl='splash' needs sequences of a multiple of 128 tokens, "
                     f"got {length}")


def _kernel(heads: int, length: int, window: Optional[int], softcap: Optional[float]):
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415 (TPU only)
        splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)
    shape = (length, length)
    mask = (mask_lib.CausalMask(shape) if window is None
            else mask_lib.LocalMask(shape, window_size=(window - 1, 0), offset=0))
    block = block_size(length)
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                  block_q_dkv=block, block_kv_dkv=block,
                                  block_kv_dkv_compute=block, block_q_dq=block,
                                  block_kv_dq=block)
    return kernel_lib.make_splash_mqa_single_device(
        mask_lib.MultiHeadMask([mask] * heads), block_sizes=sizes,
        attn_logits_soft_cap=softcap, interpret=INTERPRET), kernel_lib.SegmentIds


def attention(q, k, v, segment_ids, *, scale: float, window: Optional[int] = None,
              softcap: Optional[float] = None):
    """q [b, t, h, hd], k and v [b, t, kvh, hd], segment_ids [b, t] or None -> [b, t, h, hd]."""
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kvh, h // kvh, hd)
    qg = qg.transpose(0, 2, 3, 1, 4)  # [b, kvh, g, t, hd]
    kt, vt = (x.transpose(0, 2, 1, 3) for x in (k, v))  # [b, kvh, t, hd]
    segments = segment_ids if segment_ids is not None else jnp.ones((b, t), jnp.int32)

    def local(qg, kt, vt, segments):
        kernel, segment_ids_cls = _kernel(qg.shape[2], t, window, softcap)

        def one(q1, k1, v1, s1):  # q1 [g, t, hd], k1 and v1 [t, hd], s1 [t]
            return kernel(q1, k1, v1, segment_ids=segment_ids_cls(q=s1, kv=s1))

        per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over KV heads
        return jax.vmap(per_head)(qg, kt, vt, segments)  # over rows

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(qg, kt, vt, segments)
    else:
        batch, heads, kv_heads = nn.logical_to_mesh_axes(("batch", "heads", "kv_heads"))
        group = heads if kv_heads is None else None  # split query groups when KV is whole
        out = jax.shard_map(local, mesh=mesh,
                            in_specs=(P(batch, kv_heads, group), P(batch, kv_heads),
                                      P(batch, kv_heads), P(batch)),
                            out_specs=P(batch, kv_heads, group), check_vma=False)(
                                qg, kt, vt, segments)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
