"""Where does weight sparsity pay? JCW's search on the authors' phone table vs this host's table (ResNet-18).

The same search (population, generations, seed, bounds, channel multiple) and the same accuracy estimator run on
two latency tables for ResNet-18 at 224×224:

* ``phone``: the JCW authors' measured phone table (``latbench.tables.jcw.import_jcw_table`` on
  ``../shared/fixtures/jcw_resnet18``), where sparse kernels are much faster than dense ones;
* ``host``: this machine's LiteRT table (``tables/host-litert-resnet18-224-adaptive.parquet``, XNNPACK), where
  sparse kernels are no faster: the table's sparsity test (``latbench table sparsity``) credits sparsity at none of
  its levels, so the default search (``sparsity_where="credited"``) has no sparsity genes there;
* ``host-all-sparsity``: the same host table with sparsity searched over its whole measured range (the paper's
  setting), to show what the evolution alone does with sparsity that buys nothing.

**Accuracy is a reduced-resolution stand-in**: a ResNet-18 (10 classes, 1 input channel) trained briefly on
Fashion-MNIST at 32×32, turned into a weight-sharing supernet (``SupernetEvaluator``, retrained on every
generation's population and scoring candidates on held-out training images). The architectures' latency is
predicted at 224×224 while their accuracy is estimated at 32×32: the experiment compares where the two fronts put
weight sparsity, not ImageNet accuracies. It reports the front's mean density (1 − mean conv sparsity) and weight
density (share of the dense conv weights kept) in bins of latency relative to the full dense network
(``density_experiment``) — the expectation being that the phone front uses weight sparsity at low latency and the
host front does not.

    nice -n 19 python benchmarks/jcw_phone_vs_host.py --config search/jcw-phone-vs-host-resnet18.toml   # the README's run
    nice -n 19 python benchmarks/jcw_phone_vs_host.py                 # ≈ 20–25 min on 2 cores (3 searches, 2 at a time)
    nice -n 19 python benchmarks/jcw_phone_vs_host.py --smoke --jobs 1 --out /tmp/jcw-pvh-smoke   # ≈ 1 min

Outputs in ``--out`` (default ``runs/jcw-phone-vs-host``): ``parent.safetensors`` (the trained stand-in),
``phone/``, ``host/`` and ``host-all-sparsity/`` (search state, history, ``front.jsonl``, ``frontier.png``, supernet checkpoint),
``density.png`` (both fronts: density against relative latency) and ``summary.json``. Everything resumes: a rerun
with the same options skips the finished training and generations.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import pandas as pd
from annotated_types import Ge, Gt

from latbench.cli.options import script_main
from latbench.recipe import Opt

ROOT = Path(__file__).resolve().parents[1]
JCW_DIR = ROOT.parent / "shared" / "fixtures" / "jcw_resnet18"
HOST_TABLE = ROOT / "tables" / "host-litert-resnet18-224-adaptive.parquet"
BINS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
LOW_LATENCY = 0.5          # "low latency": below this fraction of the full network's
ABLATION = "host-all-sparsity"   # the host table with sparsity searched over its whole measured range
NEAR_DENSE = 0.9           # a front "does not use weight sparsity" if it keeps at least this share of the weights


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The experiment's settings (a recipe: search/jcw-phone-vs-host-resnet18.toml)."""

    out: str = "runs/jcw-phone-vs-host"
    jcw_dir: Annotated[str, Opt(help="folder with the JCW phone table files")] = str(JCW_DIR)
    host_table: Annotated[str, Opt(help="this host's ResNet-18 table (LiteRT or ORT)", input=True)] = str(HOST_TABLE)
    population: Annotated[int, Ge(2)] = 24
    generations: Annotated[int, Ge(1)] = 12
    supernet_steps: Annotated[int, Ge(0), Opt(help="supernet SGD steps per generation")] = 20
    batch: Annotated[int, Ge(1), Opt(help="supernet training batch")] = 64
    eval_images: Annotated[int, Ge(1), Opt(help="held-out images each candidate is scored on")] = 384
    bn_batch: Annotated[int, Ge(1), Opt(help="images to recalibrate BN of each candidate")] = 128
    train_steps: Annotated[int, Ge(1), Opt(help="steps of the stand-in's brief training")] = 300
    channel_multiple: Annotated[int, Ge(1), Opt(help="width step (the host's channel block)")] = 16
    sparsity_step: Annotated[float, Gt(0), Opt(help="sparsity lattice (the phone table's grid; lets a gene reach "
                                                    "exactly dense)")] = 0.1
    seed: int = 0
    jobs: Annotated[int, Ge(1), Opt(help="searches run in parallel (one torch thread each)", runtime=True)] = 2
    smoke: Annotated[bool, Opt(help="tiny settings that only check the script runs")] = False
    progress: Annotated[bool, Opt(runtime=True)] = True

    def effective(self) -> "Settings":
        """The settings as run (``smoke`` shrinks everything)."""
        if not self.smoke:
            return self
        return replace(self, population=6, generations=2, supernet_steps=2, batch=32, eval_images=64, bn_batch=32,
                       train_steps=10)


