"""Weight-sharing supernet over channel widths and weight sparsity — JCW's accuracy estimator.

One full network holds every sub-network's weights. Its channels are reordered once by importance
(the permutation is applied to every coupled layer, so the network computes the same function), after
which a sub-network is simply *the first k channels of every group* at the architecture's widths, with
each sparsified conv masked to its sparsity by weight magnitude (computed on the sliced weight). The
forward pass runs ``F.conv2d`` on slices of the shared weights — no copies of the network — and
BatchNorm with sliced affine parameters and either batch statistics (training), statistics
recalibrated for that sub-network, or the shared running statistics sliced.

:class:`SupernetEvaluator` implements the JCW search's evaluator protocol
(:class:`latbench.search.jcw.Evaluator`): ``update(P ∪ Q)`` trains the shared weights on the population's
architectures (JCW's Algorithm 4), ``evaluate(archs)`` recalibrates BN per architecture on a few fixed
training batches and returns the loss on the held-out split (``DataSplits.val``).

>>> supernet = Supernet(trained_full_net)                                   # doctest: +SKIP
>>> evaluator = SupernetEvaluator(supernet, load_dataset("fashion-mnist"),  # doctest: +SKIP
...                               SupernetConfig(steps_per_generation=200), checkpoint="runs/supernet.safetensors")
>>> JCWSearch(spec, predictor, evaluator, SearchConfig()).run("runs/jcw")  # doctest: +SKIP
>>> net = supernet.extract(best_arch, supernet.calibrate(best_arch, batches))  # a plain GraphNet  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from ..data import Augment, BatchLoader, DataSplits
from ..models import Architecture, ArchitectureError, GraphNet, LayerDef, materialize
from ..models.torch_net import ConvBlock
from .checkpoint import (CheckpointError, load_optimizer_state, load_weights, read_checkpoint_meta,
                         save_checkpoint, stem_in_channels)
from .importance import channel_importance, importance_order
from .loop import TrainConfig, cpu_cores, make_optimizer

#: Per-sub-network BN statistics: ``{conv layer name: (running mean, running var)}`` at the sub-network's widths.
SubnetBN = dict[str, tuple[torch.Tensor, torch.Tensor]]
#: Keep-masks (``True`` = weight kept) of the sparsified convs of one sub-network, at its widths.
Masks = dict[str, torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

OBJECTIVES = ("loss", "error")
STATE_FORMAT = "latbench-supernet/1"


# ---- masks and channel order ------------------------------------------------------------------------

@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float, block: int | None = None) -> torch.Tensor:
    """Boolean keep-mask of ``weight`` that drops the smallest-magnitude entries.

    Unstructured (``block=None``): exactly ``round(sparsity·numel)`` entries are dropped, chosen as
    :func:`latbench.models.apply_sparsity` chooses them (same sort), so a masked slice equals the weight
    ``materialize`` produces. With ``block=N`` the output filters are taken in consecutive blocks of ``N``
    (the last one may be smaller) and each block gets the same sparsity: ``round(sparsity·block numel)``
    of its smallest entries are dropped — a pattern sparse kernels that work on groups of output
    channels can exploit evenly.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1)")
    if block is not None and block < 1:
        raise ValueError(f"sparsity block {block} must be a positive number of output channels")
    magnitude = weight.detach().abs()
    if block is None:
        flat = magnitude.flatten()
        k = int(round(sparsity * flat.numel()))
        if k == 0:
            return torch.ones(weight.shape, dtype=torch.bool)
        # Fast path (a selection, ~4x quicker than a sort on large kernels): unless magnitudes tie at the
        # threshold, the k smallest entries are unique and this is exactly the sort's choice.
        keep = flat > flat.kthvalue(k).values
        if flat.numel() - int(keep.sum()) != k:
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[flat.argsort()[:k]] = False
        return keep.view(weight.shape)
    rows = magnitude.reshape(weight.shape[0], -1)
    cout, per_filter = rows.shape
    n_blocks = -(-cout // block)
    # Pad to whole blocks with +inf so padding is never among a block's smallest entries.
    padded = torch.full((n_blocks * block, per_filter), float("inf"), dtype=rows.dtype)
    padded[:cout] = rows
    blocks = padded.reshape(n_blocks, block * per_filter)
    filters_in_block = torch.clamp(cout - torch.arange(n_blocks) * block, max=block)
    k = torch.round(sparsity * filters_in_block * per_filter).long()
    order = blocks.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(blocks.shape[1]).expand_as(order))
    keep = rank >= k[:, None]
    return keep.reshape(n_blocks * block, per_filter)[:cout].reshape(weight.shape)


