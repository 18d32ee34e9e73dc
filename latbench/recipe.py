"""Recipes: one run's settings as a reviewed, versioned TOML file (``train/*.toml``, ``search/*.toml``).

A recipe *is* a job dataclass written out (:class:`~latbench.train.job.TrainJob`,
:class:`~latbench.methods.lcp.job.LcPJob`, …): its keys are the dataclass's fields, nested configs are TOML
tables. :func:`build_job` validates it with pydantic against the dataclass's own types, enums and
constraints (``Annotated[float, Gt(0)]``), so an unknown key, a wrong type or an out-of-range value is named
with the file, the key and what is allowed. The CLI options are generated from the same fields
(:mod:`latbench.cli.options`): options and recipes cannot drift apart.

Fields carry their CLI metadata in :class:`Opt` (help text, flag name, whether the field is an input file or
only says *how* the job runs).

Every run records its resolved recipe (all fields, defaults included) and the SHA-256 of the files it read
in ``recipe.json`` (:func:`begin_run`). A rerun with the same recipe resumes and recomputes nothing that
finished; a changed field moves the old run aside (``OUT~<digest>``) and starts a new one, instead of
silently resuming a run made with other settings.

>>> job = build_job(LcPJob, read_recipe("search/lcp-resnet56-50.toml"), "search/lcp-resnet56-50.toml")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .files import read_json, sha256_file, write_json_if_changed


class RecipeError(ValueError):
    """A recipe (or a --set override) that does not describe a valid job."""


class Choice(str, enum.Enum):
    """A closed set of string values (method, schedule, objective, …). Members are their value as a string
    (``f"{m}"``, JSON, ``m == "value"``), so files and reports read as before."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


@dataclass(frozen=True)
class Opt:
    """CLI metadata of a job field, given in its annotation: ``Annotated[int, Opt(help="…")]``.

    ``flag``: the option's name relative to the enclosing config's prefix (default: the field's name in
    kebab case); a leading ``--`` makes it absolute. On a nested config field, ``flag`` is the prefix of its
    fields' options (``""``: none). Fields of one job that map to the same flag are set together by it (e.g.
    ``--seed``). ``cli=False``: settable in recipes (and ``--set``) only. ``one_of``: fields with the same tag
    are alternatives (e.g. the ways to give a budget): setting one on the command line drops the others a
    recipe gives. ``runtime``: says how the job runs (threads, progress, the device it measures on), not what
    it computes; left out of the recipe's digest. ``input``: a file (or files) the run reads; its SHA-256 is
    recorded and is part of the digest."""

    help: str = ""
    flag: str | None = None
    cli: bool = True
    runtime: bool = False
    input: bool = False
    one_of: str | None = None


# ---- the fields of a job dataclass -------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldDoc:
    """One init field of a job dataclass: its name, bare type, :class:`Opt`, the pydantic-visible hint and
    its default (``dataclasses.MISSING`` when required)."""

    name: str
    type: Any
    opt: Opt
    default: Any


def _bare(hint: Any) -> tuple[Any, Opt]:
    opt = Opt()
    if typing.get_origin(hint) is typing.Annotated:
        opt = next((m for m in hint.__metadata__ if isinstance(m, Opt)), opt)
        hint = typing.get_args(hint)[0]
    return hint, opt


def job_fields(cls: type, defaults: Any = None) -> list[FieldDoc]:
    """The init fields of dataclass ``cls``; defaults taken from the instance ``defaults`` when given (a
    parent's default config may differ from the class's own defaults)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        bare, opt = _bare(hints[f.name])
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append(FieldDoc(f.name, bare, opt, default))
    return out


def field_docs(cls: type, where: tuple[str, ...] = ()) -> dict[tuple[str, ...], FieldDoc]:
    """Every field of ``cls`` and of its nested configs, by path."""
    docs = {}
    for f in job_fields(cls):
        docs[(*where, f.name)] = f
        inner = nested_config(f.type)
        if inner is not None:
            docs.update(field_docs(inner, (*where, f.name)))
    return docs


def qualify(cls: type, path: Sequence[str]) -> list[str]:
    """``path`` as given, or — a bare key that is no field of ``cls`` itself — the one nested field of that name
    (``epochs`` → ``training.epochs``); ambiguous or unknown keys are a :class:`RecipeError`."""
    if len(path) != 1 or path[0] in {f.name for f in job_fields(cls)}:
        return list(path)
    matches = [p for p in field_docs(cls) if p[-1] == path[0]]
    if len(matches) == 1:
        return list(matches[0])
    if matches:
        raise RecipeError(f"--set {path[0]}: several fields have that name ({', '.join('.'.join(m) for m in matches)}); "
                          f"give the dotted one")
    return list(path)                          # unknown: named with the allowed keys when the job is built


def drop_alternatives(cls: type, data: dict, chosen: Iterable[Sequence[str]]) -> dict:
    """``data`` without the recipe's values of the alternatives (``Opt.one_of``) of the ``chosen`` paths."""
    docs = field_docs(cls)
    chosen = {tuple(p) for p in chosen}
    for path in chosen:
        doc = docs.get(path)
        if doc is None or doc.opt.one_of is None:
            continue
        for other, odoc in docs.items():
            if (other not in chosen and other[:-1] == path[:-1] and odoc.opt.one_of == doc.opt.one_of):
                node = data
                for key in other[:-1]:
                    node = node.get(key, {}) if isinstance(node, dict) else {}
                if isinstance(node, dict):
                    node.pop(other[-1], None)
    return data


