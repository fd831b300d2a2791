"""Compatibility matrix: real third-party architectures through synth -> build -> verify.

Exports torchvision, ``torch.nn``, ``transformers`` and scikit-learn models (random init or
trained on data a package ships; nothing is downloaded) with PyTorch's legacy exporter at
opsets 11, 13 and 17, with its dynamo exporter and with ``skl2onnx``; then runs every graph
through the real CLI with the default command, no option changed::

    rcompile faultmap synth --like MODEL --rate R -o chip.npz        (R = 0 and 0.1)
    rcompile build MODEL --faultmap chip.npz -o chip.rimg --json
    rcompile verify chip.rimg --faultmap chip.npz --data data.npz --json

(``--json`` only changes how the result is printed) and writes ``docs/compatibility.md``.
The chip against the float model is measured apart, in the compiler's own environment: the
emulated chip's outputs (``runtime.emulated_model`` with the chip's effective weights) against
onnxruntime on the exported graph, per-sample cosine of the first floating output, averaged.

PyTorch, torchvision, transformers, scikit-learn and skl2onnx are optional imports; run it
with an environment that has them (they are never dependencies of the compiler)::

    /work/exportenv/bin/python benchmarks/compat.py --out /work/compat-models \\
        --rcompile .venv/bin/rcompile --doc docs/compatibility.md

``--only NAME[,NAME]`` limits the run to some graphs (substring match); ``--export-only``
stops after exporting. The exported graphs and their data stay in ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_SAMPLES = 8
"""Samples in every graph's random evaluation set."""
FAULT_RATE = 0.1
"""Fault rate of the faulty chip (SA1:SA0 5:1, the synth default)."""


@dataclass
class Graph:
    """One exported graph of the matrix."""

    name: str
    model: str
    exporter: str
    opset: int
    batch: str
    """How the exported graph declares axis 0 of its inputs."""
    path: str = ""
    data: str = ""
    export_error: str = ""


@dataclass
class Result:
    graph: Graph
    crossbar_ops: int = 0
    weights: int = 0
    crossbar_types: dict[str, int] = field(default_factory=dict)
    digital: dict[str, list[str]] = field(default_factory=dict)
    cos_clean: float | None = None
    cos_faulty: float | None = None
    verify_cos: float | None = None
    build_s: float | None = None
    failure: str = ""
    wall_s: float = 0.0
    """Seconds this graph took in the matrix run (export excluded)."""
    commit: str = ""
    """The compiler's commit that produced this result."""


# ---------------------------------------------------------------- models (PyTorch side)


