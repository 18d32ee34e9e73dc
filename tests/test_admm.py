"""ADMM retraining: the U/Z updates by hand, the penalty's gradient, fixed masks during fine-tuning, exact
final sparsity, accuracy close to dense, LiteRT export of the result, resume between phases."""
import copy

import numpy as np
import pytest
import torch

from latbench.data import NO_AUGMENT
from latbench.export import export_network_for
from latbench.models import Architecture
from latbench.train import admm as admm_module
from latbench.train import evaluate, load_checkpoint
from latbench.train.admm import (ADMMConfig, ADMMState, admm_retrain, admm_update, finetune_with_masks,
                                 project_topk)
from latbench.supernet import DynamicNet
from test_supernet import R20, parent_net, separable_data, small_widths

torch.set_num_threads(1)


def test_u_and_z_updates_match_a_hand_computation():
    w = torch.tensor([[0.5, -0.1], [0.05, -2.0]])
    z = torch.tensor([[0.1, 0.3], [-0.05, 0.2]])
    # W + Z = [[0.6, 0.2], [0.0, -1.8]]; sparsity 0.5 keeps the two largest magnitudes, 0.6 and -1.8.
    u, z_new = admm_update(w, z, 0.5)
    torch.testing.assert_close(u, torch.tensor([[0.6, 0.0], [0.0, -1.8]]))
    # Z' = Z + W - U = [[0.1 + 0.5 - 0.6, 0.3 - 0.1 - 0], [-0.05 + 0.05 - 0, 0.2 - 2.0 + 1.8]]
    torch.testing.assert_close(z_new, torch.tensor([[0.0, 0.2], [0.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(project_topk(w, 0.75), torch.tensor([[0.0, 0.0], [0.0, -2.0]]))
    # Per block of output channels: each row (block of 1 filter) keeps its larger entry.
    torch.testing.assert_close(project_topk(w, 0.5, block=1), torch.tensor([[0.5, 0.0], [0.0, -2.0]]))


def test_state_starts_at_the_projection_and_its_penalty_has_the_admm_gradient():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(4, 3, 3, 3, generator=g, requires_grad=True),
               "b": torch.randn(6, 4, 1, 1, generator=g, requires_grad=True)}
    state = ADMMState.start(weights, {"a": 0.5, "b": 0.75}, rho=0.3)
    assert all(int((z != 0).sum()) == 0 for z in state.z.values())
    assert int((state.u["b"] == 0).sum()) == 18 and torch.equal(state.u["a"], project_topk(weights["a"], 0.5))
    assert state.update(weights) > 0
    # After an update Z ≠ 0; the gradient of ρ/2‖W − U + Z‖² is ρ(W − U + Z).
    state.penalty(weights).backward()
    for name, w in weights.items():
        torch.testing.assert_close(w.grad, 0.3 * (w.detach() - state.u[name] + state.z[name]))
    # The training loop adds the same gradient between backward and the optimizer step.
    grads = {name: w.grad.clone() for name, w in weights.items()}
    for w in weights.values():
        w.grad = None
    state.add_penalty_grad(weights)
    for name, w in weights.items():
        torch.testing.assert_close(w.grad, grads[name])
    masks = state.masks(weights)
    assert torch.equal(masks["a"], project_topk(weights["a"].detach() + state.z["a"], 0.5) != 0)
    # A new ρ keeps the unscaled dual ρ·Z.
    dual = 0.3 * state.z["b"]
    state.set_rho(1.2)
    torch.testing.assert_close(1.2 * state.z["b"], dual)


def test_admm_on_a_quadratic_converges_to_the_sparse_projection():
    """min ½‖W − A‖² s.t. 70 % zeros: the answer is Π(A). With ρ large enough (here ≥ 1, so that no pruned
    entry of A outweighs a kept one once divided by ρ) the iteration settles there: W = U = Π(A)."""
    a = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    w = a.clone().requires_grad_(True)
    state = ADMMState.start({"a": w}, {"a": 0.7}, rho=2.0)
    optimizer = torch.optim.SGD([w], lr=0.05)
    residuals = []
    for _ in range(12):
        for _ in range(100):                                            # the W-step, by gradient descent
            loss = 0.5 * (w - a).square().sum() + state.penalty({"a": w})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        residuals.append(state.update({"a": w}))
    assert residuals[-1] < 1e-4 < residuals[0]
    torch.testing.assert_close(state.u["a"], project_topk(a, 0.7), rtol=0, atol=1e-4)
    torch.testing.assert_close(w.detach(), project_topk(a, 0.7), rtol=0, atol=1e-3)


def tiny(**kw) -> ADMMConfig:
    base = dict(dense_epochs=4, admm_epochs=3, finetune_epochs=2, lr=0.05, rho=0.5, batch_size=32,
                steps_per_epoch=6, augment=NO_AUGMENT, progress=False)
    return ADMMConfig(**{**base, **kw})


def sliced_network(sparsity=(0.5, 0.75), seed=0):
    """A sub-network of the supernet (JCW's: the core's, channels by L1 norm) at 3/4 of the parent's widths,
    dense, with a sparsity per conv."""
    supernet = DynamicNet.from_parent(parent_net(widths=small_widths()), "l1")
    rng = np.random.default_rng(seed)
    arch = Architecture("resnet20", 8, {g: w * 3 // 4 for g, w in small_widths().items()},
                        {name: float(rng.choice(sparsity)) for name in R20.sparsifiable_layers})
    return supernet.extract(Architecture(arch.model, arch.resolution, arch.widths)), arch


def test_fine_tuning_keeps_any_given_masks():
    data = separable_data()
    net, arch = sliced_network()
    g = torch.Generator().manual_seed(1)
    # Random masks, unrelated to magnitudes: a fine-tune that re-derived masks would not keep them.
    masks = {n: torch.rand(net.block(n).conv.weight.shape, generator=g) > 0.6 for n in arch.sparsity}
    before = {n: net.block(n).conv.weight.detach().clone() for n in masks}
    steps, loss = finetune_with_masks(net, masks, data.train, 2, 0.05, tiny())
    assert steps == 12 and np.isfinite(loss)
    for name, mask in masks.items():
        w = net.block(name).conv.weight.detach()
        assert torch.equal(w == 0, ~mask), name
        assert (w[mask] - before[name][mask]).abs().max() > 0, name   # the kept weights were trained


def test_admm_retrain_gives_exact_sparsity_close_to_dense_accuracy_and_exports_to_litert():
    from test_tflite import _nhwc, _run

    data = separable_data()
    net, arch = sliced_network()
    net, history = admm_retrain(net, arch, data, tiny())
    assert [p.phase for p in history.phases] == ["dense", "admm", "finetune"]
    assert [p.steps for p in history.phases] == [24, 18, 12]
    assert [u.step for u in history.updates] == [6, 12, 18]              # one U/Z update per epoch
    for name, s in arch.sparsity.items():
        w = net.block(name).conv.weight
        assert int((w == 0).sum()) == round(s * w.numel()), name
        assert history.sparsity[name] == pytest.approx(s, abs=0.5 / w.numel() + 1e-6)
    dense_acc = history.phase("dense").val_acc
    _, final_acc = evaluate(net, data.val)
    assert final_acc == history.phase("finetune").val_acc
    assert dense_acc > 0.5 and final_acc >= dense_acc - 0.1, (dense_acc, final_acc)
    # The pruned network exports with its CSR-sparse convs and LiteRT computes what torch computes.
    x = data.val.normalize(data.val.images[:2])
    with torch.no_grad():
        reference = net(x).numpy()
    model = export_network_for("tflite", net, arch)
    out = np.concatenate([_run(model, {"input": _nhwc(x[i:i + 1])}) for i in range(2)])
    assert np.abs(out - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_update_every_n_steps_with_a_growing_rho():
    data = separable_data()
    net, arch = sliced_network(sparsity=(0.75,))
    _, history = admm_retrain(net, arch, data, tiny(dense_epochs=0, finetune_epochs=0, admm_epochs=2, rho=0.05,
                                                    rho_growth=2.0, rho_max=0.3, update_every=4))
    assert [(u.step, u.rho) for u in history.updates] == [(4, 0.05), (8, 0.1), (12, 0.2)]
    assert [p.phase for p in history.phases] == ["admm"]


def test_admm_prepares_the_weights_for_pruning():
    """After the same training, hard pruning hurts far less when the ADMM penalty pulled the weights
    towards their sparse projection than when it was (almost) off."""
    data = separable_data()
    start, arch = sliced_network()
    results = {}
    for rho in (1e-6, 0.5):
        _, history = admm_retrain(copy.deepcopy(start), arch, data, tiny(dense_epochs=2, admm_epochs=4,
                                                                          finetune_epochs=0, rho=rho))
        results[rho] = history
    pruned_loss = {rho: h.phase("admm").val_loss for rho, h in results.items()}   # right after the hard prune
    assert pruned_loss[0.5] < 0.8 * pruned_loss[1e-6], pruned_loss
    residual = {rho: [u.residual for u in h.updates] for rho, h in results.items()}
    assert residual[0.5][-1] < residual[0.5][0] and residual[1e-6][-1] > residual[1e-6][0], residual


def test_resume_after_a_kill_between_phases_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    data = separable_data()
    start, arch = sliced_network()
    config = tiny(dense_epochs=1, admm_epochs=1, finetune_epochs=1)
    reference, _ = admm_retrain(copy.deepcopy(start), arch, data, config)
    path = tmp_path / "admm.safetensors"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(admm_module, "finetune_with_masks", killed)
    with pytest.raises(KeyboardInterrupt):
        admm_retrain(copy.deepcopy(start), arch, data, config, checkpoint=path)
    monkeypatch.undo()
    net, history = admm_retrain(copy.deepcopy(start), arch, data, config, checkpoint=path)
    assert [p.phase for p in history.phases] == ["dense", "admm", "finetune"]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0, msg=key)
    _, loaded_arch, meta = load_checkpoint(path)                      # a normal checkpoint of the pruned net
    assert loaded_arch == arch and meta["admm"]["completed"] == "finetune"
    # A finished run is returned as is; other settings are refused.
    again, _ = admm_retrain(copy.deepcopy(start), arch, data, config, checkpoint=path)
    assert torch.equal(again.block("stem").conv.weight, net.block("stem").conv.weight)
    with pytest.raises(ValueError, match="other settings"):
        admm_retrain(copy.deepcopy(start), arch, data, tiny(rho=0.5), checkpoint=path)


def test_bad_inputs_are_named():
    data = separable_data()
    net, arch = sliced_network()
    wider = Architecture(arch.model, arch.resolution, small_widths(), arch.sparsity)
    with pytest.raises(ValueError, match="extract"):
        admm_retrain(net, wider, data, tiny())
    with pytest.raises(ValueError, match="rho"):
        ADMMConfig(rho=-1)
