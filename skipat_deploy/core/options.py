"""Options, each declared once: a config dataclass's field carries its command-line flag, help
text and allowed values (:func:`option`); the CLI builds its parameters from the fields
(:mod:`skipat_deploy.params`) and the API takes the configs (:func:`fill` forwards keyword
options into them), so a default is written in one place (as optimum's exporter configs and
Olive's pass configs keep an option's facts beside its field). Typer-free: stage modules
declare their options here without importing the CLI's libraries.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "skipat_deploy.option"


@dataclass(frozen=True)
class Opt:
    help: str
    flag: str | None = None  # default: --<field-name> with dashes; "--x/--no-x" for a switch pair
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # said in --help, checked by check_declared
    minimum: float | None = None  # the smallest value allowed, checked by check_declared
    # One command-line value turned into the field's value: "ints" / "names" (comma-separated),
    # or a function (text, flag) -> value. The command line's default is then None: the field's.
    parse: str | Callable[[str, str], Any] | None = None
    repeat: bool = False  # a tuple field given by repeating the flag
    show_default: bool = True
    # A flag this option had before: still accepted (command line and API keyword), with a
    # deprecation notice on the command line.
    old_flag: str | None = None


def option(default: Any, help: str, **facts: Any) -> Any:
    """A config field with its command-line facts (:class:`Opt`)."""
    return dataclasses.field(default=default, metadata={KEY: Opt(help, **facts)})


def declared(cls: type) -> list[tuple[dataclasses.Field, Opt, Any]]:
    """The fields of config class ``cls`` that are options: (field, facts, resolved type)."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[KEY], hints[f.name]) for f in dataclasses.fields(cls) if KEY in f.metadata]


def flag(f: dataclasses.Field) -> str:
    """The field's main flag (``--rotate`` for ``--rotate/--no-rotate``)."""
    opt = f.metadata[KEY]
    return (opt.flag or "--" + f.name.replace("_", "-")).split("/")[0]


def names(f: dataclasses.Field) -> tuple[str, ...]:
    """The keywords that set field ``f`` through the API: its name and its flag's."""
    if KEY not in f.metadata:
        return (f.name,)
    opt = f.metadata[KEY]
    old = (opt.old_flag.lstrip("-").replace("-", "_"),) if opt.old_flag else ()
    return tuple(dict.fromkeys((f.name, flag(f).lstrip("-").replace("-", "_"), *old)))


def check_declared(config: Any) -> None:
    """Refuse a value outside a field's declared ``choices`` or under its ``minimum``: one line
    naming the flag and what it accepts (every config's ``check()`` starts here)."""
    from .errors import UserError

    for f, opt, _ in declared(type(config)):
        value = getattr(config, f.name)
        if value is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if opt.choices is not None and v not in opt.choices:
                raise UserError(f"{flag(f)} {v!r}: choose one of {', '.join(opt.choices)}")
            if opt.minimum is not None and v < opt.minimum:
                raise UserError(f"{flag(f)} must be at least {opt.minimum:g}, got {v}")


def fill(config: Any, options: dict[str, Any], *, rename: dict[str, str] | None = None) -> Any:
    """``config`` with the keyword ``options`` it declares (field name or flag name; ``rename``:
    keyword -> field name) replaced; those taken are removed from ``options``."""
    rename = rename or {}
    by_name = {n: f.name for f in dataclasses.fields(config) for n in names(f)}
    by_name.update((k, v) for k, v in rename.items())
    taken = {by_name[k]: options.pop(k) for k in list(options) if k in by_name}
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name, value in taken.items():  # the API's conveniences: "dir/" for a Path, a list for a
        kind = str(fields[name].type)  # tuple, one value for a repeatable option (resolution=112)
        if isinstance(value, str) and "Path" in kind:
            taken[name] = Path(value)
        elif isinstance(value, list) and "tuple" in kind:
            taken[name] = tuple(value)
        elif (KEY in fields[name].metadata and fields[name].metadata[KEY].repeat
              and not isinstance(value, (tuple, list))):
            taken[name] = (value,)
    return dataclasses.replace(config, **taken) if taken else config


def refuse_unknown(options: dict[str, Any], where: str) -> None:
    """Keyword options that no config of ``where`` declares, refused as Python refuses them."""
    if options:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(sorted(options))}")


def parse_list(text: str | None, kind: str, what: str) -> tuple | None:
    """A comma-separated command-line value as the tuple the config holds."""
    from .errors import UserError

    if text is None:
        return None
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if kind == "names":
        return tuple(parts)
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_value(opt: Opt, text: str | None, what: str) -> Any:
    if text is None or opt.parse is None:
        return text
    if callable(opt.parse):
        return opt.parse(text, what)
    return parse_list(text, opt.parse, what)