def _permutations(net: GraphNet, order: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    perms = {}
    for group, width in net.widths.items():
        perm = torch.as_tensor(np.asarray(order.get(group, np.arange(width))), dtype=torch.long)
        if perm.shape != (width,) or not torch.equal(perm.sort().values, torch.arange(width)):
            raise ValueError(f"order of group {group!r} must be a permutation of 0..{width - 1} "
                             f"(the network's width), got {perm.numel()} indices")
        perms[group] = perm
    return perms


@torch.no_grad()
def reorder_channels(net: GraphNet, order: Mapping[str, Sequence[int]]) -> None:
    """Permute the channels of every group of ``net`` in place: new channel ``j`` of group ``g`` is old
    channel ``order[g][j]`` (groups not in ``order`` stay). Every layer reading or writing the group
    (conv kernels, BN parameters and statistics, the classifier's inputs) is permuted alike, so the
    network computes exactly the same function; afterwards "the first k channels" are the k best."""
    perms = _permutations(net, order)
    for layer in net.spec.layers:
        module = net.block(layer.name)
        out_perm = perms.get(layer.out_group) if layer.out_group else None
        in_perm = perms.get(layer.in_group) if layer.in_group and layer.kind != "depthwise" else None
        if isinstance(module, nn.Linear):
            w = module.weight if in_perm is None else module.weight[:, in_perm]
            module.weight.copy_(w if out_perm is None else w[out_perm])
            if out_perm is not None:
                module.bias.copy_(module.bias[out_perm])
        elif isinstance(module, ConvBlock):
            w = module.conv.weight if out_perm is None else module.conv.weight[out_perm]
            module.conv.weight.copy_(w if in_perm is None else w[:, in_perm])
            if out_perm is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(module.bn, name)
                    t.copy_(t[out_perm])


@dataclass(frozen=True)
class _LayerPlan:
    """One layer of a sub-network: the shared module and the slice of it the sub-network uses."""

    layer: LayerDef
    module: nn.Module
    cin: int
    cout: int
    sparsity: float

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, ConvBlock)

    @property
    def weight_count(self) -> int:
        """Dense weights of this sub-network's conv (0 for other layers)."""
        if not self.is_conv:
            return 0
        per_filter = 1 if self.layer.kind == "depthwise" else self.cin
        return self.cout * per_filter * self.layer.kernel ** 2


# ---- the supernet -----------------------------------------------------------------------------------

