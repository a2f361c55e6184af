"""The server's command line, generated from the Settings fields: one flag per setting, nothing listed twice."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, NoReturn

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from app import __version__
from app.settings import Settings, env_name

# The exit codes of `python -m app`, documented in --help and docs/reliability.md.
EXIT_OK = 0
EXIT_USAGE = 2  # invalid flags, settings or QA_* environment
EXIT_BUNDLE = 3  # a bundle that cannot be served (also uvicorn's own code for a failed start-up)
EXIT_BIND = 4  # cannot listen on host:port

EXAMPLES = """\
examples:
  python -m app                                   serve models/default on 0.0.0.0:8000
  python -m app --model-dir runs/my-bundle --port 9000 --intra-op-threads 4
  QA_API_KEY=secret python -m app --metrics-auth  bearer token on the QA API and /metrics
  python -m app --check                           check settings, bundle, runtime and port, then exit

Precedence: a flag beats its QA_* environment variable, which beats the default. A QA_* variable that is
no setting only warns, unless it is a near miss of one (QA_API_KYE): that stops start-up.

Start-up: bind host:port, verify the bundle, load and warm up the model, then listen: a server that
listens is ready, and one whose model cannot run never listens.

exit codes:
  0  served, then shut down cleanly (SIGTERM drains in-flight requests first); or --check passed
  1  an unexpected error (a bug: the traceback is printed)
  2  invalid flags, settings or QA_* environment variables (one line per problem)
  3  a model bundle that cannot be served: it fails verification, or cannot be loaded or warmed up
  4  cannot listen on host:port: the port is in use, or the address is not this host's"""


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage first: with one flag per setting, that buries the one line that matters
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m app",
        description="Serve extractive question answering (top-k answer spans of a context) over HTTP.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qa-service {__version__}")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the settings, verify the bundle, load the model (the runtime and device it would use) and "
        "try the port; print a summary, and exit with the code serving would have",
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


def describe(name: str) -> str:
    """How a user sets a setting: its flag and its environment variable."""
    return f"{_flag(name)} / {env_name(name)}"


def settings_errors(error: ValidationError) -> list[str]:
    """One line per problem, naming the setting (flag and environment variable) and the reason; no library URLs,
    and never a secret's value."""
    lines = []
    for e in error.errors(include_url=False):
        reason = str(e.get("msg", "")).removeprefix("Value error, ")
        loc = e.get("loc") or ()
        name = loc[0] if loc else None
        if not isinstance(name, str) or name not in Settings.model_fields:
            lines.append(f"invalid settings: {reason}")
            continue
        field = Settings.model_fields[name]
        value = e.get("input")
        secret = SecretStr in typing.get_args(field.annotation) or field.annotation is SecretStr
        got = "" if secret or isinstance(value, dict) else f" (got {_clip(repr(value))})"
        hint = ""
        if isinstance(value, str) and value.startswith("tcp://"):
            hint = "; a Kubernetes service link? set enableServiceLinks: false in the pod spec"
        lines.append(f"invalid setting {describe(name)}: {reason}{got}{hint}")
    return lines


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fail(lines: Sequence[str], code: int) -> int:
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return code
