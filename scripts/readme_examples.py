"""Run the curl examples of README.md and docs/api.md against a real server; check or rewrite their outputs.

    python -m scripts.readme_examples            # check: start the server on models/default, run every curl
    python -m scripts.readme_examples --write    # the same, then write the real outputs into the files

What counts as an example: every `curl` command in a ```sh block (a command may span lines: open quotes and
trailing backslashes continue it; a pipe ends it). Its shown output, if any, is the ```json block right after that
sh block (it belongs to the block's last curl), or a comment after the command that is JSON by itself
(`curl -s localhost:8000/livez   # {"status": "alive", "detail": ""}`). To show a new output, add a ```json
block after the sh block, `{}` for a success or `{"error": {"code": "invalid_request"}}` for an error (the
status is read from it), and run --write.

Each request is sent with urllib (not the curl binary) to the server's own port: curl's method, path, headers
(-H) and body (-d, --data-raw, --json) are kept; `-d @file` is not supported, so every example stays
self-contained. The expected status is 200, or the status of the error code an output shows
(app/api/errors.py's ERROR_CODES). An output matches when it has the same keys and strings (request ids
excepted), the same integers (offsets, passage indices, windows) and floats within 0.05: int8 kernels differ
slightly between CPUs. --write rounds floats to 3 significant digits.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.api.errors import ERROR_CODES

REPO = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/api.md")
TOLERANCE = 0.05  # scores: int8 kernels differ slightly between CPUs
VOLATILE = frozenset({"request_id"})  # fresh on every request
WIDTH = 110  # written outputs wrap at about this many characters
# curl options the examples may use, and whether each takes a value
NO_VALUE = {"-s", "-S", "-i", "-f", "-v", "-L", "--silent", "--show-error", "--fail", "--include", "--location"}
DATA = {"-d", "--data", "--data-raw", "--data-binary", "--json"}
ENDS = {"|", "||", "&&", ";", ">", ">>", "&"}


@dataclass
class Output:
    """Where an example's shown output sits in its file: a ```json block's lines, or the rest of a comment line."""

    value: Any
    first: int  # 0-based index of the first line
    last: int  # index after the last line (a comment: first + 1)
    column: int | None = None  # a comment: where its JSON starts on the line


@dataclass
class Example:
    file: str
    line: int  # 1-based line of the `curl`
    command: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    output: Output | None = None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def status(self) -> int:
        """The status the shown output implies: an error body's code's, else 200."""
        value = self.output.value if self.output else None
        if isinstance(value, dict) and isinstance(value.get("error"), dict):
            return ERROR_CODES[value["error"]["code"]][0]
        return 200


def _scan(text: str) -> tuple[str, list[tuple[int, int, str]], bool]:
    """(the text without its shell comments, the comments as (line, column, text), whether a quote is still open)."""
    code: list[str] = []
    comments: list[tuple[int, int, str]] = []
    quote = ""
    i, line, column = 0, 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(text):
                code.append(c)
                i += 1
                c = text[i]
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            comments.append((line, column, text[i + 1 : end]))
            column += end - i
            i = end
            continue
        code.append(c)
        if c == "\n":
            line, column = line + 1, 0
        else:
            column += 1
        i += 1
    return "".join(code), comments, bool(quote)


def _request(tokens: list[str]) -> tuple[str, str, dict[str, str], bytes | None]:
    """curl's arguments -> (method, path with query, headers, body)."""
    method, url, headers, body = "", "", {}, None
    it = iter(tokens[1:])
    for tok in it:
        if tok in ENDS:
            break
        if tok in NO_VALUE or (tok.startswith("-") and not tok.startswith("--") and set(tok[1:]) <= set("sSifvL")):
            continue
        if tok in ("-X", "--request"):
            method = next(it).upper()
        elif tok in ("-I", "--head"):
            method = "HEAD"
        elif tok in ("-H", "--header"):
            name, _, value = next(it).partition(":")
            headers[name.strip().lower()] = value.strip()
        elif tok in DATA:
            if body is not None:
                raise ValueError("more than one body option")
            value = next(it)
            if value.startswith("@"):
                raise ValueError("-d @file: put the body in the command, so the example stays self-contained")
            body = value.encode("utf-8")
            if tok == "--json":
                headers.setdefault("content-type", "application/json")
                headers.setdefault("accept", "application/json")
        elif tok.startswith("-"):
            raise ValueError(f"curl option {tok} is not supported by scripts/readme_examples.py")
        elif url:
            raise ValueError(f"two URLs: {url} and {tok}")
        else:
            url = tok
    if not url:
        raise ValueError("no URL")
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return method or ("POST" if body is not None else "GET"), path, headers, body


