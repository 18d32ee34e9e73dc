"""Files latbench writes itself: an interrupted write keeps the old file (no temp files left behind), and a
damaged file read back by a rerun gets an error naming it and saying how to recover."""
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.files import DamagedFileError, atomic_output, atomic_write_json, read_json, read_jsonl
from latbench.models import Architecture, build, get_model
from latbench.predictor import Predictor
from latbench.methods.jcw.job import _claim_folder, _finished_training, _previous_scores, write_front
from latbench.search.budget import Budget, CostGrid
from latbench.methods.jcw.search import JCWSearch, SearchConfig, SyntheticEvaluator
from latbench.methods.lcp.search import EvolutionConfig, FilterRanking, learn_compensation
from latbench.tables import LatencyTable
from latbench.train import save_checkpoint
from latbench.train.admm import ADMMConfig
from latbench.validation import ValidationReport

TABLE = Path(__file__).resolve().parents[1] / "tables" / "host-ort-resnet18-224-adaptive.parquet"


def _interrupting_open():
    """``io.open`` as during Ctrl-C in every write through it (``Path.write_text``, ``Path.write_bytes``): the
    file is created or truncated, then the run is interrupted before anything is written."""
    real_open = io.open

    def open_then_interrupt(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            real_open(file, mode, *args, **kwargs).close()
            raise KeyboardInterrupt
        return real_open(file, mode, *args, **kwargs)
    return open_then_interrupt


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _full_arch(resolution=32):
    return Architecture.full(get_model("resnet20"), resolution)


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"old": 1})
    assert read_json(path, "unused") == {"old": 1}

    with pytest.raises(KeyboardInterrupt):          # interrupted while the writer writes
        with atomic_output(path) as tmp:
            tmp.write_bytes(b'{"new": ')
            raise KeyboardInterrupt
    assert _contents(tmp_path) == {"report.json": b'{"old": 1}'}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)  # interrupted just before the rename
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"new": 2})
    assert _contents(tmp_path) == {"report.json": b'{"old": 1}'}


def test_a_written_file_keeps_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_json(tmp_path / "a.json", [1])
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def _validation_report():
    arch = _full_arch().to_json()
    return ValidationReport(pd.DataFrame({"arch": [arch, arch], "predicted_ms": [1.0, 2.0],
                                          "measured_ms": [1.1, 1.9], "sum_of_layers_ms": [0.9, 1.8]}))


def _write_validation(folder: Path, version: int) -> None:
    report = _validation_report()
    report.frame["measured_ms"] += version
    report.write(folder / "validation.json", folder / "validation.csv")


def _write_front(folder: Path, version: int) -> None:
    front = pd.DataFrame({"architecture": [_full_arch()], "latency_ms": [1.0 + version], "relative_latency": [1.0],
                          "loss": [0.5], "val_loss": [0.6], "val_accuracy": [0.8], "density": [1.0],
                          "weight_density": [1.0]})
    write_front(folder / "front.jsonl", front, generation=version)


def _claim(folder: Path, version: int) -> None:
    _claim_folder(folder / "job", _full_arch())


def _search_outputs(folder: Path, version: int) -> None:
    spec = get_model("resnet18")
    search = JCWSearch(spec, Predictor(spec, LatencyTable.load(TABLE)), SyntheticEvaluator(spec),
                       SearchConfig(population=8, generations=1, seed=1))
    search.run(folder)        # the second run resumes the finished search and writes its front and plot again


@pytest.mark.parametrize("write", [_write_validation, _write_front, _claim, _search_outputs])
def test_reports_architectures_and_search_state_survive_an_interrupted_rewrite(tmp_path, monkeypatch, write):
    write(tmp_path, 0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before
    monkeypatch.setattr(io, "open", _interrupting_open())
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, 1)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # history.jsonl is appended to, by design: resuming drops a line the state does not count
    assert {p: b for p, b in after.items() if p.name != "history.jsonl"} == \
        {p: b for p, b in before.items() if p.name != "history.jsonl"}



