"""Checkpoints as ``safetensors`` files: plain tensors plus one JSON metadata string — never pickle.

Layout: ``model.<state_dict key>`` for the network (weights and BN statistics), ``optim.<parameter
name>.momentum_buffer`` for SGD momentum, and metadata key ``latbench`` holding JSON with at least
``format``, ``model``, ``num_classes``, ``in_channels`` and ``arch`` (the :class:`Architecture`, so a
pruned network is rebuilt at its own widths). Training adds epoch/step, schedule, seed, data set and
history.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_output
from ..models import Architecture, ArchitectureError, GraphNet, get_model

FORMAT = "latbench-checkpoint/1"
_META_KEY = "latbench"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, not ours, or does not fit the network."""


def stem_in_channels(net: GraphNet) -> int:
    """Input channels of the network's stem (1 for grey images, 3 for RGB)."""
    if net.spec.source:                 # an imported model: its graph's input
        return int(net.spec.in_channels)
    stem = next(layer for layer in net.spec.layers if layer.fixed_in is not None)
    return int(net.block(stem.name).conv.in_channels)


def net_architecture(net: GraphNet, resolution: int | None = None) -> Architecture:
    """The dense architecture of ``net`` (its widths; sparsity is not recoverable from weights alone)."""
    return Architecture(net.spec.name, resolution or net.spec.base_resolution, net.widths)


def save_checkpoint(path: str | Path, net: GraphNet, *, arch: Architecture | None = None,
                    optimizer: torch.optim.Optimizer | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``net`` (and the momentum of ``optimizer``) to ``path`` atomically (temp file + rename, so a
    kill never leaves half a checkpoint). ``meta`` must be JSON-serialisable."""
    path = Path(path)
    arch = arch or net_architecture(net)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in net.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"optim.{names[id(p)]}.momentum_buffer"] = buf.detach().contiguous()
    header = {**dict(meta or {}), "format": FORMAT, "model": net.spec.name, "num_classes": net.spec.num_classes,
              "in_channels": stem_in_channels(net), "arch": arch.to_dict()}
    if net.spec.source:     # an imported model: rebuilt from its ONNX file, cut to the widths (load_checkpoint)
        header["source"] = imported_source(net)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(header)})
    return path


def imported_source(net) -> dict:
    """What rebuilds an imported model's network (an OnnxNet) before its weights load: the ONNX file, its input
    shape, and whether the graph trained with BN given back (:mod:`latbench.models.onnx_bn`)."""
    from ..models.onnx_bn import has_unfolded_batchnorm

    return {"path": str(Path(net.spec.source).resolve()), "input_shape": list(net.spec.input_shape),
            "batchnorm": "unfolded" if has_unfolded_batchnorm(net.model) else "file"}


def imported_parent_layout(full, source: Mapping[str, Any]):
    """The full network ``full`` (an OnnxNet from the file) with the layout ``source`` (:func:`imported_source`)
    names: its unfolded BN nodes when it trained with them, for a checkpoint's weights to load into."""
    from ..models.onnx_bn import unfold_batchnorm

    return unfold_batchnorm(full, None) if source.get("batchnorm") == "unfolded" else full


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from err


def read_checkpoint_meta(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint, without loading tensors."""
    path = Path(path)
    with _open(path) as f:
        raw = (f.metadata() or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not a latbench checkpoint (no '{_META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT!r})")
    return meta


def _tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    with _open(path) as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_checkpoint(path: str | Path) -> tuple[GraphNet, Architecture, dict]:
    """Rebuild the (possibly pruned) network stored in ``path``: returns ``(net, arch, meta)``, ``net`` in
    eval mode."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if meta.get("source"):
        return _load_imported(path, meta)
    try:
        # The spec describes the network as trained: its input channels (1 for grey images) and classes.
        spec = dataclasses.replace(get_model(meta["model"], num_classes=int(meta["num_classes"])),
                                   in_channels=int(meta["in_channels"]))
        arch = Architecture.from_dict(meta["arch"]).validate(spec)
    except (KeyError, ArchitectureError) as err:
        raise CheckpointError(f"{path}: metadata does not describe a zoo network ({err})") from err
    net = GraphNet(spec, arch.widths, int(meta["in_channels"]))
    load_weights(path, net)
    return net.eval(), arch, meta


def _load_imported(path: Path, meta: dict):
    """A checkpoint of an imported model's network: its graph cut from the ONNX file it names, then its weights."""
    from ..models import materialize
    from ..models.onnx_graph import OnnxModelError, spec_from_onnx

    source = meta["source"]
    try:
        spec = spec_from_onnx(source["path"], input_shape=source.get("input_shape") or None)
    except (OSError, OnnxModelError) as err:
        raise CheckpointError(f"{path} holds a network of the imported model {source['path']}, which cannot be "
                              f"read now ({err}); put that ONNX file back at that path") from err
    if spec.name != meta["model"]:
        raise CheckpointError(f"{path} holds a network of {meta['model']}, but {source['path']} is now another "
                              f"model ({spec.name}): the file changed since the checkpoint was written")
    try:
        arch = Architecture.from_dict(meta["arch"]).validate(spec)
    except (KeyError, ArchitectureError) as err:
        raise CheckpointError(f"{path}: metadata does not describe a network of {spec.name} ({err})") from err
    from ..models.onnx_torch import full_network

    net = materialize(arch, spec, imported_parent_layout(full_network(spec), source))
    load_weights(path, net)
    return net.eval(), arch, meta


def load_weights(path: str | Path, net: GraphNet) -> None:
    """Copy the weights of checkpoint ``path`` into ``net`` (same architecture required)."""
    state = _tensors(Path(path), "model.")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit this network ({str(err).splitlines()[0]})") from err


def load_optimizer_state(path: str | Path, net: GraphNet, optimizer: torch.optim.Optimizer) -> int:
    """Restore SGD momentum buffers saved with :func:`save_checkpoint`; returns how many were restored."""
    buffers = _tensors(Path(path), "optim.")
    params = dict(net.named_parameters())
    restored = 0
    for key, value in buffers.items():
        name = key.removesuffix(".momentum_buffer")
        if name not in params:
            raise CheckpointError(f"{path}: momentum for unknown parameter {name!r}")
        optimizer.state[params[name]]["momentum_buffer"] = value.to(params[name].device, copy=True)
        restored += 1
    return restored


def load_training_state(path: str | Path, net: GraphNet, optimizer: torch.optim.Optimizer) -> None:
    """Weights and SGD momentum of checkpoint ``path`` into ``net`` and ``optimizer`` (to resume training)."""
    load_weights(path, net)
    load_optimizer_state(path, net, optimizer)


@dataclass(frozen=True)
class CheckpointFormat:
    """How the SGD loop (:func:`latbench.train.loop.train`) writes and reads its checkpoint:
    ``save(path, net, *, arch, optimizer, meta)``, ``read_meta(path) -> dict`` and ``load(path, net,
    optimizer)``. The default is this module's network checkpoint; a method that trains more than one
    network gives its own (SP: the supernet with its stage adaptors, :mod:`latbench.methods.sp.training`)."""

    save: Callable[..., Path] = save_checkpoint
    read_meta: Callable[[str | Path], dict] = read_checkpoint_meta
    load: Callable[[str | Path, Any, torch.optim.Optimizer], None] = load_training_state