def _json_comment(comment: str) -> Any:
    text = comment.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse(text: str, file: str = "README.md") -> list[Example]:
    """Every curl example of a Markdown text, with its shown output."""
    lines = text.split("\n")
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() not in ("```sh", "```bash", "```shell"):
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        block: list[Example] = []
        j = start
        while j < end:
            code, _, _ = _scan(lines[j])
            if not code.lstrip().startswith("curl "):
                j += 1
                continue
            k = j
            while True:  # extend over open quotes and trailing backslashes
                code, comments, open_quote = _scan("\n".join(lines[j : k + 1]))
                if not open_quote and not code.rstrip().endswith("\\"):
                    break
                k += 1
                if k >= end:
                    raise ValueError(f"{file}:{j + 1}: the curl command never ends")
            command = "\n".join(lines[j : k + 1])
            try:
                method, path, headers, body = _request(shlex.split(code.replace("\\\n", " ")))
            except ValueError as e:
                raise ValueError(f"{file}:{j + 1}: {e}") from None
            example = Example(file, j + 1, command, method, path, headers, body)
            for line, column, comment in comments:
                value = _json_comment(comment)
                if value is not None:
                    col = column + 1 + len(comment) - len(comment.lstrip())
                    example.output = Output(value, j + line, j + line + 1, col)
            block.append(example)
            j = k + 1
        # a ```json block right after the sh block (blank lines between at most) is its last curl's output
        n = end + 1
        while n < len(lines) and not lines[n].strip():
            n += 1
        if block and n < len(lines) and lines[n].strip() == "```json":
            close = n + 1
            while close < len(lines) and lines[close].strip() != "```":
                close += 1
            raw = "\n".join(lines[n + 1 : close])
            try:
                value = json.loads(raw)
            except ValueError as e:
                raise ValueError(f"{file}:{n + 2}: the output block is not JSON: {e}") from None
            block[-1].output = Output(value, n + 1, close)
        examples.extend(block)
        i = end + 1
    return examples


def parse_files(root: Path = REPO, files: tuple[str, ...] = FILES) -> list[Example]:
    return [e for f in files for e in parse((root / f).read_text(encoding="utf-8"), f)]


def send(base: str, example: Example, timeout: float = 60) -> tuple[int, Any]:
    """The example's request against `base`: (status, decoded JSON body, or the text if it is not JSON)."""
    url = base + example.path
    req = urllib.request.Request(url, data=example.body, headers=example.headers, method=example.method)  # noqa: S310 - our own local server
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - our own local server
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def compare(expected: Any, actual: Any, where: str = "") -> list[str]:
    """How `actual` differs from a shown output: keys, strings and integers exactly, floats within TOLERANCE."""
    at = where or "the output"
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{at}: keys {sorted(expected)} shown, {sorted(actual)} returned"]
        return [
            d
            for k in expected
            if k not in VOLATILE
            for d in compare(expected[k], actual[k], f"{where}.{k}" if where else k)
        ]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{at}: {len(expected)} items shown, {len(actual)} returned"]
        return [
            d for n, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in compare(e, a, f"{where}[{n}]")
        ]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        if isinstance(actual, bool):
            return [f"{at}: {expected!r} shown, {actual!r} returned"]
        if isinstance(expected, int) and isinstance(actual, int):
            return [] if expected == actual else [f"{at}: {expected} shown, {actual} returned"]
        return [] if abs(expected - actual) <= TOLERANCE else [f"{at}: {expected} shown, {actual} returned"]
    if expected != actual or type(expected) is not type(actual):
        return [f"{at}: {expected!r} shown, {actual!r} returned"]
    return []


