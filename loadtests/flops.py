"""FLOPs of an ONNX network per batch row, and this machine's measured matrix-multiply peak.

FLOPs count the multiply-adds of Conv, ConvTranspose, MatMul and Gemm (2 per multiply-add),
from the tensor shapes of a real run at batch 1; element-wise
ops, norms and activations are left out (a few percent for a conv net), so the achieved
FLOP/s computed from this count is a slight underestimate.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def flops_per_row(path: Path, feeds: dict[str, np.ndarray]) -> int:
    """Multiply-add FLOPs of one network call on `feeds` (batch 1), from the real tensor shapes:
    every counted op's inputs and outputs are exposed as graph outputs and read off one run."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in COUNTED]
    wanted = {name for n in nodes for name in [n.input[0], n.output[0], *n.input[1:2]] if name not in weights}
    existing = {o.name for o in model.graph.output}
    for name in sorted(wanted - existing):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {**weights, **{n: list(v.shape) for n, v in zip(names, session.run(names, feeds), strict=True)}}
    total = 0
    for node in nodes:
        x, w, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "Conv":  # each output element: Cin/group * kh * kw multiply-adds
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":  # each input element scatters into Cout/group * kh * kw
            total += 2 * int(np.prod(x)) * int(np.prod(w[1:]))
        else:
            k = x[-2] if attrs.get("transA", 0) else x[-1]
            total += 2 * int(np.prod(out)) * k
    return total


def matmul_peak(seconds: float = 3.0, sizes: tuple[int, ...] = (512, 1024, 2048)) -> dict[str, float]:
    """Best float32 GFLOP/s of a square matrix multiply: numpy (BLAS) and ONNX Runtime (MLAS)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    best = {"numpy": 0.0, "onnxruntime": 0.0}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "mm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        onnx.checker.check_model(model)
        runs = {
            "numpy": functools.partial(np.matmul, a, a),
            "onnxruntime": functools.partial(session.run, None, {"a": a, "b": a}),
        }
        for name, fn in runs.items():
            fn()
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / len(sizes) / 2:
                fn()
                count += 1
            best[name] = max(best[name], 2 * n**3 * count / (time.perf_counter() - t0) / 1e9)
    return best
