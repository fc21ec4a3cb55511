"""The command line's parameters, generated from the configs' option fields
(:mod:`skipat_deploy.core.options`): each option's flag, type, default and help come from its field,
so the CLI states none of them again. Typer reads a command's parameters from its signature
(``inspect.signature(func, eval_str=True)``, ``typing.get_type_hints(func)``): the generated
function carries ``__signature__`` and ``__annotations__``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .core.options import declared, flag as flag_of, parse_value


@dataclass(frozen=True)
class Fields:
    """Options of config ``cls``: ``names`` (None: all it declares, in field order); ``help``:
    field -> this command's wording; ``prefix``: put before each help text (``With --ckpt: ``);
    ``base``: the command's default config where it differs from the declared defaults (one
    place, in the command's module: ``commands.profile.QUANTIZE``)."""

    cls: type
    names: tuple[str, ...] | None = None
    help: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    base: Any = None
    old_flags: bool = True  # also take the fields' former flags (where this command had them)


def F(cls: type, names: str | None = None, **kw) -> Fields:
    return Fields(cls, tuple(names.split()) if names else None, **kw)


@dataclass(frozen=True)
class Input:
    """A command's own argument: a path (or switch) the API function takes, not a config field."""

    name: str
    type: Any
    help: str
    flag: str | None = None  # None: a positional argument
    default: Any = inspect.Parameter.empty  # empty: required
    metavar: str | None = None


JSON = Input("as_json", bool, "Print one JSON document on stdout.", "--json", False)
DEBUG = Input("debug", bool, "Show tracebacks.", "--debug", False)


def out(api_function: Callable, help: str) -> Input:
    """--out, defaulting to where ``api_function`` writes (its ``out_dir``)."""
    default = inspect.signature(api_function).parameters["out_dir"].default
    return Input("out", Path, help, "--out", Path(default))


def _cli_type(opt, t):
    if opt.parse is not None:
        return Optional[str]
    args = typing.get_args(t)
    if opt.repeat:
        return list[args[0]]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        return Optional[next(a for a in args if a is not type(None))]
    return t


@dataclass
class Param:
    name: str
    annotation: Any
    default: Any
    cls: type | None = None  # None: an Input
    field: str | None = None
    opt: Any = None
    flag: str | None = None
    base: Any = None  # the config the command starts from (None: the declared defaults)
    renamed: bool = False  # the option's old flag, still accepted (with a notice)
    old: str | None = None  # the old flag this command takes for the option


def params(items) -> list[Param]:
    """The parameters of ``items`` (Fields and Inputs), in order."""
    out: list[Param] = []
    for item in items:
        item = item if isinstance(item, (Input, Fields)) else Fields(item)  # a whole config
        if isinstance(item, Input):
            info = (typer.Option(item.flag, help=item.help, metavar=item.metavar) if item.flag
                    else typer.Argument(help=item.help, metavar=item.metavar))
            out.append(Param(item.name, Annotated[item.type, info], item.default))
            continue
        decl = {f.name: (f, o, t) for f, o, t in declared(item.cls)}
        for name in item.names or decl:
            f, opt, t = decl[name]
            flag = opt.flag or flag_of(f)
            if t in (bool, Optional[bool], bool | None) and "/" not in flag and not opt.flag:
                flag = f"{flag}/--no-{flag[2:]}"
            help = item.help.get(name) or item.prefix + (opt.help[0].lower() + opt.help[1:] if item.prefix else opt.help)
            info = typer.Option(flag, help=help, metavar=opt.metavar, show_default=opt.show_default)
            value = getattr(item.base, name) if item.base is not None else f.default
            default = None if opt.parse else list(value) if opt.repeat else value
            out.append(Param(f"{item.cls.__name__.lower()}__{name}", Annotated[_cli_type(opt, t), info],
                             default, item.cls, name, opt, flag.split("/")[0], item.base,
                             old=opt.old_flag if item.old_flags else None))
    taken = {p.flag for p in out if p.flag}
    for p in list(out):  # renamed flags: the old spelling, hidden, where no other option has it
        old = p.old
        if old and old not in taken:
            info = typer.Option(old, hidden=True)
            out.append(Param(p.name + "__old", Annotated[Optional[_cli_type(p.opt, typing.get_type_hints(p.cls)[p.field])], info],
                             None, p.cls, p.field, p.opt, old, p.base, renamed=True))
    return out


class Args:
    """What a command got: ``a[Config]`` (built from its options), ``a.<input>``."""

    def __init__(self, ps: list[Param], values: dict[str, Any]):
        given: dict[type, dict] = {}
        bases: dict[type, Any] = {}
        self.notices: list[str] = []  # renamed flags that were used
        for p in ps:
            v = values[p.name]
            if p.cls is None:
                setattr(self, p.name, v)
                continue
            given.setdefault(p.cls, {})
            bases[p.cls] = p.base
            if p.renamed:
                if v is not None:
                    given[p.cls][p.field] = parse_value(p.opt, v, p.flag) if p.opt.parse else v
                    new = next(q.flag for q in ps if q.cls is p.cls and q.field == p.field and not q.renamed)
                    self.notices.append(f"{p.flag} is now {new}; the old spelling still works")
            elif p.opt.parse is not None:
                if v is not None:
                    given[p.cls][p.field] = parse_value(p.opt, v, p.flag)
            elif p.field not in given[p.cls]:  # the renamed flag (later in ps) wins over a default
                given[p.cls][p.field] = tuple(v) if p.opt.repeat else v
        self._configs = {cls: (dataclasses.replace(bases[cls], **kw) if bases[cls] is not None else cls(**kw))
                         for cls, kw in given.items()}

    def __getitem__(self, cls: type):
        return self._configs[cls]


def command(app: typer.Typer, name: str, items, run_command: Callable, *, staged: bool = True):
    """Register ``name``: its parameters from ``items`` (+ --json, --debug); the decorated
    ``fn(run, args)`` is called by ``run_command(name, as_json, debug, body, out)``."""
    ps = params([*items, JSON, DEBUG])

    def deco(fn):
        def cmd(**values):
            as_json, debug = values.pop("as_json"), values.pop("debug")
            where = values.get("out") if staged else None
            def body(run):
                args = Args([p for p in ps if p.name not in ("as_json", "debug")], values)
                for n in args.notices:
                    run.notice(n)
                return fn(run, args)

            run_command(name, as_json, debug, body, where)

        cmd.__signature__ = inspect.Signature([
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default,
                              annotation=p.annotation) for p in ps])
        cmd.__annotations__ = {p.name: p.annotation for p in ps}
        # one paragraph: click keeps a docstring's line breaks, mid-sentence in the command list
        cmd.__doc__, cmd.__name__ = " ".join((fn.__doc__ or "").split()), name
        app.command(name=name)(cmd)
        cmd.params = ps
        return fn

    return deco
