"""What a compiled program does per chip, read from its optimised HLO text.

XLA's `cost_analysis()` counts the body of a while loop once, whatever its trip count, so a
program whose layers are scanned (or whose micro-batches are) looks many times cheaper than
it is (palm_62b's step: 21x). Here every computation is weighted by how often it runs: a
while body by its caller's count times the loop's `known_trip_count` (which XLA's optimiser
records in the loop's backend_config), fusions and other callees by their caller's count.
On that walk:

- matmul FLOPs: every `dot` and `convolution`, 2 x output elements x contracted size
  (elementwise work is left out: it is a few % of a transformer's and runs on other units);
- HBM bytes: each instruction of a non-fused computation reads its operands and writes its
  result (XLA's own approximation of a fusion's traffic; bookkeeping ops move nothing);
- collectives by kind, with the bytes each chip puts on the wire for a ring algorithm
  (all-gather and all-to-all: (n-1)/n of the full array, reduce-scatter likewise of its input,
  all-reduce twice that) and whether the group spans slices (DCN) or not (ICI);
- the largest values by size, with the source op that made them (what the temporaries are).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from typing import Callable, Optional

import numpy as np

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
               "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
               "f8e5m2fnuz": 1, "token": 0}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
                    + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) (\(.*\)) -> .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_CALLEES = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)="
                      r"%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Collectives by kind; the async forms count at their start, never at their done.
COLLECTIVES = {"all-gather": "all-gather", "all-gather-start": "all-gather",
               "reduce-scatter": "reduce-scatter", "all-reduce": "all-reduce",
               "all-reduce-start": "all-reduce", "all-to-all": "all-to-all",
               "collective-permute": "collective-permute",
               "collective-permute-start": "collective-permute"}
# Instructions that move no HBM bytes of their own (aliases, control flow, metadata).
BOOKKEEPING = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "conditional", "call", "after-all", "partition-id", "replica-id", "iota",
               "opt-barrier", "add-dependency", "async-done", "all-gather-done",
               "all-reduce-done", "collective-permute-done", "copy-done", "domain"}


def shape_bytes(text: str) -> float:
    """Bytes of every array in an HLO shape string (a tuple sums its elements)."""
    return sum(DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x)
               for d, dims in _ARRAY.findall(text))


def _dims(text: str) -> list[int]:
    match = _ARRAY.search(text)
    return [int(x) for x in match.group(2).split(",") if x] if match else []


def _split_top(text: str, opener: str = "(", closer: str = ")") -> tuple[str, str]:
    """text starts with `opener`: (inside the matching closer, the rest after it)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == opener
        depth -= ch == closer
        if depth == 0:
            return text[1:i], text[i + 1:]
    return text[1:], ""


