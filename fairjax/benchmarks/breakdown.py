"""Where the time and memory of a compiled train step go, per op category, from XLA's optimized HLO.

`python -m fairjax.bench memory --breakdown --algo=ilql --size=small --batch=8 --seq=512` (or
`bench train --profile=DIR` on the CPU) compiles the trainer's step for abstract shapes
(`memory.compile_step`: `jax.eval_shape`, nothing allocated) and parses `compiled.as_text()`:

* FLOPs, per HLO instruction (inside fusions too): dot = 2·|out|·|contracted|, convolution =
  2·|out|·|kernel|/out-features, elementwise arithmetic / compare / select = |out|, reduce =
  |in|; data movement (copy, transpose, slice, gather, broadcast, convert ...) = 0;
  transcendentals (exp, log, tanh, rsqrt ...) are counted apart, as XLA does. While loops are
  multiplied by their known trip count.
* bytes accessed, per top-level instruction (a fusion is one kernel): operand bytes + output bytes;
  tuples, get-tuple-element, bitcasts, parameters and constants move nothing.
* peak temporaries: a liveness walk over the scheduled entry computation (each value lives from
  its instruction to its last use; aliases — tuple, get-tuple-element, bitcast — take no space;
  arguments and the step's outputs are not temporaries, as in `memory_analysis()`); the bytes live
  at the peak are split by the category of the instruction that made them.

Each instruction's category comes from its `op_name` metadata (the JAX name stack: Flax module
paths, `transpose(jvp(...))` for the backward, `while/body` for the trainer's micro-batch scan) and
its shapes; the first rule that matches wins (`classify`). An instruction without a name stack
(layout copies, fusions rooted at a convert) takes the category of its fused ops, else of its
producer; a fusion that contains a dot is that dot's category (`Breakdown._cls`). The totals are checked against XLA's own
`cost_analysis()` (flops, bytes accessed) and `memory_analysis()` (temporaries) by
tests/benchmarks/test_breakdown.py, within the tolerances stated there.
"""
from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field

from fairjax.losses.vocab import resolve_chunk

CATEGORIES = ("attention matmuls", "attention softmax / mask", "MLP matmuls", "vocab head / CE",
              "Q/V heads", "embeddings", "norms / elementwise", "loss (other)", "optimizer update", "collectives", "other")

ELEMENTWISE = frozenset(
    "add subtract multiply divide maximum minimum negate abs compare select and or xor not "
    "clamp remainder power sign floor ceil round-nearest-afz round-nearest-even shift-left "
    "shift-right-arithmetic shift-right-logical atan2".split())
TRANSCENDENTAL = frozenset(
    "exponential exponential-minus-one log log-plus-one tanh logistic rsqrt sqrt cbrt sine "
    "cosine tan erf".split())
COLLECTIVE = frozenset(
    "all-reduce all-gather reduce-scatter all-to-all collective-permute all-reduce-start "
    "all-gather-start collective-permute-start".split())
NO_BYTES = frozenset("parameter tuple get-tuple-element bitcast constant after-all "
                     "partition-id replica-id".split())
ALIASES = frozenset("tuple get-tuple-element bitcast".split())
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "s4": 0.5, "u4": 0.5, "f8e4m3fn": 1, "f8e5m2": 1, "token": 0}

_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")


BRANCH_KEYS = ("to_apply", "branch_computations", "true_computation", "false_computation")


@dataclass
class Instr:
    name: str
    shape: str          # the result type text, e.g. "f32[8,512]{1,0}" or "(f32[2], s32[])"
    opcode: str
    operands: list
    rest: str           # attributes and metadata
    root: bool = False

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.rest)
        return m.group(1) if m else ""

    def called(self, key: str) -> list:
        m = re.search(r"\b" + key + r"=(\{[^}]*\}|%?[\w.\-]+)", self.rest)
        return [c.strip().lstrip("%") for c in m.group(1).strip("{}").split(",")] if m else []


@dataclass
class Module:
    computations: dict = field(default_factory=dict)   # name -> [Instr]
    entry: str = ""


def shape_bytes(text: str) -> float:
    """Bytes of every array in a (possibly tuple) HLO type string."""
    return sum(DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _SHAPE.findall(text))


def shape_dims(text: str) -> list:
    """[[dims...] per array] of an HLO type string."""
    return [[int(d) for d in dims.split(",") if d] for _, dims in _SHAPE.findall(text)]


