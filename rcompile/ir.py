"""The compiler's intermediate representation and its per-stage invariants.

Two stages, visible in the types:

* :class:`Plan` — chip-independent. The normalised model, every crossbar layer quantised to
  cell levels, and the logical blocks each layer is tiled into. Depends on the model, the chip
  family's tile shape and the options; never on one chip's faults. One plan serves a whole lot.
* :class:`ChipMapping` — per chip. Where every block went (tile, physical rows, column pairs),
  the target level of every used cell and the digital per-output scale and bias.

Matrix convention: a weight op is seen as ``groups`` matrices ``[rows, outs]`` where *rows* are
fan-in (they drive crossbar rows) and *outs* are outputs (each a differential column pair).
A Conv weight ``[Cout, Cin/g, kh, kw]`` unrolls per group to ``[Cin/g*kh*kw, Cout/g]``; a Gemm or
MatMul weight ``[K, N]`` is one ``[K, N]`` matrix.

Level convention: a weight is ``scale[out] * (k_pos - k_neg)`` with integer cell levels
``0 <= k <= L-1``; the quantised weight ``q = k_pos - k_neg`` lies in ``[-(L-1), L-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from rcompile.device import Cell

#: Layouts of a weight tensor in the ONNX graph.
LAYOUT_CONV = "conv"  # [Cout, Cin/g, *kernel]
LAYOUT_KN = "kn"  # [K, N]: y = x @ W   (MatMul, normalised Gemm)


@dataclass(frozen=True)
class WeightOp:
    """One ONNX node whose constant weight goes to crossbars."""

    node: str
    """Name of the node in the normalised graph."""
    op_type: str
    """Conv, Gemm or MatMul."""
    weight: str
    """Initializer holding the weight tensor in the normalised graph."""
    bias: str
    """Initializer holding the per-output bias added digitally after the crossbar."""
    shape: tuple[int, ...]
    """Weight tensor shape in the graph."""
    layout: str
    """LAYOUT_CONV or LAYOUT_KN."""
    groups: int = 1

    @property
    def n_out(self) -> int:
        return self.shape[0] if self.layout == LAYOUT_CONV else self.shape[1]

    @property
    def rows(self) -> int:
        """Fan-in rows of one group's matrix."""
        if self.layout == LAYOUT_CONV:
            return int(np.prod(self.shape[1:]))
        return self.shape[0]

    @property
    def outs(self) -> int:
        """Outputs of one group's matrix."""
        return self.n_out // self.groups

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "weight": self.weight,
            "bias": self.bias,
            "shape": list(self.shape),
            "layout": self.layout,
            "groups": self.groups,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> WeightOp:
        return WeightOp(
            node=str(d["node"]),
            op_type=str(d["op_type"]),
            weight=str(d["weight"]),
            bias=str(d["bias"]),
            shape=tuple(int(s) for s in d["shape"]),
            layout=str(d["layout"]),
            groups=int(d["groups"]),
        )


def to_matrices(op: WeightOp, tensor: np.ndarray) -> np.ndarray:
    """Weight tensor -> ``[groups, rows, outs]``; exact inverse of :func:`from_matrices`."""
    if op.layout == LAYOUT_CONV:
        g, og = op.groups, op.outs
        return tensor.reshape(g, og, -1).transpose(0, 2, 1).copy()
    return tensor.reshape(1, *tensor.shape).copy()


def from_matrices(op: WeightOp, mats: np.ndarray) -> np.ndarray:
    """``[groups, rows, outs]`` -> weight tensor of shape ``op.shape``."""
    if op.layout == LAYOUT_CONV:
        return mats.transpose(0, 2, 1).reshape(op.shape).copy()
    return mats.reshape(op.shape).copy()


def q_dtype(top: int) -> np.dtype[Any]:
    """The dtype of quantised weights ``q`` with ``|q| <= top`` (``Cell.weight_top``: the
    cell's top level, or ``2^weight_bits - 1`` for a bit-sliced cell): int8 up to 127 (every
    cell of up to 128 levels, whose plans and images keep their bytes), else int16."""
    return np.dtype(np.int8) if top <= 127 else np.dtype(np.int16)


@dataclass(frozen=True)
class Layer:
    """A crossbar layer after quantisation."""

    op: WeightOp
    q: np.ndarray
    """``[groups, rows, outs]`` of :func:`q_dtype` of the cell's ``weight_top``: weight in level
    steps, ``|q| <= weight_top``."""
    scale: np.ndarray
    """float32 ``[groups, outs]``: weight = scale * q (per output)."""
    bias: np.ndarray
    """float32 ``[n_out]``: digital bias after the crossbar."""

    def weights(self) -> np.ndarray:
        """Quantised weight tensor in graph layout (what a fault-free chip computes)."""
        mats = self.q.astype(np.float32) * self.scale[:, None, :]
        return from_matrices(self.op, mats)


