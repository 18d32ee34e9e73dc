"""SP's claim (their Fig. 4): the total stage distillation loss ranks sub-networks by their retrained accuracy
better than the proxies of MetaPruning/AutoSlim/US-Net (accuracy with inherited weights).

ResNet-20 (default) on Fashion-MNIST-32. Sub-networks are drawn from SP's search space (MetaPruning's 31
ratios at the table's channel multiple) and spread evenly over its predicted-latency range. Each is
retrained with one recipe: it starts from the trained parent's weights (the l1-first channels), its BN is
recalibrated, and then it is fine-tuned for ``--retrain-steps`` steps with the project's one SGD loop. That
retrained accuracy is the ground truth. The proxies compared:

* ``sp_loss``: SP's total stage distillation loss (stage-wise supernet, Algorithm 1; stage BN recalibrated);
* ``usnet_acc``: accuracy with inherited weights of a slimmable supernet trained with the sandwich rule
  (full + smallest + 2 random) and in-place distillation on logits, BN recalibrated (US-Nets / AutoSlim);
* ``oneshot_acc``: the same for a plain one-shot supernet (one random sub-network per step, cross-entropy);
* ``flops`` and ``latency`` (predicted from the table).

Kendall τ and Spearman ρ are given for each proxy against the retrained accuracy, with bootstrap 95 %
intervals over the sub-networks. Signs are oriented so that +1 means a perfect ranking: SP's loss is negated
(lower is better); accuracies, FLOPs and latency are taken as they are (a bigger network is expected to be
more accurate). A scatter plot per proxy is written as well. The script
writes ``ranking.json``, ``ranking.png`` and the ``ranking``/``subnets`` part of ``summary.json`` in ``--results``.

Everything is resumable: supernets, retrained sub-networks and proxy values live in ``--out``.

    python benchmarks/sp_ranking.py --config search/sp-ranking-resnet20.toml   # the README's run (reduced settings)
    python benchmarks/sp_ranking.py --checkpoint runs/r20/base.safetensors      # the defaults: hours on 2 cores
    python benchmarks/sp_ranking.py --quick                                     # a minute-long smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge, Gt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latbench.cli.options import script_main  # noqa: E402
from latbench.data import BatchLoader, DataSplits, load_dataset  # noqa: E402
from latbench.files import atomic_save_figure, atomic_write_json, read_json  # noqa: E402
from latbench.methods.sp import StageTrainConfig, stage_losses, train_stagewise  # noqa: E402
from latbench.methods.sp.training import load_into, save_supernet  # noqa: E402
from latbench.models import Architecture, build, get_model, materialize  # noqa: E402
from latbench.predictor import Predictor  # noqa: E402
from latbench.recipe import Opt, resolved  # noqa: E402
from latbench.search.budget import CostGrid  # noqa: E402
from latbench.supernet import (DynamicNet, SandwichSampler, SearchSpace, StageAdaptors, cross_entropy,  # noqa: E402
                               logit_distillation, recalibrate)
from latbench.tables.table import LatencyTable  # noqa: E402
from latbench.train import evaluate, finetune, load_checkpoint  # noqa: E402
from latbench.train.importance import recalibrate_bn  # noqa: E402
from latbench.train.loop import TrainConfig, cpu_cores, make_optimizer  # noqa: E402

PROXIES = ("sp_loss", "usnet_acc", "oneshot_acc", "flops", "latency")


def pick_subnets(space: SearchSpace, predictor: Predictor, n: int, seed: int) -> list[Architecture]:
    """``n`` sub-networks spread evenly over the predicted-latency range of 4000 random draws."""
    rng = np.random.default_rng(seed)
    draws = list(dict.fromkeys(space.random(rng, 32) for _ in range(4000)))
    lat = predictor.predict(draws)
    targets = np.linspace(lat.min(), lat.max(), n)
    chosen: list[int] = []
    for t in targets:
        order = np.argsort(np.abs(lat - t))
        chosen.append(next(int(i) for i in order if int(i) not in chosen))
    return [draws[i] for i in chosen]


def train_slimmable(net: DynamicNet, data, space: SearchSpace, steps: int, lr: float, batch: int, seed: int,
                    kind: str) -> None:
    """Baseline supernets. ``usnet``: full (cross-entropy) + smallest + 2 random sub-networks distilled in place
    from the full network's logits, one step (US-Nets / AutoSlim). ``oneshot``: one random sub-network per
    step with cross-entropy (single-path one-shot). Sub-network forwards leave the shared BN statistics alone
    as in SP's training; every sub-network is recalibrated before it is scored."""
    from latbench.methods.sp.training import frozen_running_stats

    config = TrainConfig(1, lr, batch, "cosine", steps_per_epoch=steps, seed=seed)
    optimizer = make_optimizer(net, config)
    loader = BatchLoader(data, batch, shuffle=True, augment=config.augment, seed=seed, drop_last=True)
    sampler = SandwichSampler(space, n_random=2, seed=seed, resolution=32)
    rng = np.random.default_rng(seed)
    net.train()
    for step, (x, y) in zip(range(steps), loader.epoch(0)):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step, steps)
        optimizer.zero_grad(set_to_none=True)
        if kind == "usnet":
            logits = net(x)
            cross_entropy(logits, y).backward()
            with frozen_running_stats(net):
                for arch in sampler.sample(step)[1:]:
                    logit_distillation(net(x, arch), logits.detach()).backward()
        else:
            with frozen_running_stats(net):
                cross_entropy(net(x, space.random(rng, 32)), y).backward()
        optimizer.step()
    net.eval()


