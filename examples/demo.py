"""The ``make demo`` job: one synthetic 1 % (5:1) chip for the MNIST example, built with the
per-chip mapping and with the two-column baseline, both checked by the verifying runtime.

Runs the real ``rcompile`` commands (as a factory script would) and prints a short table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "mnist", "mnist_cnn.onnx")
DATA = os.path.join(HERE, "mnist", "test.npz")
CALIB = os.path.join(HERE, "mnist", "calib.npz")


def rcompile(*args: str) -> str:
    print("$ rcompile " + " ".join(os.path.relpath(a) if a.startswith(HERE) else a for a in args))
    done = subprocess.run([sys.executable, "-m", "rcompile", *args], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr.strip() or f"rcompile {args[0]} failed")
    return done.stdout


def main(out: str = "out") -> None:
    os.makedirs(out, exist_ok=True)
    chip = os.path.join(out, "chip.npz")
    print(rcompile("faultmap", "synth", "--like", MODEL, "--rate", "0.01", "--ratio", "5:1",
                   "--fault-seed", "1", "-o", chip).strip())
    rows = []
    for strategy in ("full", "two-column"):
        image = os.path.join(out, f"chip-{strategy}.rimg")
        extra = ["--calib", CALIB] if strategy == "full" else []
        rcompile("build", MODEL, "--faultmap", chip, "--strategy", strategy, "-o", image, *extra)
        rep = json.loads(rcompile("verify", image, "--faultmap", chip, "--data", DATA,
                                  "--model", MODEL, "--json"))
        rows.append((strategy, rep))
    first = rows[0][1]
    print()
    print(f"chip {first['chip_id']}: 1 % stuck cells (SA1:SA0 = 5:1), {first['n_samples']} "
          "labelled test digits")
    print(f"  {'float model (fault-free)':<34} {100 * first['float_accuracy']:6.2f} %")
    print(f"  {'fault-free chip (16 levels)':<34} {100 * first['fault_free_accuracy']:6.2f} %")
    for strategy, rep in rows:
        print(f"  {'this chip, ' + strategy:<34} {100 * rep['accuracy']:6.2f} %")


if __name__ == "__main__":
    main(*sys.argv[1:])
