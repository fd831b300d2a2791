"""The verifying runtime (DESIGN §5): what one faulty chip computes with one programming image.

The runtime trusts exactly two things, the image and the fault map, and never the compiler:
this module must not import ``rcompile.passes`` (a test checks it), so a bug in a pass cannot
hide itself by also being in the checker.

How a chip computes one crossbar layer, and so how this module rebuilds it:

1. **Cells.** Every used physical tile ``t`` holds a target level ``levels[r, c]`` per cell
   (:class:`~rcompile.image.TileRecord`). A stuck cell ignores it: the fault map gives the level
   it sits at instead (``0`` for SA0, ``L-1`` for SA1, or the fractional level of its measured
   conductance), see ``FaultMap.stuck_levels``. The result is the *realised* level ``lv[r, c]``.
2. **Slices.** A :class:`~rcompile.image.SliceRecord` routes logical matrix rows ``rows[i]`` to
   physical rows ``phys_rows[i]`` and reads output ``outs[j]`` as the difference of physical
   columns ``pos[j]`` and ``neg[j]``, times the digital scale ``scale[j]``::

       W[layer][group][rows[i], outs[j]] += scale[j] * (lv[phys_rows[i], pos[j]]
                                                        - lv[phys_rows[i], neg[j]])

   Contributions of all slices add up (partial sums of a layer split over tiles are summed
   digitally). Each slice is evaluated with only its own rows driven, which is the image
   contract; cells outside every slice carry no signal (DESIGN §1: unused rows get zero input).
   Level units are exact: ``G(k) = g_min + k * step`` and the ``g_min`` offset cancels in the
   difference, so ``scale`` in weight units per level step is all the periphery needs.
3. **Bias.** The periphery adds the layer's digital ``bias`` plus, for every slice, its
   ``offset[j]`` to output ``outs[j]`` of its group (the per-chip correction calibration
   computed; :func:`chip_biases`). The fault-free reference uses ``bias`` alone.
4. **Graph.** The per-layer matrices go back to graph layout (:func:`~rcompile.ir.from_matrices`)
   and are inserted with the biases as the initializers ``op.weight`` / ``op.bias`` of the
   image's digital graph, which onnxruntime then runs end to end. Everything that is not a
   crossbar op runs exactly as in the graph (the digital periphery).

The *fault-free chip* is the same image with intended weights ``q * scale`` from its
:class:`~rcompile.image.LayerRecord` s: what the model would compute if no cell were stuck and
every weight were programmed exactly to its quantised value. :func:`verify` compares the
faulty chip against it, and optionally against the original float model.

**Device models** (:class:`~rcompile.device.Hardware`, ``docs/device.md``). Step 1 uses the
device's write-verify model (:mod:`rcompile.programming`, its fast path
:func:`~rcompile.programming.program_tiles`, all tiles at once): each used cell that is not stuck
lands near, not on, its target level, seeded by ``noise_seed`` and the tile; stuck cells are
not written (they would be overridden anyway) and sit where they are stuck. The
``ideal`` mode then proceeds as above with those fractional levels (the ``g_min`` offset still
cancels in a pair); the ``tile`` mode instead runs every slice through its DAC, its crossbar of
realised conductances (leak included), read noise and its ADC (:mod:`rcompile.tilemode`). Both
modes report energy and latency per inference (:mod:`rcompile.energy`) from probes the emulated
graph returns alongside the model's outputs. Without a device model the runtime emulates the
ideal device with the image's own cell, exactly as described above.

Every structural problem in the image (an index out of range, a level above ``L-1``, a slice
with mismatched lengths) raises :class:`~rcompile.errors.BadImage`, never an ``IndexError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from rcompile import energy, tilemode
from rcompile.data import Dataset, InputSpec, batches, fixed_batch, input_specs, unpad
from rcompile.device import PRESETS, Device, Hardware, hardware_from_dict
from rcompile.errors import BadData, BadDevice, BadImage, BadModel
from rcompile.image import Image, LayerRecord, SliceRecord
from rcompile.ir import from_matrices
from rcompile.programming import program_tiles
from rcompile.solvers import fork_map

if TYPE_CHECKING:
    from rcompile.faultmap import FaultMap

__all__ = [
    "LayerError",
    "Report",
    "MODES",
    "check_match",
    "chip_biases",
    "chip_levels",
    "effective_weights",
    "emulate",
    "emulated_model",
    "free_dims",
    "image_device",
    "image_hardware",
    "image_input_specs",
    "intended_weights",
    "programmed_weights",
    "run",
    "verify",
]

_DEVICE_KEYS = ("levels", "g_min_us", "g_max_us", "read_v")

_Programmer = Callable[[list[tuple[int, np.ndarray, np.ndarray]]], list[np.ndarray]]
"""Writes every ``(tile, target levels [R, C], cells to write [R, C] bool)`` and returns the
realised float64 levels of each tile (cells not written keep their target)."""

ENERGY_SAMPLES = 64
"""Inferences (spread evenly over the data) whose activity the energy and latency estimate uses:
probing every inference would keep onnxruntime from fusing the ``ideal`` graph. (MNIST test
set, three chips: 64 spread inferences land within 0.7 % of all 1000, 32 within 9 %; the
*first* 64 were 28 % off, the data is not shuffled.)"""

CALIBRATION_SAMPLES = 128
"""Samples (the first of the data, at most one batch, or whole batches of a model that fixes its
batch size) a ``calibrated`` converter is set on."""

PARALLEL_CELLS = 1 << 20
"""Cells to write above which the programming simulation spreads the chip's tiles over every
core (:func:`rcompile.solvers.fork_map`; same result): below it, forking costs more than it
saves."""

MODES = ("auto", "ideal", "tile")
"""Emulation modes of :func:`verify`: ``ideal`` inserts the effective weights into the digital
graph (realised conductances, stuck cells; no converters, no read noise); ``tile`` runs every
tile slice through its DAC, crossbar, read noise and ADC (:mod:`rcompile.tilemode`); ``auto``
is ``tile`` when the device's periphery is not ideal, else ``ideal``."""


