"""Evaluation and calibration data (``data.npz``, docs/design.md §4).

One array per model input, named exactly as the graph input, plus an optional integer
``labels`` array. Axis 0 of every array is the sample axis; all arrays hold the same number of
samples. Every rule below is checked at load time, so the runtime never meets a surprise:

* the file exists and is an ``.npz`` archive (no pickled objects);
* every model input is present, and nothing else is (besides ``labels``);
* each input has the model's rank and every fixed dimension after axis 0;
* dtypes match the model's input types exactly; the one allowed cast is float64 -> float32;
* floating inputs hold no NaN or Inf (after that cast);
* ``labels`` is 1-D, integer, non-negative, fits int64, one per sample;
* the arrays stay within :data:`MAX_DATA_BYTES` (checked on the ``.npy`` headers, before
  allocating), each zip member is one ``<key>.npy`` and no key appears twice;
* there is at least one sample.

A violation raises :class:`~rcompile.errors.BadData` with one line naming the file, the array
and what was expected.

Batch axis: a dimension the model declares as a positive number is fixed; ``-1``, ``0``, a
symbolic name (``N``, ``p2o.DynamicDimension.0``), a dimension with neither, or an input without
a shape leave it free. Any sample count fits any batch: a model that fixes axis 0 at ``b`` runs
``b`` samples at a time (1000 samples at ``b = 1``: 1000 runs), and a last batch that ``b`` does
not fill is padded with copies of its last sample whose outputs are dropped (:func:`batches`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from rcompile.errors import BadData, BadModel
from rcompile.npzio import read_npz

LABELS = "labels"
"""Key of the optional integer label array in a data file."""

MAX_DATA_BYTES = 1 << 30
"""Most bytes the arrays of one data file may hold once loaded (1 GiB); checked against every
``.npy`` header before anything is allocated."""

MAX_LABEL = np.iinfo(np.int64).max
"""Largest label a data file may hold; the runtime then requires labels below the model's
number of output classes."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input of a model (initializers excluded)."""

    name: str
    elem_type: int
    """ONNX ``TensorProto`` element type."""
    dtype: np.dtype
    """Numpy dtype the data must have."""
    shape: tuple[int | str | None, ...] | None
    """Per axis: a fixed size (int), a symbolic name (str) or unknown (None); None = unknown
    rank."""

    def shape_text(self) -> str:
        """Shape with every dynamic dimension shown as ``?``, e.g. ``(?, 1, 28, 28)``."""
        if self.shape is None:
            return "(any rank)"
        dims = [str(d) if isinstance(d, int) else "?" for d in self.shape]
        return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")

    @property
    def fixed_batch(self) -> int | None:
        """Size of axis 0 if the model fixes it, else None."""
        if self.shape and isinstance(self.shape[0], int):
            return self.shape[0]
        return None


@dataclass(frozen=True)
class Dataset:
    """Validated data: arrays keyed by model input name, in the model's input order."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    """int64 ``[n]`` or None."""
    n: int
    """Number of samples (axis 0 of every input)."""
    source: str = "<memory>"
    """File the data came from (for messages)."""

    def take(self, index: slice | np.ndarray) -> Dataset:
        """The samples ``index`` picks (a slice or an index array along axis 0), without
        labels: what a run feeds the model."""
        inputs = {k: v[index] for k, v in self.inputs.items()}
        n = len(next(iter(inputs.values()))) if inputs else 0
        return Dataset(inputs=inputs, labels=None, n=n, source=self.source)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of ``model``: graph inputs that are not initializers, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    specs: list[InputSpec] = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            raise BadModel(f"model input '{vi.name}' is not a tensor; expected a tensor input")
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError) as e:
            raise BadModel(
                f"model input '{vi.name}' has element type {tt.elem_type} that numpy cannot hold"
            ) from e
        shape: tuple[int | str | None, ...] | None = None
        if tt.HasField("shape"):
            dims: list[int | str | None] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:  # -1 and 0 mean "any"
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            shape = tuple(dims)
        specs.append(InputSpec(vi.name, int(tt.elem_type), dtype, shape))
    return specs


def load_data(path: str | os.PathLike[str], specs: list[InputSpec]) -> Dataset:
    """Load evaluation data for a model with inputs ``specs`` (see :func:`input_specs`)."""
    return _load(os.fspath(path), specs, use_labels=True)


def load_calib(path: str | os.PathLike[str], specs: list[InputSpec]) -> Dataset:
    """Load calibration data: like :func:`load_data`, but a ``labels`` array is ignored."""
    return _load(os.fspath(path), specs, use_labels=False)


def dataset_from_arrays(
    arrays: Mapping[str, np.ndarray], specs: list[InputSpec], source: str = "<memory>"
) -> Dataset:
    """Validate in-memory arrays by the same rules as a file (``labels`` key optional)."""
    return _validate(source, dict(arrays), specs, use_labels=True)


def _load(path: str, specs: list[InputSpec], *, use_labels: bool) -> Dataset:
    if not os.path.isfile(path):
        raise BadData(f"{path}: no such data file; expected an .npz archive of input arrays")
    if not zipfile.is_zipfile(path):
        raise BadData(f"{path}: not an .npz archive; expected one array per model input")
    arrays = read_npz(path, name=path, error=BadData, max_array_bytes=MAX_DATA_BYTES,
                      max_total_bytes=MAX_DATA_BYTES, what="an .npz of one array per model input")
    return _validate(path, arrays, specs, use_labels=use_labels)


def _validate(
    path: str, arrays: dict[str, np.ndarray], specs: list[InputSpec], *, use_labels: bool
) -> Dataset:
    if not arrays:
        raise BadData(f"{path}: contains no arrays; expected one array per model input")
    keys = sorted(arrays)
    names = [s.name for s in specs]
    for s in specs:
        if s.name not in arrays:
            raise BadData(
                f"{path}: model input '{s.name}' is missing; the file has keys {keys}, "
                f"expected {names}" + (f" (+ optional '{LABELS}')" if use_labels else "")
            )
    extra = [k for k in keys if k not in names and k != LABELS]
    if extra:
        raise BadData(
            f"{path}: unexpected array(s) {extra}; expected only the model inputs {names} "
            f"and optional '{LABELS}'"
        )

    inputs: dict[str, np.ndarray] = {}
    n: int | None = None
    n_from = ""
    for s in specs:
        a = _check_input(path, s, arrays[s.name])
        if n is None:
            n, n_from = a.shape[0], s.name
        elif a.shape[0] != n:
            raise BadData(
                f"{path}: input '{s.name}' has {a.shape[0]} samples but '{n_from}' has {n}; "
                "expected the same count on axis 0 of every array"
            )
        inputs[s.name] = a
    if n is None:  # a model without inputs: only labels can tell the count
        n = int(arrays[LABELS].shape[0]) if LABELS in arrays and arrays[LABELS].ndim else 0
    if n == 0:
        raise BadData(f"{path}: holds 0 samples; expected at least one")

    labels = _check_labels(path, arrays[LABELS], n) if use_labels and LABELS in arrays else None
    return Dataset(inputs=inputs, labels=labels, n=n, source=path)


def fixed_batch(specs: list[InputSpec], source: str = "model") -> int | None:
    """The batch size the inputs ``specs`` fix (None: free), or BadModel if they disagree."""
    fixed = {s.fixed_batch for s in specs if s.fixed_batch}
    if len(fixed) > 1:
        raise BadModel(f"{source}: inputs fix axis 0 at different sizes {sorted(fixed)}")
    return fixed.pop() if fixed else None


def batches(
    inputs: Mapping[str, np.ndarray], n: int, step: int, fixed: int | None, first: int = 0
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(lo, hi, feed)`` for consecutive batches of ``step`` samples of ``inputs`` (``n`` in
    all); no batch straddles sample ``first`` unless the batch is ``fixed``. With a ``fixed``
    batch every feed has exactly ``fixed`` samples: a short last one is padded with copies of
    its last sample (drop their outputs with :func:`unpad`)."""
    step = fixed or max(1, int(step))
    cut = 0 if fixed or not 0 < first < n else first
    starts = [*range(0, cut, step), *range(cut, n, step)]
    for lo, hi in zip(starts, [*starts[1:], n], strict=True):
        feed = {k: v[lo:hi] for k, v in inputs.items()}
        if fixed and hi - lo < fixed:
            pad = np.full(fixed - (hi - lo), hi - lo - 1)
            feed = {k: np.concatenate([v, v[pad]]) for k, v in feed.items()}
        yield lo, hi, feed