@dataclass(frozen=True)
class Block:
    """A logical block: at most R rows x C/2 outputs of one group of one layer."""

    layer: int
    group: int
    rows: np.ndarray
    """int32 logical (matrix) row indices, in increasing order."""
    outs: np.ndarray
    """int32 output indices within the group, in increasing order."""
    digit: int = 0
    """Which slice of a bit-sliced weight the block holds (significance ``base^digit``,
    docs/slicing.md); 0 for a weight on one cell per polarity. Only a chip's own blocks of a
    sliced plan (:attr:`ChipMapping.blocks`) carry other digits."""


@dataclass(frozen=True)
class Plan:
    """Chip-independent stage result. Invariant: every non-zero q lies in exactly one block."""

    model: onnx.ModelProto
    """Normalised graph (BatchNorm folded, one weight + bias initializer per crossbar op)."""
    model_sha256: str
    tile_rows: int
    tile_cols: int
    device: Cell
    ops: tuple[WeightOp, ...]
    float_mats: tuple[np.ndarray, ...]
    """Per op float32 ``[groups, rows, outs]`` trained weights (BatchNorm folded)."""
    biases: tuple[np.ndarray, ...]
    """Per op float32 ``[n_out]`` trained bias."""
    layers: tuple[Layer, ...] = ()
    """Set by ``quantize``: one per op, same order."""
    blocks: tuple[Block, ...] = ()
    """Set by ``tile``."""
    bin_of: tuple[int, ...] = ()
    """Set by ``pack``: the bin (future physical tile) of every block; blocks sharing a bin get
    disjoint column strips of one tile, in block order. Empty: one block per bin."""
    digital: tuple[tuple[str, str, str], ...] = ()
    """(node, op_type, reason) of every node that stays on the digital periphery."""
    options: dict[str, Any] = field(default_factory=dict)

    def bins(self) -> list[list[int]]:
        """Blocks of every bin, in block order (one block per bin without ``pack``)."""
        if not self.bin_of:
            return [[b] for b in range(len(self.blocks))]
        out: list[list[int]] = [[] for _ in range(max(self.bin_of) + 1)]
        for b, k in enumerate(self.bin_of):
            out[k].append(b)
        return out

    def tiles_needed(self) -> int:
        """Physical tiles the plan fills: one a bin, times the slices of a bit-sliced weight
        (every slice of a block is a block of its own on a tile of its own)."""
        bins = max(self.bin_of) + 1 if self.bin_of else len(self.blocks)
        return bins * self.device.n_slices


@dataclass(frozen=True, eq=False)
class RowStats:
    """Calibration statistics of one crossbar layer's matrix rows, on the calibration data.

    A Conv row ``(c, ky, kx)`` carries the statistics of its input channel ``c`` over all
    positions; a Gemm/MatMul row those of its input feature.
    """

    power: np.ndarray
    """float32 ``[groups, rows]``: ``E[x^2]`` of the input each row reads."""
    mean: np.ndarray
    """float32 ``[groups, rows]``: ``E[x]`` of the input each row reads."""
    moment: np.ndarray | None = None
    """float64 ``[groups, rows, rows]``: ``E[x x^T]`` of a Gemm/MatMul layer's rows, made only
    when a pipeline asks for it (the ``covariance`` pass); None otherwise and for Conv rows."""


@dataclass(frozen=True)
class Placement:
    """One block on one physical tile."""

    block: int
    tile: int
    phys_rows: np.ndarray
    """int32 ``[n_rows]``: physical row driven by each logical row of the block."""
    pos: np.ndarray
    """int32 ``[n_outs]``: physical column holding G+ of each output."""
    neg: np.ndarray
    """int32 ``[n_outs]``: physical column holding G- of each output."""
    high: np.ndarray
    """bool ``[n_outs]``: common mode of the pair: False = idle cell at level 0 (two-column),
    True = idle cell at the top level (pair sits high)."""
    scale: np.ndarray
    """float32 ``[n_outs]``: digital scale applied to this slice's column-pair difference."""
    cols: np.ndarray
    """int32, increasing: the physical columns this block may use (its strip of the tile;
    every column when it has the tile alone). Blocks sharing a tile have disjoint strips and are
    read one at a time, so each may use every row."""
    offset: np.ndarray
    """float32 ``[n_outs]``: digital correction added to each output (calibration)."""


@dataclass(frozen=True)
class ChipMapping:
    """Per-chip stage result."""

    placements: tuple[Placement, ...]
    levels: dict[int, np.ndarray] = field(default_factory=dict)
    """Physical tile -> uint8 ``[R, C]`` target level of every cell (set by ``program``)."""
    bias: tuple[np.ndarray, ...] = ()
    """Per layer float32 ``[n_out]`` trained digital bias."""
    blocks: tuple[Block, ...] = ()
    """The chip's own blocks when a per-chip pass re-cut the plan's (logical rows moved between
    the tiles of a column strip, a block split over a spare tile); placements then index these.
    Empty: the plan's blocks. Either way every non-zero q lies in exactly one block."""


def chip_view(plan: Plan, mapping: ChipMapping) -> Plan:
    """The plan as one chip's mapping sees it: with the mapping's own blocks when it has them
    (``bin_of`` then no longer applies and is dropped)."""
    if not mapping.blocks:
        return plan
    return replace(plan, blocks=mapping.blocks, bin_of=())
