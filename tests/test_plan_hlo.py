"""The planner's pure parts, without libtpu: HLO analysis, chips and topologies, the roofline,
and the default JAX platform where libtpu is installed."""
from __future__ import annotations

import pytest

from mathft_jax.core import platforms
from mathft_jax.planning import hlo
from mathft_jax.planning.chips import CHIPS, Topology, TopologyError
from mathft_jax.planning.roofline import Roofline

# A scanned body (a counted loop of 5 trips, as TPU's compiled HLO writes it: no
# known_trip_count, a copied constant start) holding a dot and an all-gather; a
# reduce-scatter and an all-reduce at the top; operands printed as names only.
HLO = """HloModule jit_step, num_partitions=4

%fused_dot (p0: bf16[8,16], p1: bf16[16,32]) -> f32[8,64] {
  %p0 = bf16[8,16]{1,0} parameter(0)
  %p1 = bf16[16,32]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,64]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/layers/mlp/dot_general"}
}

%cond (arg: (s32[], bf16[8,16], bf16[16,32])) -> pred[] {
  %arg = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %limit = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}

%body (arg.1: (s32[], bf16[8,16], bf16[16,32])) -> (s32[], bf16[8,16], bf16[16,32]) {
  %arg.1 = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%arg.1), index=0
  %x = bf16[8,16]{1,0} get-tuple-element(%arg.1), index=1
  %w = bf16[16,32]{1,0} get-tuple-element(%arg.1), index=2
  %ag = bf16[16,32]{1,0} all-gather(%w), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}, use_global_device_ids=true
  %f = f32[8,64]{1,0} fusion(%x, %ag), kind=kOutput, calls=%fused_dot, metadata={op_name="jit(step)/layers/mlp/dot_general"}
  %one = s32[] constant(1)
  %next = s32[] add(%i.1, %one)
  ROOT %t = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%next, %x, %w)
}

ENTRY %main (a: bf16[8,16], b: bf16[16,32], g: f32[64]) -> f32[16] {
  %a = bf16[8,16]{1,0} parameter(0)
  %b = bf16[16,32]{1,0} parameter(1)
  %g = f32[64]{0} parameter(2)
  %zero = s32[] constant(0)
  %zero.copy = s32[] copy(%zero)
  %init = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) tuple(%zero.copy, %a, %b)
  %loop = (s32[], bf16[8,16]{1,0}, bf16[16,32]{1,0}) while(%init), condition=%cond, body=%body
  %rs = f32[16]{0} reduce-scatter(%g), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %ar = f32[16]{0} all-reduce(%rs), channel_id=3, replica_groups={{0,2},{1,3}}, to_apply=%add
}
"""


def test_loop_bodies_count_once_per_trip():
    analysis = hlo.analyse(HLO)
    assert analysis.unknown_trip_counts == []
    assert analysis.matmul_flops == 5 * 2 * 8 * 64 * 16  # the dot, five times
    assert analysis.flops_by_part == {"mlp": analysis.matmul_flops}


