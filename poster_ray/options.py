"""Command-line options generated from the settings dataclasses (config.py).

Every field becomes one flag, `--field-name`, its type from the annotation (JSON for
dicts and lists, `--x/--no-x` for booleans), its help and choices from the field's
metadata. An option left out sets nothing, so what a command line gave is known apart
from the defaults, which stay in the dataclass (or a pipeline profile). Each value is
kept under its class's name in the parsed arguments, so nothing is routed by a field
name alone; two classes that share a field name on one command are refused by argparse
as conflicting flags when the parser is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def flag_of(field: dataclasses.Field) -> str:
    """A field's command-line flag: its name, so that flag and field never drift apart."""
    return f"--{field.name.replace('_', '-')}"


def value_type(annotation: Any) -> Any:
    """The type a flag's text converts to: the annotation, without its `| None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return typing.get_origin(annotation) or annotation


def json_of(kind: type):
    """A flag's converter from JSON text to a `kind` (dict or list)."""

    def convert(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"not a JSON {'object' if kind is dict else 'list'}")
        return value

    return convert


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@dataclass(frozen=True)
class SettingsOptions:
    """The flags of some fields of one settings class, added to a parser; reads back
    what a command line gave for them."""

    settings: type
    names: tuple[str, ...]

    @classmethod
    def add(
        cls,
        parser: argparse.ArgumentParser,
        settings: type,
        only: Iterable[str] | None = None,
        show_defaults: bool = True,
    ) -> SettingsOptions:
        """Add a flag for each field of `settings` (those in `only`, if given).
        `show_defaults=False` when something else (a profile) fills what is left out."""
        fields = [
            field for field in dataclasses.fields(settings) if only is None or field.name in only
        ]
        hints = typing.get_type_hints(settings)
        for field in fields:
            parser.add_argument(
                flag_of(field),
                dest=f"{settings.__name__}.{field.name}",
                default=argparse.SUPPRESS,
                help=help_text(field, show_defaults),
                **conversion(hints[field.name], field.metadata, field.name),
            )
        return cls(settings, tuple(field.name for field in fields))

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields the command line set."""
        values = vars(args)
        prefix = f"{self.settings.__name__}."
        return {name: values[prefix + name] for name in self.names if prefix + name in values}

    def build(self, args: argparse.Namespace, base: Any = None) -> Any:
        """`base` (default: the class's defaults) with what the command line set."""
        return dataclasses.replace(base or self.settings(), **self.given(args))


def conversion(annotation: Any, metadata: Any, name: str) -> dict[str, Any]:
    """argparse's `type`/`action`, and `choices` or a metavar, for field `name` of type
    `annotation` (its range, if the field has one, checked as the flag is read)."""
    kind = value_type(annotation)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (dict, list):
        return {"type": json_of(kind), "metavar": "JSON"}
    if metadata.get("choices"):
        return {"type": kind, "choices": metadata["choices"]}
    minimum, above = metadata.get("minimum"), metadata.get("above")
    if minimum is not None or above is not None:
        return {"type": number_in_range(kind, minimum, above), "metavar": name.upper()}
    return {"type": kind, "metavar": name.upper()}


NUMBER_NAMES = {int: "an integer", float: "a number"}


def number_in_range(kind: type, minimum: float | None, above: float | None):
    """A flag's converter to a `kind` number at least `minimum` (or greater than `above`)."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {NUMBER_NAMES[kind]}: {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be greater than {above:g}, got {text}")
        return value

    return convert


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the flag and the problem),
    exit status 2; `--help` still shows the usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def help_text(field: dataclasses.Field, show_defaults: bool) -> str:
    default = default_of(field)
    if not show_defaults or default is None or default is False or default in ([], {}):
        return field.metadata["help"]
    return f"{field.metadata['help']} (default {default})"
