"""``latbench prune lcp|ofar|jcw|sp``: the four pruning methods' jobs (:mod:`latbench.methods`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .. import api
from .common import JOB_ERRORS, console, fail

prune_app = typer.Typer(no_args_is_help=True, help="Latency-constrained pruning of a trained checkpoint.")


# Options several pruning commands share (the same flag and help text everywhere).
CHECKPOINT = typer.Option(..., help="trained full network (.safetensors from `latbench train`)")
TABLE = typer.Option(None, help="the device's latency table (needed for latency budgets)")
BUDGET_MS = typer.Option(None, help="latency budget in ms")
BUDGET_RATIO = typer.Option(
    None, help="latency budget as a fraction of the full network (measured with --device, else predicted)")
BUDGET_FLOPS = typer.Option(None, help="budget in multiply-accumulates")
BUDGET_PARAMS = typer.Option(None, help="budget in parameters")
DEVICE = typer.Option(None, help="measure the full and the pruned network here")
STORE = typer.Option(Path(api.DEFAULT_STORE), help="measurement store for --device")
TEST_IMAGES = typer.Option(None, help="report accuracy on the first N test images (default: all)")


def _run_prune(make_job, run, summarize=None) -> None:
    """Build the job (validating its options) and ``run`` it, turning known errors into clear messages;
    prints ``summarize(report)`` (default: the pruning report's key figures)."""
    try:
        job = make_job()
        report = run(job)
    except JOB_ERRORS as err:
        fail(err)
    summary = summarize(report) if summarize else {
        k: report[k] for k in ("method", "budget", "predicted_ms", "measured_ms", "measured_over_budget",
                               "test_accuracy", "search_seconds")}
    console.print_json(json.dumps(summary))
    console.print(f"pruned network, exports and report.json in [bold]{job.out}[/]")


@prune_app.command("lcp")
def prune_lcp(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
              checkpoint: Path = CHECKPOINT,
              out: Path = typer.Option(..., help="folder for the pruned network, its exports and report.json"),
              table: Optional[Path] = TABLE,
              budget_ms: Optional[float] = BUDGET_MS,
              budget_ratio: Optional[float] = BUDGET_RATIO,
              budget_flops: Optional[float] = BUDGET_FLOPS,
              budget_params: Optional[float] = BUDGET_PARAMS,
              method: str = typer.Option("lcp", help="lcp (learned compensation), naive (global ranking) or "
                                                     "uniform (one width ratio): the baselines share everything else"),
              data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
              device: Optional[str] = DEVICE,
              store: Path = STORE,
              metric: str = typer.Option("l2", help="filter metric: l1, l2 or taylor"),
              floor: float = typer.Option(0.1, help="keep at least this fraction of every layer"),
              unit: Optional[int] = typer.Option(None, help="channels removed at a time (default: the table's "
                                                            "channel multiple)"),
              pool: int = typer.Option(64, help="evolution pool size"),
              candidates: int = typer.Option(400, help="candidates evaluated in all (pool + mutants)"),
              fitness_images: int = typer.Option(3000, help="training images the fitness loss is measured on"),
              bn_images: int = typer.Option(1024, help="images to re-estimate BN statistics of a candidate"),
              test_images: Optional[int] = TEST_IMAGES,
              finetune_epochs: int = typer.Option(1), finetune_lr: float = typer.Option(0.02),
              finetune_steps: Optional[int] = typer.Option(None, help="cap fine-tuning steps (quick runs)"),
              seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              progress: bool = typer.Option(True)) -> None:
    """LcP: global filter ranking with learned layer compensations, within a latency (or FLOPs/params) budget;
    fine-tunes, exports ONNX and TFLite and, with --device, measures the result against the budget.
    Interrupted runs resume (the evolution state and fine-tuning checkpoint live in --out).

    Example: latbench prune lcp --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.5 --device host:litert --out runs/lcp-50
    """
    from ..methods.common import FinetuneRecipe
    from ..methods.lcp.job import LcPJob, run_lcp

    _run_prune(lambda: LcPJob(
        model=model, checkpoint=str(checkpoint), out=str(out), table=str(table) if table else None, method=method,
        budget_ms=budget_ms, budget_ratio=budget_ratio, budget_flops=budget_flops, budget_params=budget_params,
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store), metric=metric,
        floor=floor, unit=unit, pool=pool, candidates=candidates, fitness_images=fitness_images, bn_images=bn_images,
        test_images=test_images,
        finetune=FinetuneRecipe(finetune_epochs, finetune_lr, max_steps=finetune_steps, seed=seed), seed=seed,
        threads=threads, progress=progress),
        run=run_lcp)


