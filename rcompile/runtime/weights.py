"""Weights of one faulty chip: the image matched to its fault map, the device it is emulated
with, and the levels and weights the chip's cells realise (``docs/design.md`` §5).

How a chip computes one crossbar layer, and so how this module rebuilds it:

1. **Cells.** Every used physical tile ``t`` holds a target level ``levels[r, c]`` per cell
   (:class:`~rcompile.image.TileRecord`). The device's write-verify model
   (:func:`~rcompile.programming.program_tiles`) lands each used cell that is not stuck near,
   not on, its target, seeded by ``noise_seed`` and the tile (exactly on it on an ideal
   device). A stuck cell is not written: the fault map gives the level it sits at instead (``0``
   for SA0, ``L-1`` for SA1, or the fractional level of its measured conductance), see
   ``FaultMap.stuck_levels``. The result is the *realised* level ``lv[r, c]``.
2. **Slices.** A :class:`~rcompile.image.SliceRecord` routes logical matrix rows ``rows[i]`` to
   physical rows ``phys_rows[i]`` and reads output ``outs[j]`` as the difference of physical
   columns ``pos[j]`` and ``neg[j]``, times the digital scale ``scale[j]``::

       W[layer][group][rows[i], outs[j]] += scale[j] * (lv[phys_rows[i], pos[j]]
                                                        - lv[phys_rows[i], neg[j]])

   Contributions of all slices add up (partial sums of a layer split over tiles are summed
   digitally). Each slice is evaluated with only its own rows driven, which is the image
   contract; cells outside every slice carry no signal (``docs/design.md`` §1: unused rows get
   zero input). Level units are exact: ``G(k) = g_min + k * step`` and the ``g_min`` offset
   cancels in the difference, so ``scale`` in weight units per level step is all the periphery
   needs.
3. **Bias.** The periphery adds the layer's digital ``bias`` plus, for every slice, its
   ``offset[j]`` to output ``outs[j]`` of its group (the per-chip correction calibration
   computed; :func:`chip_biases`). The fault-free reference uses ``bias`` alone.

Every structural problem in the image (an index out of range, a level above ``L-1``, a slice
with mismatched lengths) raises :class:`~rcompile.errors.BadImage`, never an ``IndexError``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rcompile import solvers
from rcompile.device import PRESETS, Cell, Hardware, hardware_from_dict
from rcompile.errors import BadDevice, BadImage
from rcompile.image import Image, LayerRecord, SliceRecord
from rcompile.ir import from_matrices
from rcompile.programming import program_tiles

if TYPE_CHECKING:
    from rcompile.faultmap import FaultMap

__all__ = [
    "PARALLEL_CELLS",
    "RealisedChip",
    "check_match",
    "chip_biases",
    "chip_levels",
    "effective_weights",
    "fault_free_chip",
    "image_device",
    "image_hardware",
    "image_name",
    "intended_weights",
    "programmed_weights",
    "realise_chip",
]

_DEVICE_KEYS = ("levels", "g_min_us", "g_max_us", "read_v")

_Programmer = Callable[[list[tuple[int, np.ndarray, np.ndarray]]], list[np.ndarray]]
"""Writes every ``(tile, target levels [R, C], cells to write [R, C] bool)`` and returns the
realised float64 levels of each tile (cells not written keep their target)."""

PARALLEL_CELLS = 1 << 20
"""Cells to write from which the programming simulation spreads the chip's tiles over a thread
per core (:func:`rcompile.solvers.jobs`; same result): below it, threads cost more than they
save."""


# --------------------------------------------------------------------------- image <-> fault map


def image_name(image: Image, image_source: str | None) -> str:
    """How messages name the image: the caller's path, else the image's own, else a stand-in."""
    return image_source or getattr(image, "source", None) or "<in-memory image>"


def _geometry(image: Image, name: str) -> tuple[int, int, int]:
    g = image.header.get("geometry")
    try:
        if not isinstance(g, dict):
            raise TypeError(g)
        return int(g["tiles"]), int(g["rows"]), int(g["cols"])
    except (KeyError, TypeError, ValueError) as e:
        raise BadImage(
            f"image {name}: header 'geometry' is {g!r}; expected {{tiles, rows, cols}}"
        ) from e


def check_match(
    image: Image,
    faultmap: FaultMap,
    *,
    allow_remeasured: bool = False,
    image_source: str | None = None,
) -> bool:
    """Check that ``faultmap`` describes the chip ``image`` was compiled for.

    Rules, in order:

    1. the image's geometry ``header["geometry"]`` equals the fault map's ``[T, R, C]``;
    2. when both carry a chip id, they are the same chip;
    3. the fault map's SHA-256 equals ``header["faultmap_sha256"]`` — unless
       ``allow_remeasured``, which accepts a different map of the *same* chip (re-measured after
       aging); that needs both chip ids, since otherwise nothing says it is the same chip.

    Returns True when the map is a re-measurement (digest differs), False when it is the very
    map the image was compiled against. Raises :class:`BadImage` naming both files otherwise.
    """
    img = image_name(image, image_source)
    fm = faultmap.source or "<in-memory fault map>"
    want = _geometry(image, img)
    have = tuple(int(d) for d in faultmap.faults.shape)
    if want != have:
        raise BadImage(
            f"image {img} was compiled for a chip of {want[0]}x{want[1]}x{want[2]} "
            f"(tiles x rows x cols) but fault map {fm} is {have[0]}x{have[1]}x{have[2]}"
        )
    img_chip = image.header.get("chip_id") or None
    fm_chip = faultmap.chip_id or None
    if img_chip is not None and fm_chip is not None and str(img_chip) != str(fm_chip):
        raise BadImage(
            f"image {img} was compiled for chip {img_chip} but fault map {fm} is chip {fm_chip}"
        )
    want_sha = str(image.header.get("faultmap_sha256", ""))
    have_sha = faultmap.digest()
    if want_sha == have_sha:
        return False
    if not allow_remeasured:
        raise BadImage(
            f"image {img} was compiled against fault map sha256 {want_sha[:12] or '?'} but "
            f"fault map {fm} has sha256 {have_sha[:12]}; expected the same map "
            "(allow re-measured maps to verify a re-measurement of the same chip)"
        )
    if img_chip is None or fm_chip is None:
        raise BadImage(
            f"fault map {fm} differs from the one image {img} was compiled against and a chip "
            "id is missing on one side; expected both chip ids to accept a re-measured map"
        )
    return True


def image_device(image: Image, image_source: str | None = None) -> Cell:
    """The cell technology the image was compiled for, from ``header["device"]``."""
    name = image_name(image, image_source)
    d = image.header.get("device")
    if not isinstance(d, dict) or any(k not in d for k in _DEVICE_KEYS):
        raise BadImage(f"image {name}: header 'device' is {d!r}; expected keys {_DEVICE_KEYS}")
    try:
        return Cell(
            levels=int(d["levels"]),
            g_min_us=float(d["g_min_us"]),
            g_max_us=float(d["g_max_us"]),
            read_v=float(d["read_v"]),
        )
    except (BadDevice, TypeError, ValueError) as e:
        raise BadImage(f"image {name}: header 'device' is invalid ({e})") from e


def image_hardware(
    image: Image,
    hardware: Hardware | None = None,
    faultmap: FaultMap | None = None,
    image_source: str | None = None,
) -> Hardware:
    """The device technology to emulate the image's chip with.

    ``hardware`` (e.g. ``--device``) if given, else the image's ``header["hardware"]`` (written
    by ``build --device``), else the ideal device with the image's own cell. The number of
    levels must be the image's; the fault map's measured ``g_min``/``g_max`` (when it has them)
    replace the device's.
    """
    name = image_name(image, image_source)
    cell = image_device(image, image_source)
    if hardware is None:
        stored = image.header.get("hardware")
        if not isinstance(stored, dict):
            return replace(PRESETS["ideal"], cell=cell)
        try:
            hardware = hardware_from_dict(stored, source=f"image {name}: header 'hardware'")
        except BadDevice as e:
            raise BadImage(str(e)) from e
    if hardware.cell.levels != cell.levels:
        raise BadDevice(
            f"{hardware.label} has {hardware.cell.levels} levels per cell but image "
            f"{name} was compiled for {cell.levels}; expected the same number of levels"
        )
    over = {k: v for k, v in (faultmap.device_overrides() if faultmap else {}).items()
            if k != "levels"}
    return hardware.with_cell(replace(hardware.cell, **over)) if over else hardware


def chip_levels(
    image: Image,
    faultmap: FaultMap,
    hardware: Hardware | None = None,
    *,
    noise_seed: int = 0,
    image_source: str | None = None,
) -> dict[int, np.ndarray]:
    """Per used tile, the float64 ``[R, C]`` level every cell really holds: the target levels
    written by the device's write-verify (seeded by ``noise_seed`` and the tile index), then
    overridden by the stuck cells."""
    hw = image_hardware(image, hardware, faultmap, image_source)
    sink: dict[int, np.ndarray] = {}
    _effective(image, faultmap, image_source, hw, noise_seed, sink)
    return sink


@dataclass(frozen=True)
class RealisedChip:
    """What one faulty chip's cells hold once programmed: everything emulation rebuilds."""

    levels: dict[int, np.ndarray]
    """Per used tile, the float64 ``[R, C]`` level every cell really holds."""
    weights: list[np.ndarray]
    """Per layer, the weight tensor (graph layout, float32) the chip applies."""
    stuck_cells: list[int]
    """Per layer, the stuck cells under its cell pairs."""


