"""Cell, device and chip-family parameters, with units in the field names.

A cell is programmed to one of ``levels`` conductances
``G(k) = g_min_us + k / (levels - 1) * (g_max_us - g_min_us)`` for ``k = 0 .. levels-1``.
The compiler works in *level units*: a weight is represented as ``scale * (k_pos - k_neg)``.
:func:`level_of_conductance` is the exact inverse of :func:`conductance_of_level`.

:class:`Cell` is the cell the compiler quantises for. :class:`Hardware` is the whole device
technology the verifying runtime emulates: that cell plus how it is written
(:class:`Programming`), how it is read (:class:`Read`), the converters around every tile
(:class:`Converters`) and what each operation costs (:class:`Costs`). Named presets live in
:data:`PRESETS`; :func:`load_hardware` takes a preset name or a TOML file (``docs/device.md``
gives the format and the meaning of every field). Every field is range-checked on
construction; a bad value is one :class:`~rcompile.errors.BadDevice` line naming the field and
its allowed range.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np

from rcompile.devicerules import Rule, bad, validate
from rcompile.errors import BadDevice

# --------------------------------------------------------------------------- the cell


@dataclass(frozen=True)
class Cell:
    """One ReRAM cell technology; defaults match a typical 16-level 128x128 tile."""

    levels: int = 16
    """Number of programmable conductance levels per cell (2..256)."""
    g_min_us: float = 1.0
    """Lowest conductance, high-resistance state, in microsiemens (what SA0 cells sit at);
    ``g_max_us / g_min_us`` is the on/off ratio."""
    g_max_us: float = 100.0
    """Highest conductance, low-resistance state, in microsiemens (what SA1 cells sit at)."""
    read_v: float = 0.2
    """Read voltage applied to a row for a full-scale input, in volts."""
    level_rms_error: tuple[float, ...] = ()
    """Per target level ``k``, the root-mean-square error of the level a healthy cell really
    reaches when programmed to ``k``, in level steps (bias and spread of write-verify, see
    :func:`rcompile.programming.level_error_table`). Empty: every level is programmed exactly.
    The compiler weighs its objective by it (:meth:`expected_sq_error`), so levels it cannot
    program reliably are not counted on where another choice exists."""
    weight_bits: int = 0
    """Bits of a weight's magnitude (per polarity). 0: what one cell holds (``levels - 1``
    steps), one cell per polarity. Wider than one slice: every weight is *bit-sliced* over
    ``ceil(weight_bits / slice_bits)`` cells per polarity (docs/slicing.md)."""
    cell_bits: int = 0
    """Bits one slice of a sliced weight holds, ``2^cell_bits <= levels``; 0: ``log2(levels)``
    rounded down."""

    _SECTION: ClassVar[str] = "cell"
    _RULES: ClassVar[dict[str, Rule]] = {
        "levels": Rule(int, 2, 256),
        "g_min_us": Rule(float, 0),
        "g_max_us": Rule(float, 0, lo_open=True),
        "read_v": Rule(float, 0, 10, lo_open=True),
        "weight_bits": Rule(int, 0, 16),
        "cell_bits": Rule(int, 0, 8),
    }
    _OPTIONAL: ClassVar[dict[str, Any]] = {"weight_bits": 0, "cell_bits": 0}
    """Fields a device file without ``base`` may leave out, with their defaults (no slicing)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_rms_error", tuple(float(e) for e in self.level_rms_error))
        validate(self)
        if self.cell_bits and 2**self.cell_bits > self.levels:
            raise bad("cell", "cell_bits", self.cell_bits,
                       f"an integer with 2^cell_bits <= levels ({self.levels})")
        if not self.g_max_us > self.g_min_us:
            raise bad("cell", "g_max_us", self.g_max_us, f"> g_min_us ({self.g_min_us})")
        err = self.level_rms_error
        if err and (
            len(err) != self.levels or not all(math.isfinite(e) and e >= 0 for e in err)
        ):
            raise bad(
                "cell", "level_rms_error", err, f"{self.levels} finite numbers >= 0 (one a level)"
            )

    @property
    def max_level(self) -> int:
        """Highest level index, ``levels - 1``."""
        return self.levels - 1

    @property
    def slice_bits(self) -> int:
        """Bits one slice holds: ``cell_bits``, or ``log2(levels)`` rounded down."""
        return self.cell_bits or self.levels.bit_length() - 1

    @property
    def n_slices(self) -> int:
        """Cells per weight polarity: ``ceil(weight_bits / slice_bits)`` (1 without slicing)."""
        return max(1, -(-self.weight_bits // self.slice_bits)) if self.weight_bits else 1

    @property
    def weight_top(self) -> int:
        """Largest weight magnitude in level steps of the least significant slice: ``levels - 1``
        without ``weight_bits``, else ``2^weight_bits - 1``."""
        return 2**self.weight_bits - 1 if self.weight_bits else self.max_level

    @property
    def step_us(self) -> float:
        """Conductance of one level step, in microsiemens."""
        return (self.g_max_us - self.g_min_us) / (self.levels - 1)

    @property
    def on_off_ratio(self) -> float:
        """``g_max_us / g_min_us`` (infinite when ``g_min_us`` is 0)."""
        return math.inf if self.g_min_us == 0 else self.g_max_us / self.g_min_us

    def expected_sq_error(self, level: np.ndarray) -> np.ndarray:
        """``E[(realised - target)^2]`` in level steps squared for target levels (0 if exact)."""
        lv = np.asarray(level)
        if not self.level_rms_error:
            return np.zeros(lv.shape)
        return np.asarray(self.level_rms_error, np.float64)[lv.astype(np.intp)] ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``level_rms_error`` only when set, so exact devices keep the
        header of earlier images."""
        d: dict[str, Any] = {
            "levels": self.levels,
            "g_min_us": self.g_min_us,
            "g_max_us": self.g_max_us,
            "read_v": self.read_v,
        }
        if self.level_rms_error:
            d["level_rms_error"] = list(self.level_rms_error)
        for name, default in sorted(self._OPTIONAL.items()):  # unsliced: the earlier header
            if getattr(self, name) != default:
                d[name] = getattr(self, name)
        return d


def conductance_of_level(device: Cell, level: np.ndarray) -> np.ndarray:
    """Conductance in microsiemens of (possibly fractional) level indices."""
    return device.g_min_us + np.asarray(level, dtype=np.float64) * device.step_us


def level_of_conductance(device: Cell, g_us: np.ndarray) -> np.ndarray:
    """Fractional level index of a conductance; exact inverse of :func:`conductance_of_level`."""
    return (np.asarray(g_us, dtype=np.float64) - device.g_min_us) / device.step_us


@dataclass(frozen=True)
class Geometry:
    """Shape of one chip: ``tiles`` crossbars of ``rows`` x ``cols`` cells (from the fault map)."""

    tiles: int
    rows: int
    cols: int


# --------------------------------------------------------------------------- the rest of the chip


@dataclass(frozen=True)
class Programming:
    """Write-verify programming of one cell, with NeuroSim's non-linear weight update.

    A cell starts from a full reset at ``g_min``. Each iteration reads it (with read noise),
    stops if it is within ``tolerance_levels`` of the target, else applies the number of pulses a
    *linear* device would need; the real device moves along its non-linear potentiation (LTP,
    conductance up) or depression (LTD, down) curve ``G(x) = B (1 - exp(-x / A)) + g_min``,
    plus cycle-to-cycle noise. ``pulses = 0`` means ideal programming: every cell lands exactly
    on its target level.
    """

    pulses: int = 0
    """Identical write pulses that take a cell across its whole range, ``g_min`` to ``g_max``
    (NeuroSim ``maxNumLevelLTP``/``LTD``); 0 = ideal, exact programming."""
    nl_ltp: float = 0.0
    """Non-linearity label of the potentiation curve (NeuroSim ``NL_LTP``), 0 = linear, up to 9;
    label ``n`` bends the normalised curve ``0.099 n`` away from the straight line at most."""
    nl_ltd: float = 0.0
    """Non-linearity label of the depression curve (NeuroSim ``NL_LTD``), 0 = linear, down to -9
    (negative: depression is fast near ``g_max`` and slow near ``g_min``)."""
    c2c_sigma: float = 0.0
    """Cycle-to-cycle variation: standard deviation of the conductance change of one write step,
    as a fraction of ``g_max - g_min``, times ``sqrt(pulses in the step)`` (NeuroSim: 0.035)."""
    tolerance_levels: float = 0.5
    """Verify window: a cell is accepted when it reads within this many level steps of its
    target."""
    max_iterations: int = 20
    """Program-and-verify iterations before the controller gives up on a cell."""

    _SECTION: ClassVar[str] = "programming"
    _RULES: ClassVar[dict[str, Rule]] = {
        "pulses": Rule(int, 0, 1_000_000),
        "nl_ltp": Rule(float, 0, 9),
        "nl_ltd": Rule(float, -9, 0),
        "c2c_sigma": Rule(float, 0, 1),
        "tolerance_levels": Rule(float, 0, 100, lo_open=True),
        "max_iterations": Rule(int, 1, 10_000),
    }

    def __post_init__(self) -> None:
        validate(self)

    @property
    def ideal(self) -> bool:
        return self.pulses == 0


@dataclass(frozen=True)
class Read:
    """Reading a crossbar: one read pulse per matrix-vector product (MVM)."""

    noise_rel: float = 0.0
    """Read noise: standard deviation of a cell's read current relative to its conductance,
    drawn anew on every read (NeuroSim ``sigmaReadNoise``: 0.0289)."""
    pulse_ns: float = 10.0
    """Read pulse width (rows driven and columns settled) of one MVM, in nanoseconds."""

    _SECTION: ClassVar[str] = "read"
    _RULES: ClassVar[dict[str, Rule]] = {
        "noise_rel": Rule(float, 0, 1),
        "pulse_ns": Rule(float, 0, 1e6, lo_open=True),
    }

    def __post_init__(self) -> None:
        validate(self)


IDEAL_BITS = 24
"""Converter resolution that means "ideal": float32 has 24 significant bits, so a converter of
this many bits is emulated as exact (no rounding)."""


ADC_READS = ("column", "pair")
"""Values of :attr:`Converters.adc`: one conversion per column, or one per column pair."""


@dataclass(frozen=True)
class Converters:
    """DAC on every row, ADC on every column (or column pair) of a tile; digital shift-and-add
    after the ADC."""

    adc_bits: int = IDEAL_BITS
    """ADC resolution per column read, in bits (24 = ideal)."""
    dac_bits: int = IDEAL_BITS
    """Input DAC resolution, in bits of magnitude (24 = ideal)."""
    adc_range: str = "dynamic"
    """How the ADC full scale is set. ``dynamic``: per inference (per input vector for
    Gemm/MatMul, per feature map for Conv) and per tile slice, from 0 (or the most negative
    column current) up to the largest column current — the per-sample analogue of NeuroSim's
    min-max partial-sum quantiser. ``calibrated``: fixed per tile slice, the extreme column
    currents seen on a calibration batch (the first batch of the data) times ``headroom``."""
    dac_range: str = "dynamic"
    """How the DAC full scale is set: ``dynamic``, the largest ``|x|`` of each inference (as
    ``adc_range``); ``calibrated``, fixed per layer, the largest ``|x|`` of the calibration batch
    times ``headroom`` (larger inputs clip)."""
    headroom: float = 1.0
    """Full scale of a ``calibrated`` converter relative to the calibration extremes (> 1 leaves
    room for unseen inputs; < 1 clips the largest values for finer steps)."""
    cols_per_adc: int = 8
    """Columns that share one ADC through a multiplexer (they convert one after another)."""
    adc: str = "column"
    """What one ADC conversion reads. ``column`` (NeuroSim): the ``+`` and the ``-`` column of a
    pair are converted apart and subtracted digitally, two conversions per output. ``pair``: the
    two bit-line currents are subtracted in analog and one conversion of the signed difference
    reads the pair (one ADC input per pair, ``docs/device.md``)."""

    _SECTION: ClassVar[str] = "converters"
    _OPTIONAL: ClassVar[dict[str, Any]] = {"adc": "column"}
    """Fields a device without ``base`` may leave out (their default is every earlier
    device's behaviour, so older files and image headers still load)."""
    _RULES: ClassVar[dict[str, Rule]] = {
        "adc_bits": Rule(int, 1, IDEAL_BITS),
        "dac_bits": Rule(int, 1, IDEAL_BITS),
        "adc_range": Rule(str, choices=("dynamic", "calibrated")),
        "dac_range": Rule(str, choices=("dynamic", "calibrated")),
        "headroom": Rule(float, 0, 100, lo_open=True),
        "cols_per_adc": Rule(int, 1, 4096),
        "adc": Rule(str, choices=ADC_READS),
    }

    def __post_init__(self) -> None:
        validate(self)

    @property
    def ideal(self) -> bool:
        return self.adc_bits >= IDEAL_BITS and self.dac_bits >= IDEAL_BITS

    @property
    def pair(self) -> bool:
        """One ADC conversion per column pair (the currents subtracted in analog)."""
        return self.adc == "pair"

    @property
    def reads_per_output(self) -> int:
        """ADC conversions that read one output of a slice: 2 (``column``) or 1 (``pair``)."""
        return 1 if self.pair else 2


@dataclass(frozen=True)
class Costs:
    """Energy and time of the operations an inference is made of (estimates, not a circuit
    simulation; the cell read energy comes from the conductances themselves)."""

    adc_energy_pj: float = 2.0
    """Energy of one ADC conversion (one column read), in picojoules."""
    adc_time_ns: float = 1.0
    """Time of one ADC conversion, in nanoseconds."""
    dac_energy_pj: float = 0.05
    """Energy of driving one row for one MVM (one DAC conversion), in picojoules."""
    digital_op_pj: float = 0.05
    """Energy of one digital operation (add, multiply, compare) on the periphery, picojoules."""
    digital_gops: float = 100.0
    """Throughput of the digital periphery, in 10^9 operations per second."""

    _SECTION: ClassVar[str] = "costs"
    _RULES: ClassVar[dict[str, Rule]] = {
        "adc_energy_pj": Rule(float, 0, 1e9),
        "adc_time_ns": Rule(float, 0, 1e9),
        "dac_energy_pj": Rule(float, 0, 1e9),
        "digital_op_pj": Rule(float, 0, 1e9),
        "digital_gops": Rule(float, 0, 1e9, lo_open=True),
    }

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Hardware:
    """A device technology as the verifying runtime emulates it (a *device preset*)."""

    name: str = "ideal"
    """Preset or file name, for reports."""
    source: str = field(default="", compare=False)
    """The device file it was read from (empty for a preset or a dict); named in errors, not
    part of the device (two equal files make equal devices)."""
    tile_rows: int = 128
    """Rows per crossbar tile of this chip family (synthetic chips in sweeps use it)."""
    tile_cols: int = 128
    """Columns per crossbar tile (even: outputs use column pairs)."""
    cell: Cell = field(default_factory=Cell)
    programming: Programming = field(default_factory=Programming)
    read: Read = field(default_factory=Read)
    converters: Converters = field(default_factory=Converters)
    costs: Costs = field(default_factory=Costs)

    _SECTION: ClassVar[str] = "device"
    _RULES: ClassVar[dict[str, Rule]] = {
        "tile_rows": Rule(int, 1, 1 << 16),
        "tile_cols": Rule(int, 2, 1 << 16),
    }

    def __post_init__(self) -> None:
        validate(self)
        if self.tile_cols % 2:
            raise bad("device", "tile_cols", self.tile_cols, "an even integer (column pairs)")

    @property
    def exact(self) -> bool:
        """True when nothing but stuck cells separates the chip from its image."""
        return self.programming.ideal and self.read.noise_rel == 0 and self.converters.ideal

    @property
    def needs_tile_mode(self) -> bool:
        """True when the periphery (converters, read noise) is not ideal."""
        return not self.converters.ideal or self.read.noise_rel > 0

    def check_tiles(self, rows: int, cols: int, source: str) -> None:
        """BadDevice unless a chip with ``rows x cols`` tiles (its fault map ``source``) has this
        device's tiles."""
        if (self.tile_rows, self.tile_cols) != (rows, cols):
            raise BadDevice(f"{self.label} has {self.tile_rows}x{self.tile_cols} tiles but "
                            f"fault map {source} has {rows}x{cols}; expected the same tiles")

    @property
    def label(self) -> str:
        """How errors name this device: its file if it came from one, else its preset name."""
        return f"device file {self.source}" if self.source else f"device {self.name}"

    def with_cell(self, cell: Cell) -> Hardware:
        return replace(self, cell=cell)

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-ready dict, the TOML layout; :func:`hardware_from_dict` inverts it."""
        cell = self.cell.to_dict()
        cell.pop("level_rms_error", None)
        return {
            "name": self.name,
            "tile_rows": self.tile_rows,
            "tile_cols": self.tile_cols,
            "cell": cell,
            **{s: _plain(getattr(self, s)) for s in _SECTIONS if s != "cell"},
        }


def _plain(obj: Any) -> dict[str, Any]:
    """The fields of one section; an optional field at its default is left out, so a device
    that does not use it writes the header of earlier images."""
    optional: dict[str, Any] = getattr(obj, "_OPTIONAL", {})
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.name not in optional or getattr(obj, f.name) != optional[f.name]}


_SECTIONS: dict[str, type] = {
    "cell": Cell,
    "programming": Programming,
    "read": Read,
    "converters": Converters,
    "costs": Costs,
}
_TOP_KEYS = ("name", "base", "tile_rows", "tile_cols")


# --------------------------------------------------------------------------- presets

MAX_DEVICE_BYTES = 1 << 20
"""Largest device TOML file :func:`load_hardware` reads (1 MiB)."""

PRESETS: dict[str, Hardware] = {
    "ideal": Hardware(name="ideal"),
    "neurosim": Hardware(
        name="neurosim",
        tile_rows=128,
        tile_cols=128,
        cell=Cell(levels=16, g_min_us=10.0, g_max_us=100.0, read_v=0.5),
        programming=Programming(
            pulses=64, nl_ltp=4.0, nl_ltd=-4.0, c2c_sigma=0.035, tolerance_levels=0.5,
            max_iterations=20,
        ),
        read=Read(noise_rel=0.0289, pulse_ns=10.0),
        converters=Converters(
            adc_bits=5, dac_bits=8, adc_range="calibrated", dac_range="calibrated",
            headroom=1.0, cols_per_adc=8,
        ),
        costs=Costs(),
    ),
}
"""Named device presets. ``ideal``: the exact 16-level cell (g 1..100 uS), ideal converters, no
noise — today's behaviour. ``neurosim``: a DNN+NeuroSim-like RRAM: 128x128 tiles, 16 levels
(4-bit cells) over 10..100 uS (on/off ratio 10), read at 0.5 V with 2.89 % read noise, written
by write-verify with 64 pulses full range, non-linearity LTP 4 / LTD -4 and 3.5 %
cycle-to-cycle variation, 8-bit DAC and 5-bit ADC (shared by 8 columns) whose ranges are
calibrated on the first batch, as NeuroSim sets them from the partial sums it sees."""


def preset_names() -> list[str]:
    return sorted(PRESETS)


def load_hardware(spec: str | os.PathLike[str]) -> Hardware:
    """A preset by name, or a TOML device file (``*.toml``); errors are one BadDevice line."""
    s = os.fspath(spec)
    if s in PRESETS:
        return PRESETS[s]
    if not s.endswith(".toml") and not os.path.exists(s):
        raise BadDevice(
            f"device {s!r}: no such preset or file; expected one of {', '.join(preset_names())} "
            "or a .toml file"
        )
    try:
        with open(s, "rb") as f:
            raw = f.read(MAX_DEVICE_BYTES + 1)
    except FileNotFoundError:
        raise BadDevice(f"{s}: no such file; expected a device .toml file") from None
    except IsADirectoryError:
        raise BadDevice(f"{s}: is a directory; expected a device .toml file") from None
    except OSError as e:
        raise BadDevice(f"{s}: cannot read ({e.strerror or e}); expected a device .toml file"
                        ) from None
    if len(raw) > MAX_DEVICE_BYTES:
        raise BadDevice(f"{s}: larger than {MAX_DEVICE_BYTES} bytes; expected a device .toml "
                        "file (docs/limits.md)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise BadDevice(f"{s}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); expected "
                        "a UTF-8 device .toml file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadDevice(f"{s}: not valid TOML ({e})") from None
    except RecursionError:
        raise BadDevice(f"{s}: not valid TOML (nested too deep)") from None
    stem = os.path.splitext(os.path.basename(s))[0]
    return replace(hardware_from_dict(doc, source=s, default_name=stem), source=s)


def hardware_from_dict(
    doc: dict[str, Any], *, source: str = "device", default_name: str = "custom"
) -> Hardware:
    """Build and validate a :class:`Hardware` from the TOML layout (also the image header's).

    With ``base = "<preset>"`` every field is optional and overrides the preset; without it
    every field of every section is required. ``[cell]`` may give ``on_off_ratio`` instead of
    ``g_min_us`` (``g_min_us = g_max_us / on_off_ratio``).
    """
    try:
        return _from_dict(doc, default_name)
    except BadDevice as e:
        raise BadDevice(f"{source}: {str(e).removeprefix('device: ')}") from None


def _from_dict(doc: dict[str, Any], default_name: str) -> Hardware:
    if not isinstance(doc, dict):
        raise BadDevice(f"device: the document is {type(doc).__name__}; expected a table")
    for k in doc:
        if k not in _TOP_KEYS and k not in _SECTIONS:
            raise BadDevice(
                f"device: unknown key {k!r}; expected {', '.join(_TOP_KEYS)} or the sections "
                f"[{'], ['.join(_SECTIONS)}]"
            )
    base_name = doc.get("base")
    if base_name is not None and base_name not in PRESETS:
        raise BadDevice(
            f"device: base = {base_name!r} is out of range; expected one of "
            f"{', '.join(repr(p) for p in preset_names())}"
        )
    base = PRESETS[base_name] if base_name is not None else None
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 200:
        raise BadDevice(f"device: name = {name!r} is out of range; expected a non-empty "
                        "printable one-line string of at most 200 characters")
    top: dict[str, Any] = {}
    for k in ("tile_rows", "tile_cols"):
        if k in doc:
            top[k] = doc[k]
        elif base is None:
            raise BadDevice(f"device: {k} is missing; expected {Hardware._RULES[k].text()} "
                            "(or base = \"<preset>\" to inherit it)")
    for k, v in top.items():
        if not Hardware._RULES[k].ok(v):
            raise bad("device", k, v, Hardware._RULES[k].text())
    parts: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise BadDevice(f"device: [{section}] is a {type(table).__name__}; expected a table")
        parts[section] = _section(section, cls, table, getattr(base, section, None))
    return Hardware(name=name, **top, **parts) if base is None else replace(
        base, name=name, **top, **parts
    )


def _section(section: str, cls: type, table: dict[str, Any], base: Any) -> Any:
    names = [f.name for f in fields(cls) if f.name != "level_rms_error"]
    allowed = names + (["on_off_ratio"] if cls is Cell else [])
    for k in table:
        if k not in allowed:
            raise BadDevice(
                f"device: unknown key {k!r} in [{section}]; expected one of {', '.join(allowed)}"
            )
    table = dict(table)
    rules: dict[str, Rule] = cls._RULES  # type: ignore[attr-defined]
    if cls is Cell and "on_off_ratio" in table:
        if "g_min_us" in table:
            raise BadDevice("device: [cell] gives both g_min_us and on_off_ratio; expected one")
        ratio = table.pop("on_off_ratio")
        ratio_rule = Rule(float, 1, lo_open=True)
        if not ratio_rule.ok(ratio):
            raise bad("cell", "on_off_ratio", ratio, ratio_rule.text())
        g_max = table.get("g_max_us", base.g_max_us if base is not None else None)
        if g_max is None:
            raise BadDevice(
                f"device: cell.g_max_us is missing; expected {rules['g_max_us'].text()}"
            )
        if not rules["g_max_us"].ok(g_max):
            raise bad("cell", "g_max_us", g_max, rules["g_max_us"].text())
        table["g_min_us"] = float(g_max) / float(ratio)
    kwargs: dict[str, Any] = {}
    for n in names:
        rule: Rule | None = rules.get(n)
        if n in table:
            v = table[n]
            if rule is not None and rule.kind is float and isinstance(v, int) and not isinstance(
                v, bool
            ):
                v = float(v)
            if rule is not None and not rule.ok(v):
                raise bad(section, n, v, rule.text())
            kwargs[n] = v
        elif base is None and n not in getattr(cls, "_OPTIONAL", {}):
            hint = rule.text() if rule is not None else "a value"
            extra = " or on_off_ratio" if n == "g_min_us" else ""
            raise BadDevice(
                f"device: {section}.{n}{extra} is missing; expected {hint} "
                "(or base = \"<preset>\" to inherit it)"
            )
    if base is None:
        return cls(**kwargs)
    return replace(base, **kwargs)