def _split_operands(arg_text: str) -> tuple[list, str]:
    """Operand names of `op(a, b), attrs...` (text after the opening paren) and the rest."""
    depth, i = 1, 0
    while i < len(arg_text) and depth:
        depth += {"(": 1, ")": -1}.get(arg_text[i], 0)
        i += 1
    inner, rest = arg_text[:i - 1], arg_text[i:]
    names = re.findall(r"%([\w.\-]+)", inner)
    return names, rest


def parse(hlo_text: str) -> Module:
    """Computations and instructions of `compiled.as_text()` (an HloModule dump)."""
    mod, current = Module(), None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith("HloModule"):
                current = m.group(2)
                mod.computations[current] = []
                if m.group(1):
                    mod.entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            operands, rest = _split_operands(m.group(5))
            mod.computations[current].append(
                Instr(m.group(2), m.group(3), m.group(4), operands, rest, bool(m.group(1))))
    if not mod.entry:
        raise ValueError("breakdown.parse: no ENTRY computation in the HLO text (pass "
                         "compiled.as_text() of a compiled jit function)")
    return mod


def classify(ins: Instr, vocab_dims: frozenset, operand_shapes: tuple = ()) -> str:
    """Category of one instruction from its opcode, its result and operand shapes (HLO type
    strings) and its JAX name stack (first match)."""
    name, op = ins.op_name, ins.opcode
    if op in COLLECTIVE:
        return "collectives"
    if "while/body" not in name and "step_fn" in name:
        return "optimizer update"  # outside the micro-batch scan: clip, AdamW, Polyak targets
    dims = {d for t in (ins.shape, *operand_shapes) for arr in shape_dims(t) for d in arr}
    if (dims & vocab_dims or re.search(r"jvp\(\)+/while/body", name) or "lm_head" in name
            or "take_along_axis" in name):
        if op not in ("gather", "scatter") or "take_along_axis" in name:
            return "vocab head / CE"
    if re.search(r"/(wte|wpe|embed_tokens)/", name) and op != "dot":
        return "embeddings"
    if "MLPHead" in name or "/heads/" in name:
        return "Q/V heads"
    if op in ("dot", "convolution"):
        if re.search(r"/(attn|self_attn)/", name):
            return "attention matmuls"
        if "/mlp/" in name:
            return "MLP matmuls"
    if re.search(r"/(attn|self_attn)/", name):
        return "attention softmax / mask"  # scores' scale, mask, softmax, head transposes
    if re.search(r"LMHeadModel|ForCausalLM|/h_\d+/|/layers_\d+/", name):
        return "norms / elementwise"
    if "closed_call" in name:
        return "loss (other)"
    return "other"


def _trip_count(ins: Instr) -> int:
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', ins.rest)
    return int(m.group(1)) if m else 1


def _flops(ins: Instr, shapes: dict) -> tuple[float, float]:
    """(flops, transcendentals) of one non-control instruction."""
    out = sum(math.prod(d) for d in shape_dims(ins.shape))
    op = ins.opcode
    if op == "dot":
        lhs = shape_dims(shapes.get(ins.operands[0], ""))
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.rest)
        k = math.prod(lhs[0][int(i)] for i in m.group(1).split(",") if i) if lhs and m else 1
        return 2.0 * out * k, 0.0
    if op == "convolution":
        rhs = shape_dims(shapes.get(ins.operands[1], ""))
        kernel = math.prod(rhs[0]) if rhs else 1
        feat = shape_dims(ins.shape)[0][-1] if shape_dims(ins.shape) else 1
        return 2.0 * out * kernel / max(feat, 1), 0.0
    if op in ELEMENTWISE:
        return float(out), 0.0
    if op in TRANSCENDENTAL:
        return 0.0, float(out)
    if op in ("reduce", "reduce-window"):
        return float(sum(math.prod(d) for d in shape_dims(shapes.get(ins.operands[0], "")))), 0.0
    return 0.0, 0.0


