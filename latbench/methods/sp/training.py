"""SP's stage-wise supernet training (Algorithm 1 of Zhang & Ou, "Stage-wise Channel Pruning").

Per mini-batch:

1. the **full network** runs forward on the images with the task loss (cross-entropy) and keeps its stage
   outputs Ŷ_1…Ŷ_K (detached: they are targets); the stage inputs are X̂ = [x, Ŷ_1, …, Ŷ_{K−1}];
2. for every stage ``i``, ``n_random`` randomly sampled stage sub-networks and the **smallest** one run
   stage ``i`` alone on X̂_{i−1}, cut to its first ``k`` channels, where ``k`` is the width the sub-network's
   pruned previous stage passes on (its stage-boundary width; channels are in importance order, so these
   are the k channels a deployed sub-network receives). Each stage output goes through the stage's 1×1
   adaptor to the full width and is compared with Ŷ_i: ``(1/C)·‖A_i(Y_i) − Ŷ_i‖²``
   (:func:`~latbench.supernet.losses.stage_feature_loss`);
3. gradients of all these losses accumulate, then **one** optimizer step (the sandwich rule: full, random,
   smallest).

**BatchNorm.** The shared running statistics belong to the full network only: the full network's forward
updates them, and the sub-network forwards normalise with their batch statistics without touching them
(``track_running_stats`` is switched off around them). The shared statistics therefore stay those of the
full network, and no statistics are trusted in the search: it recalibrates every stage sub-network before
scoring it (:func:`~latbench.methods.sp.search.recalibrate_stage`), and the full network that gives the
targets on the same calibration images; the chosen network is recalibrated before it is evaluated or
retrained.

Optimizer, learning-rate schedule and weight decay are the project's (:func:`~latbench.train.loop.make_optimizer`,
:class:`~latbench.train.loop.TrainConfig`); the optimizer holds the network's and the adaptors' parameters.
Training is resumable from a safetensors checkpoint (weights, BN statistics, adaptors, channel order,
momentum buffers and the step; the data order and the sampled sub-networks are pure functions of the
seed and the step), and a resumed run ends exactly where an uninterrupted one would.

>>> net = DynamicNet.from_parent(parent, "l1")                                        # doctest: +SKIP
>>> adaptors = StageAdaptors.for_net(net)                                             # doctest: +SKIP
>>> train_stagewise(net, adaptors, data, space, StageTrainConfig(epochs=1),
...                 checkpoint="sn.safetensors")                                     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Mapping

import numpy as np
import torch
from annotated_types import Ge, Gt
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ...data import Augment, BatchLoader, DataSplits, ImageDataset
from ...files import atomic_output
from ...models import Architecture, get_model
from ...recipe import Opt
from ...supernet import (DynamicBatchNorm2d, DynamicNet, SandwichSampler, SearchSpace, StageAdaptors, cross_entropy,
                         stage_feature_loss)
from ...train.checkpoint import FORMAT, CheckpointError, CheckpointFormat, imported_parent_layout, imported_source
from ...train.loop import Schedule, TrainConfig, make_optimizer

_META_KEY = "latbench"


@dataclass(frozen=True)
class StageTrainConfig:
    """Everything that determines a stage-wise training run (stored in the checkpoint; a resume must match).

    ``n_random``: random stage sub-networks per stage and step (the paper: one), besides the smallest.
    ``steps_per_epoch`` caps the batches of an epoch (quick runs); ``max_steps`` stops early, resumably.
    The learning rate follows ``schedule`` as in :class:`~latbench.train.loop.TrainConfig`.
    """

    epochs: Annotated[int, Ge(1)] = 1
    lr: Annotated[float, Gt(0)] = 0.05
    batch_size: Annotated[int, Ge(1)] = 128
    schedule: Schedule = Schedule.cosine
    warmup: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    steps_per_epoch: Annotated[int | None, Ge(1), Opt(flag="steps", help="cap supernet steps per epoch (quick runs)")] = None
    n_random: Annotated[int, Ge(0), Opt(flag="random", help="random stage sub-networks per stage and step (besides "
                                                            "the smallest)")] = 1
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0

    def __post_init__(self) -> None:
        self.train_config()        # validates epochs, lr, batch size, schedule
        if self.n_random < 0:
            raise ValueError(f"n_random must be ≥ 0, got {self.n_random}")

    def train_config(self) -> TrainConfig:
        """The project's training configuration (learning-rate schedule, optimizer settings)."""
        return TrainConfig(self.epochs, self.lr, self.batch_size, self.schedule, self.warmup, self.momentum,
                           self.nesterov, self.weight_decay, self.label_smoothing, self.seed,
                           Augment() if self.augment else Augment(crop_padding=0, flip=False), self.steps_per_epoch)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StageTrainHistory:
    """Mean losses per logged interval: ``records[j] = {"step", "lr", "ce", "random": [per stage],
    "smallest": [per stage]}``; ``complete`` once every step ran."""

    config: dict
    step: int = 0
    total_steps: int = 0
    complete: bool = False
    seconds: float = 0.0
    records: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageTrainHistory":
        return cls(dict(d["config"]), int(d["step"]), int(d["total_steps"]), bool(d["complete"]),
                   float(d.get("seconds", 0.0)), list(d.get("records", [])))


