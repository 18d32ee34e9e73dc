"""Recipes (latbench.recipe, latbench.cli.options): every recipe we ship validates; bad recipes are named with
the file, the key and what is allowed; the CLI options are the job dataclasses' fields; a tiny recipe runs end to
end, a rerun recomputes nothing and a changed field starts a new run."""
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.cli.options import cli_options
from latbench.cli.prune import COMMANDS, command_for_method, method_job
from latbench.recipe import RecipeError, build_job, read_recipe, resolved, run_record
from latbench.train.job import TrainJob, recipe_path
from test_data import fake_mnist

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPES = sorted((ROOT / "train").glob("*.toml"))
SEARCH_RECIPES = sorted((ROOT / "search").glob("*.toml"))


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    return " ".join(result.output.split())


# ---- the recipes we ship -----------------------------------------------------------------------------------

def test_the_project_ships_train_and_search_recipes():
    assert {p.name for p in TRAIN_RECIPES} >= {"resnet56-fmnist32.toml", "resnet20-fmnist32.toml"}
    methods = {read_recipe(p).get("method") for p in SEARCH_RECIPES}
    assert methods >= {"lcp", "naive", "uniform", "jcw", "sp", "ofar"}


@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=lambda p: p.name)
def test_every_train_recipe_validates(path):
    job = build_job(TrainJob, read_recipe(path), str(path))
    assert job.out.endswith(".safetensors") and job.training.epochs >= 1


