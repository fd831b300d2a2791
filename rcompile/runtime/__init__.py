"""The verifying runtime (``docs/design.md`` §5): what one faulty chip computes with one image.

The runtime trusts exactly two things, the image and the fault map, and never the compiler:
this package must not import ``rcompile.passes`` (a test checks it), so a bug in a pass cannot
hide itself by also being in the checker.

:func:`verify` reads in the order a chip is made and run:

1. :mod:`~rcompile.runtime.weights`: the fault map must be the image's chip; the device to
   emulate it with; programming realises every cell's level (stuck cells where they are
   stuck), and the slices route those levels into each layer's weights and biases.
2. :mod:`~rcompile.runtime.execute`: the weights go into the image's digital graph (``ideal``
   mode) or every tile becomes its circuit of DAC, crossbar, read noise and ADC (``tile`` mode,
   :mod:`~rcompile.runtime.tilemode`), and onnxruntime runs it in batches.
3. :mod:`~rcompile.runtime.report`: the faulty chip against the fault-free chip (the same image
   with its intended weights), optionally the original float model, the weight error of every
   layer, and energy and latency per inference (:mod:`rcompile.energy`) from probes the
   emulated graph returns alongside the model's outputs.

Without a device model the runtime emulates the ideal device with the image's own cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from rcompile.data import Dataset
from rcompile.device import Hardware
from rcompile.image import Image
from rcompile.runtime.execute import (
    CALIBRATION_SAMPLES,
    ENERGY_SAMPLES,
    MODES,
    emulated_graph,
    emulated_model,
    emulation_mode,
    free_dims,
    image_graph,
    image_input_specs,
    run,
    run_with_probes,
)
from rcompile.runtime.report import LayerError, Report, Stopwatch, energy_costs, report
from rcompile.runtime.weights import (
    PARALLEL_CELLS,
    check_match,
    chip_biases,
    chip_levels,
    effective_weights,
    fault_free_chip,
    image_device,
    image_hardware,
    image_name,
    intended_weights,
    programmed_weights,
    realise_chip,
)

if TYPE_CHECKING:
    from rcompile.faultmap import FaultMap

__all__ = [
    "CALIBRATION_SAMPLES",
    "ENERGY_SAMPLES",
    "MODES",
    "PARALLEL_CELLS",
    "LayerError",
    "Report",
    "check_match",
    "chip_biases",
    "chip_levels",
    "effective_weights",
    "emulate",
    "fault_free_chip",
    "emulated_model",
    "free_dims",
    "image_device",
    "image_graph",
    "image_hardware",
    "image_input_specs",
    "intended_weights",
    "programmed_weights",
    "run",
    "verify",
]


def verify(
    image: Image, faultmap: FaultMap, dataset: Dataset, *, allow_remeasured: bool = False,
    reference_model: onnx.ModelProto | None = None, image_source: str | None = None,
    batch_size: int = 256, hardware: Hardware | None = None, mode: str = "auto",
    noise_seed: int = 0,
) -> Report:
    """Emulate the faulty chip on ``dataset`` and compare it with the fault-free chip, and (a
    device that is not exact) with the fault-free chip on that device (:func:`fault_free_chip`).

    ``hardware``: the device (default :func:`image_hardware`); ``mode``: one of :data:`MODES`;
    ``noise_seed`` seeds programming variation and read noise (the same seed, the same report);
    ``reference_model``, the original float model, adds ``float_accuracy``. Raises
    :class:`BadImage` if the fault map is not the image's chip (:func:`check_match`).
    """
    emulation_mode(mode)
    remeasured = check_match(image, faultmap, allow_remeasured=allow_remeasured,
                             image_source=image_source)
    hw = image_hardware(image, hardware, faultmap, image_source)
    mode, clock = emulation_mode(mode, hw), Stopwatch()
    src = f"image {image_name(image, image_source)}"
    with clock("weights_s"):  # programming every cell, the stuck cells, the faulty weights
        chip = realise_chip(image, faultmap, hw, noise_seed, image_source)
    intended = intended_weights(image)
    reference = emulated_model(image, intended)  # the fault-free chip
    with clock("reference_s"):
        ref = run(reference, dataset, batch_size, source=src)
    with clock("graph_s"):  # the faulty chip's graph, a converter calibration, energy probes
        graph = emulated_graph(image, mode, hw, chip, reference, dataset, batch_size,
                               noise_seed, src)
    with clock("emulated_s"):
        emu, probe_outs, n_energy = run_with_probes(graph, dataset, src)
    flt = _float_outputs(reference_model, dataset, batch_size, clock)
    on_device = ref if hw.exact else emulate(  # the fault-free chip on the same device
        *fault_free_chip(image, faultmap, image_source), dataset, hardware=hw, mode=mode,
        noise_seed=noise_seed, batch_size=batch_size, image_source=image_source)
    costs = energy_costs(image, reference, chip.levels, hw, graph.probes, probe_outs, dataset,
                         n_energy)
    return report(image, faultmap, dataset, chip, intended, (emu, ref, flt, on_device), costs,
                  remeasured=remeasured, clock=clock, mode=mode, hw=hw, noise_seed=noise_seed)


def _float_outputs(model: onnx.ModelProto | None, dataset: Dataset, batch_size: int,
                   clock: Stopwatch) -> list[np.ndarray] | None:
    """The float model's outputs on ``dataset`` (None without one), timed as ``float_s``."""
    clock.seconds["float_s"] = None
    if model is None:
        return None
    with clock("float_s"):
        return run(model, dataset, batch_size, source="reference model")


def emulate(
    image: Image, faultmap: FaultMap, dataset: Dataset, *, hardware: Hardware | None = None,
    mode: str = "auto", noise_seed: int = 0, batch_size: int = 256,
    image_source: str | None = None,
) -> list[np.ndarray]:
    """The outputs of the emulated chip on ``dataset`` (what :func:`verify` scores)."""
    emulation_mode(mode)
    hw = image_hardware(image, hardware, faultmap, image_source)
    mode, src = emulation_mode(mode, hw), f"image {image_name(image, image_source)}"
    chip = realise_chip(image, faultmap, hw, noise_seed, image_source)
    reference = emulated_model(image, intended_weights(image))
    graph = emulated_graph(image, mode, hw, chip, reference, dataset, batch_size, noise_seed,
                           src, probed=False)
    outs = run(graph.model, dataset, graph.batch, source=src, optimize=mode == "ideal")
    return outs[: graph.n_outputs]
