"""How the slices of one crossbar layer are laid out as one grouped product, and the digital sum
that reads its columns back into the layer's outputs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rcompile.device import Hardware
from rcompile.image import SliceRecord
from rcompile.ir import LAYOUT_CONV
from rcompile.runtime.tilemode.onnxgraph import GraphWriter

COMBINE_DENSE_RATIO = 32
"""The digital sum of a layer is one dense product over all its columns when they are at most
this many times the columns one output reads; else a gather of each output's columns and a
weighted sum (cheaper when many slices split the layer: most of a dense product is zeros)."""


@dataclass
class LayerLayout:
    """All slices of one crossbar layer as one grouped Conv (a Gemm/MatMul as a batched MatMul).

    Slices that read the same input channels (Conv: the channels their rows touch; Gemm/MatMul:
    their rows) form one group, so an input is gathered once per group, not once per slice:
    ``groups`` groups of ``per`` slots, ``width`` input channels each (zero-padded). A slot has
    ``mmax`` ``+`` and ``mmax`` ``-`` columns (a slice's ``m`` columns, then zero ones); the
    product's outputs are ordered ``[group, sign, slot, column]``, so with read noise every
    (group, sign) is a group of the Conv with its own noisy input. With ``pair`` (one ADC per
    column pair) the product outputs one signed current per pair, ``I+ - I-``: ``signs`` is 1
    and the sign axis has length 1. Output ``c`` of the product feeds layer output
    ``out_of[c]`` (-1: padding) with coefficient ``coef[c]`` (``+-scale / unit``, times the ADC
    step when that is folded into the weights), its code read less ``zero[c]`` (the code of
    zero current of a signed calibrated range). Slice ``i`` sits in slot ``slot[i]``
    (``group * per + slot``).
    """

    groups: int
    per: int
    mmax: int
    channels: int
    """Input channels (features) of the layer."""
    index: np.ndarray
    """``[groups, width]`` input channel of every weight column (padding repeats one)."""
    w: np.ndarray
    """``[groups, 2, per, mmax, width, *kernel]`` float64 weights: ``read_v * G`` per cell."""
    out_of: np.ndarray
    coef: np.ndarray
    slot: np.ndarray
    n_out: int
    pair: bool = False
    """One output per column pair (its signed current), not one per column."""
    zero: np.ndarray | None = None
    """Per product output, the ADC code of zero current (None: code 0 is zero current, or the
    codes are currents already)."""

    @classmethod
    def of(cls, op: Any, slices: list[tuple[int, int, SliceRecord]],
           levels: dict[int, np.ndarray], hw: Hardware, unit: float) -> LayerLayout:
        conv, pair = op.layout == LAYOUT_CONV, hw.converters.pair
        signs = 1 if pair else 2
        blocks = []
        for t, _, s in slices:
            w_i = hw.cell.read_v * _slice_conductances(levels[t], s, hw)  # [rows, 2m]
            blocks.append(_conv_block(op, s, w_i) if conv else _mm_block(op, s, w_i))
        by_rows: dict[tuple[int, ...], list[int]] = {}
        for i, (chans, _) in enumerate(blocks):
            by_rows.setdefault(tuple(chans.tolist()), []).append(i)
        # groups in input order: a layer split into row blocks reads its input as it is
        by_rows = dict(sorted(by_rows.items()))
        n_groups, per = len(by_rows), max(len(v) for v in by_rows.values())
        width = max(b[0].size for b in blocks)
        mmax = max(len(s.outs) for _, _, s in slices)
        kernel = tuple(op.shape[2:]) if conv else ()
        index = np.zeros((n_groups, width), np.int64)
        w = np.zeros((n_groups, 2, per, mmax, width, *kernel), np.float64)
        out_of = np.full((n_groups, signs, per, mmax), -1, np.int64)
        coef = np.zeros((n_groups, signs, per, mmax), np.float64)
        slot = np.zeros(len(slices), np.int64)
        for gi, members in enumerate(by_rows.values()):
            chans = blocks[members[0]][0]
            index[gi, : chans.size] = chans
            index[gi, chans.size :] = chans[0]
            # slots by first output and columns by output: a layer split into the same
            # outputs on every row block gets the same layout in every group (see combine)
            outs_of = {i: slices[i][2].group * op.outs + np.asarray(slices[i][2].outs, np.int64)
                       for i in members}
            for j, i in enumerate(sorted(members, key=lambda i: int(outs_of[i].min()))):
                s, wb = slices[i][2], blocks[i][1]
                m = len(s.outs)
                by_out = np.argsort(outs_of[i], kind="stable")
                w[gi, 0, j, :m, : chans.size] = wb[:m][by_out]
                w[gi, 1, j, :m, : chans.size] = wb[m:][by_out]
                out_of[gi, :, j, :m] = outs_of[i][by_out]
                sc = np.asarray(s.scale, np.float64)[by_out] / unit
                coef[gi, 0, j, :m] = sc
                if not pair:
                    coef[gi, 1, j, :m] = -sc
                slot[i] = gi * per + j
        channels = op.groups * op.shape[1] if conv else op.shape[0]
        return cls(groups=n_groups, per=per, mmax=mmax, channels=channels, index=index, w=w,
                   out_of=out_of.reshape(-1), coef=coef.reshape(-1), slot=slot,
                   n_out=op.n_out, pair=pair)

    def in_units(self, unit: float) -> LayerLayout:
        """This layout with its coefficients divided by ``unit`` (a layer output per ``I+ -
        I-``, which depends on the converters): a layout of unit 1 serves every graph built
        from the same levels. The weights are shared (:meth:`fold_adc` does not write them)."""
        return replace(self, coef=self.coef / unit)

    @property
    def signs(self) -> int:
        """Product outputs per column pair: 2 (each column apart) or 1 (``pair``)."""
        return 1 if self.pair else 2

    @property
    def columns(self) -> int:
        """Outputs of the product (columns, or column pairs with ``pair``), padding included."""
        return self.groups * self.signs * self.per * self.mmax

    @property
    def width(self) -> int:
        return int(self.index.shape[1])

    def weights(self, noisy: bool = False) -> np.ndarray:
        """The product's weights, ``[columns, width, *kernel]`` (no kernel axes for a
        Gemm/MatMul). With ``pair`` a pair's output weighs ``G+ - G-``; ``noisy``, its group
        reads the ``+`` then the ``-`` noisy copy of its input (``2 * width`` channels) with
        ``G+`` and ``-G-``, so each cell's read keeps its own draw."""
        w = self.w
        if self.pair and noisy:
            w = np.concatenate([w[:, 0], -w[:, 1]], axis=3)  # [groups, per, mmax, 2w, *k]
        elif self.pair:
            w = w[:, 0] - w[:, 1]
        return w.reshape(self.columns, *w.shape[-1 - len(self._spatial()):]).astype(np.float32)

    def slot_shape(self) -> list[int]:
        """Reshape of the product that puts a slot's columns on axes 2 and 4:
        ``[N, groups, signs, per, -1]``."""
        return [0, self.groups, self.signs, self.per, -1]

    def fold_adc(self, ranges: list[tuple[float, float]], per_unit: float, max_code: float
                 ) -> np.ndarray | None:
        """Scale every slice's weights by ``1 / step`` of its calibrated ADC (currents come out
        in ADC steps) and its coefficients by ``step``; the bias that puts a range starting
        below zero current at code 0 (None when no range does). ``ranges`` are the slices'
        calibrated current extremes, ``per_unit`` converts them to the product's units, and
        ``max_code`` is the ADC's top code.

        A ``pair`` range is signed, ``[min(0, lo), max(0, hi)]``, shifted by less than half a
        step so that zero current is a code (:attr:`zero`): the digital sum reads ``code -
        zero``, and a pair of equal currents reads 0 exactly."""
        signs = self.signs
        bias = np.zeros((self.groups, signs, self.per, self.mmax), np.float64)
        zero = np.zeros_like(bias)
        coef = self.coef.reshape(self.groups, signs, self.per, self.mmax)
        w = self.w.copy()  # the weights may be shared with other layouts (see in_units)
        for i, (lo_r, hi_r) in enumerate(ranges):
            gi, j = divmod(int(self.slot[i]), self.per)
            lo_c = min(lo_r, 0.0) * per_unit
            hi_c = (max(hi_r, 0.0) if self.pair else hi_r) * per_unit
            step = max((hi_c - lo_c) / max_code, 1e-30)
            w[gi, :, j] /= step
            coef[gi, :, j] *= step
            if self.pair:
                zero[gi, :, j] = min(float(np.round(-lo_c / step)), max_code)
                bias[gi, :, j] = zero[gi, :, j]
            else:
                bias[gi, :, j] = -lo_c / step
        self.w = w
        if zero.any():
            self.zero = zero.reshape(-1)
        return bias.reshape(-1).astype(np.float32) if bias.any() else None

    def combine(self, g: GraphWriter, code: str, conv: bool, out: str | None,
                bias: np.ndarray | None = None, zp: int | None = None) -> str:
        """Per output, the sum of ``coef * code`` over its columns, plus ``bias``:
        ``[N, n_out, *spatial]`` (Conv) or ``[rows, n_out]``. ``zp``: ``code`` is uint8 codes
        offset by ``zp`` (see :func:`_adc_codes`), read by :func:`_per_column` (None: float
        codes). Codes are read less their :attr:`zero`: in the zero points of uint8 codes, by a
        subtraction of float codes (exact: both are whole numbers)."""
        cols, used = self.columns, self.out_of >= 0
        k = max(1, int(np.bincount(self.out_of[used], minlength=self.n_out).max(initial=0)))
        ones = [1] * len(self._spatial())
        zps: int | np.ndarray | None = zp
        if self.zero is not None and zp is not None:
            zps = zp + self.zero.astype(np.int64)
        elif self.zero is not None:  # float codes: whole numbers, so code - zero is exact
            z = self.zero.astype(np.float32).reshape(1, -1, *ones)
            code = g.op("Sub", [code, g.const("zero", z)], "code")
        if cols <= COMBINE_DENSE_RATIO * k:  # one dense product, the bias included
            if zps is not None:
                code = _dequantize(g, code, zps)
            dense = np.zeros((cols, self.n_out), np.float32)
            dense[np.flatnonzero(used), self.out_of[used]] = self.coef[used]
            b_in = [] if bias is None else [g.const("bias", np.asarray(bias, np.float32))]
            if conv:
                w_c = dense.T.reshape(self.n_out, cols, *ones)
                return g.op("Conv", [code, g.const("combine", w_c), *b_in], "y", out=out)
            flat = g.op("Reshape", [code, g.const("c2", [-1, cols], np.int64)], "codes")
            return g.op("Gemm" if b_in else "MatMul", [flat, g.const("combine", dense), *b_in],
                        "y", out=out)
        last = out if bias is None else None
        where = self._regular()
        if where is not None:
            y = self._combine_regular(g, code, conv, last, where, zps)
        else:  # each output gathers its k columns (padding: column 0 with coefficient 0)
            idx = np.zeros((self.n_out, k), np.int64)
            wk = np.zeros((self.n_out, k), np.float32)
            order = np.argsort(self.out_of, kind="stable")
            order = order[self.out_of[order] >= 0]
            outs = self.out_of[order]
            slot = np.arange(order.size) - np.searchsorted(outs, np.arange(self.n_out))[outs]
            idx[outs, slot] = order
            wk[outs, slot] = self.coef[order]
            picked = g.op("Gather", [code, g.const("pick", idx.reshape(-1), np.int64)],
                          "picked", axis=1)
            shape = (g.shape_with(code, [self.n_out, k]) if conv
                     else g.const("s3", [-1, self.n_out, k], np.int64))
            picked_zp = zps if zps is None or isinstance(zps, int) else zps[idx.reshape(-1)]
            terms = g.op("Reshape", [_per_column(g, picked, wk, picked_zp, len(ones)), shape],
                         "terms")
            y = g.reduce("ReduceSum", terms, [2], 0, out=last, hint="y")
        if bias is None:
            return y
        b = np.asarray(bias, np.float32).reshape(-1, *ones) if conv else bias
        return g.op("Add", [y, g.const("bias", b)], "y", out=out)

    def _spatial(self) -> tuple[int, ...]:
        return tuple(self.w.shape[5:])

    def _regular(self) -> np.ndarray | None:
        """Where every group holds the same outputs at the same column places (a layer split
        alike on every row block): per place ``[per * mmax]`` its output (-1 padding), and for
        every output a place holding it or a padding place; else None."""
        out4 = self.out_of.reshape(self.groups, self.signs, self.per * self.mmax)
        place = out4[0, 0]
        if not (out4 == place).all():
            return None
        held = place[place >= 0]
        if np.unique(held).size != held.size:  # an output in two places (bit-sliced weights)
            return None
        where = np.full(self.n_out, -1, np.int64)
        where[place[place >= 0]] = np.flatnonzero(place >= 0)
        pads = np.flatnonzero(place < 0)
        if (where < 0).any():
            if pads.size == 0:
                return None
            where[where < 0] = pads[0]  # an output no slice holds reads a zero column
        return where

    def _combine_regular(self, g: GraphWriter, code: str, conv: bool, out: str | None,
                         where: np.ndarray, zp: int | np.ndarray | None) -> str:
        """``sum over groups and signs of coef * code`` per place (a weighted ReduceSum: no
        gather of the large column tensor), then the places in output order (``where``, from
        :meth:`_regular`)."""
        places = self.per * self.mmax
        shape = g.const("gsp", [0, self.groups * self.signs, places, *([-1] if conv else [])],
                        np.int64)
        terms = g.op("Reshape", [
            _per_column(g, code, self.coef, zp, len(self._spatial())), shape], "terms")
        identity = np.array_equal(where, np.arange(places))
        y = g.reduce("ReduceSum", terms, [1], 0, out=out if identity and not conv else None,
                     hint="y")
        if conv:  # [N, places, positions] back to [N, places, *spatial]
            y = g.op("Reshape", [y, g.shape_with(code, [places])], "y",
                     out=out if identity else None)
        if identity:
            return y
        return g.op("Gather", [y, g.const("where", where, np.int64)], "y", out=out, axis=1)