class Supernet(nn.Module):
    """All sub-networks of ``parent`` (a :class:`GraphNet`, typically the trained full network) in one.

    The parent's channels are reordered by ``order`` (``{group: channel indices, best first}``, e.g.
    :func:`latbench.train.importance.importance_order`; by default its ``metric`` channel importance).
    ``self.order`` keeps the permutation (position → the parent's channel index). Unless ``inplace``,
    the parent is copied first. ``sparsity_block`` selects block-wise magnitude masks (see
    :func:`magnitude_mask`). Sub-network widths may not exceed the parent's.
    """

    def __init__(self, parent: GraphNet, order: Mapping[str, Sequence[int]] | None = None, *,
                 metric: str = "l1", inplace: bool = False, sparsity_block: int | None = None) -> None:
        super().__init__()
        if not isinstance(parent, GraphNet):
            raise TypeError(f"a supernet is built from a GraphNet, got {type(parent).__name__}")
        if sparsity_block is not None and sparsity_block < 1:
            raise ValueError(f"sparsity_block {sparsity_block} must be a positive number of output channels")
        net = parent if inplace else copy.deepcopy(parent)
        if order is None:
            if metric not in ("l1", "l2"):
                raise ValueError(f"metric {metric!r} needs data; compute the order with channel_importance(net, "
                                 f"{metric!r}, data) and pass it as order=importance_order(...)")
            order = importance_order(channel_importance(net, metric))
        perms = _permutations(net, order)
        reorder_channels(net, order)
        self.net = net
        self.spec = net.spec
        self.order: dict[str, np.ndarray] = {g: p.numpy() for g, p in perms.items()}
        self.sparsity_block = sparsity_block

    # -- sub-network description ------------------------------------------------------------------
    def plan(self, arch: Architecture) -> list[_LayerPlan]:
        """The layers of ``arch``'s sub-network with their channel counts (validates ``arch``)."""
        arch.validate(self.spec)
        too_wide = {g: (w, self.net.widths[g]) for g, w in arch.widths.items() if w > self.net.widths[g]}
        if too_wide:
            raise ArchitectureError(f"widths wider than the supernet (asked, available): {too_wide}")
        plans = []
        for layer in self.spec.layers:
            module = self.net.block(layer.name)
            cin, cout = self.spec.channels(arch.widths, layer)
            if layer.in_group is None and isinstance(module, ConvBlock):
                cin = module.conv.in_channels          # the stem reads the data's channels
            plans.append(_LayerPlan(layer, module, cin, cout, float(arch.sparsity.get(layer.name, 0.0))))
        return plans

    def _weight(self, p: _LayerPlan) -> torch.Tensor:
        """The conv kernel of a sub-network: a view of the shared kernel's first channels."""
        w = p.module.conv.weight[: p.cout]
        return w if p.layer.kind == "depthwise" else w[:, : p.cin]

    def masks(self, arch: Architecture, plans: Sequence[_LayerPlan] | None = None) -> Masks:
        """Magnitude keep-masks of ``arch``'s sparsified convs, computed on the current sliced weights."""
        plans = plans if plans is not None else self.plan(arch)
        return {p.layer.name: magnitude_mask(self._weight(p), p.sparsity, self.sparsity_block)
                for p in plans if p.is_conv and p.sparsity > 0}

    def weight_count(self, arch: Architecture) -> float:
        """Non-zero conv weights of ``arch``'s sub-network (its size, for the sandwich rule)."""
        return float(sum(p.weight_count * (1.0 - p.sparsity) for p in self.plan(arch)))

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: Architecture, bn: SubnetBN | None = None,
                masks: Masks | None = None) -> torch.Tensor:
        """Logits of ``arch``'s sub-network. Training mode: BN uses batch statistics (the shared running
        statistics are not touched). Eval mode: BN uses ``bn`` (from :meth:`calibrate`), or, when
        ``None``, the parent's running statistics sliced. ``masks`` default to the current magnitude
        masks (pass them in when evaluating many batches with fixed weights)."""
        plans = self.plan(arch)
        if masks is None:
            masks = self.masks(arch, plans)
        return self._run(x, plans, masks, "train" if self.training else "eval", bn)

    def _run(self, x: torch.Tensor, plans: Sequence[_LayerPlan], masks: Masks, mode: str,
             stats: SubnetBN | None, momentum: float = 0.0) -> torch.Tensor:
        values = {"input": x}
        for p in plans:
            layer, module, inp = p.layer, p.module, values[p.layer.input]
            if isinstance(module, nn.Linear):
                out = F.linear(inp, module.weight[: p.cout, : p.cin], module.bias[: p.cout])
            elif not p.is_conv:                        # pooling: no weights
                out = module(inp)
            else:
                w = self._weight(p)
                if layer.name in masks:
                    w = w * masks[layer.name]
                conv = module.conv
                y = F.conv2d(inp, w, None, conv.stride, conv.padding, conv.dilation,
                             p.cout if layer.kind == "depthwise" else 1)
                y = self._batch_norm(y, p, mode, stats, momentum)
                if layer.residual:
                    y = y + values[layer.residual]
                out = module.act(y)
            values[layer.name] = out
        return values[self.spec.output]

    @staticmethod
    def _batch_norm(y: torch.Tensor, p: _LayerPlan, mode: str, stats: SubnetBN | None,
                    momentum: float) -> torch.Tensor:
        bn, c = p.module.bn, p.cout
        weight, bias = bn.weight[:c], bn.bias[:c]
        if mode == "train":
            return F.batch_norm(y, None, None, weight, bias, True, 0.0, bn.eps)
        if mode == "calibrate":      # batch statistics; the running ones accumulate into ``stats``
            mean, var = stats[p.layer.name]
            return F.batch_norm(y, mean, var, weight, bias, True, momentum, bn.eps)
        mean, var = stats[p.layer.name] if stats is not None else (bn.running_mean[:c], bn.running_var[:c])
        return F.batch_norm(y, mean, var, weight, bias, False, 0.0, bn.eps)

    @torch.no_grad()
    def calibrate(self, arch: Architecture, batches: Batches, limit: int | None = None,
                  masks: Masks | None = None) -> SubnetBN:
        """BN statistics of ``arch``'s sub-network from ``batches`` (the first ``limit`` of them): a
        cumulative average of the batch statistics, exactly what :func:`recalibrate_bn` computes on the
        extracted network. The shared weights and statistics are untouched."""
        plans = self.plan(arch)
        masks = masks if masks is not None else self.masks(arch, plans)
        stats = {p.layer.name: (torch.zeros(p.cout), torch.ones(p.cout)) for p in plans if p.is_conv}
        seen = 0
        for x, _ in batches:
            if limit is not None and seen >= limit:
                break
            # momentum 1/(n+1) for batch n makes the running value the plain mean over batches.
            self._run(x, plans, masks, "calibrate", stats, 1.0 / (seen + 1))
            seen += 1
        if seen == 0:
            raise ValueError("calibrate: no batches")
        return stats

    @torch.no_grad()
    def extract(self, arch: Architecture, bn: SubnetBN | None = None, sparse: bool = True) -> GraphNet:
        """``arch``'s sub-network as a plain :class:`GraphNet` (real smaller convs, eval mode) that computes
        what :meth:`forward` computes in eval mode with the same ``bn``: weights sliced as
        :func:`materialize` slices this supernet's (reordered) network, masked weights set to zero (all
        kept when ``sparse=False``, e.g. to retrain dense first), BN statistics from ``bn`` when given."""
        plans = self.plan(arch)
        dense = Architecture(arch.model, arch.resolution, arch.widths)
        net = materialize(dense, self.spec, self.net)
        if sparse:
            for name, mask in self.masks(arch, plans).items():
                net.block(name).conv.weight.mul_(mask)
        if bn is not None:
            for name, (mean, var) in bn.items():
                net.block(name).bn.running_mean.copy_(mean)
                net.block(name).bn.running_var.copy_(var)
        return net.eval()