# --------------------------------------------------------------------------- image <-> fault map


def _image_name(image: Image, image_source: str | None) -> str:
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
    img = _image_name(image, image_source)
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


def image_device(image: Image, image_source: str | None = None) -> Device:
    """The cell technology the image was compiled for, from ``header["device"]``."""
    name = _image_name(image, image_source)
    d = image.header.get("device")
    if not isinstance(d, dict) or any(k not in d for k in _DEVICE_KEYS):
        raise BadImage(f"image {name}: header 'device' is {d!r}; expected keys {_DEVICE_KEYS}")
    try:
        return Device(
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
    by ``build --device``), else the ideal device with the image's own cell — exactly the
    behaviour before device models existed. The number of levels must be the image's; the
    fault map's measured ``g_min``/``g_max`` (when it has them) replace the device's.
    """
    name = _image_name(image, image_source)
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
    name = _image_name(image, image_source)
    device = image_device(image, image_source) if hw is None else hw.cell
    prog: _Programmer | None = None
    if hw is not None and not hw.programming.ideal:
        def prog(jobs: list[tuple[int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            # write-verify of every tile; tile t draws from its own generator, seeded
            # (noise_seed, t), so its cells do not depend on the other tiles, nor on how the
            # tiles are split over worker processes (large chips: every core)
            shared, items = (jobs, hw, int(noise_seed)), list(range(len(jobs)))
            if sum(int(m.sum()) for _, _, m in jobs) < PARALLEL_CELLS:
                got = _program_chunk(shared, items)
            else:
                got = fork_map(_program_chunk, shared, items, min_items=2)
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


def _program_chunk(shared: tuple[list[tuple[int, np.ndarray, np.ndarray]], Hardware, int],
                   chunk: list[int]) -> list[np.ndarray]:
    """Realised levels of the written cells of tiles ``chunk`` of ``shared = (jobs, hw,
    noise_seed)``, in one vectorised write-verify (a :func:`fork_map` worker's share)."""
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
    name = _image_name(image, image_source)
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


# --------------------------------------------------------------------------- graph and execution


def chip_biases(image: Image) -> list[np.ndarray]:
    """Per layer the digital bias the chip applies: the layer bias plus every slice's offset.

    Offsets are the per-chip corrections calibration computed for this chip's known errors; the
    fault-free reference uses the layer bias alone.
    """
    _, R, C = _geometry(image, _image_name(image, None))
    for i, rec in enumerate(image.layers):
        _check_layer(image, i, rec)
    out = [np.asarray(rec.bias, np.float64).copy() for rec in image.layers]
    for tile in image.tiles:
        for k, s in enumerate(tile.slices):
            _check_slice(image, f"image: tile {tile.tile} slice {k}", s, R, C)
            outs = s.group * image.layers[s.layer].op.outs + np.asarray(s.outs)
            np.add.at(out[s.layer], outs, np.asarray(s.offset, np.float64))
    return [b.astype(np.float32) for b in out]


def emulated_model(
    image: Image, weights: list[np.ndarray], biases: list[np.ndarray] | None = None
) -> onnx.ModelProto:
    """The image's digital graph with ``weights`` (graph layout) and biases inserted.

    ``biases`` defaults to the layers' own biases (the fault-free reference); pass
    :func:`chip_biases` to emulate the chip. Existing initializers ``op.weight`` / ``op.bias``
    are replaced.
    """
    if len(weights) != len(image.layers):
        raise BadImage(f"image has {len(image.layers)} layers but {len(weights)} weights given")
    model = image_graph(image)
    nodes = {n.name: n for n in model.graph.node}
    new: dict[str, np.ndarray] = {}
    if biases is None:
        biases = [rec.bias for rec in image.layers]
    for rec, w, b in zip(image.layers, weights, biases, strict=True):
        op = rec.op
        node = nodes.get(op.node)
        if node is None or op.weight not in node.input:
            raise BadImage(
                f"image: the digital graph has no node '{op.node}' reading '{op.weight}'; "
                "expected one per crossbar layer"
            )
        if tuple(w.shape) != op.shape:
            raise BadImage(f"image: weight of {op.node} has shape {w.shape}; expected {op.shape}")
        new[op.weight] = np.asarray(w, np.float32)
        new[op.bias] = np.asarray(b, np.float32)
    kept = [t for t in model.graph.initializer if t.name not in new]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in new.items())
    return model