def test_collectives_bytes_by_kind_and_network():
    # slices: devices 0, 1 in slice 0; 2, 3 in slice 1
    analysis = hlo.analyse(HLO, slice_of=lambda device: device // 2)
    gather, scatter, reduce = (analysis.collectives[k] for k in
                               ("all-gather", "reduce-scatter", "all-reduce"))
    shard = 16 * 32 * 2
    assert gather["count"] == 5 and gather["dcn_bytes"] == 5 * shard * 4 * 3 / 4
    assert scatter["dcn_bytes"] == 64 * 4 * 3 / 4 and scatter["ici_bytes"] == 0
    assert reduce["dcn_bytes"] == 2 * 16 * 4 / 2  # {0,2} spans the two slices
    within = hlo.analyse(HLO, slice_of=lambda device: device % 2)  # {0,2} in one slice
    assert within.collectives["all-reduce"]["ici_bytes"] == 2 * 16 * 4 / 2
    assert within.collectives["all-reduce"]["dcn_bytes"] == 0


def test_a_kernel_config_spanning_lines_does_not_end_its_computation():
    """A Pallas kernel's custom-call prints its config over several lines, some starting
    with a brace; the instructions after it still count."""
    kernel = ('  %k = f32[16]{0} custom-call(%g), custom_call_target="tpu_custom_call", '
              'backend_config={"custom_call_config": {"body": "module {\n'
              '}}, metadata={op_name="jit(step)/pallas_call"}\n')
    text = HLO.replace("  %zero = s32[] constant(0)\n", kernel + "  %zero = s32[] constant(0)\n")
    assert hlo.analyse(text).matmul_flops == hlo.analyse(HLO).matmul_flops > 0


def test_data_dependent_loops_take_hinted_trips():
    unbounded = HLO.replace("ROOT %lt = pred[] compare(%i, %limit), direction=LT",
                            "ROOT %lt = pred[] compare(%i, %limit), direction=NE")
    assert hlo.analyse(unbounded).matmul_flops == 2 * 8 * 64 * 16
    assert hlo.analyse(unbounded).unknown_trip_counts
    hinted = hlo.analyse(unbounded, loop_trips={"": 7})
    assert hinted.matmul_flops == 7 * 2 * 8 * 64 * 16 and not hinted.unknown_trip_counts


def test_slices_and_in_place_updates_move_only_their_part():
    text = """HloModule m

%fused (p0: f32[32,256], p1: f32[256], p2: s32[]) -> f32[32,256] {
  %p0 = f32[32,256]{1,0} parameter(0)
  %p1 = f32[256]{0} parameter(1)
  %p2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  %r = f32[1,256]{1,0} reshape(%p1)
  ROOT %u = f32[32,256]{1,0} dynamic-update-slice(%p0, %r, %p2, %zero)
}

ENTRY %main (a: f32[32,256], i: s32[]) -> f32[32,256] {
  %a = f32[32,256]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %zero.1 = s32[] constant(0)
  %s = f32[1,256]{1,0} dynamic-slice(%a, %i, %zero.1), dynamic_slice_sizes={1,256}
  %v = f32[256]{0} reshape(%s)
  ROOT %f = f32[32,256]{1,0} fusion(%a, %v, %i), kind=kLoop, calls=%fused
}
"""
    # slice: read and write one row; reshape: a row each way; the fusion: reads the row and
    # the index, writes the row in place (not the 32-row buffer)
    row = 256 * 4
    assert hlo.analyse(text).hbm_bytes == 2 * row + 2 * row + (row + 4 + row)


def test_largest_values_name_their_source():
    largest = hlo.analyse(HLO).largest
    assert largest[0] == {"bytes": 8 * 64 * 4, "shape": "f32[8,64]{1,0}", "op": "fusion",
                          "source": "jit(step)/layers/mlp/dot_general"}
    assert all(v["bytes"] <= largest[0]["bytes"] for v in largest)


def test_convolution_flops_count_only_real_taps():
    # A batched matmul as TPU writes it: the batch (4) is a spatial dim, each output
    # position reads one real input through lhs dilation: 4 x [32, 8] @ [8, 16].
    inst = hlo.parse_instruction(
        "  %c = f32[4,32,16]{2,1,0} convolution(f32[4,32,8]{2,1,0} %x, f32[4,8,16]{2,1,0} %y), "
        "window={size=4 stride=3 lhs_dilate=4}, dim_labels=0bf_0io->0bf")
    assert hlo.dot_flops(inst, {}) == 2 * 4 * 32 * 16 * 8
    plain = hlo.parse_instruction("  %d = f32[32,16]{1,0} convolution(f32[32,8]{1,0} %x, "
                                  "f32[8,16]{1,0} %y), dim_labels=bf_io->bf")
    assert hlo.dot_flops(plain, {}) == 2 * 32 * 16 * 8


@pytest.mark.parametrize("op_name,part", [
    ("jit(step)/jvp(Decoder)/layers_3/attention/attention._xla_attention/btkgd,bskd->bkgts",
     "attention scores"),
    ("jit(step)/transpose(jvp(Decoder))/layers_0/attention/bthk,hkd->btd", "attention projections (backward)"),
    ("jit(step)/transpose(jvp(Decoder))/layers_1/mlp/btf,fd->btd", "mlp (backward)"),
    ("jit(step)/jvp(Decoder)/btd,dv->btv/dot_general", "output projection"),
])
def test_flops_parts(op_name, part):
    assert hlo.flops_part(op_name) == part


def test_iota_replica_groups():
    assert hlo.replica_groups("replica_groups=[2,4]<=[8]") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert hlo.replica_groups("replica_groups=[4,2]<=[2,4]T(1,0)") == [[0, 4], [1, 5], [2, 6],
                                                                       [3, 7]]
    assert hlo.replica_groups("replica_groups=mesh['a'=2,'b'=4] {'a'}, dimensions={0}") == [
        [0, 4], [1, 5], [2, 6], [3, 7]]
    assert hlo.replica_groups("replica_groups=mesh['a'=2,'b'=4] {'b'}") == [[0, 1, 2, 3],
                                                                          [4, 5, 6, 7]]
    assert hlo.shape_bytes("(bf16[2,3]{1,0}, f32[4]{0}, pred[])") == 12 + 16 + 1


def test_topology_names_and_errors():
    t = Topology.parse("v5p:2x2x2", slices=2)
    assert (t.libtpu_name, t.num_chips, t.chip.hbm_bytes) == ("v5:2x2x2", 16, 95 * 2 ** 30)
    assert Topology.parse("v5e:4x4").chips_per_slice == 16
    for bad in ("v7:2x2", "v5e:2x2x2", "v5p:2x2", "v4:2xx2"):
        with pytest.raises(TopologyError, match="--topology"):
            Topology.parse(bad)
    assert all(c.source.startswith("https://") and c.network_source.startswith("https://")
               for c in CHIPS.values())


def test_roofline_takes_the_slowest_term():
    chip = CHIPS["v5p"]
    r = Roofline.of(chip, program_flops=chip.peak_bf16_flops, hbm_bytes=chip.hbm_bandwidth / 2,
                    ici_bytes=0.0, dcn_bytes=chip.dcn_bandwidth * 3, model_flops=
                    chip.peak_bf16_flops / 2, tokens=600)
    assert (r.step_s, r.bound_by) == (3.0, "dcn")
    assert r.mfu_bound == pytest.approx(0.5 / 3) and r.tokens_per_s == 200


@pytest.mark.parametrize("tpu,gpu,libtpu,user,expected", [
    (False, False, True, None, "cpu"),  # libtpu on a CPU box: quiet CPU
    (True, False, True, None, None),  # a TPU VM: JAX picks the TPU
    (False, True, True, None, None),  # a GPU host: never forced to CPU
    (False, False, False, None, None),  # no libtpu: nothing to quiet
    (False, False, True, "tpu", None),  # the user's choice stands
])
def test_default_platform(monkeypatch, tpu, gpu, libtpu, user, expected):
    monkeypatch.setattr(platforms, "tpu_present", lambda: tpu)
    monkeypatch.setattr(platforms, "gpu_present", lambda: gpu)
    monkeypatch.setattr(platforms, "libtpu_installed", lambda: libtpu)
    environ = {} if user is None else {"JAX_PLATFORMS": user}
    assert platforms.choose_default(environ) == expected
    assert environ.get("JAX_PLATFORMS") == (expected or user)