class Breakdown:
    """Per-category FLOPs, transcendentals, bytes accessed and temporaries at the peak."""

    def __init__(self, hlo_text: str, vocab_dims: frozenset, trip_counts: bool = True):
        """trip_counts=False counts each while body once, as XLA's `cost_analysis()` does."""
        self.mod = parse(hlo_text)
        self.vocab = frozenset(vocab_dims)
        self.trip_counts = trip_counts
        self.flops = collections.Counter()
        self.transcendentals = collections.Counter()
        self.bytes = collections.Counter()
        self.shapes = {i.name: i.shape for comp in self.mod.computations.values() for i in comp}
        self.producers = {i.name: i for comp in self.mod.computations.values() for i in comp}
        self._cat: dict = {}
        self._walk(self.mod.entry, 1.0, top=True)
        self.temps, self.peak_temp = self._liveness(self.mod.entry)

    def _cls(self, ins: Instr) -> str:
        """`classify`; an instruction it leaves in "other" (no name stack: CPU fusions rooted
        at a convert, layout copies) takes the category of a dot it fuses, else of its fused
        root or most frequent fused category, else of its first classified producer; a fusion that
        contains a dot is always that dot's category."""
        if ins.name in self._cat:
            return self._cat[ins.name]
        cat = classify(ins, self.vocab, tuple(self.shapes.get(o, "") for o in ins.operands))
        if ins.opcode == "fusion":  # a kernel that fuses a dot is that dot's kernel
            inner = [i for c in ins.called("calls") for i in self.mod.computations.get(c, [])]
            dots = [self._cls(i) for i in inner if i.opcode in ("dot", "convolution")]
            cat = next((c for c in dots if c != "other"), cat)
            if cat == "other":
                named = collections.Counter(self._cls(i) for i in inner)
                named.pop("other", None)
                root = next((self._cls(i) for i in inner if i.root), "other")
                cat = root if root != "other" else (named.most_common(1)[0][0] if named
                                                    else "other")
        if cat == "other":
            for o in ins.operands:
                prod = self.producers.get(o)
                if prod is not None and prod.opcode != "parameter" and self._cls(prod) != "other":
                    cat = self._cls(prod)
                    break
        self._cat[ins.name] = cat
        return cat

    def _inner_flops(self, comp: str, mult: float, fusion_cat: str | None = None) -> None:
        for ins in self.mod.computations[comp]:
            if ins.opcode in ("fusion", "call", "while", "conditional", "custom-call"):
                self._control(ins, mult, top=False)
                continue
            cat = self._cls(ins)
            if cat == "other" and fusion_cat:
                cat = fusion_cat
            f, t = _flops(ins, self.shapes)
            self.flops[cat] += mult * f
            self.transcendentals[cat] += mult * t

    def _control(self, ins: Instr, mult: float, top: bool) -> None:
        if ins.opcode == "fusion":
            for c in ins.called("calls"):
                self._inner_flops(c, mult, self._cls(ins))
        elif ins.opcode == "while":
            n = mult * (_trip_count(ins) if self.trip_counts else 1)
            for c in ins.called("body") + ins.called("condition"):
                self._walk(c, n, top)
        elif ins.opcode in ("call", "conditional"):
            for key in BRANCH_KEYS:
                for c in ins.called(key):
                    self._walk(c, mult, top)

    def _walk(self, comp: str, mult: float, top: bool) -> None:
        """Top-level (kernel-level) instructions of `comp`: bytes per kernel, FLOPs inside."""
        for ins in self.mod.computations[comp]:
            if ins.opcode in ("while", "call", "conditional"):
                self._control(ins, mult, top)
                continue
            if ins.opcode not in NO_BYTES:
                moved = shape_bytes(ins.shape) + sum(shape_bytes(self.shapes.get(o, ""))
                                                     for o in ins.operands)
                self.bytes[self._cls(ins)] += mult * moved
            if ins.opcode == "fusion":
                self._control(ins, mult, top)
            else:
                f, t = _flops(ins, self.shapes)
                cat = self._cls(ins)
                self.flops[cat] += mult * f
                self.transcendentals[cat] += mult * t

    def _body_peak(self, comp: str) -> float:
        return self._liveness(comp)[1] if comp in self.mod.computations else 0.0

    def _liveness(self, comp: str) -> tuple[dict, float]:
        """Bytes live per category at the peak of a sequential walk over `comp`'s schedule."""
        instrs = self.mod.computations[comp]
        root = next((i for i in instrs if i.root), instrs[-1])
        owner: dict = {}  # value name -> the names of the buffers it aliases

        def buffers(n: str) -> set:
            return owner.get(n, {n})

        outputs: set = set()
        last_use: dict = {}
        for idx, ins in enumerate(instrs):
            if ins.opcode in ALIASES:
                owner[ins.name] = set().union(*(buffers(o) for o in ins.operands)) \
                    if ins.operands else set()
            for o in ins.operands:
                for b in buffers(o):
                    last_use[b] = idx
        if comp == self.mod.entry:
            outputs = set().union(*(buffers(o) for o in root.operands), buffers(root.name))
        live: dict = {}
        peak, at_peak = 0.0, {}
        for idx, ins in enumerate(instrs):
            extra = 0.0
            if ins.opcode == "while":
                extra = max((self._body_peak(c) for c in ins.called("body")), default=0.0)
            elif ins.opcode in ("call", "conditional"):  # the taken branch's own temporaries
                extra = max((self._body_peak(c) for key in BRANCH_KEYS for c in ins.called(key)),
                            default=0.0)
            for b in [b for b in live if last_use.get(b, -1) < idx]:
                del live[b]  # dead before this instruction writes its output
            size = shape_bytes(ins.shape)
            if ins.opcode not in ALIASES:  # in place: the output may take a dying operand's buffer
                for b in (b for o in ins.operands for b in buffers(o)):
                    if b in live and last_use.get(b) == idx and live[b][0] == size:
                        del live[b]
                        break
            if ins.opcode not in ALIASES and ins.opcode != "parameter" and ins.name not in outputs:
                live[ins.name] = (size, self._cls(ins))
            total = sum(v for v, _ in live.values()) + extra
            if total > peak:
                peak = total
                at_peak = collections.Counter()
                for v, c in live.values():
                    at_peak[c] += v
                if extra:
                    at_peak["loss (other)" if "while" in ins.op_name else "other"] += extra
        return dict(at_peak), peak

    def table(self) -> list:
        """Rows: category, GFLOP, share, GB accessed, share, temporaries at the peak (bytes)."""
        tf, tb, tt = sum(self.flops.values()), sum(self.bytes.values()), self.peak_temp
        return [{"category": c, "flops": self.flops[c], "flops_share": self.flops[c] / (tf or 1),
                 "bytes": self.bytes[c], "bytes_share": self.bytes[c] / (tb or 1),
                 "temp_bytes": self.temps.get(c, 0.0), "temp_share": self.temps.get(c, 0.0)
                 / (tt or 1)} for c in CATEGORIES]


