"""`OnnxSupernet`: every pruned variant of an imported ONNX graph in one module, its weights shared.

The imported counterpart of :class:`~latbench.supernet.net.DynamicNet` (issue 13: JCW and the other supernet
methods on a user's own model). The supernet *is* the user's full graph, run in torch as an
:class:`~latbench.models.onnx_torch.OnnxNet`. A sub-network — an :class:`~latbench.models.Architecture`, a width
per channel group and a sparsity per conv — is the graph :func:`~latbench.models.onnx_channels.prune_onnx` cuts
to those widths, keeping in every group the first channels of ``order`` (most important first; per conv group
for grouped convs, :func:`~latbench.models.onnx_channels.kept_channels`). Its weights are *gathered* from the
full tensors at run time, so training a sub-network trains the shared weights, and the full width computes
exactly what the graph computes.

How the gathering is found without a second copy of the slicing rules: ``prune_onnx`` slices numpy arrays
(filters, BN vectors, per-channel constants, the rows of grouped convs). Run once per width pattern on a copy of
the graph whose float initializers hold their own element indices (0, 1, 2, … as float32: exact up to 2**24
elements per tensor), every tensor of the cut graph tells which elements of the full tensor it is made of.
``extract(arch)`` — the sub-network as a plain ``OnnxNet`` with real smaller tensors — is therefore what
:func:`~latbench.models.materialize` builds from the same weights and order.

>>> net = OnnxSupernet.from_parent(full_network(spec), "l1")           # doctest: +SKIP
>>> logits = net(images, arch)                                         # doctest: +SKIP
>>> small = net.extract(arch)          # an OnnxNet; small.to_onnx() is the file to ship   # doctest: +SKIP
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

from ..models import Architecture, ArchitectureError
from ..models.onnx_channels import ChannelError, kept_channels, prune_onnx
from ..models.onnx_torch import OnnxNet, filter_source, materialize_imported
from .ops import BNStats, magnitude_keep
from .stages import Stage, StageError, stages_of

#: Per-sub-network BN statistics: ``{the sub-network's running-mean initializer: (mean, var)}``.
OnnxSubnetBN = dict[str, BNStats]

_EXACT = 1 << 24               # float32 holds every integer below this exactly
_PRUNED_SUFFIX = re.compile(r"(_pruned\d*)+$")


@dataclass(frozen=True)
class _Segment:
    """The nodes of one stage (or of the head) of a graph: run on ``input_name``, they give ``output_name``."""

    nodes: list
    input_name: str
    output_name: str
    readers: dict[str, int]


@dataclass
class _Program:
    """One width pattern: the cut graph's nodes and where each of its tensors comes from."""

    nodes: list
    input_name: str
    output_names: list[str]
    readers: dict[str, int]
    gathers: dict[str, tuple[str, torch.Tensor, tuple[int, ...]]] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)       # shapes, sizes: read by the ops as numpy
    floats: dict[str, torch.Tensor] = field(default_factory=dict)     # float constants tied to no parameter
    bn: list[tuple[str, str]] = field(default_factory=list)           # (running mean, running var) per BN node
    segments: list[_Segment] | None = None                            # per stage, then the head (stage-wise runs)