def realise_chip(
    image: Image,
    faultmap: FaultMap,
    hardware: Hardware,
    noise_seed: int = 0,
    image_source: str | None = None,
) -> RealisedChip:
    """Program ``image`` onto the chip of ``faultmap`` made in ``hardware``'s technology:
    :func:`chip_levels`, :func:`effective_weights` and the stuck cells of each layer in one
    pass (call :func:`check_match` first)."""
    levels: dict[int, np.ndarray] = {}
    weights, stuck = _effective(image, faultmap, image_source, hardware, noise_seed, levels)
    return RealisedChip(levels=levels, weights=weights, stuck_cells=stuck)


# --------------------------------------------------------------------------- weights


def intended_weights(image: Image) -> list[np.ndarray]:
    """Per layer, the weight tensor of the fault-free chip: ``q * scale`` in graph layout."""
    out = []
    for i, rec in enumerate(image.layers):
        _check_layer(image, i, rec)
        mats = rec.q.astype(np.float32) * rec.scale.astype(np.float32)[:, None, :]
        out.append(from_matrices(rec.op, mats))
    return out


def programmed_weights(image: Image) -> list[np.ndarray]:
    """Per layer, what the image's target levels realise on a chip with no stuck cell.

    Differs from :func:`intended_weights` wherever the compiler deliberately programmed a cell
    pair off its quantised value to compensate a stuck partner on the real chip.
    """
    return _realise(image, None)[0]