@prune_app.command("ofar")
def prune_ofar(model: str = typer.Option("resnet20", help="zoo model of the checkpoint"),
               checkpoint: Path = CHECKPOINT,
               out: Path = typer.Option(..., help="folder for every phase, the cohort's exports and report.json"),
               table: Optional[List[Path]] = typer.Option(None, help="a device's latency table (repeatable: one "
                                                                     "per device of the cohort)"),
               budget_ratio: Optional[List[float]] = typer.Option(
                   None, help="budget as a fraction of each device's full-network cost at the largest resolution "
                              "(repeatable)"),
               budget_ms: Optional[List[float]] = typer.Option(None, help="latency budget in ms for every table's "
                                                                          "device (repeatable)"),
               budget_flops: Optional[List[float]] = typer.Option(None, help="FLOPs budget in MACs (repeatable; "
                                                                             "implies --flops)"),
               flops: bool = typer.Option(False, "--flops", help="FLOPs as one more 'device' (ratios apply to it)"),
               resolutions: Optional[List[int]] = typer.Option(
                   None, help="input resolutions (repeatable; default 32 28 24 20 for 32×32 data, 224 192 160 128 "
                              "for 224)"),
               tau: float = typer.Option(0.95, help="mask similarity threshold τ in (0, 1]"),
               similarity: str = typer.Option("cosine", help="cosine, dice, or eq3 (the paper's Eq. 3 as printed)"),
               patience: int = typer.Option(1, help="epochs in a row a rate's similarity must reach τ"),
               sparsity: float = typer.Option(1e-4, help="Network Slimming's s: L1 weight on the BN γ"),
               search_epochs: int = typer.Option(20, help="most epochs of the search stage (stops earlier when "
                                                          "every rate has its structure)"),
               search_lr: float = typer.Option(0.5, help="search-stage learning rate (constant)"),
               joint_epochs: int = typer.Option(10), joint_lr: float = typer.Option(0.05),
               steps_per_epoch: Optional[int] = typer.Option(None, help="cap the steps of every epoch of both "
                                                                        "stages (quick runs)"),
               batch_size: int = typer.Option(128),
               bn_mode: str = typer.Option("recalibrated", help="recalibrated (US-Net: statistics per structure "
                                                                "and resolution after training) or private "
                                                                "(S-Net: a BN per structure)"),
               assistants: bool = typer.Option(True, help="--no-assistants: distil every network from the "
                                                          "teacher directly (the ablation)"),
               temperature: float = typer.Option(1.0, help="distillation temperature"),
               min_width_ratio: float = typer.Option(0.1, help="no group narrower than this fraction"),
               multiple: Optional[int] = typer.Option(None, help="round widths to this multiple (default: the "
                                                                 "tables' channel multiple)"),
               data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
               train_images: Optional[int] = typer.Option(None, help="train on the first N training images"),
               val_images: Optional[int] = typer.Option(None, help="select on the first N validation images"),
               test_images: Optional[int] = typer.Option(None, help="report accuracy on the first N test images"),
               bn_images: int = typer.Option(1024, help="images to recalibrate BN per (structure, resolution)"),
               store: Path = typer.Option(Path(api.DEFAULT_STORE), help="measurement store"),
               measure: bool = typer.Option(True, help="measure each choice on its device when that is a host "
                                                       "runtime here (--no-measure: predict all)"),
               torch_device: str = typer.Option("cpu", help="torch device for training (cpu, cuda, mps)"),
               pool: str = typer.Option("search", help="search (OFARPruning's PNP) or uniform (the US-Net/MutualNet "
                                                       "baseline: uniform width multipliers, no search stage; use "
                                                       "with --no-assistants)"),
               seed: int = typer.Option(0),
               threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
               progress: bool = typer.Option(True)) -> None:
    """OFARPruning: one training for a cohort of devices and budgets — rates per device and resolution,
    Network-Slimming search with the Pruned Network Pool, joint teacher→assistants→student training over
    resolutions, then per (device, budget) the most accurate (structure, resolution) that fits, exported
    (ONNX + TFLite), measured where the device is here and predicted elsewhere. Interrupted runs resume.

    Example: latbench prune ofar --checkpoint runs/r20.safetensors --table tables/litert.parquet --table
    tables/ort.parquet --budget-ratio 0.7 --budget-ratio 0.5 --resolutions 32 --resolutions 28 --out runs/ofar
    """
    from ..methods.ofar import JointConfig, SearchConfig
    from ..methods.ofar.job import OFARJob, run_ofar

    _run_prune(lambda: OFARJob(
        model=model, checkpoint=str(checkpoint), out=str(out), tables=tuple(str(t) for t in table or ()),
        budget_ratios=tuple(budget_ratio or ()), budgets_ms=tuple(budget_ms or ()),
        budgets_flops=tuple(budget_flops or ()), flops=flops, resolutions=tuple(resolutions) if resolutions else None,
        search=SearchConfig(epochs=search_epochs, lr=search_lr, sparsity=sparsity, tau=tau, similarity=similarity,
                            patience=patience, batch_size=batch_size, steps_per_epoch=steps_per_epoch, seed=seed),
        joint=JointConfig(epochs=joint_epochs, lr=joint_lr, batch_size=batch_size, temperature=temperature,
                          assistants=assistants, bn_mode=bn_mode, steps_per_epoch=steps_per_epoch, seed=seed),
        min_width_ratio=min_width_ratio, multiple=multiple, data=data, data_dir=str(data_dir) if data_dir else None,
        train_images=train_images, val_images=val_images, test_images=test_images, bn_images=bn_images,
        store=str(store), measure=measure, torch_device=torch_device, threads=threads, progress=progress, pool=pool),
        run=run_ofar, summarize=lambda r: {"method": r["method"], "pnp": len(r["search"]["pnp"]),
                                           "unstable_rates": len(r["search"]["unstable"]),
                                           "cohort": [{k: c.get(k) for k in ("device", "budget_label", "resolution",
                                                                             "val_acc", "test_acc", "predicted_ms",
                                                                             "measured_ms")} for c in r["cohort"]],
                                           "unmet": len(r["unmet"])})