def _dequantize(g: GraphWriter, code: str, zp: int | np.ndarray) -> str:
    """``code - zp`` of uint8 codes, as float (one DequantizeLinear; per column along axis 1
    when ``zp`` is an array)."""
    if isinstance(zp, int):
        return g.op("DequantizeLinear", [code, g.const("one", 1.0), g.const("zp", zp, np.uint8)],
                    "code")
    return g.op("DequantizeLinear", [code, g.const("one", np.ones(zp.size)),
                                     g.const("zp", zp, np.uint8)], "code", axis=1)


def _per_column(g: GraphWriter, code: str, coef: np.ndarray, zp: int | np.ndarray | None,
                spatial: int) -> str:
    """``code * coef`` along axis 1 (``spatial`` axes follow it). uint8 codes (``zp`` given)
    are read with their zero point by one DequantizeLinear whose per-axis scale is ``coef``;
    float codes (``zp`` None) take a Mul."""
    sc = np.asarray(coef, np.float32).reshape(-1)
    if zp is None:
        return g.op("Mul", [code, g.const("coef", sc.reshape(1, -1, *[1] * spatial))], "terms")
    return g.op("DequantizeLinear", [code, g.const("coef", sc),
                                     g.const("zp", np.broadcast_to(zp, sc.shape), np.uint8)],
                "terms", axis=1)


