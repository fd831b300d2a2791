"""Running an emulated chip: its weights inserted into the image's digital graph (or the graph
rewritten into tile circuits, :mod:`rcompile.runtime.tilemode`), onnxruntime sessions, batching.

The per-layer matrices go back to graph layout (:func:`~rcompile.ir.from_matrices`) and are
inserted with the biases as the initializers ``op.weight`` / ``op.bias`` of the image's digital
graph, which onnxruntime then runs end to end. Everything that is not a crossbar op runs exactly
as in the graph (the digital periphery). The emulated graph also returns energy probes
(:class:`~rcompile.runtime.tilemode.Probes`) alongside the model's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from rcompile import energy
from rcompile.data import Dataset, InputSpec, batches, fixed_batch, input_specs, unpad
from rcompile.device import Hardware
from rcompile.errors import BadData, BadImage, BadModel
from rcompile.image import Image
from rcompile.runtime import tilemode
from rcompile.runtime.weights import RealisedChip, chip_biases

__all__ = [
    "CALIBRATION_SAMPLES",
    "ENERGY_SAMPLES",
    "MODES",
    "EmulatedGraph",
    "emulated_graph",
    "emulated_model",
    "emulation_mode",
    "free_dims",
    "image_graph",
    "image_input_specs",
    "run",
    "run_with_probes",
]

ENERGY_SAMPLES = 64
"""Inferences (spread evenly over the data) whose activity the energy and latency estimate uses:
probing every inference would keep onnxruntime from fusing the ``ideal`` graph (how close the
estimate lands: ``docs/device.md``, energy)."""

CALIBRATION_SAMPLES = 128
"""Samples (the first of the data, at most one batch, or whole batches of a model that fixes its
batch size) a ``calibrated`` converter is set on."""

MODES = ("auto", "ideal", "tile")
"""Emulation modes of :func:`verify`: ``ideal`` inserts the effective weights into the digital
graph (realised conductances, stuck cells; no converters, no read noise); ``tile`` runs every
tile slice through its DAC, crossbar, read noise and ADC (:mod:`rcompile.runtime.tilemode`);
``auto`` is ``tile`` when the device's periphery is not ideal, else ``ideal``."""


def emulation_mode(mode: str, hw: Hardware | None = None) -> str:
    """``mode`` checked against :data:`MODES`, ``auto`` resolved for ``hw`` (kept without it)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "auto" and hw is not None:
        return "tile" if hw.needs_tile_mode else "ideal"
    return mode


# --------------------------------------------------------------------------- graphs


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


@dataclass
class EmulatedGraph:
    """The emulated chip's graph and how to run it."""

    model: onnx.ModelProto
    """The chip's graph (ideal mode: no probes; tile mode: probes after the model's outputs)."""
    n_outputs: int
    """How many of ``model``'s outputs are the original graph's."""
    batch: int
    """Samples per run (tile mode: within :data:`tilemode.TILE_BATCH_FLOATS`)."""
    probes: list[tilemode.Probes] = field(default_factory=list)
    """The energy probes of every crossbar layer."""
    probed: onnx.ModelProto | None = None
    """Ideal mode: a copy of ``model`` with the energy probes (they would block onnxruntime's
    fusions in the plain graph, so only the energy samples run on it)."""


def emulated_graph(
    image: Image,
    mode: str,
    hw: Hardware,
    chip: RealisedChip,
    reference: onnx.ModelProto,
    dataset: Dataset,
    batch_size: int,
    seed: int,
    source: str,
    *,
    probed: bool = True,
) -> EmulatedGraph:
    """The graph of ``chip`` in ``mode`` (``ideal`` or ``tile``) with its energy probes (the
    ideal graph's on a copy unless not ``probed``); a ``calibrated`` converter first measures
    its ranges on one batch of ``dataset``."""
    biases = chip_biases(image)
    if mode == "ideal":
        model = emulated_model(image, chip.weights, biases)
        graph = EmulatedGraph(model=model, n_outputs=len(model.graph.output), batch=batch_size)
        if probed:
            graph.probed, graph.probes = tilemode.add_probes(model, image)
        return graph
    built = _tile_model(image, reference, chip.levels, hw, biases, dataset, batch_size, seed,
                        source)
    return EmulatedGraph(model=built.model, n_outputs=built.n_outputs,
                         batch=min(batch_size, built.max_batch()), probes=built.probes)