def image_graph(image: Image, source: str = "image") -> onnx.ModelProto:
    """The image's digital graph (weights stripped), or BadImage naming ``source``."""
    try:
        return onnx.load_from_string(image.graph)
    except Exception as e:  # protobuf DecodeError and friends
        raise BadImage(f"{source}: the digital graph does not parse as ONNX ({e})") from e


def image_input_specs(image: Image) -> list[InputSpec]:
    """The inputs evaluation data must provide for ``image``: its graph's real inputs, less any
    crossbar weight or bias a (pre-IR-4) graph still lists as an input."""
    model = image_graph(image)
    crossbar = {n for rec in image.layers for n in (rec.op.weight, rec.op.bias)}
    return [s for s in input_specs(model) if s.name not in crossbar]


def run(
    model: onnx.ModelProto, dataset: Dataset, batch_size: int = 256, *, source: str = "model",
    optimize: bool = True, first: int = 0,
) -> list[np.ndarray]:
    """All outputs of ``model`` on ``dataset``, in batches, concatenated along axis 0.

    CPU execution provider, two intra-op threads, all graph optimisations (none with
    ``optimize=False``: for the emulator's own graphs, whose hundreds of nodes make the
    optimisers cost more session setup than they save in the run). A model that fixes its batch
    axis at ``b`` is run ``b`` samples at a time, a short last batch padded (the padding's
    outputs dropped, :func:`rcompile.data.batches`); otherwise no batch straddles sample
    ``first`` (so per-batch outputs can be told apart for the first ``first`` samples).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            free_dims(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise BadModel(f"{source}: onnxruntime cannot load it ({_first_line(e)})") from e
    fixed = _fixed_batch(model, source)
    names = [i.name for i in sess.get_inputs()]
    for nm in names:
        if nm not in dataset.inputs:
            raise BadData(f"{dataset.source}: has no array for input '{nm}' of {source}")
    parts: list[list[np.ndarray]] = []
    inputs = {nm: dataset.inputs[nm] for nm in names}
    for lo, hi, feed in batches(inputs, dataset.n, batch_size, fixed, first):
        try:
            parts.append([unpad(np.asarray(o), hi - lo, fixed) for o in sess.run(None, feed)])
        except Exception as e:
            raise BadModel(
                f"{source}: onnxruntime failed on samples {lo}..{hi - 1} "
                f"of {dataset.source} ({_first_line(e)})"
            ) from e
    outs = []
    for k in range(len(parts[0]) if parts else 0):
        chunk = [p[k] for p in parts]
        outs.append(np.concatenate(chunk) if chunk[0].ndim else np.stack(chunk))
    return outs


def free_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every dimension declared ``0`` or negative made unknown (exporters write
    them for "any size"; onnxruntime would take a ``0`` literally). A copy only when needed."""
    infos = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    dims = [d for vi in infos if vi.type.HasField("tensor_type")
            for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value") and d.dim_value <= 0]
    if not dims:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value <= 0:
                    d.ClearField("dim_value")
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- metrics and verify


@dataclass(frozen=True)
class LayerError:
    """Weight error of one crossbar layer: faulty chip against the fault-free chip."""

    node: str
    weight_rel_error: float | None
    """``||W_emu - W_intended||_F / ||W_intended||_F`` (None if the intended weight is all zero
    and the realised one is not)."""
    weight_rmse: float
    """Root-mean-square of ``W_emu - W_intended``, in weight units."""
    stuck_cells: int
    """Stuck cells among the cell pairs that hold this layer's weights."""


@dataclass(frozen=True)
class Report:
    """What :func:`verify` found; :meth:`to_dict` is JSON-serialisable (plain floats/ints)."""

    accuracy: float | None
    """Top-1 accuracy of the faulty chip on the labels (None without labels)."""
    fault_free_accuracy: float | None
    """Top-1 accuracy of the fault-free chip (intended weights ``q * scale``)."""
    float_accuracy: float | None
    """Top-1 accuracy of the original float model (None unless it was given)."""
    agreement: float | None
    """Share of top-1 decisions the faulty chip shares with the fault-free chip (None when the
    first output has no class axis of more than one entry)."""
    output_cosine: float
    """Per-sample cosine similarity of the first output, faulty vs fault-free, averaged
    (1.0 when both vectors are zero)."""
    relative_output_error: float | None
    """``||emu - ref||_F / ||ref||_F`` over all outputs (None if the reference is all zero and
    the emulated output is not)."""
    layers: list[LayerError]
    n_samples: int
    chip_id: str | None
    remeasured: bool
    """True when the fault map is a re-measurement, not the map the image was compiled against."""
    timing: dict[str, float | None] = field(default_factory=dict)
    """Seconds, each a wall-clock time in this call: ``reference_s`` (plain onnxruntime on the
    fault-free chip's graph: session setup and run), ``emulated_s`` (the emulated chip's graph,
    likewise), ``weights_s`` (simulating the programming of every cell and rebuilding the faulty
    weights), ``graph_s`` (building the emulated graph, incl. a converter calibration run),
    ``setup_s`` = ``weights_s + graph_s``, ``float_s`` (float model run, None without it);
    ``emulation_ratio`` = ``emulated_s / reference_s`` (run against run; the emulated run
    includes the energy probes, which see :data:`ENERGY_SAMPLES` inferences) and
    ``total_ratio`` = ``(setup_s + emulated_s) / reference_s`` (what emulating one chip costs
    against one plain run). Not counted anywhere: building the reference graph, the error
    metrics and the energy model's arithmetic."""
    mode: str = "ideal"
    """Emulation mode that ran: ``ideal`` or ``tile`` (see :data:`MODES`)."""
    device: str = "ideal"
    """Name of the device model emulated."""
    noise_seed: int = 0
    """Seed of programming variation and read noise."""
    energy_per_inference_j: float | None = None
    """Estimated energy of one inference on the chip, joules (:mod:`rcompile.energy`)."""
    latency_per_inference_s: float | None = None
    """Estimated latency of one inference, seconds."""
    energy: list[dict[str, Any]] = field(default_factory=list)
    """Per crossbar layer (then the digital periphery): ``cell_j``, ``adc_j``, ``dac_j``,
    ``digital_j``, ``energy_j``, ``latency_s``, ``mvms``, ``adc_conversions``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(out: np.ndarray) -> np.ndarray | None:
    """Class scores ``[n, ..., K]`` of a first output, K > 1, else None.

    Trailing singleton axes after the sample axis are dropped first, so a conv head ``[n, K, 1,
    1]`` counts as ``[n, K]``.
    """
    s = out
    while s.ndim > 2 and s.shape[-1] == 1:
        s = s[..., 0]
    if s.ndim < 2 or s.shape[-1] < 2:
        return None
    return s


def _accuracy(out: np.ndarray, labels: np.ndarray | None, source: str) -> float | None:
    if labels is None:
        return None
    s = _scores(out)
    if s is None or s.ndim != 2 or s.shape[0] != labels.shape[0]:
        raise BadData(
            f"{source}: has labels but the model's first output has shape {tuple(out.shape)}; "
            f"expected ({labels.shape[0]}, classes) to score top-1 accuracy"
        )
    if int(labels.max()) >= s.shape[1]:
        raise BadData(
            f"{source}: labels go up to {int(labels.max())} but the model has {s.shape[1]} "
            f"classes; expected labels in 0..{s.shape[1] - 1}"
        )
    return float(np.mean(np.argmax(s, axis=-1) == labels))


def _agreement(emu: np.ndarray, ref: np.ndarray) -> float | None:
    a, b = _scores(emu), _scores(ref)
    if a is None or b is None:
        return None
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def _cosine(emu: np.ndarray, ref: np.ndarray) -> float:
    n = emu.shape[0] if emu.ndim else 1
    a = emu.reshape(n, -1).astype(np.float64)
    b = ref.reshape(n, -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.clip(dot / denom, -1.0, 1.0)  # one zero vector: dot = 0, cosine 0
    # identical vectors (incl. both zero) are exactly 1, free of rounding in the norms
    cos[np.all(a == b, axis=1)] = 1.0
    return float(np.mean(cos))


def _rel(diff_sq: float, ref_sq: float) -> float | None:
    if ref_sq == 0.0:
        return 0.0 if diff_sq == 0.0 else None
    return float(np.sqrt(diff_sq / ref_sq))


def verify(
    image: Image,
    faultmap: FaultMap,
    dataset: Dataset,
    *,
    allow_remeasured: bool = False,
    reference_model: onnx.ModelProto | None = None,
    image_source: str | None = None,
    batch_size: int = 256,
    hardware: Hardware | None = None,
    mode: str = "auto",
    noise_seed: int = 0,
) -> Report:
    """Emulate the faulty chip on ``dataset`` and compare it with the fault-free chip.

    ``hardware`` is the device to emulate (default: :func:`image_hardware`), ``mode`` one of
    :data:`MODES`, ``noise_seed`` seeds programming variation and read noise (one seed, one
    chip: the same seed gives the same report). ``reference_model`` (the original float model,
    optional) adds its accuracy as ``float_accuracy``. Raises :class:`BadImage` if the fault
    map is not the image's chip (:func:`check_match`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    remeasured = check_match(
        image, faultmap, allow_remeasured=allow_remeasured, image_source=image_source
    )
    name = _image_name(image, image_source)
    hw = image_hardware(image, hardware, faultmap, image_source)
    if mode == "auto":
        mode = "tile" if hw.needs_tile_mode else "ideal"
    src = f"image {name}"

    t0 = time.perf_counter()
    levels: dict[int, np.ndarray] = {}
    effective, n_stuck = _effective(image, faultmap, image_source, hw, noise_seed, levels)
    weights_s = time.perf_counter() - t0
    intended = intended_weights(image)

    reference = emulated_model(image, intended)
    t0 = time.perf_counter()
    ref = run(reference, dataset, batch_size, source=src)
    reference_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    emulated, probes, n_out, step = _emulated_graph(
        image, mode, hw, levels, effective, reference, dataset, batch_size, noise_seed, src
    )
    probed = emulated
    if mode == "ideal":  # energy probes on a copy: they would block onnxruntime's fusions
        probed, probes = tilemode.add_probes(emulated, image)
    graph_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # energy probes see ENERGY_SAMPLES inferences spread over the data, run first
    n_energy = min(dataset.n, ENERGY_SAMPLES)
    order = _energy_first(dataset.n, n_energy)
    data = dataset if order is None else dataset.take(order)
    per_run = _fixed_batch(emulated)
    if mode == "ideal":  # the probed copy runs those, the plain graph the rest
        head = run(probed, data.take(slice(0, n_energy)), step, source=src, optimize=False)
        if per_run:  # the probes also saw the padding of a short last batch
            n_energy = -(-n_energy // per_run) * per_run
        every, emu = head[n_out:], head[:n_out]
        if data.n > n_energy:
            rest = run(emulated, data.take(slice(n_energy, None)), step, source=src)
            emu = [np.concatenate([a, b]) for a, b in zip(emu, rest, strict=True)]
    else:  # the probes' rows of the batches that cover them
        outs = run(emulated, data, step, source=src, optimize=False, first=n_energy)
        emu = outs[:n_out]
        rows = -(-n_energy // (per_run or step))
        if per_run:  # whole fixed batches (a short last one padded)
            n_energy = rows * per_run
        every = [o[:rows] for o in outs[n_out:]]
    if order is not None:  # back to the data's own order
        back = np.argsort(order)
        emu = [o[back] if o.ndim and len(o) == data.n else o for o in emu]
    emulated_s = time.perf_counter() - t0

    float_acc: float | None = None
    float_s: float | None = None
    if reference_model is not None:
        t0 = time.perf_counter()
        flt = run(reference_model, dataset, batch_size, source="reference model")
        float_s = time.perf_counter() - t0
        float_acc = _accuracy(flt[0], dataset.labels, dataset.source)

    layers = []
    for i, (rec, we, wi) in enumerate(zip(image.layers, effective, intended, strict=True)):
        d = we.astype(np.float64) - wi.astype(np.float64)
        dsq, isq = float(np.sum(d * d)), float(np.sum(wi.astype(np.float64) ** 2))
        layers.append(
            LayerError(
                node=rec.op.node,
                weight_rel_error=_rel(dsq, isq),
                weight_rmse=float(np.sqrt(dsq / max(d.size, 1))),
                stuck_cells=n_stuck[i],
            )
        )

    costs = _costs(image, reference, levels, hw, probes, every, dataset, n_energy)
    diff_sq = sum(
        float(np.sum((e.astype(np.float64) - r) ** 2)) for e, r in zip(emu, ref, strict=True)
    )
    ref_sq = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    chip = image.header.get("chip_id") or faultmap.chip_id or None
    setup_s = weights_s + graph_s
    ratio = emulated_s / reference_s if reference_s > 0 else None
    total = (setup_s + emulated_s) / reference_s if reference_s > 0 else None
    return Report(
        accuracy=_accuracy(emu[0], dataset.labels, dataset.source),
        fault_free_accuracy=_accuracy(ref[0], dataset.labels, dataset.source),
        float_accuracy=float_acc,
        agreement=_agreement(emu[0], ref[0]),
        output_cosine=_cosine(emu[0], ref[0]),
        relative_output_error=_rel(diff_sq, ref_sq),
        layers=layers,
        n_samples=int(dataset.n),
        chip_id=None if chip is None else str(chip),
        remeasured=remeasured,
        timing={
            "weights_s": weights_s,
            "graph_s": graph_s,
            "setup_s": setup_s,
            "reference_s": reference_s,
            "emulated_s": emulated_s,
            "float_s": float_s,
            "emulation_ratio": ratio,
            "total_ratio": total,
        },
        mode=mode,
        device=hw.name,
        noise_seed=int(noise_seed),
        energy_per_inference_j=float(sum(c.energy_j for c in costs)),
        latency_per_inference_s=float(sum(c.latency_s for c in costs)),
        energy=[c.to_dict() for c in costs],
    )


def emulate(
    image: Image,
    faultmap: FaultMap,
    dataset: Dataset,
    *,
    hardware: Hardware | None = None,
    mode: str = "auto",
    noise_seed: int = 0,
    batch_size: int = 256,
    image_source: str | None = None,
) -> list[np.ndarray]:
    """The outputs of the emulated chip on ``dataset`` (what :func:`verify` scores)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    hw = image_hardware(image, hardware, faultmap, image_source)
    if mode == "auto":
        mode = "tile" if hw.needs_tile_mode else "ideal"
    levels: dict[int, np.ndarray] = {}
    effective, _ = _effective(image, faultmap, image_source, hw, noise_seed, levels)
    reference = emulated_model(image, intended_weights(image))
    src = f"image {_image_name(image, image_source)}"
    model, _, n_out, step = _emulated_graph(
        image, mode, hw, levels, effective, reference, dataset, batch_size, noise_seed, src
    )
    return run(model, dataset, step, source=src, optimize=mode == "ideal")[:n_out]


def _emulated_graph(
    image: Image,
    mode: str,
    hw: Hardware,
    levels: dict[int, np.ndarray],
    effective: list[np.ndarray],
    reference: onnx.ModelProto,
    dataset: Dataset,
    batch_size: int,
    seed: int,
    source: str,
) -> tuple[onnx.ModelProto, list[tilemode.Probes], int, int]:
    """The emulated chip's graph with its energy probes, how many outputs are the model's, and
    the batch to run it in (tile mode: within :data:`tilemode.TILE_BATCH_FLOATS`)."""
    biases = chip_biases(image)
    if mode == "ideal":  # (its energy probes run apart, on a few samples: see verify)
        model = emulated_model(image, effective, biases)
        return model, [], len(model.graph.output), batch_size
    built = _tile_model(image, reference, levels, hw, biases, dataset, batch_size, seed, source)
    return built.model, built.probes, built.n_outputs, min(batch_size, built.max_batch())


def _tile_model(
    image: Image,
    reference: onnx.ModelProto,
    levels: dict[int, np.ndarray],
    hw: Hardware,
    biases: list[np.ndarray],
    dataset: Dataset,
    batch_size: int,
    seed: int,
    source: str,
) -> tilemode.Built:
    """The tile-mode graph; a ``calibrated`` ADC first measures its ranges on one batch."""
    graph = image_graph(image, source)
    step = _batch_step(reference, batch_size)
    shapes = energy.infer_shapes(
        reference, {k: (step, *v.shape[1:]) for k, v in dataset.inputs.items()}
    )
    calibration = None
    cv = hw.converters
    if (cv.adc_bits < 24 and cv.adc_range == "calibrated") or (
        cv.dac_bits < 24 and cv.dac_range == "calibrated"
    ):
        cal = tilemode.build(image, graph, levels, hw, biases, seed=seed, calibrate=True,
                             shapes=shapes)
        fixed = _fixed_batch(reference)
        n_cal = min(fixed * max(1, CALIBRATION_SAMPLES // fixed) if fixed
                    else min(step, CALIBRATION_SAMPLES), dataset.n)
        outs = run(cal.model, dataset.take(slice(0, n_cal)), min(step, cal.max_batch()),
                   source=source, optimize=False)
        calibration = cal.read_calibration(outs, len(image.layers))
    return tilemode.build(image, graph, levels, hw, biases, seed=seed, calibration=calibration,
                          shapes=shapes)


def _energy_first(n: int, k: int) -> np.ndarray | None:
    """A sample order that puts ``k`` samples evenly spread over ``n`` first (None: all are)."""
    if k >= n:
        return None
    pick = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
    return np.concatenate([pick, np.setdiff1d(np.arange(n), pick)])


def _fixed_batch(model: onnx.ModelProto, source: str = "model") -> int | None:
    """The batch size ``model``'s inputs fix (None: free), or BadModel if they disagree."""
    return fixed_batch(input_specs(model), source)


def _batch_step(model: onnx.ModelProto, batch_size: int) -> int:
    return _fixed_batch(model) or max(1, int(batch_size))


def _costs(
    image: Image,
    reference: onnx.ModelProto,
    levels: dict[int, np.ndarray],
    hw: Hardware,
    probes: list[tilemode.Probes],
    outs: list[np.ndarray],
    dataset: Dataset,
    samples: int,
) -> list[energy.LayerCost]:
    """Energy and latency per layer from the probes' outputs (one row per batch), which saw
    ``samples`` inferences."""
    acts = []
    for i, p in enumerate(probes):
        v2, shape = outs[2 * i], np.asarray(outs[2 * i + 1])
        first = tuple(int(d) for d in shape.reshape(-1, shape.shape[-1])[0])
        n_in, n_out = p.positions(first)
        acts.append(
            energy.Activity(
                v2=v2.reshape(-1, v2.shape[-1]).sum(axis=0) / max(1, samples),
                in_positions=n_in,
                out_positions=n_out,
            )
        )
    crossbar = {rec.op.node for rec in image.layers}
    sample = {k: (1, *v.shape[1:]) for k, v in dataset.inputs.items()}
    periphery = energy.periphery_ops(reference, sample, crossbar)
    return energy.estimate(image, levels, hw, acts, periphery)