def nested_config(hint: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, getattr(__import__("types"), "UnionType", None)) else [hint]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


# ---- reading and validating ---------------------------------------------------------------------------------

def read_recipe(path: str | Path) -> dict:
    """The TOML recipe at ``path`` as a dict (errors name the file and the line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError(f"cannot read the recipe {path}: {err.strerror or err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path} is not valid TOML: {err}") from None


def parse_setting(assignment: str) -> tuple[list[str], Any]:
    """``"search.population=24"`` → ``(["search", "population"], 24)``: the value is read as a TOML value
    (numbers, booleans, quoted strings, ``[lists]``); anything else is a string, and ``none`` is None."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment!r}: write KEY=VALUE, e.g. --set epochs=3 or --set search.population=24")
    raw = raw.strip()
    if raw.lower() in ("none", "null"):
        return key.strip().split("."), None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def set_path(data: dict, path: Sequence[str], value: Any) -> None:
    """``data[path[0]][path[1]]… = value``, creating the tables on the way."""
    for key in path[:-1]:
        node = data.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{'.'.join(path)}: {key} is a value, not a table")
        data = node
    data[path[-1]] = value


def _check_keys(cls: type, data: Mapping, source: str, where: tuple[str, ...] = ()) -> None:
    fields = {f.name: f for f in job_fields(cls)}
    for key, value in data.items():
        name = ".".join((*where, key))
        if key not in fields:
            raise RecipeError(f"{source}: unknown key {name!r}; allowed{' in [' + '.'.join(where) + ']' if where else ''}: "
                              f"{', '.join(fields)}")
        inner = nested_config(fields[key].type)
        if inner is not None and isinstance(value, Mapping):
            _check_keys(inner, value, source, (*where, key))
        items = _item_config(fields[key].type)
        if items is not None and isinstance(value, (list, tuple)):      # [[tables]] of a tuple of configs
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _check_keys(items, item, source, (*where, f"{key}[{i}]"))


def _item_config(hint: Any) -> type | None:
    """The dataclass of a ``tuple[X, ...]`` field's items, else None."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _with_defaults(cls: type, data: Mapping, defaults: Any = None) -> dict:
    """``data`` with every nested config completed from its default *instance* (the job's default for that
    config, which may differ from the config class's own defaults), so a recipe names only what it changes."""
    out = dict(data)
    for f in job_fields(cls, defaults):
        inner = nested_config(f.type)
        if inner is None or not isinstance(out.get(f.name), Mapping):
            continue
        base = f.default if f.default is not dataclasses.MISSING else None
        filled = _with_defaults(inner, out[f.name], base)
        if base is not None:
            filled = {**{k: v for k, v in resolved(base).items() if k not in filled}, **filled}
        out[f.name] = filled
    return out


def _describe(error: Mapping, cls: type) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{loc} is required"
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) and error["type"] != "value_error" else ""
    return f"{loc}: {msg}{shown}" if loc else msg


def build_job(cls: type, data: Mapping, source: str = "the options"):
    """An instance of the job dataclass ``cls`` from ``data`` (a recipe), validated by pydantic against the
    dataclass's own types and constraints; problems are one :class:`RecipeError` naming ``source``, the key
    and what is allowed."""
    from pydantic import TypeAdapter, ValidationError

    _check_keys(cls, data, source)
    try:
        return TypeAdapter(cls).validate_python(_with_defaults(cls, data))
    except ValidationError as err:
        lines = [_describe(e, cls) for e in err.errors(include_url=False)]
        raise RecipeError(f"{source}: " + "; ".join(lines)) from None


# ---- the resolved recipe and its record ---------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return resolved(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def resolved(job: Any) -> dict:
    """Every init field of ``job`` (nested configs as dicts, enums as their values): the recipe in full."""
    return {f.name: _plain(getattr(job, f.name)) for f in dataclasses.fields(job) if f.init}