def _conv_block(op: Any, s: SliceRecord, w_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute input channels one conv slice touches and its weight ``[2m, channels, *k]``."""
    kshape = tuple(op.shape[2:])
    cin_g = op.shape[1]
    rows = np.asarray(s.rows, np.intp)
    c, *kk = np.unravel_index(rows, (cin_g, *kshape))
    chans, local = np.unique(c, return_inverse=True)
    # rows as flat (channel, kernel position) cells; a row read twice (redundant copies) sums
    cell = np.ravel_multi_index((local, *kk), (chans.size, *kshape))
    w = np.zeros((chans.size * int(np.prod(kshape, dtype=np.int64)), w_i.shape[1]), np.float64)
    _add_rows(w, cell, w_i, unique=np.unique(rows).size == rows.size)
    return s.group * cin_g + chans, w.T.reshape(w_i.shape[1], chans.size, *kshape)


def _mm_block(op: Any, s: SliceRecord, w_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input rows one Gemm/MatMul slice reads and its weight ``[2m, rows]``."""
    rows, local = np.unique(np.asarray(s.rows, np.int64), return_inverse=True)
    w = np.zeros((w_i.shape[1], rows.size), np.float64)
    _add_rows(w.T, local, w_i, unique=rows.size == len(s.rows))
    return rows, w


def _add_rows(w: np.ndarray, at: np.ndarray, rows: np.ndarray, unique: bool) -> None:
    """``w[at[i]] += rows[i]`` for every ``i``: a row read twice (redundant copies) sums. With
    ``unique`` indices one vectorised ``+=`` does it (the same sums as ``np.add.at``, which is
    far slower but needed when an index repeats)."""
    if unique:
        w[at] += rows
    else:
        np.add.at(w, at, rows)


def _slice_conductances(lv: np.ndarray, s: SliceRecord, hw: Hardware) -> np.ndarray:
    """``[n, 2m]`` realised conductances (uS) of the slice's ``+`` then ``-`` columns."""
    pr = np.asarray(s.phys_rows, np.intp)
    cols = np.concatenate([np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)])
    return hw.cell.g_min_us + lv[np.ix_(pr, cols)] * hw.cell.step_us