@prune_app.command("jcw")
def prune_jcw(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
              checkpoint: Path = CHECKPOINT,
              table: Path = typer.Option(..., help="the device's latency table (the search's latency objective)"),
              out: Path = typer.Option(..., help="folder for the search, the supernet, one folder per retrained "
                                                 "architecture and summary.json"),
              budget_ms: Optional[List[float]] = typer.Option(
                  None, help="latency budget in ms (repeatable): the most accurate front member within it"),
              budget_ratio: Optional[List[float]] = typer.Option(
                  None, help="budget as a fraction of the full network's latency (measured with --device, else "
                             "predicted; repeatable)"),
              pick: Optional[int] = typer.Option(None, help="retrain N front members spread over its latency "
                                                            "range (0: search only)"),
              channel_only: bool = typer.Option(False, help="search widths only, sparsity fixed at 0 (baseline)"),
              sparsity_where: str = typer.Option(
                  "credited", help="credited: search a conv's sparsity only where the table credits it with a "
                                   "significant speed-up (see `latbench table sparsity`); measured: the table's "
                                   "whole sparsity range"),
              data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
              device: Optional[str] = typer.Option(None, help="measure the full network and every retrained one"),
              store: Path = STORE,
              measure_front: bool = typer.Option(False, help="with --device, also measure every front member"),
              population: int = typer.Option(32), generations: int = typer.Option(20),
              min_width_ratio: float = typer.Option(0.25, help="narrowest width of a group, as a fraction"),
              coupled_min_width_ratio: float = typer.Option(0.5, help="the same for groups tied by residual adds "
                                                                       "or strided convs"),
              max_sparsity: float = typer.Option(0.9, help="largest weight sparsity of a conv"),
              sparsity_step: Optional[float] = typer.Option(None, help="snap sparsities to multiples of this"),
              anchor: bool = typer.Option(True, help="start the population with the full and the narrowest network"),
              supernet_steps: int = typer.Option(100, help="supernet SGD steps per generation"),
              supernet_lr: float = typer.Option(0.01), supernet_batch_size: int = typer.Option(128),
              warm_start: bool = typer.Option(False, help="continue the supernet across generations (default: "
                                                          "restart each generation from the parent)"),
              objective: str = typer.Option("loss", help="search objective: loss (cross-entropy) or error"),
              eval_images: int = typer.Option(1000, help="held-out training images each candidate is scored on"),
              bn_batches: int = typer.Option(2, help="batches to recalibrate BN of each candidate"),
              admm_dense_epochs: int = typer.Option(1), admm_epochs: int = typer.Option(2),
              admm_finetune_epochs: int = typer.Option(1),
              admm_steps_per_epoch: Optional[int] = typer.Option(None, help="cap steps per epoch of every phase"),
              admm_lr: float = typer.Option(0.01), admm_finetune_lr: Optional[float] = typer.Option(None),
              admm_batch_size: int = typer.Option(128),
              admm_rho: float = typer.Option(0.01, help="ADMM penalty ρ"),
              admm_rho_growth: float = typer.Option(1.0, help="multiply ρ after every U/Z update (short runs need "
                                                              "a growing or larger ρ; docs/jcw-training.md)"),
              admm_rho_max: Optional[float] = typer.Option(None),
              admm_update_every: Optional[int] = typer.Option(None, help="U/Z update every N steps (default: "
                                                                         "every epoch)"),
              bn_images: int = typer.Option(512, help="images to recalibrate BN of a slice before retraining"),
              test_images: Optional[int] = TEST_IMAGES,
              torch_device: str = typer.Option("cpu", help="torch device for the supernet and the retraining "
                                                           "(cpu, cuda, mps)"),
              threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              seed: int = typer.Option(0), progress: bool = typer.Option(True)) -> None:
    """JCW: evolutionary search of channel widths and weight sparsity for the accuracy × latency front
    (a weight-sharing supernet scores candidates), then ADMM retraining of the chosen architectures,
    ONNX + sparse TFLite export and, with --device, measurement against the prediction.
    Interrupted runs resume (search state, supernet and ADMM checkpoints live in --out).

    Example: latbench prune jcw --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.7 --budget-ratio 0.5 --device host:litert --out runs/jcw
    """
    from ..methods.jcw.evaluator import SupernetConfig
    from ..methods.jcw.job import JCWJob, run_jcw
    from ..methods.jcw.search import SearchConfig
    from ..train.admm import ADMMConfig

    _run_prune(lambda: JCWJob(
        model=model, checkpoint=str(checkpoint), table=str(table), out=str(out), budgets_ms=tuple(budget_ms or ()),
        budget_ratios=tuple(budget_ratio or ()), pick=pick,
        search=SearchConfig(population=population, generations=generations, seed=seed, channel_only=channel_only,
                            sparsity_where=sparsity_where,
                            min_width_ratio=min_width_ratio, coupled_min_width_ratio=coupled_min_width_ratio,
                            max_sparsity=max_sparsity, sparsity_step=sparsity_step),
        supernet=SupernetConfig(steps_per_generation=supernet_steps, lr=supernet_lr, batch_size=supernet_batch_size,
                                warm_start=warm_start, objective=objective, eval_size=eval_images,
                                bn_batches=bn_batches, bn_batch_size=min(128, supernet_batch_size), seed=seed),
        admm=ADMMConfig(dense_epochs=admm_dense_epochs, admm_epochs=admm_epochs, finetune_epochs=admm_finetune_epochs,
                        steps_per_epoch=admm_steps_per_epoch, lr=admm_lr, finetune_lr=admm_finetune_lr,
                        batch_size=admm_batch_size, rho=admm_rho, rho_growth=admm_rho_growth, rho_max=admm_rho_max,
                        update_every=admm_update_every, eval_size=eval_images, seed=seed, progress=progress),
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store),
        measure_front=measure_front, anchor=anchor, bn_images=bn_images, test_images=test_images,
        torch_device=torch_device, threads=threads, progress=progress),
        run=run_jcw, summarize=lambda s: {"method": s["method"], "front": s["front"]["size"],
                                          "front_latency_ms": s["front"]["latency_ms"],
                                          "full_latency_ms": s["full_latency_ms"], "architectures": s["architectures"]})