def _script_experiment(path: Path):
    """The settings dataclass of the benchmark script a recipe names (``python benchmarks/X.py --config``)."""
    import importlib.util
    import re

    script = re.search(r"python (benchmarks/\w+\.py) --config", path.read_text())
    assert script, f"{path} names neither a method nor the script it configures"
    spec = importlib.util.spec_from_file_location(Path(script[1]).stem, ROOT / script[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module              # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.EXPERIMENT


@pytest.mark.parametrize("path", SEARCH_RECIPES, ids=lambda p: p.name)
def test_every_search_recipe_validates(path):
    data = read_recipe(path)
    if "method" in data:
        command = command_for_method(data["method"], str(path))
        job = build_job(method_job(command).job, {k: v for k, v in data.items() if k != "method" or command == "lcp"},
                        str(path))
    else:                                                   # an experiment script's recipe
        command = None
        job = build_job(_script_experiment(path), data, str(path))
    # the file names only what it sets; the resolved recipe holds every field, and each set value survives
    full = resolved(job)
    for key, value in data.items():
        if key == "method" and command != "lcp":
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                assert full[key][k] == v, (key, k)
        else:
            assert full[key] == value, key


# ---- bad recipes -------------------------------------------------------------------------------------------

def _write(tmp_path, text: str, name="r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = 'method = "uniform"\ncheckpoint = "c.safetensors"\nout = "o"\nbudget_flops = 1e7\n'


@pytest.mark.parametrize("extra, expected", [
    ('pools = 3\n', ["unknown key 'pools'", "allowed", "pool", "candidates"]),
    ('[finetune]\nsteps = 3\n', ["unknown key 'finetune.steps'", "in [finetune]", "max_steps"]),
    ('pool = "many"\n', ["pool", "valid integer", "'many'"]),
    ('floor = 1.5\n', ["floor", "less than 1", "1.5"]),
    ('metric = "l3"\n', ["metric", "'l1', 'l2' or 'taylor'", "'l3'"]),
    ('[finetune]\nschedule = "linear"\n', ["finetune.schedule", "'onecycle', 'cosine' or 'constant'"]),
])
def test_a_bad_recipe_is_named_with_file_key_and_allowed_values(tmp_path, extra, expected):
    path = _write(tmp_path, BASE + extra)
    result = cli("prune", "--config", path)
    output = one_line(result)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(path) in output, output
    for part in expected:
        assert part in output, (part, output)


def test_a_recipe_without_budget_or_method_and_bad_toml_are_refused_clearly(tmp_path):
    no_method = _write(tmp_path, 'checkpoint = "c"\nout = "o"\n', "a.toml")
    assert "names its method" in one_line(cli("prune", "--config", no_method))
    two_budgets = _write(tmp_path, BASE + "budget_ms = 1.0\n", "b.toml")
    assert "exactly one budget" in one_line(cli("prune", "--config", two_budgets))
    broken = _write(tmp_path, "method = \n", "c.toml")
    result = cli("prune", "--config", broken)
    assert result.exit_code == 2 and "not valid TOML" in one_line(result) and "Traceback" not in result.output
    wrong_command = _write(tmp_path, BASE.replace('"uniform"', '"sp"'), "d.toml")
    assert "is a recipe for sp" in one_line(cli("prune", "lcp", "--config", wrong_command))
    unknown = _write(tmp_path, BASE.replace('"uniform"', '"magic"'), "e.toml")
    assert "'method' must name the pruning method, one of" in one_line(cli("prune", "--config", unknown))


def test_train_refuses_a_bad_value_before_loading_anything(tmp_path):
    path = _write(tmp_path, 'model = "resnet20"\nout = "x.safetensors"\n[training]\nepochs = 0\nlr = 0.1\n')
    output = one_line(cli("train", "--config", path))
    assert str(path) in output and "training.epochs" in output and "greater than or equal to 1" in output


# ---- the options are the dataclasses' fields -----------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_prune_sets_a_field_and_the_old_flags_remain(command):
    job_class = method_job(command).job
    options = {o.flag: o for o in cli_options(job_class)}
    import typer

    click_command = typer.main.get_command(app).commands["prune"].commands[command]
    flags = {opt for param in click_command.params for opt in param.opts}
    assert set(options) <= flags and flags - set(options) == {"--config", "--set"}
    assert cli("prune", command, "--help").exit_code == 0
    shared = {"lcp": ["--budget-ratio", "--finetune-steps", "--fitness-images", "--method"],
              "sp": ["--supernet-steps", "--supernet-random", "--manager-population", "--finetune-steps", "--ray"],
              "jcw": ["--population", "--supernet-steps", "--admm-epochs", "--eval-images", "--objective", "--pick"],
              "ofar": ["--table", "--search-epochs", "--joint-epochs", "--bn-mode", "--batch-size", "--tau"]}[command]
    for flag in shared:
        assert flag in options, flag
    assert len(options["--seed"].paths) >= 2     # --seed sets every seed of the job


def test_precedence_defaults_recipe_options_set(tmp_path):
    """The recipe overrides the defaults, a command-line option overrides the recipe, --set overrides both;
    --budget-ms replaces the recipe's budget ratio instead of clashing with it."""
    from latbench.cli.options import job_data
    from latbench.methods.lcp.job import LcPJob

    path = _write(tmp_path, BASE.replace("budget_flops = 1e7", "budget_ratio = 0.5\ntable = \"t.parquet\"")
                  + "pool = 8\ncandidates = 16\n[finetune]\nlr = 0.5\n")
    options = cli_options(LcPJob)
    data, source = job_data(LcPJob, path, ["finetune.lr=0.25", "seed=3"], {"candidates": 24, "budget_ms": 1.5},
                            options)
    job = build_job(LcPJob, {k: v for k, v in data.items()}, source)
    assert (job.pool, job.candidates, job.finetune.lr, job.seed, job.budget_ms, job.budget_ratio) == \
        (8, 24, 0.25, 3, 1.5, None)
    assert job.finetune.epochs == 1 and job.metric == "l2"          # untouched defaults


def test_a_bare_set_key_names_the_one_nested_field_of_that_name(tmp_path):
    from latbench.cli.options import job_data
    from latbench.methods.jcw.job import JCWJob

    data, _ = job_data(TrainJob, None, ["epochs=3", "out=x.safetensors"], {}, cli_options(TrainJob))
    assert build_job(TrainJob, data).training.epochs == 3
    with pytest.raises(RecipeError, match="several fields have that name.*search.seed"):
        job_data(JCWJob, None, ["seed=1"], {}, cli_options(JCWJob))


# ---- a tiny recipe end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_train_recipe_runs_reruns_for_free_and_a_changed_field_starts_anew(tmp_path):
    fake_mnist(tmp_path, n_train=40, n_test=12)
    out = tmp_path / "run" / "r20.safetensors"
    recipe = _write(tmp_path, f'''model = "resnet20"
data = "mnist"
data_dir = "{tmp_path}"
val_size = 8
out = "{out}"
progress = false
threads = 1
[training]
epochs = 1
lr = 0.05
batch_size = 8
steps_per_epoch = 2
''')
    first = cli("train", "--config", recipe)
    assert first.exit_code == 0, first.output
    history = json.loads(out.with_suffix(".json").read_text())
    assert history["complete"] and history["recipe"]["recipe"]["training"]["lr"] == 0.05
    assert history["recipe"]["inputs"] == {}
    kept = {p: p.stat().st_mtime_ns for p in (out, recipe_path(out))}

    again = cli("train", "--config", recipe)                      # finds the run finished: nothing rewritten
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    shown = cli("report", "show", out)
    assert shown.exit_code == 0 and "train run" in one_line(shown) and '"lr": 0.05' in shown.output

    changed = cli("train", "--config", recipe, "--set", "training.lr=0.02")
    assert changed.exit_code == 0, changed.output
    assert "recipe changed (training.lr)" in one_line(changed)
    old_digest = json.loads(recipe_path(out).read_text())["digest"]
    moved = sorted(p.name for p in out.parent.glob("r20~*"))
    assert len(moved) == 3 and all(name.startswith("r20~") for name in moved), moved   # checkpoint, history, record
    assert json.loads(out.with_suffix(".json").read_text())["recipe"]["recipe"]["training"]["lr"] == 0.02
    assert old_digest != history["recipe"]["digest"]


@pytest.mark.slow
def test_a_pruning_recipe_records_itself_and_a_changed_field_starts_a_new_run(untrained_resnet56_checkpoint, tmp_path):
    from latbench.data import FASHION_MNIST_DIR

    if not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    out = tmp_path / "uniform-0.5"                  # a folder name with a dot, as the acceptance scripts' are
    recipe = _write(tmp_path, f'''method = "uniform"
model = "resnet56"
checkpoint = "{untrained_resnet56_checkpoint}"
out = "{out}"
budget_flops = 4e7
bn_images = 64
test_images = 64
progress = false
[finetune]
max_steps = 2
''')
    first = cli("prune", "--config", recipe)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    record = json.loads((out / "recipe.json").read_text())
    assert report["recipe"] == record and record["kind"] == "uniform"
    assert record["recipe"]["finetune"]["max_steps"] == 2 and record["recipe"]["candidates"] == 400   # defaults too
    digest = record["inputs"]["checkpoint"][str(untrained_resnet56_checkpoint)]
    import hashlib
    assert digest == hashlib.sha256(untrained_resnet56_checkpoint.read_bytes()).hexdigest()
    kept = {p: p.stat().st_mtime_ns for p in (out / "pruned.safetensors", out / "pruned.onnx", out / "pruned.tflite")}

    again = cli("prune", "--config", recipe, "--set", "threads=1")          # a runtime field: same run
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in kept} == kept

    changed = cli("prune", "lcp", "--config", recipe, "--finetune-lr", "0.01")
    assert changed.exit_code == 0, changed.output
    assert "recipe changed (finetune.lr)" in one_line(changed)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("uniform-0.5~")]
    assert len(aside) == 1 and (aside[0] / "pruned.safetensors").exists()
    assert json.loads((out / "report.json").read_text())["recipe"]["recipe"]["finetune"]["lr"] == 0.01


def test_run_record_leaves_runtime_fields_out_of_the_digest(tmp_path):
    from latbench.methods.lcp.job import LcPJob

    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(b"weights")
    job = LcPJob(checkpoint=str(ckpt), out="o", budget_flops=1e7)
    same = LcPJob(checkpoint=str(ckpt), out="o", budget_flops=1e7, threads=1, progress=False, device=None,
                  store="elsewhere.db")
    other = LcPJob(checkpoint=str(ckpt), out="o", budget_flops=2e7)
    before = run_record(job, "lcp")["digest"]
    assert before == run_record(same, "lcp")["digest"]
    assert before != run_record(other, "lcp")["digest"]
    ckpt.write_bytes(b"other weights")                                  # the input file is part of it too
    assert run_record(job, "lcp")["digest"] != before


def test_a_record_that_differs_only_in_what_is_now_runtime_resumes(tmp_path):
    """A run recorded when the closed loop's settings still counted in the digest resumes: the recipes are the
    same computation. A changed essential field or input file still moves the old run aside."""
    from dataclasses import replace

    from latbench.methods.landing import LandingConfig
    from latbench.methods.lcp.job import LcPJob
    from latbench.recipe import begin_folder_run

    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(b"weights")
    out = tmp_path / "run"
    job = LcPJob(checkpoint=str(ckpt), out=str(out), budget_flops=1e7)
    begin_folder_run(job, "lcp", out, log=lambda m: None)
    (out / "state.json").write_text("{}")
    record = json.loads((out / "recipe.json").read_text())
    record["digest"] = "0123456789abcdef"                # as an older digest that counted landing.repeats
    (out / "recipe.json").write_text(json.dumps(record))
    logged = []
    begin_folder_run(replace(job, landing=LandingConfig(repeats=3)), "lcp", out, log=logged.append)
    assert not logged and (out / "state.json").exists()
    assert json.loads((out / "recipe.json").read_text())["digest"] == run_record(job, "lcp")["digest"]
    begin_folder_run(replace(job, budget_flops=2e7), "lcp", out, log=logged.append)
    assert "recipe changed (budget_flops)" in logged[0] and not (out / "state.json").exists()