EXPERIMENT = Settings     # what a recipe of this script describes (tests validate search/*.toml against it)


def train_stand_in(s: Settings) -> dict:
    """The accuracy stand-in: ResNet-18 trained for ``train_steps`` steps on Fashion-MNIST at 32×32 (resumable)."""
    import torch

    from latbench.data import load_dataset
    from latbench.models import build, get_model
    from latbench.train import evaluate, train

    torch.manual_seed(s.seed)
    data = load_dataset("fashion-mnist")
    net = build(get_model("resnet18", num_classes=data.num_classes), in_channels=data.in_channels)
    path = Path(s.out) / "parent.safetensors"
    history = train(net, data, epochs=1, lr=0.05, batch_size=128, schedule="onecycle", steps_per_epoch=s.train_steps,
                    seed=s.seed, checkpoint=path, resume=True, meta={"dataset": data.describe()}, threads=1,
                    progress=s.progress)
    loss, acc = evaluate(net, data.val.head(2000))
    return {"checkpoint": str(path), "steps": history.step, "val_loss": loss, "val_accuracy": acc,
            "resolution": data.resolution}


def load_table(name: str, s: Settings):
    from latbench.tables.jcw import import_jcw_table
    from latbench.tables.table import LatencyTable

    if name == "phone":
        if not (Path(s.jcw_dir) / "runtime.npy").exists():
            raise SystemExit(f"JCW phone table not found in {s.jcw_dir} (../shared/fixtures/jcw_resnet18 beside the "
                             "checkout); pass --jcw-dir")
        return import_jcw_table(s.jcw_dir)[0]
    return LatencyTable.load(s.host_table)


def search(name: str, s: Settings) -> dict:
    """One search on table ``name`` with a supernet built from the stand-in; returns its front and density bins."""
    import torch

    from latbench.data import load_dataset
    from latbench.models import get_model
    from latbench.methods.jcw.search import SearchConfig, density_experiment
    from latbench.train import load_checkpoint
    from latbench.methods.jcw.evaluator import SupernetConfig, SupernetEvaluator

    torch.set_num_threads(1)
    started = time.perf_counter()
    parent, _, _ = load_checkpoint(Path(s.out) / "parent.safetensors")
    data = load_dataset("fashion-mnist")
    out = Path(s.out) / name
    evaluator = SupernetEvaluator(
        parent, data,
        SupernetConfig(steps_per_generation=s.supernet_steps, batch_size=s.batch, eval_size=s.eval_images,
                       bn_batches=1, bn_batch_size=s.bn_batch, seed=s.seed, progress=s.progress),
        checkpoint=out / "supernet.safetensors")
    spec = get_model("resnet18")          # the tables' network: 224×224, 1000 classes
    config = SearchConfig(population=s.population, generations=s.generations, seed=s.seed, resolution=224,
                          channel_multiple=s.channel_multiple, sparsity_step=s.sparsity_step,
                          sparsity_where="measured" if name == ABLATION else "credited")
    table = load_table("phone" if name == "phone" else "host", s)
    result, bins = density_experiment(spec, table, evaluator, config, bins=list(BINS), out_dir=out,
                                      progress=s.progress)
    front = result.front_frame()
    return {"table": name, "front": front.drop(columns="architecture").to_dict("records"),
            "bins": bins.astype(object).where(bins.notna(), None).to_dict("records"),
            "full_latency_ms": result.full_latency_ms,
            "generations": result.final.generation, "seconds": time.perf_counter() - started,
            "search_timing": asdict(result.timing)}


def low_latency_density(front: pd.DataFrame) -> dict:
    low = front[front.relative_latency < LOW_LATENCY]
    return {"n": int(len(low)), "mean_density": float(low.density.mean()) if len(low) else None,
            "mean_weight_density": float(low.weight_density.mean()) if len(low) else None}


