"""The lot's report (``OUTDIR/report.jsonl``): what a rerun reads back to resume
(:func:`read_report`), how a chip's new line joins its old one and is binned, and the
summary of a run (:class:`LotSummary`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rcompile.errors import RcompileError

REPORT = "report.jsonl"


@dataclass
class LotSummary:
    chips: int = 0
    ok: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    report: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)
    passed: int = 0
    """Chips whose verified accuracy met ``min_accuracy`` (0 without the gate)."""
    failed: int = 0
    """Chips built and verified below ``min_accuracy``: binned ``fail``, their image kept."""

    def to_dict(self) -> dict[str, Any]:
        return {"chips": self.chips, "ok": self.ok, "skipped": self.skipped,
                "errors": self.errors, "passed": self.passed, "failed": self.failed,
                "seconds": self.seconds, "report": self.report}



def read_report(path: str) -> dict[str, dict[str, Any]]:
    """Lines of an existing report by fault-map file name (last wins; torn lines ignored)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(line, dict) and isinstance(line.get("faultmap"), str):
                    out[line["faultmap"]] = line
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RcompileError(f"{path}: cannot read report ({e.strerror or e})") from e
    return out


def bin_chip(line: dict[str, Any], min_accuracy: float | None) -> dict[str, Any]:
    """The chip's line binned against ``min_accuracy``: a built chip whose verified accuracy is
    at least the threshold gets ``"bin": "pass"``, one below it ``"bin": "fail"`` (its image
    stays, so a lower threshold can pass it again without a rebuild), both with the
    threshold as ``min_accuracy``. Without a threshold an earlier run's bin is dropped; a chip
    in error or without an accuracy is not binned (``line`` itself when nothing changes)."""
    acc = line.get("accuracy")
    if min_accuracy is None and "bin" in line:
        return {k: v for k, v in line.items() if k not in ("bin", "min_accuracy")}
    if min_accuracy is None or line.get("status") == "error" or acc is None:
        return line
    binned = {**line, "bin": "pass" if acc >= min_accuracy else "fail",
              "min_accuracy": min_accuracy}
    return line if binned == line else binned


def merge_line(old: dict[str, Any] | None, got: dict[str, Any]) -> dict[str, Any]:
    """The report line of a chip: a skipped chip keeps its earlier line (``old`` itself, or a
    copy with the new verification when it was verified again); any other result is new."""
    if got["status"] != "skipped" or old is None:
        return got
    keys = ("accuracy", "agreement", "mode", "verify_key")
    fresh: dict[str, Any] = {k: got[k] for k in keys if k in got}
    return {**old, **fresh} if fresh else old