def check(base: str, example: Example) -> tuple[str | None, list[str], Any]:
    """Run one example: (a wrong status, or None; how the body differs from the shown output; the body)."""
    status, body = send(base, example)
    if status != example.status:
        return f"{example.id}: status {status}, expected {example.status}: {str(body)[:300]}", [], body
    diffs = compare(example.output.value, body) if example.output is not None else []
    return None, [f"{example.id}: {d}" for d in diffs], body


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.3g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def _flat(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def render(value: Any, column: int = 0) -> str:
    """JSON that reads like the response: one line while it fits, else one item a line, short items packed."""
    flat = _flat(value)
    if column + len(flat) <= WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    pairs = [(_flat(k) + ": ", v) for k, v in value.items()] if isinstance(value, dict) else [("", v) for v in value]
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    inner = column + 1
    lines: list[str] = []
    current = ""
    for prefix, item in pairs:
        piece = prefix + render(item, inner + len(prefix))
        if current and "\n" not in piece and inner + len(current) + 2 + len(piece) <= WIDTH:
            current += ", " + piece
            continue
        if current:
            lines.append(current)
        current = piece
    lines.append(current)
    return opening + (",\n" + " " * inner).join(lines) + closing


def _keep_volatile(shown: Any, value: Any) -> Any:
    """`value` with the request ids it shares with `shown` kept as shown, so a rewrite changes only what changed."""
    if isinstance(shown, dict) and isinstance(value, dict):
        return {
            k: shown[k] if k in VOLATILE and k in shown else _keep_volatile(shown.get(k), v) for k, v in value.items()
        }
    if isinstance(shown, list) and isinstance(value, list) and len(shown) == len(value):
        return [_keep_volatile(s, v) for s, v in zip(shown, value, strict=True)]
    return value


def rewrite(text: str, outputs: list[tuple[Output, Any]]) -> str:
    """`text` with each shown output replaced by the value returned."""
    lines = text.split("\n")
    for out, returned in sorted(outputs, key=lambda o: o[0].first, reverse=True):
        value = _keep_volatile(out.value, _round(returned))
        if out.column is None:
            lines[out.first : out.last] = render(value).split("\n")
        else:
            lines[out.first] = lines[out.first][: out.column] + _flat(value)
    return "\n".join(lines)


def run(base: str, root: Path = REPO, files: tuple[str, ...] = FILES, write: bool = False) -> list[str]:
    """Check every example of `files` against the server at `base`; with `write`, rewrite their outputs (a file
    is written only when every status is the one expected: a failing request never becomes a shown output)."""
    problems: list[str] = []
    for name in files:
        path = root / name
        text = path.read_text(encoding="utf-8")
        outputs: list[tuple[Output, Any]] = []
        wrong_status = False
        for example in parse(text, name):
            bad_status, diffs, body = check(base, example)
            found = [bad_status] if bad_status else ([] if write else diffs)
            wrong_status |= bad_status is not None
            if example.output is not None:
                outputs.append((example.output, body))
            problems.extend(found)
            print(f"{example.id} {example.method} {example.path}: {'ok' if not found else 'DIFFERS'}", file=sys.stderr)
        if write and not wrong_status:
            new = rewrite(text, outputs)
            if new != text:
                path.write_text(new, encoding="utf-8")
                print(f"wrote {name}", file=sys.stderr)
    return problems


def main(argv: list[str] | None = None) -> int:
    from tests.support.server import running_server  # noqa: PLC0415 - only the command starts a server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write the real outputs into the files")
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "default", help="the bundle to serve")
    ap.add_argument("files", nargs="*", default=list(FILES), help=f"Markdown files (default: {' '.join(FILES)})")
    args = ap.parse_args(argv)
    env = {"QA_MODEL_DIR": str(args.model_dir), "QA_LOG_LEVEL": "warning"}
    with running_server(env) as server:
        problems = run(server.base, REPO, tuple(args.files), args.write)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
