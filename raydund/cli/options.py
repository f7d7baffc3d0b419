"""Options generated from the config dataclasses: a field is declared once, in its dataclass.

:func:`add_fields` adds one option per field of a config dataclass: its flag
(``--batch-size`` for ``batch_size``), type (from the annotation: ``int | None`` is an
int, ``tuple[str, ...]`` one or more values, ``tuple[str, str, str]`` exactly three, a
bool a switch: ``--fresh`` for a ``False`` default, ``--no-timing`` for a ``True`` one),
default (the field's) and help (the field's entry in the class's numpydoc
``Attributes`` section, or a base class's; ``{"a", "b"}`` as its type gives the choices).
:func:`config_from` builds the config back from the parsed arguments, so the parser
and the config always agree. :class:`Opt` holds what a command spells differently
(``--workers`` for ``pool_size``, a CLI default for a required field, old spellings).

The subcommand parsers are :class:`LazyParser`: their options are added on first use
(parsing or help), so ``raydund tables`` never imports the probe job to learn its
options.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Callable
from typing import Any

#: An :class:`Opt` field left as the generated option has it.
UNSET = object()

#: The lake units of every stage command (the extraction's choices).
UNITS = ("word", "cls", "mlp", "attn")


@dataclasses.dataclass(frozen=True)
class Opt:
    """How one config field appears on the command line, where it differs from the generated option.

    Attributes
    ----------
    flag : str, optional
        The option (default: ``--field-name``; ``--no-field-name`` for a ``True`` bool).
    old : tuple of str
        Deprecated spellings, still accepted for one release with a line on stderr.
    old_values : dict, optional
        The values the old spellings took -> the new option's (they accept only these).
    default : object
        A CLI default where the field has none (``--model minilm``).
    required : bool, optional
        Override whether the option must be given.
    help, choices, nargs, metavar, action, type
        As :meth:`argparse.ArgumentParser.add_argument` (``action="append"``: repeat the
        option for several values).
    convert : callable, optional
        Turns the parsed value into the field's value.
    """

    flag: str | None = None
    old: tuple[str, ...] = ()
    old_values: dict | None = None
    default: Any = UNSET
    required: bool | None = None
    help: str | None = None
    choices: tuple | None = None
    nargs: Any = None
    metavar: Any = None
    action: str | None = None
    type: Callable | None = None
    convert: Callable | None = None


class LazyParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose options are added by ``populate(parser)`` on first use."""

    def __init__(self, *args, populate: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populate(self) -> LazyParser:
        """Add the options now (idempotent)."""
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()


class Deprecated(argparse.Action):
    """An old spelling of an option: sets the new option's value and says so on stderr."""

    def __init__(self, option_strings, dest, new: str = "", values_map: dict | None = None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.values_map = new, values_map or {}

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"raydund: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.values_map.get(values, values))


# -- field documentation ----------------------------------------------------------------
_ROLE = re.compile(r":\w+:`~?([\w.]+)`")


def _plain(text: str) -> str:
    """Docstring markup -> help text: ``x`` -> x, :class:`~a.B` -> B, % escaped for argparse."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")
    return text.replace("%", "%%")


def field_docs(cls) -> dict[str, tuple[str, str]]:
    """Field name -> (numpydoc type, description) from the ``Attributes`` sections of ``cls`` and its bases."""
    docs: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_attributes(inspect.cleandoc(klass.__dict__.get("__doc__") or "")))
    return docs


def _attributes(doc: str) -> dict[str, tuple[str, str]]:
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines[:-1])
                     if line.strip() == "Attributes" and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return {}
    out: dict[str, tuple[str, str]] = {}
    names: list[str] = []
    kind = ""
    text: list[str] = []

    def flush():
        for name in names:
            out[name] = (kind, " ".join(text))

    body = lines[start + 2:]
    for i, line in enumerate(body):
        if line and not line[0].isspace():
            if i + 1 < len(body) and body[i + 1].strip() and set(body[i + 1].strip()) == {"-"}:
                break  # the next section
            flush()
            head, _, kind = line.partition(" : ")
            names, text = [n.strip() for n in head.split(",")], []
        elif line.strip():
            text.append(line.strip())
    flush()
    return out


def _choices(kind: str) -> tuple | None:
    """``{"a", "b"}`` (a numpydoc type) -> ("a", "b")."""
    found = re.search(r"\{([^}]*)\}", kind)
    return tuple(v.strip().strip("\"'") for v in found.group(1).split(",")) if found else None


# -- options from fields ------------------------------------------------------------------
def _base_type(hint) -> tuple[Any, Any]:
    """(element type, nargs) of a field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], "+"
        return args[0], len(args)
    if args and origin is not None:  # X | None
        return _base_type(args[0])
    return hint, None


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def add_fields(parser: argparse.ArgumentParser, cls, opts: dict[str, Opt] | None = None,
               skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``cls`` (all but ``skip``), as ``opts`` adjusts them."""
    opts = opts or {}
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    for field in sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited):  # the class's own first
        if field.name in skip:
            continue
        _add_field(parser, field, hints[field.name], docs.get(field.name, ("", "")), opts.get(field.name, Opt()))


def _add_field(parser, field, hint, doc, opt: Opt) -> None:
    kind, text = doc
    default = opt.default if opt.default is not UNSET else _default(field)
    elem, nargs = _base_type(hint)
    kwargs: dict[str, Any] = {"dest": field.name, "help": opt.help if opt.help is not None else _plain(text)}
    if elem is bool and opt.type is None:
        flag = opt.flag or ("--no-" if default else "--") + field.name.replace("_", "-")
        kwargs.update(action="store_false" if default else "store_true", default=bool(default))
    else:
        flag = opt.flag or "--" + field.name.replace("_", "-")
        required = default is dataclasses.MISSING if opt.required is None else opt.required
        kwargs.update(type=opt.type or elem, required=required)
        if opt.action:
            kwargs["action"] = opt.action
        else:
            kwargs["nargs"] = opt.nargs or nargs
        if not required and opt.action != "append":
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        if not required and default not in (None, dataclasses.MISSING):
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            kwargs["help"] = f"{kwargs['help']} (default: {shown})".lstrip()
        choices = opt.choices or _choices(kind)
        if choices:
            kwargs["choices"] = choices
        kwargs["metavar"] = opt.metavar or (None if choices else flag[2:].upper().replace("-", "_"))
    parser.add_argument(flag, **{k: v for k, v in kwargs.items() if v is not None})
    for old in opt.old:
        parser.add_argument(old, dest=field.name, action=Deprecated, new=flag, help=argparse.SUPPRESS,
                            default=argparse.SUPPRESS, type=None if opt.old_values else kwargs.get("type"),
                            choices=tuple(opt.old_values) if opt.old_values else None, values_map=opt.old_values)


def config_from(args: argparse.Namespace, cls, opts: dict[str, Opt] | None = None, skip: tuple[str, ...] = (),
                **given):
    """``cls`` from the parsed options of :func:`add_fields` (and ``given`` values, which win).

    An option left unset (``None``) where the field has a default takes that default;
    lists become tuples.
    """
    opts = opts or {}
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in skip or field.name in given or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        opt = opts.get(field.name, Opt())
        if opt.convert is not None:
            value = opt.convert(value)
        if value is None and _default(field) is not dataclasses.MISSING:
            continue
        kwargs[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs, **given)
