"""What a layer variant computes, in torch: the reference both exporters' tests compare against."""
import numpy as np
import torch

from latbench.export.onnx import random_layer_weights

ACTIVATIONS = {"relu": torch.relu, "relu6": lambda t: t.clamp(0, 6), "none": lambda t: t}


def variant_reference(sig, point, seed=1):
    """(x, residual or None, expected output) for ``sig`` at ``point`` (NCHW), with the exporters' weights."""
    rng = np.random.default_rng(seed)
    shape = (1, point.in_channels) if sig.kind == "linear" else (1, point.in_channels, point.input_hw, point.input_hw)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if sig.kind == "maxpool":
        return x, None, torch.nn.functional.max_pool2d(x, sig.kernel, sig.stride, sig.padding)
    if sig.kind == "avgpool":
        return x, None, x.mean((2, 3))
    w, b = (torch.from_numpy(a) for a in random_layer_weights(sig, point))
    if sig.kind == "linear":
        return x, None, torch.nn.functional.linear(x, w, b)
    groups = point.in_channels if sig.kind == "depthwise" else 1
    y = torch.nn.functional.conv2d(x, w, b, sig.stride, sig.padding, groups=groups)
    r = torch.from_numpy(rng.standard_normal(tuple(y.shape)).astype(np.float32)) if sig.residual else None
    if r is not None:
        y = y + r
    return x, r, ACTIVATIONS[sig.act](y)