def _operands(inside: str) -> list[str]:
    """Split an operand list at top-level commas (shapes hold commas inside brackets)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(inside):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(inside[start:i].strip())
            start = i + 1
    if inside[start:].strip():
        out.append(inside[start:].strip())
    return out


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list
    attributes: str

    @property
    def result_bytes(self) -> float:
        return shape_bytes(self.shape)

    def operand_shapes(self, shapes: dict) -> list[str]:
        """Each operand's shape: printed beside it, or (TPU's compiled HLO prints names only)
        the shape of the instruction of that name."""
        out = []
        for operand in self.operands:
            if _ARRAY.search(operand):
                out.append(operand)
            else:
                out.append(shapes.get(operand.split()[-1].lstrip("%"), ""))
        return out

    @property
    def op_name(self) -> str:
        match = _OP_NAME.search(self.attributes)
        return match.group(1) if match else ""

    def callees(self) -> list[tuple[str, str]]:
        found = _CALLEES.findall(self.attributes)
        for group in _BRANCHES.findall(self.attributes):
            found += [("branch", c.strip().lstrip("%")) for c in group.split(",") if c.strip()]
        return found

    @property
    def trip_count(self) -> Optional[int]:
        match = _TRIP.search(self.attributes)
        return int(match.group(1)) if match else None


def parse_instruction(line: str) -> Optional[Instruction]:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    if rest.startswith("("):
        inside, rest = _split_top(rest)
        shape = f"({inside})"
        rest = rest.lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    opcode, paren, rest = rest.partition("(")
    if not paren:
        return None
    inside, attributes = _split_top("(" + rest)
    return Instruction(name, shape, opcode.strip(), _operands(inside), attributes)


@dataclasses.dataclass
class Module:
    computations: dict  # name -> list[Instruction]
    entry: str

    @property
    def shapes(self) -> dict:
        """Every instruction's result shape by name (names are unique in a module)."""
        return {i.name: i.shape for insts in self.computations.values() for i in insts}

    @classmethod
    def parse(cls, text: str) -> "Module":
        computations, entry, current = {}, None, None
        for line in text.splitlines():
            header = _HEADER.match(line)
            if header:
                current = header.group(2)
                computations[current] = []
                if header.group(1):
                    entry = current
                continue
            if current is not None:
                if line.rstrip() == "}":  # (a Pallas kernel's config spans lines: "}}, ...")
                    current = None
                    continue
                inst = parse_instruction(line)
                if inst is not None:
                    computations[current].append(inst)
        if entry is None:
            raise ValueError("no ENTRY computation in the HLO text")
        return cls(computations, entry)

    def multiplicities(self, loop_trips: Optional[dict] = None) -> tuple[dict, dict, list]:
        """(times each computation runs per call of the entry, which computations are fusion
        bodies (no HBM traffic of their own), loops whose trip count is not in the HLO).

        A loop whose trip count depends on the data (a decode loop that stops when every
        sequence has ended, attention over the filled part of a KV cache) takes it from
        `loop_trips`, {op_name substring: trips}: the first key found in the loop's source
        op name ("" matches any); with none, once, and it is listed as unknown."""
        count = collections.Counter({self.entry: 1})
        fused, unknown = set(), []
        order = [self.entry]
        seen = {self.entry}
        while order:  # callers before callees: HLO call graphs are acyclic
            name = order.pop(0)
            for inst in self.computations.get(name, []):
                for kind, callee in inst.callees():
                    times = count[name]
                    if inst.opcode == "while" and kind == "body":
                        trips = inst.trip_count or self.counted_trips(inst)
                        if trips is None:
                            trips = _hinted(inst, loop_trips or {})
                        if trips is None:
                            unknown.append(inst.op_name or inst.name)
                            trips = 1
                        times *= trips
                    if kind == "to_apply" and inst.opcode != "call":
                        continue  # scalar reducers: no FLOPs or bytes of note
                    count[callee] += times
                    if inst.opcode == "fusion":
                        fused.add(callee)
                    if callee not in seen:
                        seen.add(callee)
                        order.append(callee)
        return dict(count), fused, unknown


    def traffic(self, inst: Instruction, shapes: dict) -> float:
        """HBM bytes an instruction reads and writes: its operands and result, except that a
        slice of a buffer reads only the slice and an update in place writes only the update
        (a scanned layer reads its weights out of the stacked ones, and writes its gradient
        and cache into them, at every trip)."""
        operands = inst.operand_shapes(shapes)
        if inst.opcode == "dynamic-slice":
            return 2 * inst.result_bytes
        if inst.opcode == "dynamic-update-slice":
            return 2 * shape_bytes(operands[1])
        if inst.opcode != "fusion":
            return sum(shape_bytes(o) for o in operands) + inst.result_bytes
        body = self.computations.get(dict(inst.callees()).get("calls"), [])
        params = {int(i.operands[0]): i.name for i in body if i.opcode == "parameter"}
        users = collections.defaultdict(list)
        for i in body:
            for o in i.operands:
                users[o.lstrip("%")].append(i)
        read = in_place = updates = 0.0
        for index, shape in enumerate(operands):
            name = params.get(index)
            uses = users.get(name, [])
            sliced = [u.opcode for u in uses if u.operands[0].lstrip("%") == name]
            if uses and len(sliced) == len(uses) and set(sliced) == {"dynamic-slice"}:
                read += sum(u.result_bytes for u in uses)
            elif uses and len(sliced) == len(uses) and set(sliced) == {"dynamic-update-slice"}:
                in_place += shape_bytes(shape)  # written where it lies: only the update moves
                updates += sum(shape_bytes(u.operand_shapes(shapes)[1]) for u in uses)
            else:
                read += shape_bytes(shape)
        return read + max(inst.result_bytes - in_place, 0.0) + updates

    @property
    def instructions(self) -> dict:
        return {i.name: i for insts in self.computations.values() for i in insts}

    def counted_trips(self, loop: Instruction) -> Optional[int]:
        """The trip count of a counted loop, read from its condition (TPU's compiled HLO
        records no known_trip_count): `counter < C` (or <=) on a tuple element that starts
        at a constant (a scan's, a fori_loop's)."""
        callees = dict(loop.callees())
        condition = self.computations.get(callees.get("condition"), [])
        by_name = {i.name: i for i in condition}
        root = condition[-1] if condition else None
        if root is None or root.opcode != "compare" or len(root.operands) != 2:
            return None
        direction = re.search(r"direction=(\w+)", root.attributes)
        counter, limit = (by_name.get(o.lstrip("%")) for o in root.operands)
        if (direction is None or direction.group(1) not in ("LT", "LE") or counter is None
                or limit is None or counter.opcode != "get-tuple-element"
                or limit.opcode != "constant"):
            return None
        index = int(re.search(r"index=(\d+)", counter.attributes).group(1))
        start = self._constant_element(loop.operands[0].lstrip("%"), index)
        if start is None:
            return None
        trips = int(limit.operands[0]) - start + (direction.group(1) == "LE")
        return max(trips, 0)

    def _constant_element(self, tuple_name: str, index: int) -> Optional[int]:
        """The integer constant at `index` of the tuple instruction `tuple_name`, if it is one."""
        insts = self.instructions
        tup = insts.get(tuple_name)
        if tup is None or tup.opcode != "tuple" or index >= len(tup.operands):
            return None
        element = insts.get(tup.operands[index].lstrip("%"))
        while element is not None and element.opcode == "copy":  # a copy of the constant
            element = insts.get(element.operands[0].lstrip("%"))
        if element is None or element.opcode != "constant":
            return None
        try:
            return int(element.operands[0])
        except ValueError:
            return None