# ---- the search's evaluator -------------------------------------------------------------------------

@dataclass(frozen=True)
class SupernetConfig:
    """How a :class:`SupernetEvaluator` trains and scores sub-networks.

    Training (``update``): each generation, ``steps_per_generation`` SGD steps on the architectures of
    P ∪ Q; each step draws ``archs_per_step`` of them at random (plus the largest and the smallest by
    non-zero weights when ``sandwich``), sums their gradients on one batch and takes one step, with a
    cosine learning rate from ``lr`` to 0 over the generation. By default every generation starts again
    from the parent's weights (each population is trained from the same start, as its own short
    fine-tune); ``warm_start`` continues from the previous generation's weights and momentum instead,
    with ``warm_steps`` steps after the first generation (default: a quarter of
    ``steps_per_generation``) — cheaper, the supernet keeps improving over the search.

    Scoring (``evaluate``): per architecture, BN statistics from ``bn_batches`` fixed training batches
    of ``bn_batch_size`` (no augmentation), then cross-entropy and accuracy on the first ``eval_size``
    images of ``DataSplits.val`` (all when None). ``objective`` is what ``evaluate`` returns: ``loss``
    (cross-entropy) or ``error`` (1 − accuracy). ``resize``: run each architecture at its own resolution
    (bilinear resize of the batches); otherwise the data's resolution is used for every architecture.
    """

    steps_per_generation: int = 200
    warm_start: bool = False
    warm_steps: int | None = None
    archs_per_step: int = 1
    sandwich: bool = False
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: Augment = field(default_factory=Augment)
    bn_batches: int = 4
    bn_batch_size: int = 128
    eval_size: int | None = None
    eval_batch_size: int = 500
    objective: str = "loss"
    resize: bool = False
    seed: int = 0
    threads: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps_per_generation", "archs_per_step", "batch_size", "bn_batches", "bn_batch_size",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need ≥ 1)")
        if self.warm_steps is not None and self.warm_steps < 0:
            problems.append(f"warm_steps={self.warm_steps} (need ≥ 0)")
        if self.eval_size is not None and self.eval_size < 1:
            problems.append(f"eval_size={self.eval_size} (need ≥ 1, or None for the whole split)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (need > 0)")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective={self.objective!r} (choose one of {', '.join(OBJECTIVES)})")
        if problems:
            raise ValueError("invalid supernet configuration: " + "; ".join(problems))

    @property
    def generation_steps_after_first(self) -> int:
        if not self.warm_start:
            return self.steps_per_generation
        return self.warm_steps if self.warm_steps is not None else max(1, self.steps_per_generation // 4)

    def identity(self) -> dict:
        """The settings that determine results (a checkpoint must match them to be resumed)."""
        d = asdict(self)
        d.pop("threads")
        d.pop("progress")
        return d


@dataclass(frozen=True)
class SubnetScore:
    """A sub-network's cross-entropy and top-1 accuracy (0..1) on the held-out split."""

    loss: float
    accuracy: float


@dataclass
class UpdateRecord:
    """One ``update``: how many distinct architectures, steps, the mean training loss, seconds; ``skipped``
    when a resumed run found this update already in its checkpoint."""

    update: int
    architectures: int
    steps: int
    train_loss: float
    seconds: float
    skipped: bool = False


def _fingerprint(archs: Sequence[Architecture]) -> str:
    return hashlib.sha256("\n".join(sorted(a.to_json() for a in archs)).encode()).hexdigest()


def _unique(archs: Sequence[Architecture]) -> list[Architecture]:
    return list(dict.fromkeys(archs))


class SupernetEvaluator:
    """The JCW search's evaluator backed by a :class:`Supernet` (see :class:`SupernetConfig`).

    ``evaluate(archs)`` returns one value per architecture (``config.objective``); the scores of the
    last call are in ``last_losses`` / ``last_accuracies``, and :meth:`score` gives any architecture's
    :class:`SubnetScore` (cached until the next ``update``). ``update(archs)`` trains the supernet.
    With ``checkpoint`` (a ``.safetensors`` path) the supernet — weights, momentum, step counters,
    history — is saved after every update; with ``resume`` an existing checkpoint of the same settings
    is loaded, and an update it already holds (same architectures, as a resumed search repeats the
    generation that was interrupted) is not trained twice.
    """

    def __init__(self, supernet: Supernet, data: DataSplits, config: SupernetConfig | None = None,
                 checkpoint: str | Path | None = None, resume: bool = True) -> None:
        self.supernet, self.config = supernet, config or SupernetConfig()
        cfg = self.config
        if data.val is None:
            raise ValueError(f"{data.name} has no validation split; load it with val_size > 0 — the supernet "
                             "scores architectures on held-out training data")
        stem_channels = stem_in_channels(supernet.net)
        if data.in_channels != stem_channels or data.num_classes != supernet.spec.num_classes:
            raise ValueError(f"{data.name} has {data.in_channels} channels and {data.num_classes} classes; the "
                             f"supernet expects {stem_channels} and {supernet.spec.num_classes} — build the parent "
                             "with in_channels=data.in_channels and get_model(name, num_classes=data.num_classes)")
        torch.set_num_threads(cfg.threads or cpu_cores())
        self.data = data
        self._train_config = TrainConfig(1, cfg.lr, cfg.batch_size, "cosine", 0.0, cfg.momentum, cfg.nesterov,
                                         cfg.weight_decay, 0.0, cfg.seed, cfg.augment)
        self.optimizer = make_optimizer(supernet.net, self._train_config)
        self._loader = BatchLoader(data.train, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                                   drop_last=len(data.train) >= cfg.batch_size)
        # Fixed batches, so every architecture is calibrated and scored on the same images.
        bn_loader = BatchLoader(data.train, cfg.bn_batch_size, shuffle=True, seed=cfg.seed + 7919)
        self._bn_batches = [b for _, b in zip(range(cfg.bn_batches), bn_loader)]
        val = data.val if cfg.eval_size is None else data.val.head(min(cfg.eval_size, len(data.val)))
        self._val_batches = list(BatchLoader(val, cfg.eval_batch_size))
        self._initial = {k: v.clone() for k, v in supernet.net.state_dict().items()}
        self.step = 0                  # global training steps (the position in the data stream)
        self.updates = 0
        self.history: list[UpdateRecord] = []
        self._scores: dict[Architecture, SubnetScore] = {}
        self._last_update: str | None = None
        self._resumed_update: str | None = None
        self.last_losses = np.zeros(0)
        self.last_accuracies = np.zeros(0)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        if self.checkpoint is not None and resume and self.checkpoint.exists():
            self._restore(self.checkpoint)
        supernet.eval()

    # -- protocol ---------------------------------------------------------------------------------
    def evaluate(self, archs: Sequence[Architecture]) -> np.ndarray:
        """The objective (cross-entropy or 1 − accuracy) of every architecture on the held-out split."""
        todo = [a for a in _unique(archs) if a not in self._scores]
        with self._progress() as bar:
            task = bar.add_task("supernet: evaluate", total=len(todo))
            for arch in todo:
                self._scores[arch] = self._score(arch)
                bar.advance(task)
        scores = [self._scores[a] for a in archs]
        self.last_losses = np.array([s.loss for s in scores])
        self.last_accuracies = np.array([s.accuracy for s in scores])
        return self.last_losses if self.config.objective == "loss" else 1.0 - self.last_accuracies

    def score(self, arch: Architecture) -> SubnetScore:
        """Loss and accuracy of one architecture with the current weights."""
        if arch not in self._scores:
            self._scores[arch] = self._score(arch)
        return self._scores[arch]

    def update(self, archs: Sequence[Architecture]) -> UpdateRecord:
        """Train the supernet on ``archs`` (P ∪ Q) for one generation's steps."""
        cfg, archs = self.config, _unique(archs)
        if not archs:
            raise ValueError("update: no architectures to train")
        for arch in archs:
            self.supernet.plan(arch)               # validate all before training any
        self._scores.clear()
        fingerprint = _fingerprint(archs)
        if self._resumed_update is not None and self._resumed_update == fingerprint:
            self._resumed_update = None
            record = UpdateRecord(self.updates, len(archs), 0, float("nan"), 0.0, skipped=True)
            self.history.append(record)
            return record
        self._resumed_update = None
        steps = cfg.steps_per_generation if self.updates == 0 else cfg.generation_steps_after_first
        if not cfg.warm_start:
            self.supernet.net.load_state_dict(self._initial)
            self.optimizer.state.clear()
        sizes = np.array([self.supernet.weight_count(a) for a in archs])
        rng = np.random.default_rng([cfg.seed, self.updates])
        start, loss_sum = time.perf_counter(), 0.0
        self.supernet.train()
        with self._progress() as bar:
            task = bar.add_task(f"supernet: train generation {self.updates + 1}", total=steps)
            for i, (x, y) in zip(range(steps), self._train_batches()):
                for group in self.optimizer.param_groups:
                    group["lr"] = self._train_config.lr_at(i, steps)
                chosen = self._sample(archs, sizes, rng)
                self.optimizer.zero_grad(set_to_none=True)
                for arch in chosen:
                    loss = F.cross_entropy(self.supernet(self._fit(x, arch), arch), y) / len(chosen)
                    loss.backward()
                    loss_sum += float(loss.detach())
                self.optimizer.step()
                self.step += 1
                bar.advance(task)
        self.supernet.eval()
        self.updates += 1
        self._last_update = fingerprint
        record = UpdateRecord(self.updates, len(archs), steps, loss_sum / max(1, steps),
                              time.perf_counter() - start)
        self.history.append(record)
        if self.checkpoint is not None:
            self.save(self.checkpoint)
        return record

    # -- internals --------------------------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not self.config.progress, transient=True)

    def _fit(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        if self.config.resize and x.shape[-1] != arch.resolution:
            return F.interpolate(x, size=(arch.resolution, arch.resolution), mode="bilinear", align_corners=False)
        return x

    def _train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training stream from the current global step on (epochs follow each other seamlessly)."""
        epoch, start = divmod(self.step, len(self._loader))
        while True:
            yield from self._loader.epoch(epoch, start)
            epoch, start = epoch + 1, 0

    def _sample(self, archs: list[Architecture], sizes: np.ndarray, rng: np.random.Generator) -> list[Architecture]:
        cfg = self.config
        picks = rng.choice(len(archs), size=min(cfg.archs_per_step, len(archs)), replace=False).tolist()
        if cfg.sandwich:
            picks = [int(np.argmax(sizes)), int(np.argmin(sizes))] + picks
        return [archs[i] for i in dict.fromkeys(picks)]

    @torch.no_grad()
    def _score(self, arch: Architecture) -> SubnetScore:
        plans = self.supernet.plan(arch)
        masks = self.supernet.masks(arch, plans)
        bn = self.supernet.calibrate(arch, ((self._fit(x, arch), y) for x, y in self._bn_batches), masks=masks)
        self.supernet.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in self._val_batches:
            logits = self.supernet._run(self._fit(x, arch), plans, masks, "eval", bn)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.numel())
        return SubnetScore(loss_sum / seen, correct / seen)

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"format": STATE_FORMAT, "config": json.loads(json.dumps(self.config.identity())),
                "order": {g: o.tolist() for g, o in self.supernet.order.items()},
                "sparsity_block": self.supernet.sparsity_block, "data": self.data.name,
                "train_size": len(self.data.train), "step": self.step, "updates": self.updates,
                "last_update": self._last_update, "history": [asdict(r) for r in self.history]}

    def save(self, path: str | Path) -> Path:
        """Write the supernet (reordered full network, momentum, counters, history) to ``path``."""
        return save_checkpoint(path, self.supernet.net, optimizer=self.optimizer, meta={"supernet": self._state()})

    def _restore(self, path: Path) -> None:
        saved = read_checkpoint_meta(path).get("supernet")
        if saved is None or saved.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not a supernet checkpoint; use another checkpoint path")
        now = self._state()
        differ = [k for k in ("config", "order", "sparsity_block", "data", "train_size") if saved.get(k) != now[k]]
        if differ:
            raise CheckpointError(f"{path} was written by a supernet with other {', '.join(differ)}; resume with "
                                  "the same parent, data and settings, or use another checkpoint path")
        load_weights(path, self.supernet.net)
        load_optimizer_state(path, self.supernet.net, self.optimizer)
        self.step, self.updates = int(saved["step"]), int(saved["updates"])
        self._last_update = self._resumed_update = saved.get("last_update")
        self.history = [UpdateRecord(**r) for r in saved.get("history", [])]


__all__ = ["Masks", "OBJECTIVES", "SubnetBN", "SubnetScore", "Supernet", "SupernetConfig", "SupernetEvaluator",
           "UpdateRecord", "magnitude_mask", "reorder_channels"]
