"""What :func:`rcompile.runtime.verify` reports: accuracy and agreement of the faulty chip
against the fault-free chip (``docs/design.md`` §7), weight error per layer, energy and timing.

The *fault-free chip* is the same image with intended weights ``quantised * scale`` from its
:class:`~rcompile.image.LayerRecord` s: what the model would compute if no cell were stuck and
every weight were programmed exactly to its quantised value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from rcompile import energy
from rcompile.data import Dataset
from rcompile.device import Hardware
from rcompile.errors import BadData
from rcompile.image import Image
from rcompile.runtime import tilemode
from rcompile.runtime.weights import RealisedChip

if TYPE_CHECKING:
    from rcompile.faultmap import FaultMap

__all__ = ["LayerError", "Report", "Stopwatch", "energy_costs", "report"]


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
    device_fault_free_accuracy: float | None = None
    """Top-1 accuracy of the fault-free chip on the emulated device, in the same mode with the
    same seed (:func:`~rcompile.runtime.weights.fault_free_chip`): what the device alone costs,
    apart from the stuck cells. On an exact device (:attr:`~rcompile.device.Hardware.exact`) it
    is :attr:`fault_free_accuracy`."""
    device_agreement: float | None = None
    """Share of top-1 decisions the faulty chip shares with the fault-free chip on the emulated
    device (None as for :attr:`agreement`)."""

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


class Stopwatch:
    """Wall-clock seconds of named stages: ``with clock("weights_s"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float | None] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - t0

    def timing(self) -> dict[str, float | None]:
        """:attr:`Report.timing` of a :func:`~rcompile.runtime.verify` call."""
        s = self.seconds
        weights_s, graph_s = s["weights_s"] or 0.0, s["graph_s"] or 0.0
        reference_s, emulated_s = s["reference_s"] or 0.0, s["emulated_s"] or 0.0
        setup_s = weights_s + graph_s
        return {
            "weights_s": weights_s,
            "graph_s": graph_s,
            "setup_s": setup_s,
            "reference_s": reference_s,
            "emulated_s": emulated_s,
            "float_s": s.get("float_s"),
            "emulation_ratio": emulated_s / reference_s if reference_s > 0 else None,
            "total_ratio": (setup_s + emulated_s) / reference_s if reference_s > 0 else None,
        }


def layer_errors(image: Image, chip: RealisedChip, intended: list[np.ndarray]
                 ) -> list[LayerError]:
    """Per crossbar layer, the faulty chip's weights against the fault-free chip's."""
    layers = []
    for i, (rec, we, wi) in enumerate(zip(image.layers, chip.weights, intended, strict=True)):
        d = we.astype(np.float64) - wi.astype(np.float64)
        dsq, isq = float(np.sum(d * d)), float(np.sum(wi.astype(np.float64) ** 2))
        layers.append(
            LayerError(
                node=rec.op.node,
                weight_rel_error=_rel(dsq, isq),
                weight_rmse=float(np.sqrt(dsq / max(d.size, 1))),
                stuck_cells=chip.stuck_cells[i],
            )
        )
    return layers


def report(
    image: Image,
    faultmap: FaultMap,
    dataset: Dataset,
    chip: RealisedChip,
    intended: list[np.ndarray],
    outputs: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None,
                   list[np.ndarray]],
    costs: list[energy.LayerCost],
    *,
    remeasured: bool,
    clock: Stopwatch,
    mode: str,
    hw: Hardware,
    noise_seed: int,
) -> Report:
    """The :class:`Report` of one emulation; ``outputs`` are the emulated chip's, the fault-free
    chip's, the float model's (None without it) and the fault-free chip's on the emulated
    device."""
    emu, ref, flt, on_device = outputs
    diff_sq = sum(
        float(np.sum((e.astype(np.float64) - r) ** 2)) for e, r in zip(emu, ref, strict=True)
    )
    ref_sq = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    chip_id = image.header.get("chip_id") or faultmap.chip_id or None
    return Report(
        accuracy=_accuracy(emu[0], dataset.labels, dataset.source),
        fault_free_accuracy=_accuracy(ref[0], dataset.labels, dataset.source),
        float_accuracy=None if flt is None else _accuracy(flt[0], dataset.labels, dataset.source),
        agreement=_agreement(emu[0], ref[0]),
        output_cosine=_cosine(emu[0], ref[0]),
        relative_output_error=_rel(diff_sq, ref_sq),
        layers=layer_errors(image, chip, intended),
        n_samples=int(dataset.n),
        chip_id=None if chip_id is None else str(chip_id),
        remeasured=remeasured,
        timing=clock.timing(),
        mode=mode,
        device=hw.name,
        noise_seed=int(noise_seed),
        energy_per_inference_j=float(sum(c.energy_j for c in costs)),
        latency_per_inference_s=float(sum(c.latency_s for c in costs)),
        energy=[c.to_dict() for c in costs],
        device_fault_free_accuracy=_accuracy(on_device[0], dataset.labels, dataset.source),
        device_agreement=_agreement(emu[0], on_device[0]),
    )


def energy_costs(
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