def _torch_models() -> list[tuple[str, Callable[[], Any], Callable[[int], tuple[Any, ...]],
                                  list[str], list[tuple[str, int, str]]]]:
    """``(name, make module, make example inputs(n), input names, [(exporter, opset, batch)])``.

    ``batch`` is ``dynamic`` (a symbolic axis 0) or ``fixed`` (exported at batch 1)."""
    import torch
    import torchvision
    from torch import nn

    tv = torchvision.models

    def image(size: int) -> Callable[[int], tuple[Any, ...]]:
        return lambda n: (torch.randn(n, 3, size, size),)

    def seq(t: int, f: int) -> Callable[[int], tuple[Any, ...]]:
        return lambda n: (torch.randn(n, t, f),)

    class Recurrent(nn.Module):
        """Sequence classifier: an LSTM or GRU over [N, T, F], the last step to a linear head."""

        def __init__(self, kind: str, layers: int) -> None:
            super().__init__()
            cell = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = cell(32, 64, num_layers=layers, batch_first=True)
            self.head = nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

    class Encoder(nn.Module):
        """``nn.TransformerEncoder`` (2 layers, d 64, 4 heads), mean-pooled, linear head."""

        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
                                               batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            return self.head(self.enc(x).mean(dim=1))

    class UNet(nn.Module):
        """A small UNet: two down stages, ConvTranspose up-sampling, skip concatenation."""

        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int) -> nn.Module:
                return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                     nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

            self.d1, self.d2, self.mid = block(3, 16), block(16, 32), block(32, 64)
            self.pool = nn.MaxPool2d(2)
            self.u2, self.c2 = nn.ConvTranspose2d(64, 32, 2, stride=2), block(64, 32)
            self.u1, self.c1 = nn.ConvTranspose2d(32, 16, 2, stride=2), block(32, 16)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x: Any) -> Any:
            a = self.d1(x)
            b = self.d2(self.pool(a))
            m = self.mid(self.pool(b))
            y = self.c2(torch.cat([self.u2(m), b], 1))
            y = self.c1(torch.cat([self.u1(y), a], 1))
            return self.out(y)

    class Segment(nn.Module):
        """torchvision's LR-ASPP MobileNetV3-Large (bilinear Resize), the ``out`` head."""

        def __init__(self) -> None:
            super().__init__()
            self.net = tv.segmentation.lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=4)

        def forward(self, x: Any) -> Any:
            return self.net(x)["out"]

    class Bert(nn.Module):
        """A tiny BERT sequence classifier from ``transformers`` (random init)."""

        def __init__(self) -> None:
            super().__init__()
            from transformers import BertConfig, BertForSequenceClassification

            cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=128,
                             max_position_embeddings=64, num_labels=4)
            self.bert = BertForSequenceClassification(cfg)

        def forward(self, ids: Any) -> Any:
            return self.bert(input_ids=ids).logits

    def conv1d() -> nn.Module:
        """A 1-D CNN over [N, 8, 64] (keyword-spotting style): Conv1d + BN + ReLU twice."""
        return nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
                             nn.Conv1d(32, 64, 3, stride=2), nn.BatchNorm1d(64), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 10))

    def vit() -> nn.Module:
        net = tv.VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=4,
                                   hidden_dim=64, mlp_dim=128, num_classes=10)
        nn.init.normal_(net.heads.head.weight, std=0.1)  # torchvision starts it at zero
        return net

    leg = "legacy"
    dyn = "dynamo"
    return [
        ("resnet18", lambda: tv.resnet18(weights=None), image(64), ["input"],
         [(leg, 11, "dynamic"), (dyn, 18, "fixed")]),
        ("resnet50", lambda: tv.resnet50(weights=None), image(64), ["input"],
         [(leg, 13, "dynamic")]),
        ("mobilenet_v2", lambda: tv.mobilenet_v2(weights=None), image(64), ["input"],
         [(leg, 11, "fixed"), (dyn, 18, "fixed")]),
        ("mobilenet_v3_small", lambda: tv.mobilenet_v3_small(weights=None), image(64), ["input"],
         [(leg, 13, "dynamic"), (leg, 17, "fixed")]),
        ("efficientnet_b0", lambda: tv.efficientnet_b0(weights=None), image(64), ["input"],
         [(leg, 17, "dynamic")]),
        ("squeezenet1_0", lambda: tv.squeezenet1_0(weights=None), image(64), ["input"],
         [(leg, 11, "dynamic"), (dyn, 18, "fixed")]),
        ("shufflenet_v2_x0_5", lambda: tv.shufflenet_v2_x0_5(weights=None), image(64), ["input"],
         [(leg, 11, "fixed"), (leg, 17, "dynamic")]),
        ("densenet121", lambda: tv.densenet121(weights=None), image(64), ["input"],
         [(leg, 13, "dynamic")]),
        ("regnet_y_400mf", lambda: tv.regnet_y_400mf(weights=None), image(64), ["input"],
         [(leg, 13, "fixed"), (dyn, 18, "fixed")]),
        ("convnext_tiny", lambda: tv.convnext_tiny(weights=None), image(64), ["input"],
         [(leg, 17, "dynamic")]),
        ("vit_tiny", vit, image(64), ["input"],
         [(leg, 14, "dynamic"), (leg, 17, "fixed"), (dyn, 18, "fixed")]),
        ("lraspp_mobilenet_v3", Segment, image(64), ["input"], [(leg, 11, "dynamic")]),
        ("unet_convtranspose", UNet, image(64), ["input"],
         [(leg, 11, "dynamic"), (leg, 17, "fixed"), (dyn, 18, "fixed")]),
        ("conv1d_classifier", conv1d, lambda n: (torch.randn(n, 8, 64),), ["input"],
         [(leg, 11, "dynamic"), (dyn, 18, "fixed")]),
        ("lstm_classifier", lambda: Recurrent("lstm", 1), seq(16, 32), ["input"],
         [(leg, 11, "dynamic"), (leg, 13, "fixed"), (dyn, 18, "fixed")]),
        ("gru_classifier", lambda: Recurrent("gru", 2), seq(16, 32), ["input"],
         [(leg, 11, "dynamic"), (leg, 17, "fixed"), (dyn, 18, "fixed")]),
        ("transformer_encoder", Encoder, seq(16, 64), ["input"],
         [(leg, 14, "dynamic"), (leg, 17, "fixed"), (dyn, 18, "fixed")]),
        ("bert_tiny", Bert, lambda n: (torch.randint(0, 512, (n, 16)),), ["input_ids"],
         [(leg, 14, "dynamic"), (leg, 17, "fixed"), (dyn, 18, "fixed")]),
    ]