def _marked(cls: type, what: Callable[[Opt], bool], where: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for f in job_fields(cls):
        inner = nested_config(f.type)
        if what(f.opt):
            paths.append((*where, f.name))
        elif inner is not None:
            paths += _marked(inner, what, (*where, f.name))
    return paths


def _get(d: Mapping, path: Sequence[str]) -> Any:
    for key in path:
        d = d[key]
    return d


def input_files(job: Any) -> dict[str, list[str]]:
    """The files the job reads (fields marked ``Opt(input=True)``), by dotted field name."""
    files = {}
    for path in _marked(type(job), lambda o: o.input):
        value = _get(resolved(job), path)
        files[".".join(path)] = [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    return files


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _essential(cls: type, recipe: Mapping) -> dict:
    """``recipe`` without the runtime fields of job class ``cls``."""
    what = json.loads(json.dumps(recipe, default=str))
    for path in _marked(cls, lambda o: o.runtime):
        try:
            node = _get(what, path[:-1]) if len(path) > 1 else what
        except (KeyError, TypeError):          # an older record without that table
            continue
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return what


def run_record(job: Any, kind: str) -> dict:
    """``{"kind", "recipe", "inputs", "digest"}``: the resolved recipe, the SHA-256 of every input file and a
    digest of both that leaves out the runtime fields (threads, progress, the measurement device, …)."""
    recipe = resolved(job)
    inputs = {name: {p: (sha256_file(p) if Path(p).is_file() else None) for p in paths}
              for name, paths in input_files(job).items()}
    what = _essential(type(job), recipe)
    digest = _digest({"kind": kind, "recipe": what, "inputs": {k: sorted(v.values(), key=str) for k, v in inputs.items()}})
    return {"kind": kind, "digest": digest, "recipe": recipe, "inputs": inputs}


def _changed_fields(old: Mapping, new: Mapping, where: str = "") -> list[str]:
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += _changed_fields(a, b, f"{where}{key}.")
        elif a != b:
            names.append(f"{where}{key}")
    return names


def aside_path(path: Path, digest: str) -> Path:
    """``OUT~digest`` for a folder (whose name may hold dots: ``lcp-0.7``), ``name~digest.ext…`` for a file."""
    head, dot, tail = (path.name, "", "") if path.is_dir() else path.name.partition(".")
    n, target = 0, path.with_name(f"{head}~{digest[:8]}{dot}{tail}")
    while target.exists():
        n += 1
        target = path.with_name(f"{head}~{digest[:8]}-{n}{dot}{tail}")
    return target


def moved_aside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` (below ``root``) belongs to a run moved aside by :func:`aside_path` (``~`` in a name): a
    superseded run, which summaries of the current ones skip."""
    return any("~" in part for part in Path(path).relative_to(root).parts)


def begin_run(job: Any, kind: str, record_path: str | Path, belongings: Iterable[str | Path],
              log: Callable[[str], None] = print) -> dict:
    """Record ``job``'s resolved recipe at ``record_path`` before it runs, and return the record.

    When ``record_path`` holds another recipe (a different digest: a changed field or input file), the old
    run — ``belongings``, the files or folder it wrote, the record included — is moved aside with the old
    digest in its name (nothing is deleted) and the job starts anew. A record with the same digest, or with the
    same recipe (runtime fields aside) and input files, means the job resumes as usual. Output written before records existed is resumed as before."""
    record_path = Path(record_path)
    record = run_record(job, kind)
    if record_path.exists():
        old = read_json(record_path, recover="delete it (the run then resumes without checking its recipe)")
        changed = _changed_fields(_essential(type(job), old.get("recipe", {})), _essential(type(job), record["recipe"]))
        # Compared by content, not only by digest: a record whose digest counted a field that has since become
        # a runtime setting (e.g. the closed loop's) describes the same computation and resumes.
        if old.get("digest") != record["digest"] and (changed or old.get("inputs") != record["inputs"]):
            changed = changed or ["an input file"]
            moved = []
            for path in map(Path, belongings):
                if path.exists():
                    target = aside_path(path, old.get("digest", "previous"))
                    path.rename(target)
                    moved.append(str(target))
            log(f"the recipe changed ({', '.join(changed)}): the previous run moved to {', '.join(moved)}; "
                f"starting a new run")
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_if_changed(record_path, record, indent=1)
    return record


def begin_folder_run(job: Any, kind: str, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """:func:`begin_run` for a job that writes one folder ``out`` (its record: ``out/recipe.json``)."""
    out = Path(out)
    record = begin_run(job, kind, out / "recipe.json", [out], log)
    return record


__all__ = ["Choice", "FieldDoc", "Opt", "RecipeError", "begin_folder_run", "begin_run", "build_job", "aside_path", "input_files", "moved_aside", "qualify",
           "job_fields", "nested_config", "parse_setting", "read_recipe", "resolved", "run_record", "set_path"]