def run_with_probes(
    graph: EmulatedGraph, dataset: Dataset, source: str
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """The emulated chip's outputs on ``dataset``, its probes' outputs (one row per batch) and
    how many inferences the probes saw: :data:`ENERGY_SAMPLES` spread over the data, run
    first (a fixed batch: whole batches, a short last one padded)."""
    n_energy = min(dataset.n, ENERGY_SAMPLES)
    order = _energy_first(dataset.n, n_energy)
    data = dataset if order is None else dataset.take(order)
    per_run = _fixed_batch(graph.model)
    n_out, step = graph.n_outputs, graph.batch
    if graph.probed is not None:  # the probed copy runs those, the plain graph the rest
        head = run(graph.probed, data.take(slice(0, n_energy)), step, source=source,
                   optimize=False)
        if per_run:  # the probes also saw the padding of a short last batch
            n_energy = -(-n_energy // per_run) * per_run
        every, emu = head[n_out:], head[:n_out]
        if data.n > n_energy:
            rest = run(graph.model, data.take(slice(n_energy, None)), step, source=source)
            emu = [np.concatenate([a, b]) for a, b in zip(emu, rest, strict=True)]
    else:  # the probes' rows of the batches that cover them
        outs = run(graph.model, data, step, source=source, optimize=False, first=n_energy)
        emu = outs[:n_out]
        rows = -(-n_energy // (per_run or step))
        if per_run:  # whole fixed batches (a short last one padded)
            n_energy = rows * per_run
        every = [o[:rows] for o in outs[n_out:]]
    if order is not None:  # back to the data's own order
        back = np.argsort(order)
        emu = [o[back] if o.ndim and len(o) == data.n else o for o in emu]
    return emu, every, n_energy


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
    laid_out: dict[int, tilemode.LayerLayout] = {}  # both builds share the layouts
    cv = hw.converters
    if (cv.adc_bits < 24 and cv.adc_range == "calibrated") or (
        cv.dac_bits < 24 and cv.dac_range == "calibrated"
    ):
        cal = tilemode.build(image, graph, levels, hw, biases, seed=seed, calibrate=True,
                             shapes=shapes, laid_out=laid_out)
        per_run = _fixed_batch(reference)
        n_cal = min(per_run * max(1, CALIBRATION_SAMPLES // per_run) if per_run
                    else min(step, CALIBRATION_SAMPLES), dataset.n)
        outs = run(cal.model, dataset.take(slice(0, n_cal)), min(step, cal.max_batch()),
                   source=source, optimize=False)
        calibration = cal.read_calibration(outs, len(image.layers))
    return tilemode.build(image, graph, levels, hw, biases, seed=seed, calibration=calibration,
                          shapes=shapes, laid_out=laid_out)


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


# --------------------------------------------------------------------------- sessions


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
    ``first`` (so per-batch outputs can be told apart for the first ``first`` samples); a
    graph that fixes its batch at 1 inside runs one sample at a time (:func:`batch_outputs`).
    """
    sess = session(model, source, optimize)
    fixed = _fixed_batch(model, source)
    names = [i.name for i in sess.get_inputs()]
    for nm in names:
        if nm not in dataset.inputs:
            raise BadData(f"{dataset.source}: has no array for input '{nm}' of {source}")
    inputs = {nm: dataset.inputs[nm] for nm in names}
    return _collect([outs for _, _, outs in batch_outputs(
        sess, inputs, dataset.n, batch_size, fixed, first,
        failed=lambda lo, hi: f"{source}: onnxruntime failed on samples {lo}..{hi - 1} of "
                              f"{dataset.source}")])


def session(model: onnx.ModelProto, source: str, optimize: bool = True) -> ort.InferenceSession:
    """An onnxruntime session of ``model`` (free dimensions made unknown, :func:`free_dims`):
    CPU, two intra-op threads, all graph optimisations unless ``optimize=False``, onnxruntime's
    own log off (its errors reach the user as one line); BadModel naming ``source`` if
    onnxruntime cannot load it."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 4  # fatal only
    try:
        light, names, values = _apart(model)  # before free_dims, which may copy the model
        graph = free_dims(light)
        if names:
            opts.add_external_initializers(names, values)
        sess = ort.InferenceSession(
            graph.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise BadModel(f"{source}: onnxruntime cannot load it ({_first_line(e)})") from e
    sess._rcompile_initializers = values  # type: ignore[attr-defined]  # alive with the session
    return sess


APART_BYTES = 1 << 16
"""Initializers of at least this many bytes of raw data reach onnxruntime as arrays
(:func:`_apart`), not inside the serialised model."""


_APART_TYPES = frozenset(
    getattr(onnx.TensorProto, n) for n in ("FLOAT", "DOUBLE", "FLOAT16", "INT8", "UINT8", "INT16",
                                           "UINT16", "BOOL"))
"""Element types handed over: those NumPy and onnxruntime share a layout for (bfloat16, float8
and 4-bit types stay in the model), less 32- and 64-bit integers, the types of shapes, starts
and indices, whose values onnxruntime's shape inference reads from the model itself."""


def _apart(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list[ort.OrtValue]]:
    """``model`` with every large initializer (:data:`APART_BYTES`, raw data, no external data
    of its own) left as a reference, their names and their values as onnxruntime values.

    onnxruntime puts the values in place of the references before it optimises the graph, so
    the session computes exactly what it would with the whole model; but a tile-mode graph of
    VGG-8 holds 200 MB of weights, which serialising, parsing and copying cost seconds. The
    values are read-only arrays over one copy of each tensor's bytes; :func:`session` keeps
    them with the session."""
    inits = model.graph.initializer
    if not any(map(_handed_over, inits)):
        return model, [], []
    out = _copy_fields(model, onnx.ModelProto(), skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    names, values = [], []
    for t in inits:
        if not _handed_over(t):
            out.graph.initializer.append(t)
            continue
        ref = out.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims,
                                        data_location=onnx.TensorProto.EXTERNAL)
        ref.external_data.add(key="location", value="rcompile-in-memory")
        arr = np.frombuffer(t.raw_data, onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(arr.reshape(tuple(t.dims))))
    return out, names, values


def _handed_over(t: onnx.TensorProto) -> bool:
    """Whether :func:`_apart` hands ``t`` to onnxruntime as an array."""
    return (t.data_type in _APART_TYPES and t.HasField("raw_data")
            and t.ByteSize() >= APART_BYTES and t.data_location != onnx.TensorProto.EXTERNAL)


def _copy_fields(src: Any, dst: Any, skip: str) -> Any:
    """``dst`` given every field ``src`` sets except ``skip`` (a shallow protobuf copy that
    leaves out one large field instead of copying it)."""
    for f, v in src.ListFields():
        if f.name == skip:
            continue
        if hasattr(v, "extend"):  # a repeated field (protobuf's label API is deprecated)
            getattr(dst, f.name).extend(v)
        elif f.message_type is not None:
            getattr(dst, f.name).CopyFrom(v)
        else:
            setattr(dst, f.name, v)
    return dst


def batch_outputs(
    sess: ort.InferenceSession, inputs: dict[str, np.ndarray], n: int, step: int,
    fixed: int | None, first: int = 0, *, failed: Callable[[int, int], str],
) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """``(lo, hi, outputs)`` of ``sess`` on consecutive batches of ``inputs``
    (:func:`rcompile.data.batches`; a padded fixed batch's padding dropped). A graph that
    declares a free batch but fixes it at 1 inside (old PyTorch exports write
    ``Reshape(x, [1, -1])``) fails on a batch of several samples: when the first batch fails
    and one sample alone runs, every sample is run alone. Otherwise a failure is BadModel,
    ``failed(lo, hi)`` followed by onnxruntime's first line."""
    for lo, hi, feed in batches(inputs, n, step, fixed, first):
        try:
            got = sess.run(None, feed)
        except Exception as e:
            if lo == 0 and hi > 1 and fixed is None and _runs_alone(sess, inputs):
                yield from batch_outputs(sess, inputs, n, 1, None, failed=failed)
                return
            raise BadModel(f"{failed(lo, hi)} ({_first_line(e)})") from e
        yield lo, hi, [unpad(np.asarray(o), hi - lo, fixed) for o in got]


def _runs_alone(sess: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> bool:
    """Whether ``sess`` runs on the first sample alone (a graph that fixes its batch at 1)."""
    try:
        sess.run(None, {k: v[:1] for k, v in inputs.items()})
    except Exception:
        return False
    return True


def _collect(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-batch outputs concatenated along axis 0 (scalars stacked)."""
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