def _randomise_batchnorm(module: Any, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms (a fresh one is identity)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))


def export_torch(out: str, only: list[str]) -> list[Graph]:
    import torch

    graphs = []
    for name, make, inputs, names, exports in _torch_models():
        for exporter, opset, batch in exports:
            tag = f"{name}-{exporter}{opset}-{batch}"
            if only and not any(o in tag for o in only):
                continue
            g = Graph(tag, name, exporter, opset, batch,
                      path=os.path.join(out, tag + ".onnx"), data=os.path.join(out, tag + ".npz"))
            graphs.append(g)
            if os.path.exists(g.path) and os.path.exists(g.data):
                continue
            torch.manual_seed(0)
            module = make().eval()
            _randomise_batchnorm(module, 1)
            example = inputs(1)
            data = inputs(N_SAMPLES)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if exporter == "legacy":
                        axes = None
                        if batch == "dynamic":
                            axes = {n: {0: "batch"} for n in [*names, "output"]}
                        torch.onnx.export(module, example, g.path, opset_version=opset,
                                          dynamo=False, input_names=names,
                                          output_names=["output"], dynamic_axes=axes)
                    else:
                        prog = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                                 input_names=names, output_names=["output"])
                        assert prog is not None
                        prog.save(g.path)
            except Exception as e:  # an exporter failure is a row of the matrix, not a stop
                g.export_error = f"export: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            np.savez(g.data, **{n: t.numpy() for n, t in zip(names, data, strict=True)})
            print(f"exported {tag}", flush=True)
    return graphs


# ---------------------------------------------------------------- models (scikit-learn side)


