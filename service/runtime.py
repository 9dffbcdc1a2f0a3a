"""The one ONNX Runtime wrapper: provider choice, threads, and inputs read from the session."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from service.errors import ModelLoadError

Device = Literal["auto", "cpu", "cuda"]

_ORT_TO_NUMPY: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def gpu_present() -> bool:
    """True when an NVIDIA driver is loaded; ORT's CUDA provider is only tried then."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def wanted_provider(device: Device) -> str:
    """The provider `device` asks for: CUDA for `cuda`, and for `auto` where a GPU is present."""
    want_cuda = device == "cuda" or (device == "auto" and gpu_present())
    return "CUDAExecutionProvider" if want_cuda else "CPUExecutionProvider"


def providers_for(device: Device) -> list[str]:
    """CUDA first where asked for (or, with `auto`, where a GPU and the CUDA build are present)."""
    if wanted_provider(device) == "CUDAExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
        _preload_cuda()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _preload_cuda() -> None:
    """Loads CUDA and cuDNN from the nvidia pip wheels (`onnxruntime-gpu[cuda,cudnn]`, which the gpu
    image installs) before a CUDA session is made; where they are not installed, the system's
    libraries are used as before, and a failure shows as a provider fallback."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):  # a failure is reported where it matters: OnnxModel.fallback
            preload()


def fallback_note(wanted: str, running: str) -> str | None:
    """None when a session runs on the provider it was asked for; else what went wrong, in words.
    ONNX Runtime falls back to the CPU without an error when the CUDA provider cannot load (a
    CUDA or cuDNN library missing, a build for another CUDA), so this is checked, not assumed."""
    if wanted == running:
        return None
    available = ", ".join(ort.get_available_providers())
    return (
        f"asked for {wanted} but runs on {running} (this onnxruntime offers: {available}); "
        "check that the GPU is visible and that onnxruntime-gpu matches the image's CUDA"
    )


@dataclass(frozen=True)
class InputSpec:
    """One graph input as the session reports it; dims are ints, or None where dynamic."""

    name: str
    dtype: type[np.generic]
    shape: tuple[int | None, ...]


class OnnxModel:
    """One InferenceSession; `run` casts each named input to the dtype the graph declares.

    On the CPU provider, `intra_op_threads` = N > 1 runs a batch as N slices in parallel, each on
    one ORT thread, rather than one call on N threads: for the small convolutional networks served
    here a row costs about the same at batch 32 as at batch 1, and slices in parallel did 1.5x
    the rows per second of one call on two threads (`make bench-core`). A batch smaller than N
    (a lone image at low load) runs whole on all N threads. Every row's output is the same either
    way (the kernels compute each sample on its own)."""

    def __init__(
        self,
        path: Path,
        *,
        device: Device = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        slices: bool = True,
    ) -> None:
        if not path.is_file():
            raise ModelLoadError(f"{path}: ONNX file not found")
        providers = providers_for(device)
        self.ways = intra_op_threads if slices and providers[0] == "CPUExecutionProvider" else 1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if self.ways > 1 else intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own classes for a corrupt or truncated file
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({e})") from None
        self._slices = ThreadPoolExecutor(self.ways - 1, thread_name_prefix="onnx-slice") if self.ways > 1 else None
        # A batch smaller than `ways` runs whole, on all the threads (a lone image at low load).
        # That session's pool threads sleep between calls rather than spin, ONNX Runtime's
        # default: in a replica a spinning pool thread takes a core from the event loop (which
        # parses the next request and encodes PNGs) and, when a second diffusion lane joins and
        # the batch moves to the slices, from the slices themselves. GAN 1-image requests at
        # 100/s had a longer p99 with spinning threads, and so did diffusion-20 at 5-10 requests/s
        # (`make bench`: genserve's latency ladders beside peer `spinning`'s), though a lane's
        # steps follow each other.
        self._whole = self.session
        if self.ways > 1:
            opts.intra_op_num_threads = intra_op_threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._whole = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.path = path
        # Why this session does not run on the provider it was asked for, or None (fixed once made).
        self.fallback: str | None = fallback_note(wanted_provider(device), self.provider)
        self.inputs = {i.name: _input_spec(i) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def check_io(self, inputs: dict[str, str], output: str) -> None:
        """Fails with one message naming the file when the card's roles do not match the graph."""
        problems = [
            f"input {name!r} (role {role}) is not in the graph"
            for role, name in inputs.items()
            if name not in self.inputs
        ]
        extra = set(self.inputs) - set(inputs.values())
        if extra:
            problems.append(f"graph inputs {sorted(extra)} are not named in the card")
        if output not in self.outputs:
            problems.append(f"output {output!r} is not in the graph (it has {self.outputs})")
        if problems:
            raise ModelLoadError(f"{self.path}: card does not match ONNX graph: " + "; ".join(problems))

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Runs the graph for one output; see `run_all`."""
        return self.run_all([output], feeds)[0]

    def run_all(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Runs the graph for the named outputs; inputs are cast to the declared dtypes. A batch
        is split into `ways` slices run in parallel where every input has the same batch size."""
        cast = {name: np.ascontiguousarray(arr, dtype=self.inputs[name].dtype) for name, arr in feeds.items()}
        sizes = {len(arr) if arr.ndim else 0 for arr in cast.values()}
        batch = next(iter(sizes)) if len(sizes) == 1 else 0
        if batch < self.ways or self._slices is None:
            return [np.asarray(a) for a in self._whole.run(outputs, cast)]
        ways = self.ways
        parts = [
            dict(zip(cast, chunk, strict=True))
            for chunk in zip(*(np.array_split(a, ways) for a in cast.values()), strict=True)
        ]
        rest = [self._slices.submit(self.session.run, outputs, part) for part in parts[1:]]
        first = self.session.run(outputs, parts[0])
        done = [first, *(f.result() for f in rest)]
        return [np.concatenate([np.asarray(d[i]) for d in done]) for i in range(len(outputs))]


def _input_spec(node: ort.NodeArg) -> InputSpec:
    dtype = _ORT_TO_NUMPY.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"graph input {node.name!r} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return InputSpec(node.name, dtype, shape)