def effective_weights(
    image: Image,
    faultmap: FaultMap,
    *,
    image_source: str | None = None,
    hardware: Hardware | None = None,
    noise_seed: int = 0,
) -> list[np.ndarray]:
    """Per layer, the weight tensor (graph layout, float32) the faulty chip actually applies.

    Target levels as the device's write-verify realises them (exact on an ideal device),
    overridden by stuck cells, routed through every slice (module docstring). Call
    :func:`check_match` first; this function only checks that the geometry fits.
    """
    hw = image_hardware(image, hardware, faultmap, image_source)
    return _effective(image, faultmap, image_source, hw, noise_seed)[0]


def _effective(
    image: Image,
    faultmap: FaultMap,
    image_source: str | None,
    hw: Hardware | None = None,
    noise_seed: int = 0,
    sink: dict[int, np.ndarray] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """:func:`effective_weights` plus the stuck cells under each layer's cell pairs; the
    realised level of every used tile goes to ``sink`` when given."""
    name = image_name(image, image_source)
    device = image_device(image, image_source) if hw is None else hw.cell
    prog: _Programmer | None = None
    if hw is not None and not hw.programming.ideal:
        def prog(jobs: list[tuple[int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            got = _program_jobs(jobs, hw, int(noise_seed))
            out = []
            for (_, lv, m), g in zip(jobs, got, strict=True):
                full = lv.astype(np.float64)
                full[m] = g
                out.append(full)
            return out
    stuck = np.asarray(faultmap.stuck_levels(device))
    T, R, C = _geometry(image, name)
    if stuck.shape != (T, R, C):
        raise BadImage(
            f"image {name} expects a {T}x{R}x{C} chip but fault map "
            f"{faultmap.source or '<in-memory fault map>'} is {'x'.join(map(str, stuck.shape))}"
        )
    return _realise(image, stuck, image_source, prog, sink)


def _program_jobs(jobs: list[tuple[int, np.ndarray, np.ndarray]], hw: Hardware,
                  seed: int) -> list[np.ndarray]:
    """Realised levels of the written cells of every ``(tile, levels, written)`` job.

    Write-verify of every tile; tile ``t`` draws from its own generator, seeded ``(seed, t)``,
    so its cells depend neither on the other tiles nor on how the tiles are split over threads:
    from :data:`PARALLEL_CELLS` cells on, the tiles go in contiguous runs of about equal cells
    to :func:`rcompile.solvers.jobs` threads (the compiled loop and NumPy's generators release
    the GIL; threads share the targets and results, which processes would copy)."""
    cells = np.cumsum([int(m.sum()) for _, _, m in jobs])
    n = min(solvers.jobs(), len(jobs))
    total = int(cells[-1]) if len(jobs) else 0
    if total < PARALLEL_CELLS or n <= 1:
        return _program_chunk((jobs, hw, seed), list(range(len(jobs))))
    cuts = np.searchsorted(cells, [total * k / n for k in range(1, n)], side="right")
    bounds = [0, *sorted({int(c) for c in cuts}), len(jobs)]
    chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        parts = list(pool.map(lambda c: _program_chunk((jobs, hw, seed), c), chunks))
    return [g for part in parts for g in part]


def _program_chunk(shared: tuple[list[tuple[int, np.ndarray, np.ndarray]], Hardware, int],
                   chunk: list[int]) -> list[np.ndarray]:
    """Realised levels of the written cells of tiles ``chunk`` of ``shared = (jobs, hw,
    noise_seed)``, in one vectorised write-verify (one thread's share)."""
    jobs, hw, seed = shared
    rngs = [np.random.default_rng([seed, jobs[i][0]]) for i in chunk]
    return program_tiles([jobs[i][1][jobs[i][2]] for i in chunk], hw.cell, hw.programming, rngs,
                         hw.read.noise_rel)


def _realise(
    image: Image,
    stuck: np.ndarray | None,
    image_source: str | None = None,
    prog: _Programmer | None = None,
    sink: dict[int, np.ndarray] | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Shared core of :func:`effective_weights` (``stuck`` given) and :func:`programmed_weights`.

    Returns the per-layer weight tensors and, per layer, how many stuck cells lie under its
    cell pairs (all zero without ``stuck``).
    """
    name = image_name(image, image_source)
    device = image_device(image, image_source)
    T, R, C = _geometry(image, name)
    for i, rec in enumerate(image.layers):
        _check_layer(image, i, rec)
    # float64 accumulators: scale (float32) * level difference (|d| <= 255) is exact in float64,
    # so a fault-free chip reproduces q * scale bit for bit after the final cast to float32.
    mats = [np.zeros((r.op.groups, r.op.rows, r.op.outs), np.float64) for r in image.layers]
    n_stuck = [0] * len(image.layers)
    seen: set[int] = set()
    checked = []
    for tile in image.tiles:
        t = int(tile.tile)
        where = f"image {name}: tile {t}"
        if not 0 <= t < T:
            raise BadImage(f"{where} is outside the chip; expected a tile index in 0..{T - 1}")
        if t in seen:
            raise BadImage(f"{where} appears twice; expected one record per physical tile")
        seen.add(t)
        levels = np.asarray(tile.levels)
        if levels.shape != (R, C) or not np.issubdtype(levels.dtype, np.integer):
            raise BadImage(
                f"{where} levels are {levels.dtype} {levels.shape}; expected integer ({R}, {C})"
            )
        if levels.size and (levels.min() < 0 or levels.max() > device.max_level):
            raise BadImage(
                f"{where} has levels in {levels.min()}..{levels.max()}; "
                f"expected 0..{device.max_level}"
            )
        hit = np.zeros((R, C), bool) if stuck is None else ~np.isnan(stuck[t])
        checked.append((tile, t, where, levels, hit))
    # 1. programming realises the targets of the cells slices read (a stuck cell is not worth
    # writing: it stays where it is stuck); stuck cells override it
    if prog is None:
        realised = [levels.astype(np.float64) for _, _, _, levels, _ in checked]
    else:
        realised = prog([(t, levels, _used(tile, R, C) & ~hit)
                         for tile, t, _, levels, hit in checked])
    for (tile, t, where, _, hit), lv in zip(checked, realised, strict=True):
        if stuck is not None:
            lv[hit] = stuck[t][hit]
        if sink is not None:
            sink[t] = lv
        for k, s in enumerate(tile.slices):  # 2. route through every slice
            _check_slice(image, f"{where} slice {k}", s, R, C)
            _accumulate(mats[s.layer][s.group], s, lv)
            if stuck is not None:
                pr = np.asarray(s.phys_rows, np.intp)[:, None]
                n_stuck[s.layer] += int(hit[pr, np.asarray(s.pos, np.intp)].sum())
                n_stuck[s.layer] += int(hit[pr, np.asarray(s.neg, np.intp)].sum())
    # 3. back to graph layout
    weights = [
        from_matrices(rec.op, m.astype(np.float32))
        for rec, m in zip(image.layers, mats, strict=True)
    ]
    return weights, n_stuck


def _used(tile: Any, rows: int, cols: int) -> np.ndarray:
    """Bool ``[R, C]``: the cells some slice of ``tile`` reads (only they need programming)."""
    used = np.zeros((rows, cols), bool)
    for s in tile.slices:
        pr = np.asarray(s.phys_rows, np.intp)
        pr = pr[(pr >= 0) & (pr < rows)]
        for c in (s.pos, s.neg):
            cc = np.asarray(c, np.intp)
            used[np.ix_(pr, cc[(cc >= 0) & (cc < cols)])] = True
    return used


def _accumulate(mat: np.ndarray, s: SliceRecord, lv: np.ndarray) -> None:
    """``mat[rows, outs] += scale * (lv[phys_rows, pos] - lv[phys_rows, neg])``, vectorised."""
    pr = np.asarray(s.phys_rows, np.intp)
    diff = lv[np.ix_(pr, np.asarray(s.pos, np.intp))] - lv[np.ix_(pr, np.asarray(s.neg, np.intp))]
    contrib = np.asarray(s.scale, np.float64)[None, :] * diff
    rows, outs = np.asarray(s.rows, np.intp), np.asarray(s.outs, np.intp)
    idx = np.ix_(rows, outs)
    if np.unique(rows).size == rows.size and np.unique(outs).size == outs.size:
        mat[idx] += contrib
    else:  # a logical row or output read twice (redundant copies): sum every copy
        np.add.at(mat, idx, contrib)


def _check_layer(image: Image, i: int, rec: LayerRecord) -> None:
    op = rec.op
    want_q = (op.groups, op.rows, op.outs)
    if op.groups < 1 or op.n_out % op.groups:
        raise BadImage(f"image: layer {i} ({op.node}) has {op.n_out} outputs in {op.groups} groups")
    if tuple(rec.q.shape) != want_q:
        raise BadImage(
            f"image: layer {i} ({op.node}) q has shape {tuple(rec.q.shape)}; expected {want_q}"
        )
    if tuple(rec.scale.shape) != (op.groups, op.outs):
        raise BadImage(
            f"image: layer {i} ({op.node}) scale has shape {tuple(rec.scale.shape)}; "
            f"expected {(op.groups, op.outs)}"
        )
    if tuple(rec.bias.shape) != (op.n_out,):
        raise BadImage(
            f"image: layer {i} ({op.node}) bias has shape {tuple(rec.bias.shape)}; "
            f"expected {(op.n_out,)}"
        )


def _check_slice(image: Image, where: str, s: SliceRecord, R: int, C: int) -> None:
    """Every index of a slice in range and lengths consistent, or BadImage naming it."""
    if not 0 <= s.layer < len(image.layers):
        raise BadImage(f"{where} names layer {s.layer}; the image has {len(image.layers)}")
    op = image.layers[s.layer].op
    if not 0 <= s.group < op.groups:
        raise BadImage(f"{where} names group {s.group}; layer {op.node} has {op.groups}")
    n, m = len(s.rows), len(s.outs)
    for label, arr, size in (
        ("phys_rows", s.phys_rows, n),
        ("pos", s.pos, m),
        ("neg", s.neg, m),
        ("scale", s.scale, m),
        ("offset", s.offset, m),
    ):
        if np.asarray(arr).shape != (size,):
            raise BadImage(f"{where} {label} has shape {np.asarray(arr).shape}; expected ({size},)")
    for label, arr, hi in (
        ("rows", s.rows, op.rows),
        ("outs", s.outs, op.outs),
        ("phys_rows", s.phys_rows, R),
        ("pos", s.pos, C),
        ("neg", s.neg, C),
    ):
        a = np.asarray(arr)
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= hi):
            raise BadImage(f"{where} {label} out of range; expected integers in 0..{hi - 1}")
    if np.unique(np.asarray(s.phys_rows)).size != n:
        raise BadImage(f"{where} drives one physical row with two inputs; expected distinct rows")
    if np.any(np.asarray(s.pos) == np.asarray(s.neg)):
        raise BadImage(f"{where} pairs a column with itself; expected pos != neg")
    for label, arr in (("scale", s.scale), ("offset", s.offset)):
        if not np.all(np.isfinite(np.asarray(arr))):
            raise BadImage(f"{where} {label} holds NaN/Inf; expected finite numbers")


# --------------------------------------------------------------------------- biases


def chip_biases(image: Image) -> list[np.ndarray]:
    """Per layer the digital bias the chip applies: the layer bias plus every slice's offset.

    Offsets are the per-chip corrections calibration computed for this chip's known errors; the
    fault-free reference uses the layer bias alone.
    """
    _, R, C = _geometry(image, image_name(image, None))
    for i, rec in enumerate(image.layers):
        _check_layer(image, i, rec)
    out = [np.asarray(rec.bias, np.float64).copy() for rec in image.layers]
    for tile in image.tiles:
        for k, s in enumerate(tile.slices):
            _check_slice(image, f"image: tile {tile.tile} slice {k}", s, R, C)
            outs = s.group * image.layers[s.layer].op.outs + np.asarray(s.outs)
            np.add.at(out[s.layer], outs, np.asarray(s.offset, np.float64))
    return [b.astype(np.float32) for b in out]



# --------------------------------------------------------------------------- the fault-free chip


def fault_free_chip(
    image: Image, faultmap: FaultMap, image_source: str | None = None
) -> tuple[Image, FaultMap]:
    """``image`` and ``faultmap`` as this chip would be with no cell stuck and every weight
    programmed to its quantised value, for emulating the fault-free chip on a device.

    Every cell pair under a cell ``faultmap`` marks stuck is programmed afresh to its share of
    the intended weight ``q * scale`` (the part the other pairs of that weight do not hold,
    split evenly over the stuck ones): ``d`` levels apart, ``d`` on the ``+`` cell when
    positive, ``-d`` on the ``-`` cell when negative, the other cell at level 0, ``d`` rounded
    to a whole level within the cell's range. Every other pair keeps its target levels, no slice
    keeps its per-chip ``offset``, and the fault map keeps the chip's geometry, id and measured
    cell range but no stuck cell.
    """
    name = image_name(image, image_source)
    max_level = image_device(image, image_source).max_level
    T, R, C = _geometry(image, name)
    stuck = np.asarray(faultmap.faults) != 0
    if stuck.shape != (T, R, C):
        raise BadImage(
            f"image {name} expects a {T}x{R}x{C} chip but fault map "
            f"{faultmap.source or '<in-memory fault map>'} is {'x'.join(map(str, stuck.shape))}"
        )
    for i, rec in enumerate(image.layers):
        _check_layer(image, i, rec)
    # per logical weight: what the pairs clear of stuck cells hold, and how many pairs are not
    held = [np.zeros((r.op.groups, r.op.rows, r.op.outs), np.float64) for r in image.layers]
    n_hit = [np.zeros(h.shape, np.int64) for h in held]
    pairs = []
    for tile in image.tiles:
        t = int(tile.tile)
        if not 0 <= t < T:
            raise BadImage(f"image {name}: tile {t} is outside the chip; expected a tile index "
                           f"in 0..{T - 1}")
        lv = np.asarray(tile.levels).astype(np.float64)
        for k, s in enumerate(tile.slices):
            _check_slice(image, f"image {name}: tile {t} slice {k}", s, R, C)
            pr = np.asarray(s.phys_rows, np.intp)[:, None]
            pos, neg = np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)
            hit = stuck[t][pr, pos] | stuck[t][pr, neg]
            idx: Any = (s.group, np.asarray(s.rows, np.intp)[:, None], np.asarray(s.outs, np.intp))
            contrib = np.asarray(s.scale, np.float64) * (lv[pr, pos] - lv[pr, neg])
            np.add.at(held[s.layer], idx, np.where(hit, 0.0, contrib))
            np.add.at(n_hit[s.layer], idx, hit.astype(np.int64))
            pairs.append((pr, pos, neg, hit, idx))
    want = [r.q.astype(np.float64) * r.scale.astype(np.float64)[:, None, :] for r in image.layers]
    tiles, it = [], iter(pairs)
    for tile in image.tiles:
        lv = np.array(tile.levels, copy=True)
        slices = []
        for s in tile.slices:
            pr, pos, neg, hit, idx = next(it)
            if hit.any():
                share = ((want[s.layer][idx] - held[s.layer][idx])
                         / np.maximum(n_hit[s.layer][idx], 1))
                scale = np.asarray(s.scale, np.float64)
                d = np.divide(share, scale, out=np.zeros_like(share), where=scale != 0)
                d = np.clip(np.rint(d), -max_level, max_level)
                ii, jj = np.nonzero(hit)
                lv[pr[ii, 0], pos[jj]] = np.maximum(d[ii, jj], 0)
                lv[pr[ii, 0], neg[jj]] = np.maximum(-d[ii, jj], 0)
            slices.append(replace(s, offset=np.zeros(len(s.outs), np.float32)))
        tiles.append(replace(tile, levels=lv, slices=tuple(slices)))
    healthy = replace(faultmap, faults=np.zeros_like(faultmap.faults), stuck_g=None)
    return replace(image, tiles=type(image.tiles)(tiles)), healthy