# ------------------------------------------------------------------------------------------------ BN handling
@contextlib.contextmanager
def frozen_running_stats(net: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers of ``net`` in training mode normalise with batch statistics and
    leave the shared running statistics alone (sub-network forwards must not move the full network's)."""
    norms = [m for m in net.modules() if isinstance(m, DynamicBatchNorm2d)]
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(norms, saved):
            m.track_running_stats = s


# ------------------------------------------------------------------------------------------------ one step
def stagewise_step(net: DynamicNet, adaptors: StageAdaptors, x: torch.Tensor, labels: torch.Tensor,
                   archs: list[Architecture], label_smoothing: float = 0.0) -> dict:
    """Forward and backward of one Algorithm-1 step (no optimizer step, gradients accumulate):
    the full network's cross-entropy, then every stage of every sub-network in ``archs`` (e.g. random ones
    and the smallest) on the full network's stage inputs. Returns the losses as floats and the full network's
    logits (detached): ``{"ce": …, "stages": [[stage losses of archs[0]], …], "logits": …}``."""
    logits, full = net(x, return_stages=True)
    ce = cross_entropy(logits, labels, label_smoothing)
    ce.backward()
    targets = [y.detach() for y in full]
    inputs = [x] + targets[:-1]
    losses = []
    with frozen_running_stats(net):
        for arch in archs:
            per_stage = []
            for i in range(len(net.stages)):
                y = net.forward_stage(i, inputs[i], arch)
                channels = net.stage_channels(i, arch)
                loss = stage_feature_loss(y, targets[i], lambda v, i=i, c=channels: adaptors(i, v, c))
                loss.backward()
                per_stage.append(float(loss.detach()))
            losses.append(per_stage)
    return {"ce": float(ce.detach()), "stages": losses, "logits": logits.detach()}


# ------------------------------------------------------------------------------------------------ checkpoints
class _Trainable(nn.Module):
    """The network and its adaptors as one module: one optimizer, one parameter namespace."""

    def __init__(self, net: DynamicNet, adaptors: StageAdaptors) -> None:
        super().__init__()
        self.net, self.adaptors = net, adaptors


def save_supernet(path: str | Path, net: DynamicNet, adaptors: StageAdaptors,
                  optimizer: torch.optim.Optimizer | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the supernet atomically as a safetensors checkpoint: ``model.*`` (the full network, loadable by
    :func:`latbench.train.load_checkpoint` as a plain full-width network in the supernet's channel order),
    ``adaptors.*``, ``order.<group>`` (parent channel at each position) and ``optim.*`` momentum buffers."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"adaptors.{k}": v.detach().cpu().contiguous() for k, v in adaptors.state_dict().items()})
    tensors.update({f"order.{g}": torch.as_tensor(np.asarray(o), dtype=torch.int64) for g, o in net.order.items()})
    if optimizer is not None:
        names = {id(p): n for n, p in _Trainable(net, adaptors).named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"optim.{names[id(p)]}.momentum_buffer"] = buf.detach().cpu().contiguous()
    header = {**dict(meta or {}), "format": FORMAT, "model": net.spec.name, "num_classes": net.spec.num_classes,
              "in_channels": int(net.in_channels), "arch": net.full_arch().to_dict(), "kind": "sp-supernet"}
    if net.spec.source:                # an imported model: its graph is rebuilt from the file
        header["source"] = str(net.spec.source)
        if net.spec.input_shape:
            header["input_shape"] = list(net.spec.input_shape)
        header["batchnorm"] = imported_source(net)["batchnorm"]
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    return path


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"supernet checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err}); delete it to retrain "
                              "the supernet") from err
    try:
        meta = json.loads(raw or "")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: no valid latbench metadata ({err}); delete it to retrain the supernet") from err
    if meta.get("format") != FORMAT or meta.get("kind") != "sp-supernet":
        raise CheckpointError(f"{path} is not an SP supernet checkpoint; delete it or choose another output folder")
    return meta, tensors


def read_supernet_meta(path: str | Path) -> dict:
    """The JSON metadata of a supernet checkpoint (loads the tensors too: the files are small)."""
    return _read(Path(path))[0]


def load_supernet(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[DynamicNet, StageAdaptors, dict]:
    """Rebuild ``(net, adaptors, meta)`` from a checkpoint of :func:`save_supernet` on ``device``."""
    path = Path(path)
    meta, tensors = _read(path)
    if meta.get("source"):
        from ...api import load_model
        from ...models.onnx_graph import OnnxModelError
        from ...models.onnx_torch import full_network
        from ...supernet import OnnxSupernet

        try:
            spec = load_model(meta["source"], input_shape=meta.get("input_shape"))
        except (OnnxModelError, OSError) as err:
            raise CheckpointError(f"{path} is the supernet of {meta['source']}, which cannot be read ({err}); "
                                  "put the model file back there") from err
        if spec.name != meta["model"]:
            raise CheckpointError(f"{path} is the supernet of another version of {meta['source']} ({meta['model']}, "
                                  f"the file now reads as {spec.name})")
        net = OnnxSupernet(imported_parent_layout(full_network(spec), meta).model, spec).to(device)
    else:
        spec = get_model(meta["model"], num_classes=int(meta["num_classes"]))
        widths = Architecture.from_dict(meta["arch"]).widths
        net = DynamicNet(spec, widths, int(meta["in_channels"]), device="meta").to_empty(device=device)
    load_into(path, net, None, tensors=tensors)
    adaptors = StageAdaptors.for_net(net)
    load_into(path, None, adaptors, tensors=tensors)
    return net.eval(), adaptors, meta


def load_into(path: str | Path, net: DynamicNet | None, adaptors: StageAdaptors | None,
              optimizer: torch.optim.Optimizer | None = None, *, tensors: dict | None = None) -> None:
    """Copy a supernet checkpoint's weights (and channel order) into ``net``, its adaptors into ``adaptors``
    and, with ``optimizer`` (built over ``net`` and ``adaptors``), its momentum buffers."""
    path = Path(path)
    tensors = tensors if tensors is not None else _read(path)[1]

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        if net is not None:
            net.load_state_dict(part("model."), strict=True)
            net.order = {g: o.numpy().copy() for g, o in part("order.").items()} or net.order
        if adaptors is not None:
            adaptors.load_state_dict(part("adaptors."), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit this network ({str(err).splitlines()[0]}); delete it "
                              "to retrain the supernet") from err
    if optimizer is not None:
        params = dict(_Trainable(net, adaptors).named_parameters())
        for key, value in part("optim.").items():
            name = key.removesuffix(".momentum_buffer")
            if name not in params:
                raise CheckpointError(f"{path}: momentum for unknown parameter {name!r}")
            optimizer.state[params[name]]["momentum_buffer"] = value.to(params[name].device).clone()


# ------------------------------------------------------------------------------------------------ the loop
def _checkpoint_format(state: Callable[[], dict], saved: dict) -> CheckpointFormat:
    """The SGD loop's checkpoint as a supernet checkpoint (:func:`save_supernet`) of the :class:`_Trainable` the
    loop trains, with SP's own state (``state()`` when saving: settings, records, the open window) under
    ``stagewise``; ``saved`` keeps the loop's last ``running`` counters."""
    def save(path, trainable: _Trainable, *, arch=None, optimizer=None, meta=None) -> Path:
        saved.update((meta or {}).get("running", {}))
        return save_supernet(path, trainable.net, trainable.adaptors, optimizer,
                             {**dict(meta or {}), "stagewise": state()})

    def load(path, trainable: _Trainable, optimizer) -> None:
        load_into(path, trainable.net, trainable.adaptors, optimizer)

    return CheckpointFormat(save=save, read_meta=read_supernet_meta, load=load)


class _Window:
    """Stage losses summed since the last record; ``flush`` appends their means to ``records``."""

    def __init__(self, stages: int, records: list[dict], saved: Mapping[str, Any] | None = None) -> None:
        self.records = records
        self.n, self.ce = 0, 0.0
        self.random, self.smallest = np.zeros(stages), np.zeros(stages)
        if saved:
            self.n, self.ce = int(saved["n"]), float(saved["ce"])
            self.random, self.smallest = np.array(saved["random"]), np.array(saved["smallest"])

    def add(self, out: Mapping[str, Any], n_random: int) -> None:
        self.n += 1
        self.ce += out["ce"]
        if n_random:
            self.random += np.mean(out["stages"][:-1], axis=0)
        self.smallest += np.asarray(out["stages"][-1])

    def flush(self, step: int, rate: float) -> None:
        if self.n:
            self.records.append({"step": step, "lr": rate, "ce": self.ce / self.n,
                                 "random": (self.random / self.n).tolist(),
                                 "smallest": (self.smallest / self.n).tolist()})
        self.n, self.ce = 0, 0.0
        self.random, self.smallest = np.zeros_like(self.random), np.zeros_like(self.smallest)

    def to_dict(self) -> dict:
        return {"n": self.n, "ce": self.ce, "random": self.random.tolist(), "smallest": self.smallest.tolist()}


def train_stagewise(net: DynamicNet, adaptors: StageAdaptors, data: DataSplits | ImageDataset, space: SearchSpace,
                    config: StageTrainConfig = StageTrainConfig(), *, checkpoint: str | Path | None = None,
                    resume: bool = True, max_steps: int | None = None, checkpoint_every: int = 200,
                    log_every: int = 50, meta: Mapping[str, Any] | None = None,
                    device: torch.device | str | None = None, progress: bool = True) -> StageTrainHistory:
    """Train ``net`` and ``adaptors`` in place with Algorithm 1 on ``data``'s training images, on ``device``
    (both are moved there; default: where the net is, e.g. ``DynamicNet.from_parent(…, device="cuda")``; the
    CPU by default), through the project's one SGD loop (:func:`latbench.train.loop.train`: its schedule,
    optimizer, data order and resume; the step is :func:`stagewise_step`). Sub-networks are drawn from
    ``space`` by a :class:`SandwichSampler` (its smallest and ``config.n_random`` random ones, a pure
    function of ``(seed, step)``).

    With ``checkpoint`` the run is saved there every ``checkpoint_every`` steps, at every epoch's end and at
    the end; with ``resume`` an unfinished checkpoint written with the same settings is continued (a
    finished one is loaded and returned as is). ``max_steps`` stops after that many global steps
    (time-boxed runs resume later). Losses are averaged and recorded every ``log_every`` steps.
    """
    from ...train.loop import train

    tc = config.train_config()
    if device is not None:
        net.to(device)
    device = net.device
    adaptors.to(device)
    train_set = data.train if isinstance(data, DataSplits) else data
    loader = BatchLoader(train_set, config.batch_size, shuffle=True, augment=tc.augment, seed=config.seed,
                         drop_last=len(train_set) >= config.batch_size)
    per_epoch = min(len(loader), config.steps_per_epoch) if config.steps_per_epoch else len(loader)
    total = per_epoch * config.epochs
    stop_at = total if max_steps is None else min(total, max_steps)
    sampler = SandwichSampler(space, config.n_random, seed=config.seed, resolution=space.resolutions[-1])
    identity = {**config.to_dict(), "train_size": len(train_set), "space": _space_key(space)}
    checkpoint = Path(checkpoint) if checkpoint else None
    records: list[dict] = []
    saved_window = None
    if resume and checkpoint is not None and checkpoint.exists():
        saved = read_supernet_meta(checkpoint).get("stagewise")
        if saved is None:
            raise CheckpointError(f"{checkpoint} holds no stage-wise training state (written by an older latbench); "
                                  "delete it to retrain the supernet")
        if saved["config"] != identity:
            diff = {k: (saved["config"].get(k), v) for k, v in identity.items() if saved["config"].get(k) != v}
            raise CheckpointError(f"{checkpoint} was trained with other settings (saved, now): {diff}; resume with "
                                  "the same settings or choose another output folder")
        records, saved_window = list(saved["records"]), saved["window"]
    window = _Window(len(net.stages), records, saved_window)
    last: dict = {}

    def step_backward(_, x: torch.Tensor, y: torch.Tensor, step: int):
        archs = sampler.sample(step)
        out = stagewise_step(net, adaptors, x, y, archs[2:] + [archs[1]], config.label_smoothing)   # random, smallest
        last.update(out, step=step)
        return torch.tensor(out["ce"]), out["logits"]

    def after_step(_, steps_done: int) -> None:
        window.add(last, config.n_random)
        if (log_every and steps_done % log_every == 0) or steps_done == stop_at:
            window.flush(steps_done, tc.lr_at(steps_done - 1, total))

    def on_epoch(_, __) -> bool:
        window.flush(last["step"] + 1, tc.lr_at(last["step"], total))
        return False

    trainable, running = _Trainable(net, adaptors), {}
    history = train(trainable, train_set, tc.epochs, tc.lr, batch_size=tc.batch_size, schedule=tc.schedule,
                    warmup=tc.warmup, momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay,
                    label_smoothing=tc.label_smoothing, seed=tc.seed, augment=tc.augment,
                    steps_per_epoch=tc.steps_per_epoch, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                    resume=resume, max_steps=max_steps, arch=net.full_arch(), meta=meta, progress=progress,
                    loader=loader, step_backward=step_backward, after_step=after_step, on_epoch=on_epoch,
                    optimizer=make_optimizer(trainable, tc), device=device,
                    checkpoint_format=_checkpoint_format(
                        lambda: {"config": identity, "records": records, "window": window.to_dict()}, running))
    trainable.eval()
    seconds = sum(e.seconds for e in history.epochs) + (0.0 if history.complete else running.get("seconds", 0.0))
    return StageTrainHistory(identity, history.step, history.total_steps, history.complete, seconds, records)


def _space_key(space: SearchSpace) -> dict:
    return {"choices": {g: list(c) for g, c in space.choices.items()}, "resolutions": list(space.resolutions)}


@torch.no_grad()
def stage_losses(net: DynamicNet, adaptors: StageAdaptors, x: torch.Tensor, arch: Architecture,
                 calibration: torch.Tensor | None = None) -> list[float]:
    """Stage distillation losses of ``arch`` on images ``x``, as the search measures them: the full network
    (eval mode, BN recalibrated on ``calibration`` images, default ``x``) gives the stage inputs and targets;
    each stage of ``arch`` is recalibrated on the calibration images' stage inputs."""
    from ...supernet import recalibrate
    from .search import recalibrate_stage

    calibration = calibration if calibration is not None else x
    was = net.training
    full_bn = recalibrate(net, None, [calibration])
    net.eval()
    try:
        _, full = net(x, bn=full_bn, return_stages=True)
        _, cal = net(calibration, bn=full_bn, return_stages=True)
        inputs, cal_inputs = [x] + full[:-1], [calibration] + cal[:-1]
        losses = []
        for i in range(len(net.stages)):
            stats = recalibrate_stage(net, i, arch, [cal_inputs[i]])
            y = net.forward_stage(i, inputs[i], arch, bn=stats)
            channels = net.stage_channels(i, arch)
            losses.append(float(stage_feature_loss(y, full[i], lambda v, i=i, c=channels: adaptors(i, v, c))))
        return losses
    finally:
        net.train(was)


__all__ = ["StageTrainConfig", "StageTrainHistory", "frozen_running_stats", "load_into", "load_supernet",
           "read_supernet_meta", "save_supernet", "stage_losses", "stagewise_step", "train_stagewise"]
