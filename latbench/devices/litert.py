"""Host backend: LiteRT (``ai-edge-litert``, the TFLite interpreter) on this machine's CPU.

Models are TFLite flatbuffers from ``latbench.export.tflite``. ``kernels="xnnpack"`` (the default,
``host:litert``) runs them as LiteRT does by default, through the XNNPACK delegate;
``kernels="builtin"`` (``host:litert:builtin``) uses the built-in kernels without default delegates.
The two are different environments with different fingerprints.

Layer and network artifacts alike are timed end to end: wall-clock ``Interpreter.invoke()`` with the
inputs set once, side by side with the reference network (``timing.py``). The first invoke happens
when a model is loaded and is not timed: the builtin DENSIFY kernel expands sparse weights then.

Unlike onnxruntime (NCHW↔NCHWc reorders that a one-layer model pays on every run, see
docs/measurement.md), LiteRT keeps NHWC throughout, so there is no known per-layer overhead to strip.
Whether a layer alone costs what it costs inside a network — interpreter dispatch, XNNPACK's
per-subgraph setup, caches — is *not measured* for LiteRT. Single-layer models are timed as they are
and the gap is left to the table calibration that ``latbench table build`` fits on whole networks
(``measured = scale · Σ lookups + offset``); validation reports the uncalibrated error too.

``channel_multiple``: XNNPACK's f32 GEMM packs output channels in tiles of 16 on x86 (AVX2, AVX-512)
and the cost is a staircase in them. Measured here (AMD EPYC, AVX2, 1 thread): a 96→c 1×1 conv at
14×14 took 119 µs at c = 288, 138–146 µs at 289–296, 122–127 µs at 297–304 and 148–153 µs at 305–306;
a 64→c 3×3 conv at 16×16 took 201–212 µs at c = 62–64, 242–260 µs at 66–80 and 284 µs at 82, while
input channels (c→96, c = 286–306) grew smoothly. So XNNPACK on x86 reports 16, like onnxruntime on
AVX-512: grid knots and validation widths then sit on the staircase's cheap edges. The builtin kernels
were too noisy to tell (IQR ~50 % of the median) and other CPUs are unmeasured: they report 1.
Unlike onnxruntime there is no NCHWc layout, so no conversions appear between layers.
"""
from __future__ import annotations

from importlib import metadata
from typing import Callable

from .base import DeviceError, MeasureSettings
from .host import HostDevice, cpu_flags, random_inputs

KERNELS = ("xnnpack", "builtin")


class LiteRTDevice(HostDevice):
    """LiteRT CPU on the host (``host:litert``, or ``host:litert:builtin`` without XNNPACK).

    >>> dev = LiteRTDevice(threads=1)                                  # doctest: +SKIP
    >>> dev.measure([Artifact("conv", tflite_bytes, format="tflite")])  # doctest: +SKIP
    """

    model_format = "tflite"
    fingerprint_prefix = "host-litert-"

    def __init__(self, threads: int = 1, kernels: str = "xnnpack", settings: MeasureSettings | None = None) -> None:
        super().__init__(threads, settings)
        if kernels not in KERNELS:
            raise DeviceError(f"LiteRT kernels {kernels!r} unknown; choose one of {KERNELS}")
        try:
            from ai_edge_litert import interpreter
        except ImportError as err:
            raise DeviceError(f"host:litert needs the ai-edge-litert package (pip install ai-edge-litert): "
                              f"{err}") from err
        self._litert = interpreter
        self.kernels = kernels
        self.runtime_name = "host:litert" if kernels == "xnnpack" else f"host:litert:{kernels}"

    def runtime_settings(self) -> dict:
        # Sparse 1×1 layers are timed inside a wrapper (profiling.py); recorded so that stores measured
        # before, when they were timed alone, are not mixed with the new method.
        return {"runtime": "ai-edge-litert", "version": metadata.version("ai-edge-litert"), "kernels": self.kernels,
                "threads": self.threads, "sparse_layers": "wrapped"}

    @property
    def channel_multiple(self) -> int:
        """16 for XNNPACK on x86 (its GEMM's output-channel tile, measured; see the module docstring), else 1."""
        return 16 if self.kernels == "xnnpack" and cpu_flags() & {"avx2", "avx512f"} else 1

    def interpreter(self, model: bytes):
        """A ready interpreter for ``model``: tensors allocated, inputs set, invoked once (warm-up)."""
        resolver = self._litert.OpResolverType
        try:
            interp = self._litert.Interpreter(
                model_content=model, num_threads=self.threads,
                experimental_op_resolver_type=resolver.BUILTIN if self.kernels == "xnnpack"  # + default delegates
                else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interp.allocate_tensors()
            details = interp.get_input_details()
            for d, x in zip(details, random_inputs([d["shape"] for d in details])):
                interp.set_tensor(d["index"], x)
            interp.invoke()
        except (ValueError, RuntimeError) as err:
            raise DeviceError(f"LiteRT cannot load or run the model: {err}") from err
        return interp

    def load(self, model: bytes) -> Callable[[], object]:
        return self.interpreter(model).invoke