def unpad(out: np.ndarray, real: int, fixed: int | None) -> np.ndarray:
    """An output of a (padded) ``fixed`` batch, with the rows of padding samples dropped:
    outputs whose axis 0 is the batch keep their first ``real`` rows."""
    if fixed and real < fixed and out.ndim and out.shape[0] == fixed:
        return out[:real]
    return out


def _check_input(path: str, s: InputSpec, a: np.ndarray) -> np.ndarray:
    want = s.shape_text()
    if a.ndim == 0:
        raise BadData(
            f"{path}: input '{s.name}' is a scalar; expected shape {want} with samples on axis 0"
        )
    if s.shape is not None:
        if a.ndim != len(s.shape):
            raise BadData(
                f"{path}: input '{s.name}' has shape {tuple(a.shape)} (rank {a.ndim}); "
                f"expected {want} (rank {len(s.shape)})"
            )
        for ax, d in enumerate(s.shape):
            if ax > 0 and isinstance(d, int) and a.shape[ax] != d:
                raise BadData(
                    f"{path}: input '{s.name}' has shape {tuple(a.shape)}; expected {want} "
                    f"(axis {ax} must be {d})"
                )
    if a.dtype != s.dtype:
        if a.dtype == np.float64 and s.dtype == np.float32:
            a = a.astype(np.float32)
        else:
            raise BadData(
                f"{path}: input '{s.name}' has dtype {a.dtype}; expected {s.dtype} "
                "(the model's input type)"
            )
    if np.issubdtype(a.dtype, np.inexact):
        bad = ~np.isfinite(a)
        if bad.any():
            first = int(np.argwhere(bad.reshape(a.shape[0], -1).any(axis=1))[0, 0])
            raise BadData(
                f"{path}: input '{s.name}' has {int(bad.sum())} NaN/Inf value(s) (first in "
                f"sample {first}); expected finite numbers"
            )
    return a


def _check_labels(path: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise BadData(f"{path}: '{LABELS}' has dtype {y.dtype}; expected integer class indices")
    if y.ndim != 1:
        raise BadData(f"{path}: '{LABELS}' has shape {tuple(y.shape)}; expected ({n},)")
    if y.shape[0] != n:
        raise BadData(
            f"{path}: '{LABELS}' has {y.shape[0]} entries but the inputs have {n} samples; "
            "expected one label per sample"
        )
    if y.size and int(y.min()) < 0:
        raise BadData(f"{path}: '{LABELS}' has negative entries; expected class indices >= 0")
    if y.size and int(y.max()) > MAX_LABEL:
        first = int(np.argmax(y))
        raise BadData(
            f"{path}: '{LABELS}'[{first}] = {int(y[first])} does not fit int64; expected class "
            f"indices 0..{MAX_LABEL} (below the model's number of output classes)"
        )
    return y.astype(np.int64)