def supernet(path: Path, parent, train_fn) -> DynamicNet:
    net = DynamicNet.from_parent(parent, "l1")
    adaptors = StageAdaptors.for_net(net)
    if path.exists():
        load_into(path, net, adaptors)
    else:
        train_fn(net)
        save_supernet(path, net, adaptors, meta={"kind_of": path.stem})
    return net.eval()


def bootstrap(x: np.ndarray, y: np.ndarray, stat, n: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(set(idx.tolist())) < 3:
            continue
        v = stat(x[idx], y[idx])
        if np.isfinite(v):
            values.append(v)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else [np.nan, np.nan]


def correlations(proxy: np.ndarray, acc: np.ndarray) -> dict:
    from scipy.stats import kendalltau, spearmanr

    tau = lambda a, b: kendalltau(a, b)[0]            # noqa: E731
    rho = lambda a, b: spearmanr(a, b)[0]             # noqa: E731
    return {"kendall_tau": float(tau(proxy, acc)), "ci95": bootstrap(proxy, acc, tau),
            "spearman": float(rho(proxy, acc)), "spearman_ci95": bootstrap(proxy, acc, rho)}


@dataclass(frozen=True, kw_only=True)
class RankingExperiment:
    """The ranking experiment's settings (a recipe: search/sp-ranking-resnet20.toml). Relative paths are taken
    from the repository's root."""

    model: str = "resnet20"
    checkpoint: Annotated[str, Opt(help="trained full network (trained here with --parent-epochs when missing)",
                                   input=True)] = "runs/r20/base.safetensors"
    parent_epochs: Annotated[int, Ge(1)] = 3
    table: Annotated[str, Opt(help="latency table of the sub-networks' predicted latency", input=True)] = \
        "tables/host-litert-resnet56-32-dense.parquet"
    out: str = "runs/sp-ranking"
    results: str = "benchmarks/results/sp"
    subnets: Annotated[int, Ge(3)] = 12
    supernet_steps: Annotated[int, Ge(1)] = 1500
    supernet_lr: Annotated[float, Gt(0)] = 0.05
    retrain_steps: Annotated[int, Ge(1)] = 600
    retrain_lr: Annotated[float, Gt(0)] = 0.02
    eval_images: Annotated[int, Ge(1)] = 1000
    calib_images: Annotated[int, Ge(1)] = 256
    test_images: Annotated[int | None, Ge(1)] = None
    batch_size: Annotated[int, Ge(1)] = 128
    seed: int = 0
    threads: Annotated[int | None, Ge(1), Opt(runtime=True)] = None
    quick: Annotated[bool, Opt(help="tiny settings: a smoke run of the whole pipeline")] = False


EXPERIMENT = RankingExperiment     # what a recipe of this script describes (tests validate search/*.toml against it)


def main(experiment: RankingExperiment) -> None:
    args = argparse.Namespace(**resolved(experiment))
    for name in ("checkpoint", "table", "out", "results"):
        setattr(args, name, ROOT / getattr(args, name))        # absolute paths stay as they are
    if args.quick:
        args.parent_epochs, args.supernet_steps, args.retrain_steps = 1, 4, 2
        args.eval_images, args.calib_images, args.test_images, args.batch_size = 64, 32, 200, 32
        args.out = args.out.with_name(args.out.name + "-quick")
        args.results = args.out / "results"
        if args.checkpoint == ROOT / "runs/r20/base.safetensors":
            args.checkpoint = args.out / "parent.safetensors"
    torch.set_num_threads(args.threads or cpu_cores())     # the application's choice: all cores by default
    args.out.mkdir(parents=True, exist_ok=True)
    spec = get_model(args.model)
    data = load_dataset("fashion-mnist")
    if args.quick:
        data = DataSplits(data.name, data.train.head(512), data.val, data.test)
    if not args.checkpoint.exists():
        from latbench.train import train

        net = build(spec, in_channels=1)
        train(net, data, args.parent_epochs, 0.1, steps_per_epoch=8 if args.quick else None,
              checkpoint=args.checkpoint, resume=True)
    parent, _, _ = load_checkpoint(args.checkpoint)
    predictor = Predictor(spec, LatencyTable.load(args.table))
    space = SearchSpace.from_spec(spec, multiple=int(predictor.table.meta.get("channel_multiple", 1)),
                                  resolutions=(32,))
    subnets = pick_subnets(space, predictor, args.subnets, args.seed)
    held = data.val.normalize(data.val.images[:args.eval_images])
    calib = data.train.normalize(data.train.images[torch.randperm(len(data.train),
                                                                   generator=torch.Generator().manual_seed(1))
                                                    [:args.calib_images]])
    val_batches = [(held[i:i + 250], data.val.labels[:args.eval_images][i:i + 250]) for i in range(0, len(held), 250)]
    test = data.test if args.test_images is None else data.test.head(args.test_images)

    # SP's stage-wise supernet.
    sp_net = DynamicNet.from_parent(parent, "l1")
    sp_adaptors = StageAdaptors.for_net(sp_net)
    train_stagewise(sp_net, sp_adaptors, data, space,
                    StageTrainConfig(epochs=1, lr=args.supernet_lr, batch_size=args.batch_size,
                                     steps_per_epoch=args.supernet_steps, seed=args.seed),
                    checkpoint=args.out / "sp-supernet.safetensors")
    us_net = supernet(args.out / "usnet-supernet.safetensors", parent, lambda n: train_slimmable(
        n, data.train, space, args.supernet_steps, args.supernet_lr, args.batch_size, args.seed, "usnet"))
    os_net = supernet(args.out / "oneshot-supernet.safetensors", parent, lambda n: train_slimmable(
        n, data.train, space, args.supernet_steps, args.supernet_lr, args.batch_size, args.seed, "oneshot"))

    rows_path = args.out / "subnets.json"
    rows = read_json(rows_path, recover="delete it to recompute") if rows_path.exists() else []
    order = {g: np.asarray(o) for g, o in sp_net.order.items()}
    flops = CostGrid.analytic(spec, "flops", 32)
    for k, arch in enumerate(subnets):
        if k < len(rows):
            if rows[k]["arch"] != arch.to_dict():
                raise SystemExit(f"{rows_path} holds other sub-networks (another --seed or --subnets?); delete it")
            continue
        row = {"arch": arch.to_dict(), "flops": flops.total(arch.widths), "latency": float(predictor.predict(arch)[0]),
               "sp_loss": float(sum(stage_losses(sp_net, sp_adaptors, held, arch, calib)))}
        for name, net in (("usnet_acc", us_net), ("oneshot_acc", os_net)):
            stats = recalibrate(net, arch, [calib])
            row[name] = evaluate(net.extract(arch, stats), val_batches)[1]
        small = materialize(arch, spec, parent, order)
        recalibrate_bn(small, data.train, batches=4)
        ckpt = args.out / f"retrained-{k:02d}.safetensors"
        finetune(small, data, 1, args.retrain_lr, batch_size=args.batch_size, max_steps=args.retrain_steps,
                 steps_per_epoch=args.retrain_steps, seed=args.seed, checkpoint=ckpt, resume=True, arch=arch,
                 progress=False)
        row["retrained_acc"] = evaluate(small, test)[1]
        rows.append(row)
        atomic_write_json(rows_path, rows, indent=1)
        print(f"sub-network {k + 1}/{len(subnets)}: {row['latency']:.3f} ms, SP loss {row['sp_loss']:.4f}, "
              f"retrained {row['retrained_acc']:.4f}", flush=True)

    acc = np.array([r["retrained_acc"] for r in rows])
    ranking = {}
    for proxy in PROXIES:
        v = np.array([r[proxy] for r in rows], dtype=float)
        ranking[proxy] = correlations(-v if proxy == "sp_loss" else v, acc)
    result = {"model": args.model, "subnets": len(rows), "ranking": ranking, "rows": rows, "settings": vars(args)}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "ranking.json", json.loads(json.dumps(result, default=str)), indent=1)
    summary_path = args.results / "summary.json"
    summary = read_json(summary_path, recover="delete it") if summary_path.exists() else {}
    summary.update({"ranking": ranking, "subnets": len(rows)})
    atomic_write_json(summary_path, summary, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROXIES), figsize=(4 * len(PROXIES), 3.6))
    for ax, proxy in zip(axes, PROXIES):
        ax.scatter([r[proxy] for r in rows], 100 * acc, s=18)
        c = ranking[proxy]
        ax.set_title(f"{proxy}: τ={c['kendall_tau']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]", fontsize=9)
        ax.set_xlabel(proxy)
        ax.set_ylabel("retrained test accuracy %")
    fig.tight_layout()
    atomic_save_figure(args.results / "ranking.png", fig, dpi=110)
    print(json.dumps({p: {k: v for k, v in c.items() if k in ("kendall_tau", "spearman", "ci95")}
                      for p, c in ranking.items()}, indent=1))


if __name__ == "__main__":
    script_main(RankingExperiment, main, doc=__doc__)