class OnnxSupernet(OnnxNet):
    """All pruned variants of an imported graph ``model`` (``spec``'s source) up to its full widths.

    ``order``: ``{group: channel indices, most important first}`` (default: the graph's own channel order).
    ``cache``: how many width patterns keep their cut graph (a new pattern costs one ``prune_onnx``).
    """

    def __init__(self, model: onnx.ModelProto, spec, order: Mapping[str, Sequence[int]] | None = None,
                 cache: int = 256) -> None:
        super().__init__(model, spec, spec.groups)
        graph = self.channel_graph()
        self.groups = {name: g for name, g in graph.groups.items() if g.prunable}
        self._programs: OrderedDict[tuple, _Program] = OrderedDict()
        self.order = order
        # Cut tensors are traced back to their source by name (prune_onnx appends "_pruned"); a graph whose own
        # names already look like that would be ambiguous.
        clash = sorted(n for n in self._tensor_keys if _PRUNED_SUFFIX.search(n)
                       and _PRUNED_SUFFIX.sub("", n) in self._tensor_keys)
        if clash:
            raise ValueError(f"initializers {clash[:3]} end in '_pruned' beside a tensor of the same stem; rename them "
                             "in the ONNX file to build a supernet of it")
        self.in_channels = int(spec.in_channels)
        self._cache_size = cache
        self._traced: onnx.ModelProto | None = None
        self._stages: tuple[Stage, ...] | None = None
        self._stage_ends: list[str] | None = None
        self._full_segments: list[_Segment] | None = None

    @classmethod
    def from_parent(cls, parent: OnnxNet, order: Mapping[str, Sequence[int]] | str | None = None, *,
                    device: torch.device | str = "cpu", sparsity_block: int | None = None) -> "OnnxSupernet":
        """A supernet holding a copy of ``parent``'s weights. ``order``: ``{group: indices, most important
        first}``, ``"l1"`` for the graph's own ranking (the filters producing each channel: L1 norm × |γ|, what
        :func:`~latbench.models.onnx_channels.prune_onnx` ranks by), or ``None`` for the graph's order."""
        if sparsity_block is not None:
            raise ValueError("block-wise sparsity is not available for imported graphs; leave sparsity_block unset")
        if not isinstance(parent, OnnxNet) or parent.spec is None:
            raise TypeError(f"an OnnxSupernet is built from the OnnxNet of an imported model, got "
                            f"{type(parent).__name__}")
        if dict(parent.widths) != dict(parent.spec.groups):
            raise ValueError("the parent of an OnnxSupernet must be the imported model at its full widths")
        if isinstance(order, str):
            from ..models.onnx_channels import channel_importance
            from ..train.importance import importance_order
            if order != "l1":
                raise ValueError(f"order {order!r}: an imported graph ranks its channels by 'l1' (its producing "
                                 "filters' L1 norms × |γ|, as prune_onnx does) or by an explicit order")
            order = importance_order(channel_importance(parent.to_onnx(), parent.channel_graph()))
        return cls(parent.to_onnx(), parent.spec, order).to(device)

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def order(self) -> dict[str, np.ndarray]:
        """``{group: channel indices, most important first}``: a narrowed group keeps the first of them."""
        return self._order

    @order.setter
    def order(self, order: Mapping[str, Sequence[int]] | None) -> None:
        graph = self.channel_graph()
        order = dict(order or {})
        unknown = sorted(set(order) - set(graph.groups))        # a fixed group's order is simply not used
        if unknown:
            raise ValueError(f"order names groups this graph does not have: {unknown}")
        checked: dict[str, np.ndarray] = {}
        for name, g in self.groups.items():
            o = np.asarray(order.get(name, np.arange(g.width)), dtype=np.int64)
            if sorted(o.tolist()) != list(range(g.width)):
                raise ValueError(f"order of group {name!r} must be a permutation of 0..{g.width - 1}")
            checked[name] = o
        self._order = checked
        self._programs.clear()                  # the cut graphs keep channels by the order

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def full_arch(self, resolution: int | None = None) -> Architecture:
        return Architecture(self.spec.name, resolution or self.spec.base_resolution, dict(self.widths))

    def validate(self, arch: Architecture) -> Architecture:
        """``arch`` checked against the model's spec and the graph's group rules; raises ArchitectureError."""
        arch.validate(self.spec)
        for name, w in arch.widths.items():
            g = self.groups[name]
            if w % g.multiple or not g.min_width <= w <= g.width:
                raise ArchitectureError(f"group {name!r}: width {w} must be a multiple of {g.multiple} between "
                                        f"{g.min_width} and {g.width}")
        return arch

    def keep(self, arch: Architecture) -> dict[str, np.ndarray]:
        """The channels every narrowed group keeps at ``arch`` (original positions, ascending)."""
        return {g: kept_channels(self.order[g], w, self.groups[g].width, self.groups[g].multiple)
                for g, w in arch.widths.items() if w < self.groups[g].width}

    # -- width patterns --------------------------------------------------------------------------------------
    def _traced_model(self) -> onnx.ModelProto:
        """The graph with every float initializer replaced by its own element indices."""
        if self._traced is None:
            traced = onnx.ModelProto()
            traced.CopyFrom(self.model)
            for t in traced.graph.initializer:
                if t.name in self._tensor_keys:
                    size = int(np.prod(t.dims)) if len(t.dims) else 1
                    if size >= _EXACT:
                        continue      # too big to trace exactly: must never be sliced (checked per program)
                    index = np.arange(size, dtype=np.float32).reshape(tuple(t.dims))
                    t.CopyFrom(numpy_helper.from_array(index, t.name))
            self._traced = shape_inference.infer_shapes(traced)     # once, not per width pattern
        return self._traced

    def program(self, arch: Architecture) -> _Program:
        """The cut graph of ``arch``'s widths and the gathers that give its tensors (cached)."""
        key = tuple(sorted(arch.widths.items()))
        hit = self._programs.get(key)
        if hit is not None:
            self._programs.move_to_end(key)
            return hit
        self.validate(arch)
        try:
            cut = prune_onnx(self._traced_model(), self.channel_graph(), arch.widths, self.keep(arch), check=False)
        except ChannelError as err:
            raise ArchitectureError(f"{self.spec.name}: {err}") from err
        g = cut.graph
        inits = {t.name: t for t in g.initializer}
        readers: dict[str, int] = {}
        for node in g.node:
            for i in node.input:
                readers[i] = readers.get(i, 0) + 1
        prog = _Program(list(g.node), next(i.name for i in g.input if i.name not in inits),
                        [o.name for o in g.output], readers)
        for name, t in inits.items():
            source = _PRUNED_SUFFIX.sub("", name)
            value = numpy_helper.to_array(t)
            if name in self._tensor_keys:
                continue                                   # a full tensor, used as it is
            if source in self._tensor_keys and np.issubdtype(value.dtype, np.floating):
                full = int(np.prod(self.model_shape(source)))
                if full >= _EXACT:
                    raise ArchitectureError(f"{self.spec.name}: tensor {source!r} has {full} elements, too many to "
                                            "narrow in a supernet (limit 2**24)")
                idx = torch.from_numpy(value.astype(np.int64).reshape(-1))
                prog.gathers[name] = (source, idx, tuple(value.shape))
            elif np.issubdtype(value.dtype, np.floating):
                prog.floats[name] = torch.from_numpy(value.astype(np.float32))
            else:
                prog.consts[name] = value
        prog.bn = [(n.input[3], n.input[4]) for n in prog.nodes if n.op_type == "BatchNormalization"
                   and n.input[3] in set(self._tensor_keys) | set(prog.gathers)]
        self._programs[key] = prog
        while len(self._programs) > self._cache_size:
            self._programs.popitem(last=False)
        return prog

    def model_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensor(name).shape)

    def _lookup(self, prog: _Program, arch: Architecture, bn: OnnxSubnetBN | None):
        """Initializer name → tensor for one run of ``prog``: gathered slices of the shared tensors, ``arch``'s
        sparsity as magnitude masks on its filters, BN statistics from ``bn`` (or private copies, so that
        training a sub-network never moves the shared statistics)."""
        device = self.device
        masked = {}
        for layer, s in arch.sparsity.items():
            if s > 0:
                weight, transposed = filter_source(prog.nodes, layer)
                masked[weight] = (float(s), transposed)
        stats = {}
        for mean, var in prog.bn:
            if bn is not None and mean in bn:
                stats[mean], stats[var] = bn[mean]
        copies: dict[str, torch.Tensor] = {}
        bn_names = {n for pair in prog.bn for n in pair}

        def tensor(name: str) -> torch.Tensor | None:
            if name in stats:
                return stats[name]
            if name in prog.gathers:
                source, idx, shape = prog.gathers[name]
                value = self.tensor(source).reshape(-1)[idx.to(device)].view(shape)
            elif name in self._tensor_keys:
                value = self.tensor(name)
            elif name in prog.floats:
                return prog.floats[name].to(device)
            else:
                return None
            if name in bn_names:
                if name not in copies:
                    copies[name] = value.detach().clone()
                return copies[name]
            if name in masked:
                s, transposed = masked[name]
                oriented = value.t() if transposed else value
                keep = magnitude_keep(oriented, s)
                value = value * (keep.t() if transposed else keep)
            return value
        return tensor

    # -- stages (SP: one stage at a time; see latbench.supernet.stages) ---------------------------------------
    @property
    def stages(self) -> tuple[Stage, ...]:
        """The model's stages (:func:`~latbench.supernet.stages.stages_of`); StageError when it has none."""
        if self._stages is None:
            stages = stages_of(self.spec)
            self._stage_ends = self._ends_of(stages)      # every stage must end in one tensor of the graph
            try:                                          # and no node may read across a boundary
                self._full_segments = self._segments(self.nodes, self.input_name, self.output_names)
            except StageError:
                self._stage_ends = None
                raise
            self._stages = stages
        return self._stages

    def _stage_tensors(self) -> list[str]:
        if self._stage_ends is None:
            self.stages
        return self._stage_ends

    def _ends_of(self, stages: Sequence[Stage]) -> list[str]:
        """The tensor each stage ends with: what its last kernel (conv + BN + residual add + activation) hands on."""
        from ..models.onnx_graph import kernel_nodes_of

        kernels = kernel_nodes_of(self.model, self.spec.name)
        readers: dict[str, list[str]] = {}
        for node in self.nodes:
            for i in node.input:
                readers.setdefault(i, []).append(node.name)
        ends = []
        for stage in stages:
            mine = set(kernels[stage.output])
            outs = [o for n in self.nodes if n.name in mine for o in n.output
                    if o in self.output_names or any(r not in mine for r in readers.get(o, ()))]
            if len(outs) != 1:
                raise StageError(f"stage {stage.index + 1} of {self.spec.name!r} ends in kernel {stage.output!r}, "
                                 f"whose nodes hand {len(outs)} tensors to the rest of the graph, not one")
            ends.append(outs[0])
        return ends

    def _segments(self, nodes, input_name: str, output_names: Sequence[str]) -> list[_Segment]:
        """``nodes`` (a graph in topological order) split at the stage tensors: one segment per stage, then the
        head. A node belongs to the latest segment among its inputs'; one that reads a tensor of an earlier
        segment than its own (a shortcut over a stage boundary, or a shape read there) cannot run stage-wise."""
        ends = {t: i for i, t in enumerate(self._stage_tensors())}
        available = {input_name: 0}        # tensor → the segment that can read it
        parts: list[list] = [[] for _ in range(len(ends) + 1)]
        constant: dict[str, object] = {}  # outputs of nodes that read no activation → the node
        for node in nodes:
            reads = [available[t] for t in node.input if t in available]
            if not reads:
                constant.update({o: node for o in node.output})
                continue
            seg = max(reads)
            early = [t for t in node.input if t in available and available[t] < seg]
            if early:
                raise StageError(f"{self.spec.name}: node {node.name!r} ({node.op_type}) of stage {seg + 1} reads "
                                 f"{early[0]!r} from an earlier stage: the graph cannot be run one stage at a time")
            for t in node.input:         # a constant computed in the graph: run where it is read
                if t in constant and constant[t] not in parts[seg]:
                    parts[seg].append(constant[t])
            parts[seg].append(node)
            for o in node.output:
                available[o] = ends[o] + 1 if o in ends else seg
        if any(available.get(o) != len(ends) for o in output_names):
            raise StageError(f"{self.spec.name}: the graph's outputs are not computed by its head")
        inputs = [input_name, *ends]
        outputs = [*ends, *output_names]
        segments = []
        for i, part in enumerate(parts):
            counts: dict[str, int] = {}
            for node in part:
                for t in node.input:
                    counts[t] = counts.get(t, 0) + 1
            segments.append(_Segment(part, inputs[i], outputs[i], counts))
        return segments

    def _program_segments(self, prog: _Program) -> list[_Segment]:
        if prog.segments is None:
            prog.segments = self._segments(prog.nodes, prog.input_name, prog.output_names)
        return prog.segments

    def stage_channels(self, i: int, arch: Architecture | None = None) -> torch.Tensor | None:
        """Positions (in the full network) of the channels stage ``i`` of ``arch`` outputs, or ``None`` at
        full width: a stage adaptor reads its columns by them (:class:`~latbench.supernet.StageAdaptors`)."""
        keep = self.keep(arch or self.full_arch()).get(self.stages[i].output_group)
        return None if keep is None else torch.as_tensor(np.asarray(keep), dtype=torch.long, device=self.device)

    def _cut_to(self, x: torch.Tensor, group: str | None, arch: Architecture, what: str) -> torch.Tensor:
        """``x`` (e.g. the full network's stage output) cut to the channels ``arch`` keeps of ``group``."""
        want = self.in_channels if group is None else arch.widths[group]
        if group is not None and x.shape[1] > want:
            keep = self.keep(arch).get(group)
            if keep is not None and x.shape[1] == self.groups[group].width:
                x = x[:, torch.as_tensor(np.asarray(keep), dtype=torch.long, device=x.device)]
        if x.shape[1] != want:
            raise ValueError(f"{what} of {self.spec.name!r} takes {want} channels "
                             f"({'the image' if group is None else f'group {group!r}'}), got {x.shape[1]}")
        return x

    def _run_segment(self, seg: _Segment, x: torch.Tensor, tensor) -> torch.Tensor:
        return self._execute(x, seg.nodes, seg.input_name, [seg.output_name], seg.readers, tensor)

    def forward_stage(self, i: int, x: torch.Tensor, arch: Architecture | None = None, *,
                      bn: OnnxSubnetBN | None = None) -> torch.Tensor:
        """Output of stage ``i`` of ``arch``'s sub-network on ``x``; a full-width ``x`` (the full network's
        output of stage ``i − 1``) is cut to the channels ``arch`` keeps. BN: ``bn``'s statistics, or in
        training mode batch statistics that never move the shared ones (as every sub-network forward)."""
        if not 0 <= i < len(self.stages):
            raise IndexError(f"{self.spec.name!r} has stages 0..{len(self.stages) - 1}, not {i}")
        return self._run_part(i, x, self.stages[i].input_group, arch, bn, f"stage {i}")

    def head(self, y: torch.Tensor, arch: Architecture | None = None, *,
             bn: OnnxSubnetBN | None = None) -> torch.Tensor:
        """Logits from the last stage's output ``y`` (cut to the channels ``arch`` keeps)."""
        return self._run_part(-1, y, self.stages[-1].output_group, arch, bn, "the head")

    def _run_part(self, index: int, x: torch.Tensor, group: str | None, arch: Architecture | None,
                  bn: OnnxSubnetBN | None, what: str) -> torch.Tensor:
        """Segment ``index`` of ``arch``'s cut graph (a stage, or -1: the head) on ``x`` cut to ``group``."""
        arch = arch or self.full_arch()
        prog = self.program(arch)
        x = self._cut_to(x, group, arch, what)
        self._program = prog
        try:
            return self._run_segment(self._program_segments(prog)[index], x, self._lookup(prog, arch, bn))
        finally:
            self._program = None

    def stage_bn_widths(self, i: int, arch: Architecture | None = None) -> dict[str, int]:
        """:meth:`conv_widths` of the BatchNormalization nodes of stage ``i`` only."""
        prog = self.program(arch or self.full_arch())
        mine = {n.input[3] for n in self._program_segments(prog)[i].nodes if n.op_type == "BatchNormalization"}
        return {mean: w for mean, w in self.conv_widths(arch).items() if mean in mine}

    @torch.no_grad()
    def _stage_calibration_step(self, i: int, x: torch.Tensor, arch: Architecture | None, stats: OnnxSubnetBN,
                                momentum: float) -> None:
        self._with_bn_momentum(stats, momentum, lambda: self.forward_stage(i, x, arch, bn=stats))

    def _with_bn_momentum(self, stats: OnnxSubnetBN, momentum: float, run) -> None:
        """``run()`` a training-mode forward whose BN statistics move ``stats`` by ``momentum``."""
        if not stats:
            return                         # no BatchNormalization left in the graph (folded at export)
        saved = self._bn_forwards
        self._bn_forwards = int(round(1.0 / momentum)) - 1      # _batchnorm's momentum is 1/(forwards + 1)
        try:
            run()
        finally:
            self._bn_forwards = saved

    # -- running ---------------------------------------------------------------------------------------------
    def _plain(self, arch: Architecture | None, bn: OnnxSubnetBN | None) -> bool:
        """Whether ``arch`` is the graph itself run with its own tensors (the shared BN statistics move)."""
        return bn is None and (arch is None or (dict(arch.widths) == dict(self.widths)
                                                and not any(arch.sparsity.values()) and not self.training))

    def forward(self, x: torch.Tensor, arch: Architecture | None = None, *,
                bn: OnnxSubnetBN | None = None, return_stages: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of ``arch``'s sub-network (default: the graph itself); with ``return_stages`` also the stage
        outputs ``[Y_1, …, Y_K]``. The graph itself in training mode updates the shared BN statistics; a
        sub-network normalises with ``bn``, batch statistics (training) or the shared ones (eval), never
        moving them."""
        if not return_stages:
            if self._plain(arch, bn):
                return super().forward(x)
            arch = arch or self.full_arch()
            prog = self.program(arch)
            self._program = prog
            try:
                return self._execute(x, prog.nodes, prog.input_name, prog.output_names, prog.readers,
                                     self._lookup(prog, arch, bn))
            finally:
                self._program = None
        if arch is None and bn is None:
            self.stages                                   # splits the graph once
            segments, tensor = self._full_segments, self._own_lookup
        else:
            arch = arch or self.full_arch()
            prog = self.program(arch)
            segments, tensor = self._program_segments(prog), self._lookup(prog, arch, bn)
            self._program = prog
        outputs, y = [], x
        try:
            for seg in segments[:-1]:
                y = self._run_segment(seg, y, tensor)
                outputs.append(y)
            return self._run_segment(segments[-1], y, tensor), outputs
        finally:
            self._program = None
            if segments is self._full_segments and self._bn_forwards is not None and self.training:
                self._bn_forwards += 1

    def conv_widths(self, arch: Architecture | None = None) -> dict[str, int]:
        """Width of every BN of ``arch``'s sub-network, keyed by its running-mean initializer (the keys of
        :data:`OnnxSubnetBN`; what :func:`latbench.supernet.recalibrate` fills)."""
        prog = self.program(arch or self.full_arch())
        return {mean: int(prog.gathers[mean][1].numel()) if mean in prog.gathers else int(self.tensor(mean).numel())
                for mean, _ in prog.bn}

    @torch.no_grad()
    def _calibration_step(self, x: torch.Tensor, arch: Architecture | None, stats: OnnxSubnetBN,
                          momentum: float) -> None:
        self._with_bn_momentum(stats, momentum, lambda: self.forward(x, arch or self.full_arch(), bn=stats))

    @torch.no_grad()
    def extract(self, arch: Architecture | None = None, bn: OnnxSubnetBN | None = None, *,
                device: torch.device | str | None = None) -> OnnxNet:
        """``arch``'s sub-network as a plain :class:`OnnxNet` (real smaller tensors, ``arch``'s sparsity as
        zeros), with ``bn``'s statistics when given; on ``device`` (default the supernet's)."""
        arch = self.validate(arch or self.full_arch())
        net = materialize_imported(arch, self.spec, parent=self, importance=self.order)
        for mean, (m, v) in (bn or {}).items():
            var = next(n.input[4] for n in net.nodes if n.op_type == "BatchNormalization" and n.input[3] == mean)
            net.tensor(mean).copy_(m)
            net.tensor(var).copy_(v)
        return net.to(device or self.device).eval()




def supernet_from(parent, order: Mapping[str, Sequence[int]] | str | None = "l1", *,
                  device: torch.device | str = "cpu", sparsity_block: int | None = None):
    """The weight-sharing supernet of a trained network: a :class:`~latbench.supernet.net.DynamicNet` for a zoo
    ``GraphNet``, an :class:`OnnxSupernet` for an imported model's ``OnnxNet``."""
    if isinstance(parent, OnnxNet):
        return OnnxSupernet.from_parent(parent, order, device=device, sparsity_block=sparsity_block)
    from .net import DynamicNet

    return DynamicNet.from_parent(parent, order, device=device, sparsity_block=sparsity_block)


__all__ = ["OnnxSubnetBN", "OnnxSupernet", "supernet_from"]
