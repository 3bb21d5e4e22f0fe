"""`--help` that reads like a well-kept command line's: values named for what they take (`LAYOUT.yaml`,
`PATH`, `N`), every command's whole one-line description in the list, and usage lines without Typer's type
placeholders (`{layouts}`, `<list[Path]>`, `<int range>`).

Commands keep their examples in their docstrings, in a paragraph that starts with `\\b` (kept as written).
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.core import TyperCommand

TYPE_METAVARS = {"int": "N", "int range": "N", "float": "NUMBER", "float range": "NUMBER", "str": "TEXT",
                 "path": "PATH", "int,int": "W H"}  # Typer's type labels -> metavars, for options without one


def _metavar(param: Any, ctx: Any) -> str:
    """The option's own metavar, else one from its type (`N`, `PATH`, `a|b|c` for choices)."""
    if param.metavar is not None:
        return param.metavar
    label = param.display_type(ctx).strip("<>")
    label = label.removeprefix("list[").removesuffix("]") if label.startswith("list[") else label
    return TYPE_METAVARS.get(label, label)


def _argument_name(param: Any) -> str:
    name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


class EligenCommand(TyperCommand):
    """A Typer command whose usage line and help name arguments and option values plainly."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_argument_name(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        arguments = [(_argument_name(p), p.help or "") for p in params if p.param_type_name == "argument"]
        options = []
        for param in params:
            if param.param_type_name != "option" or param.hidden:
                continue
            if not (param.is_flag or param.count):
                param.metavar = _metavar(param, ctx)
            options.append(param.get_help_record(ctx))
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _first_paragraph(callback: Any) -> str | None:
    doc = inspect.getdoc(callback) if callback is not None else None
    return " ".join(doc.split("\n\n")[0].split()) if doc else None


def tidy_help(app: typer.Typer) -> None:
    """Give every command of `app` (and of its sub-apps) the plain help format and, in command lists, its whole
    first docstring paragraph instead of a cut-off one."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = EligenCommand
        info.short_help = info.short_help or _first_paragraph(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy_help(group.typer_instance)