def _hinted(loop: Instruction, loop_trips: dict) -> Optional[int]:
    for key, trips in loop_trips.items():
        if key in loop.op_name:
            return trips
    return None


def dot_flops(inst: Instruction, shapes: dict) -> float:
    """2 x output elements x contracted elements of a dot or convolution."""
    if inst.opcode not in ("dot", "convolution"):
        return 0.0
    out = math.prod(_dims(inst.shape))
    operands = inst.operand_shapes(shapes)
    if inst.opcode == "dot":
        lhs = _dims(operands[0])
        match = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attributes)
        axes = [int(a) for a in match.group(1).split(",") if a] if match else []
        return 2.0 * out * math.prod(lhs[a] for a in axes)
    lhs, rhs = _dims(operands[0]), _dims(operands[1])
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attributes)
    if not labels or len(labels.group(1)) != len(lhs) or len(labels.group(2)) != len(rhs):
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    out_dims = _dims(inst.shape)
    taps = 1.0
    window = _window(inst.attributes)
    for k in range(len(lhs_labels) - 2):  # spatial dims "0", "1", ...
        size = lhs[lhs_labels.index(str(k))]
        taps *= _valid_taps(size, out_dims[out_labels.index(str(k))],
                            rhs[rhs_labels.index(str(k))], window, k)
    return (2.0 * out_dims[out_labels.index("b")] * out_dims[out_labels.index("f")]
            * rhs[rhs_labels.index("i")] * taps)


def _window(attributes: str) -> dict:
    """A convolution's window attributes: {"size": [..], "stride": [..], "pad": [(lo, hi)],
    "lhs_dilate": [..], "rhs_dilate": [..]} (absent ones: empty)."""
    match = re.search(r"window=\{([^}]*)\}", attributes)
    out = {}
    for item in (match.group(1).split() if match else []):
        key, _, value = item.partition("=")
        parts = value.split("x")
        out[key] = [tuple(int(v) for v in p.split("_")) if key == "pad" else int(p)
                    for p in parts] if key != "rhs_reversal" else parts
    return out


def _valid_taps(size: int, out: int, kernel: int, window: dict, k: int) -> float:
    """(output position, kernel tap) pairs of one spatial dim that read a real input element
    (not padding, not a hole of lhs dilation): XLA's own count. TPU's compiled HLO writes
    batched matmuls as convolutions whose batch is a spatial dim of this kind."""
    def get(key, default):
        values = window.get(key)
        return values[k] if values and k < len(values) else default
    stride, (lo, _) = get("stride", 1), get("pad", (0, 0))
    lhs_dilate, rhs_dilate = get("lhs_dilate", 1), get("rhs_dilate", 1)
    index = (np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dilate - lo)
    dilated = (size - 1) * lhs_dilate + 1
    valid = (index >= 0) & (index < dilated) & (index % lhs_dilate == 0)
    return float(valid.sum())


