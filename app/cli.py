"""The server's command line, generated from the Settings fields: one flag per setting, nothing listed twice."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic.fields import FieldInfo

from app import __version__
from app.settings import Settings

EXAMPLES = """\
examples:
  python -m app                                   serve models/default on 0.0.0.0:8000
  python -m app --model-dir runs/my-bundle --port 9000 --intra-op-threads 4
  QA_API_KEY=secret python -m app --metrics-auth  bearer token on the QA API and /metrics
  python -m app --check                           verify settings and the bundle, then exit

Precedence: a flag beats its QA_* environment variable, which beats the default.
Exit codes: 0 ok, 2 invalid settings or flags, 3 a bundle that fails verification."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(field: FieldInfo) -> str:
    if field.default is None:
        return "unset"
    return str(field.default)


def _add(parser: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    env = f"QA_{name.upper()}"
    help_text = f"{field.description} [env {env}; default: {_default(field)}]".replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    tp = field.annotation
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None: the flag sets X
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is Literal:
        kwargs["choices"] = list(args)
        kwargs["metavar"] = "{" + ",".join(map(str, args)) + "}"
    else:
        # pydantic converts and validates the string, with the same messages as for the env var
        kwargs["metavar"] = getattr(tp, "__name__", "VALUE").upper().replace("SECRETSTR", "SECRET")
    parser.add_argument(_flag(name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve extractive question answering (top-k answer spans of a context) over HTTP.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qa-service {__version__}")
    parser.add_argument(
        "--check", action="store_true", help="verify the settings and the model bundle, print a summary, and exit"
    )
    group = parser.add_argument_group("settings (each is also a QA_* environment variable)")
    for name, field in Settings.model_fields.items():
        _add(group, name, field)  # type: ignore[arg-type]
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The parsed namespace, and the settings given as flags (only those: the rest come from env or defaults)."""
    ns = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(ns).items() if k in Settings.model_fields}
    return ns, flags