def vocab_dims(vocab_size: int, chunk: int | None = None) -> frozenset:
    """Axis lengths that mark a vocabulary-sized array: V, and with chunked heads (chunk from
    `losses.vocab.resolve_chunk`) the block and remainder widths."""
    c = resolve_chunk(chunk)
    return frozenset({vocab_size} | ({c, vocab_size % c} - {0} if 0 < c < vocab_size else set()))


def analyze(compiled, vocab_dims) -> dict:
    """Breakdown of a compiled jit function beside XLA's own totals (cost and memory analysis)."""
    text = compiled.as_text()
    b = Breakdown(text, frozenset(vocab_dims))
    once = Breakdown(text, frozenset(vocab_dims), trip_counts=False)  # XLA's loop convention
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    mem = compiled.memory_analysis()
    return {"rows": b.table(),
            "flops": sum(b.flops.values()), "xla_flops": float(cost.get("flops", 0.0)),
            "transcendentals": sum(b.transcendentals.values()),
            "xla_transcendentals": float(cost.get("transcendentals", 0.0)),
            "bytes": sum(b.bytes.values()), "xla_bytes": float(cost.get("bytes accessed", 0.0)),
            "flops_loops_once": sum(once.flops.values()),
            "bytes_loops_once": sum(once.bytes.values()),
            "temp_peak": b.peak_temp,
            "xla_temp": float(mem.temp_size_in_bytes) if mem is not None else float("nan")}


def print_breakdown(title: str, r: dict) -> None:
    print(f"  {title}: {r['flops'] / 1e9:.2f} GFLOP (XLA cost analysis {r['xla_flops'] / 1e9:.2f}), "
          f"{r['bytes'] / 1e9:.2f} GB accessed (XLA {r['xla_bytes'] / 1e9:.2f}), temporaries at the "
          f"peak {r['temp_peak'] / 2 ** 30:.2f} GiB (XLA {r['xla_temp'] / 2 ** 30:.2f})")
    print(f"    {'category':20s} {'GFLOP':>9s} {'%':>6s} {'GB acc.':>9s} {'%':>6s} "
          f"{'temp GiB':>9s} {'%':>6s}")
    for row in r["rows"]:
        print(f"    {row['category']:20s} {row['flops'] / 1e9:9.2f} {row['flops_share']:6.1%} "
              f"{row['bytes'] / 1e9:9.2f} {row['bytes_share']:6.1%} "
              f"{row['temp_bytes'] / 2 ** 30:9.3f} {row['temp_share']:6.1%}")