def replica_groups(attributes: str) -> list[list[int]]:
    """The device groups of a collective: explicit `{{0,1},{2,3}}`, iota
    `[groups,size]<=[dims]T(perm)`, or mesh-axes `mesh['a'=8,'b'=2] {'a'}` form (devices
    numbered row-major over the mesh; a group varies the named axes)."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
    if mesh:
        axes = [(name, int(size)) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))]
        chosen = re.findall(r"'([^']+)'", mesh.group(2))
        names = [name for name, _ in axes]
        ids = np.arange(math.prod(size for _, size in axes)).reshape([s for _, s in axes])
        order = [i for i, n in enumerate(names) if n not in chosen] + [names.index(c)
                                                                       for c in chosen]
        size = math.prod(axes[names.index(c)][1] for c in chosen)
        return ids.transpose(order).reshape(-1, size).tolist()
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?",
                     attributes)
    if iota:
        groups, size = int(iota.group(1)), int(iota.group(2))
        dims = [int(d) for d in iota.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(p) for p in iota.group(4).split(",")])
        return ids.reshape(groups, size).tolist()
    explicit = re.search(r"(?:replica_groups|source_target_pairs)=\{(\{[\d,{}\s]*\})\}",
                         attributes)
    if explicit:
        return [[int(x) for x in g.split(",") if x.strip()]
                for g in re.findall(r"\{([\d,\s]*)\}", explicit.group(1))]
    return []


def wire_bytes(kind: str, operand_bytes: float, group: int) -> float:
    """Bytes one chip sends for a collective over `group` chips (ring algorithms)."""
    if kind == "collective-permute":
        return operand_bytes
    if group <= 1:
        return 0.0
    share = (group - 1) / group
    return {"all-gather": operand_bytes * group * share,  # the operand is one chip's shard
            "reduce-scatter": operand_bytes * share,
            "all-reduce": 2 * operand_bytes * share,
            "all-to-all": operand_bytes * share}[kind]


def flops_part(op_name: str) -> str:
    """Which part of the model a matmul belongs to, from its source op name: attention
    scores (QK^T, AV), the attention and MLP weight matmuls, the output projection; forward
    or backward (`transpose(` is JAX's backward pass)."""
    if "attention" in op_name and any(k in op_name for k in ("_xla_attention", "_cache_attention",
                                                              "splash", "_fused_attention")):
        part = "attention scores"
    elif "/attention/" in op_name:
        part = "attention projections"
    elif "/mlp/" in op_name:
        part = "mlp"
    elif "btd,dv->btv" in op_name or "fused_loss" in op_name or "head" in op_name:
        part = "output projection"
    else:
        part = "other"
    return part + (" (backward)" if "transpose(" in op_name else "")


@dataclasses.dataclass
class Analysis:
    """Per chip, per call of the program."""
    matmul_flops: float
    flops_by_part: dict  # flops_part -> matmul FLOPs
    hbm_bytes: float
    collectives: dict  # kind -> {"count", "bytes" (operands), "ici_bytes", "dcn_bytes"}
    largest: list  # [{"bytes", "shape", "op", "source"}]
    unknown_trip_counts: list

    @property
    def ici_bytes(self) -> float:
        return sum(c["ici_bytes"] for c in self.collectives.values())

    @property
    def dcn_bytes(self) -> float:
        return sum(c["dcn_bytes"] for c in self.collectives.values())

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def analyse(text: str, slice_of: Callable[[int], int] = lambda device: 0,
            loop_trips: Optional[dict] = None, top: int = 8) -> Analysis:
    """Read compiled HLO text; `slice_of` maps a logical device id (the program's device
    order) to its slice, which tells DCN collectives from ICI ones; `loop_trips` gives
    data-dependent loops their trip counts (`Module.multiplicities`)."""
    module = Module.parse(text)
    shapes = module.shapes
    times, fused, unknown = module.multiplicities(loop_trips)
    flops = hbm = 0.0
    parts: dict = collections.defaultdict(float)
    collectives: dict = {}
    values = []
    for name, instructions in module.computations.items():
        n = times.get(name, 0)
        if not n:
            continue
        for inst in instructions:
            work = n * dot_flops(inst, shapes)
            if work:
                flops += work
                parts[flops_part(inst.op_name)] += work
            operand_bytes = sum(shape_bytes(s) for s in inst.operand_shapes(shapes))
            if name not in fused and inst.opcode not in BOOKKEEPING:
                hbm += n * module.traffic(inst, shapes)
                values.append((inst.result_bytes, inst))
            kind = COLLECTIVES.get(inst.opcode)
            if kind is None:
                continue
            groups = replica_groups(inst.attributes)
            size = len(groups[0]) if groups else 1
            spans = any(len({slice_of(d) for d in g}) > 1 for g in groups)
            sent = n * wire_bytes(kind, operand_bytes, size)
            entry = collectives.setdefault(kind, {"count": 0, "bytes": 0.0, "ici_bytes": 0.0,
                                                  "dcn_bytes": 0.0})
            entry["count"] += n
            entry["bytes"] += n * operand_bytes
            entry["dcn_bytes" if spans else "ici_bytes"] += sent
    values.sort(key=lambda v: -v[0])
    largest = [{"bytes": b, "shape": i.shape, "op": i.opcode, "source": i.op_name}
               for b, i in values[:top]]
    return Analysis(flops, dict(parts), hbm, collectives, largest, unknown)