def test_tables_and_checkpoints_interrupted_before_the_rename_keep_the_old_file(tmp_path, monkeypatch):
    table = LatencyTable.load(TABLE)
    table.save(tmp_path / "t.parquet")
    save_checkpoint(tmp_path / "c.safetensors", build(get_model("resnet20")))
    before = _contents(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        table.save(tmp_path / "t.parquet")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.safetensors", build(get_model("resnet20")))
    assert _contents(tmp_path) == before


# ---- damaged files read back by a rerun ----------------------------------------------------------------

def test_read_json_names_the_damaged_file_and_the_way_out(tmp_path):
    path = tmp_path / "report.json"
    path.write_text('{"model": "resn')
    with pytest.raises(DamagedFileError, match=r"report\.json is damaged.*delete it to recompute that step"):
        read_json(path, "delete it to recompute that step")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DamagedFileError, match="report.json is damaged"):
        read_json(path, "delete it")
    rows = tmp_path / "front.jsonl"
    rows.write_text('{"a": 1}\n\n{"a": ')
    with pytest.raises(DamagedFileError, match="front.jsonl, line 3 is damaged"):
        read_jsonl(rows, "delete it")


def test_damaged_front_report_and_architecture_of_a_jcw_run_are_named(tmp_path):
    front = tmp_path / "front.jsonl"
    _write_front(tmp_path, 0)
    front.write_text(front.read_text()[:-20])
    with pytest.raises(DamagedFileError, match="front.jsonl, line 1 is damaged.*score the front again"):
        _previous_scores(front)

    folder = tmp_path / "ratio-50"
    _claim_folder(folder, _full_arch())
    for fmt in ("onnx", "tflite"):
        (folder / f"pruned.{fmt}").write_bytes(b"model")
    (folder / "report.json").write_text('{"architecture": {"model": "resnet20", "resol')
    with pytest.raises(DamagedFileError, match="report.json is damaged.*redo that architecture's retraining"):
        _finished_training(folder, _full_arch(), ADMMConfig(), 64)
    (folder / "arch.json").write_text("")
    with pytest.raises(DamagedFileError, match="arch.json is damaged.*delete that folder"):
        _claim_folder(folder, _full_arch())


def test_damaged_search_states_are_named(tmp_path):
    spec = get_model("resnet18")
    predictor = Predictor(spec, LatencyTable.load(TABLE))
    grid = CostGrid.from_predictor(predictor, 224, step=16)
    rng = np.random.default_rng(0)
    metrics = {ly.name: rng.random(spec.groups[ly.out_group]) for ly in spec.layers if ly.out_group and ly.has_weights}
    ranking = FilterRanking.from_metrics(spec, metrics, unit=16)
    budget = Budget("latency", 0.5 * grid.total(ranking.full))
    state = tmp_path / "lcp-state.json"
    state.write_text('{"config": {"pool"')
    with pytest.raises(DamagedFileError, match="lcp-state.json is damaged.*restart the search"):
        learn_compensation(ranking, grid, budget, lambda plan: 0.0, EvolutionConfig(pool=4, candidates=8, sample=2),
                           state=state, progress=False)

    search = lambda: JCWSearch(spec, predictor, SyntheticEvaluator(spec),  # noqa: E731
                               SearchConfig(population=8, generations=1, seed=1))
    search().run(tmp_path)
    history = tmp_path / "history.jsonl"
    lines = history.read_text().splitlines()
    history.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(DamagedFileError, match=r"history\.jsonl, line 2 is damaged.*resume=False"):
        search().run(tmp_path)
    (tmp_path / "state.json").write_text('{"format": ')
    with pytest.raises(DamagedFileError, match=r"state\.json is damaged.*resume=False"):
        search().run(tmp_path)


def test_the_cli_names_a_damaged_architecture_file(tmp_path):
    arch = tmp_path / "full_arch.json"
    arch.write_text(Architecture.full(get_model("resnet18"), 224).to_json()[:30])
    res = CliRunner().invoke(app, ["predict", "resnet18", "--arch", str(arch), "--table", str(TABLE)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "full_arch.json is damaged" in out and "Traceback" not in out, res.output