def judge(phone: dict, host: dict) -> str:
    """The experiment's answer in words, from the fronts' low-latency weight densities."""
    if not (phone["n"] and host["n"]):
        return f"a front has no member below {LOW_LATENCY:.0%} of the full latency: phone {phone}, host {host}"
    facts = (f"below {LOW_LATENCY:.0%} of the full latency the phone front keeps {phone['mean_weight_density']:.0%} "
             f"of the dense weights (mean density {phone['mean_density']:.2f}, {phone['n']} members), the host front "
             f"{host['mean_weight_density']:.0%} (mean density {host['mean_density']:.2f}, {host['n']} members)")
    phone_sparse = phone["mean_weight_density"] < NEAR_DENSE
    host_dense = host["mean_weight_density"] >= NEAR_DENSE
    if phone_sparse and host_dense:
        return facts + ": the phone front uses weight sparsity at low latency, the host front does not"
    if phone_sparse and phone["mean_weight_density"] < host["mean_weight_density"] - 0.05:
        return (facts + ": the phone front is sparser, but the host front still carries sparsity (left from the "
                "uniform first population; it fades only as selection removes it — run more generations)")
    return facts + ": no clear difference at these settings"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, r), colour in zip(results.items(), ("tab:red", "tab:blue", "tab:grey")):
        f = pd.DataFrame(r["front"])
        ax.scatter(f.relative_latency, f.weight_density, color=colour, s=18, label=f"{name}: front members")
        b = pd.DataFrame(r["bins"]).astype(float).dropna(subset=["mean_weight_density"])
        ax.hlines(b.mean_weight_density, b.latency_lo, b.latency_hi, color=colour, lw=1.5, alpha=0.7,
                  label=f"{name}: mean per latency bin")
    ax.axvline(LOW_LATENCY, color="grey", lw=0.6, ls=":")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted latency / full dense ResNet-18 (224×224)")
    ax.set_ylabel("weight density (share of dense conv weights kept)")
    ax.set_title("JCW fronts on the phone vs the host table\n(accuracy: ResNet-18 stand-in on Fashion-MNIST 32×32)",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(settings: Settings) -> None:
    s, jobs = settings.effective(), settings.jobs
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    print("Accuracy estimator: a ResNet-18 trained briefly on Fashion-MNIST at 32×32 (a reduced-resolution "
          "stand-in);\nlatency: ResNet-18 at 224×224 from each table. Compare where the fronts put weight sparsity, "
          "not accuracies.", flush=True)
    parent = train_stand_in(s)
    print(f"stand-in: {parent['steps']} training steps, held-out accuracy {parent['val_accuracy']:.1%}", flush=True)
    names = ("phone", "host", ABLATION)
    for name in ("phone", "host"):
        load_table(name, s)                     # fail early on a missing table
    if jobs > 1:
        # spawn, not fork: a forked child inherits the parent's OpenMP state, which can hang torch.
        with ProcessPoolExecutor(max_workers=min(jobs, len(names)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            results = dict(zip(names, pool.map(search, names, [s] * len(names))))
    else:
        results = {name: search(name, s) for name in names}

    for name, r in results.items():
        bins = pd.DataFrame(r["bins"]).astype(float).astype({"n": int})
        print(f"\n{name} table (full network {r['full_latency_ms']:.1f} ms predicted; {len(r['front'])} front "
              f"members; {r['seconds'] / 60:.1f} min)")
        print(bins.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    low = {name: low_latency_density(pd.DataFrame(r["front"])) for name, r in results.items()}
    verdict = judge(low["phone"], low["host"])
    ablation = judge(low["phone"], low[ABLATION]).replace("the host front", "the host front searched over all "
                                                          "measured sparsities")
    print("\n" + verdict + "\nablation: " + ablation)
    plot(results, out / "density.png")
    summary = {"settings": asdict(s), "accuracy_stand_in": {**parent, "note": "ResNet-18 trained briefly on "
                                                            "Fashion-MNIST at 32x32; latency predicted at 224x224"},
               "low_latency": low, "verdict": verdict, "ablation": ablation,
               "tables": {name: {k: v for k, v in r.items() if k != "front"} for name, r in results.items()},
               "fronts": {name: r["front"] for name, r in results.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nfronts, plots and summary.json in {out}")


if __name__ == "__main__":
    script_main(Settings, main, doc=__doc__)
