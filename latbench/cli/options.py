"""CLI options generated from a job dataclass (:mod:`latbench.recipe`), so ``latbench prune …`` / ``latbench
train`` and the recipes take exactly the same settings.

Each field becomes one option (nested configs flattened with their prefix; fields that share a flag, such as
every ``seed``, are set together). Precedence: the dataclass's defaults < ``--config FILE`` < options given
on the command line < ``--set KEY=VALUE`` (dotted field names, e.g. ``--set search.population=24``).
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from ..recipe import (RecipeError, build_job, drop_alternatives, job_fields, nested_config, parse_setting, qualify,
                      read_recipe, set_path)


@dataclass
class CliOption:
    """One generated option: ``--flag`` sets the fields at ``paths`` (dotted, one or more)."""

    name: str                         # the Python parameter name
    flag: str
    paths: list[tuple[str, ...]]
    type: Any
    default: Any
    help: str


def _optional_args(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _cli_type(hint: Any) -> bool:
    """Whether a field of this type can be a command-line option: scalars, enums, and repeatable scalars."""
    hint, _ = _optional_args(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str)
    return hint in (int, float, str, bool) or (isinstance(hint, type) and issubclass(hint, enum.Enum))


def _flatten(cls: type, defaults: Any = None, prefix: str = "", where: tuple[str, ...] = ()) -> list[CliOption]:
    options: list[CliOption] = []
    for f in job_fields(cls, defaults):
        inner = nested_config(f.type)
        if inner is not None:
            own = f.name.replace("_", "-") if f.opt.flag is None else f.opt.flag
            sub = own[2:] if own.startswith("--") else "-".join(p for p in (prefix, own) if p)
            options += _flatten(inner, f.default if f.default is not dataclasses.MISSING else None, sub, (*where, f.name))
            continue
        if not f.opt.cli or not _cli_type(f.type):
            continue                                            # recipes and --set only
        own = f.opt.flag or f.name.replace("_", "-")
        flag = own if own.startswith("--") else "--" + "-".join(p for p in (prefix, own) if p)
        options.append(CliOption(flag[2:].replace("-", "_"), flag, [(*where, f.name)], f.type, f.default, f.opt.help))
    return options


def cli_options(cls: type) -> list[CliOption]:
    """The options of job dataclass ``cls``, one per flag (fields sharing a flag merged)."""
    merged: dict[str, CliOption] = {}
    for o in _flatten(cls):
        if o.flag in merged:
            first = merged[o.flag]
            if first.default != o.default:
                raise TypeError(f"{cls.__name__}: fields {first.paths[0]} and {o.paths[0]} share {o.flag} but not "
                                f"their defaults ({first.default!r}, {o.default!r})")
            first.paths.append(o.paths[0])
            first.help = first.help or o.help
        else:
            merged[o.flag] = o
    return list(merged.values())


def _typer_parameter(o: CliOption) -> inspect.Parameter:
    hint, optional = _optional_args(o.type)
    required = o.default is dataclasses.MISSING
    default = None if required else o.default
    help_text = o.help + (" [required unless in --config]" if required else "")
    decls = [o.flag]
    if typing.get_origin(hint) is tuple:                      # repeatable: --x 1 --x 2
        item = typing.get_args(hint)[0]
        annotation = Optional[List[item]]
        default = list(default) if default else None
    elif hint is bool:
        decls = [f"{o.flag}/--no-{o.flag[2:]}"]
        annotation = Optional[bool] if optional else bool
    else:
        annotation = Optional[hint] if optional or required else hint
    if isinstance(default, enum.Enum):
        default = default.value if not (isinstance(hint, type) and issubclass(hint, enum.Enum)) else default
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, help=help_text, show_default=not required))


CONFIG_HELP = "recipe (TOML) with the job's settings; options given here override single fields"
SET_HELP = ("override one field of the recipe: KEY=VALUE, dotted for nested settings (a bare name that only one "
            "nested setting has is enough: epochs=3); repeatable")


def job_data(cls: type, config: Path | None, settings: List[str] | None, given: dict[str, Any],
             options: list[CliOption]) -> tuple[dict, str]:
    """The recipe ``config`` (or nothing) with the ``given`` command-line options and the ``--set``
    ``settings`` applied, and the source to name in errors."""
    data = read_recipe(config) if config else {}
    assignments = []
    for o in options:
        if o.name in given:
            value = given[o.name]
            if isinstance(value, list):
                value = tuple(value)
            assignments += [(path, value.value if isinstance(value, enum.Enum) else value) for path in o.paths]
    for assignment in settings or ():
        path, value = parse_setting(assignment)
        assignments.append((qualify(cls, path), value))
    drop_alternatives(cls, data, [path for path, _ in assignments])     # --budget-ms replaces a recipe's ratio
    for path, value in assignments:
        set_path(data, path, value)
    source = str(config) if config else "the options"
    return data, source


def job_command(cls: type, execute: Callable[[Any], None], *, doc: str,
                prepare: Callable[[dict, str], dict] | None = None) -> Callable[..., None]:
    """A typer command whose options are ``cls``'s fields plus ``--config`` and ``--set``; it builds the job
    (``prepare(data, source)`` may check and adjust the recipe dict first) and hands it to ``execute``."""
    options = cli_options(cls)

    def command(ctx: typer.Context, **values: Any) -> None:
        from .common import fail

        config, settings = values.pop("config"), values.pop("set")
        # (typer may bring its own copy of click: compare the source by name)
        given = {name: v for name, v in values.items()
                 if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
        try:
            data, source = job_data(cls, config, settings, given, options)
            if prepare is not None:
                data = prepare(data, source)
            job = build_job(cls, data, source)
        except RecipeError as err:
            fail(err)
        execute(job)

    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
                  inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--config", help=CONFIG_HELP)),
                  inspect.Parameter("set", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]],
                                    default=typer.Option(None, "--set", help=SET_HELP))]
    parameters += [_typer_parameter(o) for o in options]
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = doc
    return command


def script_main(cls: type, run: Callable[[Any], None], doc: str) -> None:
    """Run a stand-alone experiment script (``benchmarks/…``) whose settings are the dataclass ``cls``: the same
    generated options, ``--config RECIPE`` and ``--set`` as ``latbench prune``; ``run`` gets the instance."""
    from .common import JOB_ERRORS, fail

    def guarded(exp: Any) -> None:          # a bad recipe or input named in one line, as in `latbench prune`
        try:
            run(exp)
        except JOB_ERRORS as err:
            fail(err)

    app = typer.Typer(add_completion=False)
    app.command()(job_command(cls, guarded, doc=doc))
    app()


__all__ = ["CliOption", "cli_options", "job_command", "job_data", "script_main"]