def export_sklearn(out: str, only: list[str]) -> list[Graph]:
    """scikit-learn models trained on the data sets the package ships (digits, diabetes)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xd, yd = load_digits(return_X_y=True)
    xr, yr = load_diabetes(return_X_y=True)
    xd, xr = xd.astype(np.float32), xr.astype(np.float32)
    models: list[tuple[str, Any, np.ndarray, np.ndarray, list[int]]] = [
        ("sk_mlp_classifier",
         MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0), xd, yd,
         [13, 17]),
        ("sk_logistic_regression", LogisticRegression(max_iter=500), xd, yd, [11, 17]),
        ("sk_scaler_mlp_regressor", make_pipeline(StandardScaler(), MLPRegressor(
            hidden_layer_sizes=(32,), max_iter=500, random_state=0)), xr, yr, [13]),
        ("sk_linear_regression", LinearRegression(), xr, yr, [11]),
        ("sk_ridge", Ridge(), xr, yr, [17]),
        ("sk_pca", PCA(16, random_state=0), xd, yd, [13]),
    ]
    graphs = []
    for name, est, x, y, opsets in models:
        for opset in opsets:
            tag = f"{name}-skl2onnx{opset}-dynamic"
            if only and not any(o in tag for o in only):
                continue
            g = Graph(tag, name, "skl2onnx", opset, "dynamic",
                      path=os.path.join(out, tag + ".onnx"), data=os.path.join(out, tag + ".npz"))
            graphs.append(g)
            if os.path.exists(g.path) and os.path.exists(g.data):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(x, y)
            try:
                opts = {"zipmap": False} if hasattr(est, "predict_proba") else None
                onx = to_onnx(est, x[:1], target_opset=opset,
                              options=None if opts is None else {id(est): opts})
            except Exception as e:
                g.export_error = f"export: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            with open(g.path, "wb") as f:
                f.write(onx.SerializeToString())
            rows = np.random.default_rng(0).choice(len(x), N_SAMPLES, replace=False)
            np.savez(g.data, **{onx.graph.input[0].name: x[rows]})
            print(f"exported {tag}", flush=True)
    return graphs


# ---------------------------------------------------------------- running the CLI


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _float_cosine(helper: list[str], model: str, image: str, chip: str, data: str) -> float:
    """Cosine of the emulated chip against onnxruntime on the float graph (``emulate`` mode
    of this script, run by the compiler's interpreter)."""
    r = _run([*helper, "--emulate", model, image, chip, data], 1800)
    if r.returncode != 0:
        raise RuntimeError(f"emulate: {_last_line(r.stderr)}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["cosine"])


def _batch_text(path: str) -> str:
    """How the graph declares axis 0 of its first input: ``N`` fixed, ``'name'``, or ``?``."""
    import onnx

    t = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type
    if not t.HasField("shape") or not t.shape.dim:
        return "no shape"
    d = t.shape.dim[0]
    if d.HasField("dim_value"):
        return str(d.dim_value)
    return f"'{d.dim_param}'" if d.dim_param else "?"


def run_graph(g: Graph, rc: str, helper: list[str], work: str, log: Any) -> Result:
    res = Result(g)
    if not g.export_error:
        g.batch = _batch_text(g.path)
    if g.export_error:
        res.failure = g.export_error
        return res
    stem = os.path.join(work, g.name)
    for rate in (0.0, FAULT_RATE):
        chip, image = f"{stem}-p{rate}.npz", f"{stem}-p{rate}.rimg"
        steps = [
            ("synth", [rc, "faultmap", "synth", "--like", g.path, "--rate", str(rate), "-o", chip]),
            ("build", [rc, "build", g.path, "--faultmap", chip, "-o", image, "--json"]),
            ("verify", [rc, "verify", image, "--faultmap", chip, "--data", g.data, "--json"]),
        ]
        for step, cmd in steps:
            t0 = time.perf_counter()
            try:
                r = _run(cmd, 3600)
            except subprocess.TimeoutExpired:
                res.failure = f"p={rate} {step}: timed out"
                return res
            dt = time.perf_counter() - t0
            log.write(f"$ {' '.join(cmd)}\n# rc={r.returncode} {dt:.1f}s\n{r.stderr[-3000:]}\n")
            log.flush()
            if r.returncode != 0:
                res.failure = f"p={rate} {step}: {_last_line(r.stderr)}"
                return res
            if step == "build" and rate == 0.0:
                rep = json.loads(r.stdout)
                res.build_s = rep["plan_seconds"] + rep["chip_seconds"]
                res.crossbar_ops = len(rep["crossbar"])
                for c in rep["crossbar"]:
                    res.crossbar_types[c["op_type"]] = res.crossbar_types.get(c["op_type"], 0) + 1
                    res.weights += int(np.prod(c["shape"]))
                for d in rep["digital"]:
                    res.digital.setdefault(d["reason"], []).append(d["op_type"])
            if step == "verify" and rate > 0:
                res.verify_cos = float(json.loads(r.stdout)["output_cosine"])
        try:
            cos = _float_cosine(helper, g.path, image, chip, g.data)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            res.failure = f"p={rate} cosine: {e}"
            return res
        if rate == 0.0:
            res.cos_clean = cos
        else:
            res.cos_faulty = cos
    return res


def emulate_main(model: str, image: str, chip: str, data: str) -> None:
    """Print ``{"cosine": c}``: the emulated chip against the float graph (needs rcompile)."""
    import onnx

    from rcompile import faultmap as fmap
    from rcompile import image as rimg
    from rcompile import runtime
    from rcompile.data import load_data

    img, fm = rimg.read(image), fmap.load(chip)
    ds = load_data(data, runtime.image_input_specs(img))
    chip_out = runtime.run(runtime.emulated_model(img, runtime.effective_weights(img, fm)), ds)
    float_out = runtime.run(onnx.load(model), ds)
    cos = None
    for a, b in zip(chip_out, float_out, strict=True):
        if not np.issubdtype(b.dtype, np.floating):
            continue  # a label output (e.g. skl2onnx classifiers): the scores follow
        a64 = a.reshape(len(a), -1).astype(np.float64)
        b64 = b.reshape(len(b), -1).astype(np.float64)
        den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
        c = np.where(den == 0, 1.0, np.sum(a64 * b64, axis=1) / np.where(den == 0, 1.0, den))
        cos = float(np.mean(c))
        break
    print(json.dumps({"cosine": cos}))


# ---------------------------------------------------------------- the document


def _digital_text(r: Result) -> str:
    parts = []
    for reason, types in r.digital.items():
        counts: dict[str, int] = {}
        for t in types:
            counts[t] = counts.get(t, 0) + 1
        ops = ", ".join(f"{t}×{c}" if c > 1 else t for t, c in sorted(counts.items()))
        parts.append(f"{reason}: {ops}" if reason != "not a weight op" else ops)
    return "; ".join(parts) or "—"


def _f(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def write_doc(path: str, results: list[Result], versions: dict[str, str], cmd: str,
              pending: list[Graph]) -> None:
    ok = [r for r in results if not r.failure]
    good = [r for r in ok if r.cos_clean is not None and r.cos_clean >= 0.99]
    lines = [
        "# Compatibility matrix: third-party architectures",
        "",
        "Written by `benchmarks/compat.py`; re-run it with",
        "",
        "```sh",
        cmd,
        "```",
        "",
        "Every graph is exported here from a real third-party architecture (torchvision, "
        "`torch.nn`, `transformers`, scikit-learn) with random weights or trained on data the "
        "package ships (nothing is downloaded), and goes through the default command, no option "
        "changed: `rcompile faultmap synth --like MODEL --rate R` (R = 0 and 0.1, SA1:SA0 5:1, "
        "16-level cells, 128×128 tiles), `rcompile build MODEL --faultmap chip.npz`, "
        "`rcompile verify chip.rimg --faultmap chip.npz --data data.npz` on 8 random samples. "
        "*cos clean* / *cos 10 %*: per-sample cosine of the emulated chip's first floating output "
        "against onnxruntime on the float graph, fault-free chip and 10 % chip; *verify cos*: "
        "what `verify` reports at 10 % (the faulty chip against the fault-free chip). "
        "*build s*: plan + per-chip stage of the fault-free build, as `build` reports it. "
        "*batch*: axis 0 of the first input as the graph declares it (a size, a symbolic "
        "name, `?` = unknown). Attention with PyTorch's legacy exporter starts at opset 14 "
        "(`aten::scaled_dot_product_attention` has no opset-13 form), so the transformer "
        "graphs are exported at 14 and 17 instead of 13 and 17.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}; "
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{sum(r.wall_s for r in results) / 60:.0f} min on a shared 2-core machine."
        + ("" if all(r.commit == versions["rcompile"] for r in results) else
           f" Rows whose *rcompile* column is not {versions['rcompile']} were not re-run on "
           "that commit in time and show the result of the earlier compiler commit named."),
        "",
        *([f"**Incomplete: {len(results)} of {len(results) + len(pending)} graphs run so far "
           f"(not run yet: {', '.join(g.name for g in pending)}).**", ""] if pending else []),
        f"**{len(ok)} of {len(results)} graphs build and verify** on both chips; "
        f"{len(good)} reach a fault-free cosine ≥ 0.99 against the float model.",
        "",
        "| graph | exporter | opset | batch | crossbar ops (weights) | digital (why) | cos clean "
        "| cos 10 % | verify cos | build s | rcompile | failure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r.graph
        xb = ", ".join(f"{t}×{c}" for t, c in sorted(r.crossbar_types.items()))
        xb = f"{r.crossbar_ops}: {xb} ({r.weights:,})" if r.crossbar_ops else "—"
        fail = r.failure.replace("|", "\\|")
        if not fail and (r.cos_clean is None or r.cos_clean < 0.99):
            fail = "fault-free cosine < 0.99"
        lines.append(
            f"| {g.model} | {g.exporter} | {g.opset} | {g.batch} | {xb} | "
            f"{_digital_text(r).replace('|', '/')} | {_f(r.cos_clean)} | {_f(r.cos_faulty)} | "
            f"{_f(r.verify_cos)} | {_f(r.build_s, 1)} | {r.commit} | {fail or ''} |"
        )
    reasons: dict[str, set[str]] = {}
    for r in results:
        for reason in r.digital:
            if reason != "not a weight op":
                reasons.setdefault(reason, set()).add(r.graph.model)
    lines += ["", "## What stays digital, and why", "",
              "Besides the ops that are not weight ops at all (activations, pooling, shape "
              "arithmetic, normalisation, softmax), `build` kept these on the digital periphery "
              "with a reason of its own:", ""]
    lines += [f"- *{reason}*: {', '.join(sorted(models))}"
              for reason, models in sorted(reasons.items())] or ["- none"]
    bad = [r for r in results if not r.failure and (r.cos_clean or 0) < 0.99]
    failed = [r for r in results if r.failure]
    lines += ["", "## Below target or failing", ""]
    lines += [f"- {r.graph.name}: fault-free cosine {_f(r.cos_clean)} < 0.99" for r in bad]
    lines += [f"- {r.graph.name}: {r.failure}" for r in failed]
    if not bad and not failed:
        lines.append("- none: every graph builds and verifies, fault-free cosine ≥ 0.99.")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _versions(rc: str) -> dict[str, str]:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(rc)))
    head = subprocess.run(  # the last commit that changed the compiler itself
        ["git", "-C", repo, "log", "-1", "--format=%h", "--", "rcompile", "passes",
         "pyproject.toml"], text=True, capture_output=True, check=False).stdout.strip()
    out: dict[str, str] = {"rcompile": head or "?"}
    for mod in ("torch", "torchvision", "transformers", "sklearn", "skl2onnx", "onnx",
                "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/compat-models", help="Scratch dir for the graphs.")
    ap.add_argument("--rcompile", default=os.path.join(".venv", "bin", "rcompile"))
    ap.add_argument("--doc", default=os.path.join("docs", "compatibility.md"))
    ap.add_argument("--only", default="", help="Comma-separated substrings of graph names.")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--doc-only", action="store_true",
                    help="With --resume: write the doc from the stored results, run nothing.")
    ap.add_argument("--resume", action="store_true",
                    help="Keep the results in the JSON file that this same rcompile commit made.")
    ap.add_argument("--json", help="Write the results as JSON here [default: OUT/results.json].")
    ap.add_argument("--emulate", nargs=4, metavar=("MODEL", "IMAGE", "CHIP", "DATA"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.emulate:
        emulate_main(*args.emulate)
        return
    os.makedirs(args.out, exist_ok=True)
    only = [o for o in args.only.split(",") if o]
    graphs = export_torch(args.out, only) + export_sklearn(args.out, only)
    if args.export_only:
        return
    rc = os.path.abspath(args.rcompile)
    helper = [os.path.join(os.path.dirname(rc), "python"), os.path.abspath(__file__)]
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    versions = _versions(rc)
    store = args.json or os.path.join(args.out, "results.json")
    done: dict[str, Result] = {}
    stale: dict[str, Result] = {}  # made by another compiler commit: only for --doc-only
    if args.resume:
        stores = [store, *sorted(glob.glob(os.path.join(args.out, "results-*.json")))]
        for path in dict.fromkeys(stores):
            if not os.path.exists(path):
                continue
            with open(path) as f:
                for d in json.load(f):
                    if "rcompile" in d:  # the key's older name
                        d["commit"] = d.pop("rcompile")
                    gfields = {k: d.pop(k) for k in Graph.__dataclass_fields__}
                    r = Result(Graph(**gfields), **d)
                    (done if r.commit == versions["rcompile"] else stale).setdefault(
                        r.graph.name, r)
    cmd = ("/work/exportenv/bin/python benchmarks/compat.py --out /work/compat-models "
           "--rcompile .venv/bin/rcompile --doc docs/compatibility.md")
    # small graphs first: a run cut short still covers most of the matrix
    todo = [] if args.doc_only else sorted((g for g in graphs if g.name not in done),
                  key=lambda g: os.path.getsize(g.path) if os.path.exists(g.path) else 0)
    with open(os.path.join(args.out, "compat.log"), "a") as log:
        for g in todo:
            t0 = time.perf_counter()
            r = run_graph(g, rc, helper, work, log)
            r.wall_s = time.perf_counter() - t0
            r.commit = versions["rcompile"]
            done[g.name] = r
            print(f"{g.name}: {r.failure or 'ok'} cos {_f(r.cos_clean)} / {_f(r.cos_faulty)} "
                  f"({r.wall_s:.0f} s)", flush=True)
            with open(store, "w") as f:
                json.dump([{**r.graph.__dict__,
                            **{k: v for k, v in r.__dict__.items() if k != "graph"}}
                           for r in done.values()], f, indent=1)
            if not only:
                write_doc(args.doc, [done[x.name] for x in graphs if x.name in done],
                          versions, cmd, [x for x in graphs if x.name not in done])
    if args.doc_only:
        done.update({k: v for k, v in stale.items() if k not in done})
    results = [done[g.name] for g in graphs if g.name in done]
    if not only and not todo:
        write_doc(args.doc, results, versions, cmd, [g for g in graphs if g.name not in done])
    n_ok = sum(not r.failure for r in results)
    print(f"{n_ok}/{len(results)} graphs build and verify", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