@prune_app.command("sp")
def prune_sp(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
             checkpoint: Path = CHECKPOINT,
             out: Path = typer.Option(..., help="folder for the supernet, the search, the pruned network, its exports "
                                                "and report.json"),
             table: Optional[Path] = TABLE,
             budget_ms: Optional[float] = BUDGET_MS,
             budget_ratio: Optional[float] = BUDGET_RATIO,
             budget_flops: Optional[float] = BUDGET_FLOPS,
             budget_params: Optional[float] = BUDGET_PARAMS,
             data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
             device: Optional[str] = DEVICE,
             store: Path = STORE,
             torch_device: str = typer.Option("cpu", help="torch device for supernet training, the search and "
                                                          "retraining (cpu, cuda, mps)"),
             unit: Optional[int] = typer.Option(None, help="channel step of the search space (default: the table's "
                                                           "channel multiple, else 1)"),
             order: str = typer.Option("l1", help="channel importance (l1 or l2 filter norms): sub-networks keep the "
                                                  "first, most important channels"),
             train_images: Optional[int] = typer.Option(None, help="train the supernet on the first N training "
                                                                   "images only (quick runs)"),
             supernet_epochs: int = typer.Option(1), supernet_lr: float = typer.Option(0.05),
             supernet_batch_size: int = typer.Option(128),
             supernet_steps: Optional[int] = typer.Option(None, help="cap supernet steps per epoch (quick runs)"),
             supernet_random: int = typer.Option(1, help="random stage sub-networks per stage and step (besides "
                                                         "the smallest)"),
             manager_population: int = typer.Option(128), manager_generations: int = typer.Option(10),
             stage_population: int = typer.Option(128), stage_generations: int = typer.Option(10),
             top: float = typer.Option(0.25, help="fraction of each population kept as parents"),
             mutation_prob: float = typer.Option(0.1),
             eval_images: int = typer.Option(1024, help="held-out images the stage losses are measured on"),
             calib_images: int = typer.Option(256, help="training images to recalibrate BN of each stage candidate"),
             retrain_from: str = typer.Option("inherited", help="inherited (supernet weights) or scratch"),
             finetune_epochs: int = typer.Option(1), finetune_lr: float = typer.Option(0.02),
             finetune_steps: Optional[int] = typer.Option(None, help="cap retraining steps (quick runs)"),
             bn_images: int = typer.Option(1024, help="images to recalibrate BN of the chosen network"),
             test_images: Optional[int] = TEST_IMAGES,
             ray: Optional[bool] = typer.Option(None, "--ray/--no-ray",
                                                help="run the stage EAs on Ray actors (default: when Ray is installed; "
                                                     "--no-ray runs them in this process with the same result)"),
             ray_address: Optional[str] = typer.Option(None, help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto; "
                                                                  "default: a local instance on 127.0.0.1)"),
             actors_per_stage: int = typer.Option(1, help="Ray actors per stage (more on a cluster)"),
             seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None, help="torch threads (default: "
                                                                                          "torch's)"),
             progress: bool = typer.Option(True)) -> None:
    """SP: stage-wise channel pruning. Trains a stage-wise supernet (Algorithm 1), searches per-stage widths with
    a distributed evolutionary search within a latency (or FLOPs/params) budget (Algorithms 2–3; stage EAs on
    Ray or in process), retrains the chosen network, exports ONNX and TFLite and, with --device, measures it.
    Interrupted runs resume (supernet, search state and retraining checkpoint live in --out).

    Example: latbench prune sp --model resnet56 --checkpoint runs/r56.safetensors
    --table tables/host-litert-resnet56-32-dense.parquet --budget-ratio 0.5 --device host:litert --out runs/sp-50
    """
    from ..methods.common import FinetuneRecipe
    from ..methods.sp.job import SPJob, run_sp
    from ..methods.sp.search import SPSearchConfig
    from ..methods.sp.training import StageTrainConfig

    _run_prune(lambda: SPJob(
        model=model, checkpoint=str(checkpoint), out=str(out), table=str(table) if table else None,
        budget_ms=budget_ms, budget_ratio=budget_ratio, budget_flops=budget_flops, budget_params=budget_params,
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store),
        torch_device=torch_device, unit=unit, order=order, train_images=train_images,
        supernet=StageTrainConfig(epochs=supernet_epochs, lr=supernet_lr, batch_size=supernet_batch_size,
                                  steps_per_epoch=supernet_steps, n_random=supernet_random, seed=seed),
        search=SPSearchConfig(manager_population=manager_population, manager_generations=manager_generations,
                              stage_population=stage_population, stage_generations=stage_generations, top=top,
                              mutation_prob=mutation_prob, eval_images=eval_images, calib_images=calib_images,
                              seed=seed),
        retrain=FinetuneRecipe(finetune_epochs, finetune_lr, max_steps=finetune_steps, seed=seed),
        retrain_from=retrain_from, bn_images=bn_images, test_images=test_images, ray=ray, ray_address=ray_address,
        actors_per_stage=actors_per_stage, threads=threads, progress=progress),
        run=run_sp, summarize=lambda s: {k: s[k] for k in ("method", "budget", "predicted_ms", "measured_ms",
                                                           "measured_over_budget", "test_accuracy", "retrain_from",
                                                           "seconds")})
