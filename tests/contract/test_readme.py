"""The README and docs/ are the user's manual: their length, settings, links, examples and the scores' meaning
must match the code. (The curl examples themselves run in tests/integration/test_readme_examples.py.)"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from app.api.schemas import SCORE_RULE
from app.main import create_app
from app.settings import Settings
from scripts import readme_examples, settings_table
from tests.support.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
MANUAL = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def normalized(text: str) -> str:
    """Text without HTML tags, entities, Markdown emphasis or code marks, and with single spaces."""
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return " ".join(re.sub(r"[`*]", "", text).split())


def test_readme_is_short():
    lines = README.count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {MAX_README_LINES})"


def test_two_commands_and_ci_runs_the_test_command():
    assert "make serve" in README and "make test" in README and "make test-fast" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (REPO / "Makefile").read_text()
    assert "-m app" in makefile  # make serve runs the same start command as the image
    assert re.search(r"^test-fast:", makefile, re.M)


def test_configuration_page_is_generated_from_settings():
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == settings_table.render(), (
        "docs/configuration.md is stale: python -m scripts.settings_table --write docs/configuration.md"
    )
    for name in Settings.model_fields:
        assert f"`QA_{name.upper()}`" in page


def readme_settings() -> list[tuple[str, str]]:
    """(variable, default) of the README's short settings table."""
    start = README.index("| Variable | Default |")
    table = README[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [(m.group(1), m.group(2)) for line in table if (m := re.match(r"^\| `QA_(\w+)` \| `([^`]*)` \|", line))]


def test_readme_settings_are_real_settings_with_their_defaults():
    rows = readme_settings()
    assert 8 <= len(rows) <= 12, rows
    for var, default in rows:
        name = var.lower()
        assert name in Settings.model_fields, f"QA_{var} in the README is not a setting"
        assert default == settings_table.default(name), f"QA_{var}: the README says {default!r}"


def test_no_unfilled_placeholders():
    for path in MANUAL:
        assert not re.findall(r"__[A-Z_]+__", path.read_text(encoding="utf-8")), path.name
    # an example's shown output still empty: run python -m scripts.readme_examples --write
    for example in readme_examples.parse_files():
        if example.output is not None:
            assert example.output.value not in ({}, []), f"{example.id}: output not filled in"
            error = example.output.value.get("error") if isinstance(example.output.value, dict) else None
            assert not (isinstance(error, dict) and set(error) == {"code"}), f"{example.id}: output not filled in"


def test_readme_shows_answer_and_read_with_their_outputs():
    examples = readme_examples.parse((REPO / "README.md").read_text(encoding="utf-8"))
    shown = {e.path for e in examples if e.output is not None}
    assert {"/answer", "/read"} <= shown
    read = next(e for e in examples if e.path == "/read")
    body = json.loads(read.body or b"{}")
    assert body.get("return_context") is True and any(isinstance(p, dict) and "id" in p for p in body["passages"])
    options = ("top_k", "max_answer_length", "allow_no_answer", "min_score", "allow_overlap", "align_to_words")
    for option in options:
        assert f"`{option}`" in README, option


def _anchors(path: Path) -> set[str]:
    """GitHub's ids for a Markdown file's headings."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6} (.+)$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower().replace("`", ""))
            out.add(slug.replace(" ", "-"))
    return out


def test_relative_links_exist():
    broken = []
    for path in MANUAL:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_scores_mean_the_same_in_readme_api_docs_openapi_and_demo_page():
    rule = normalized(SCORE_RULE)
    for path in (REPO / "README.md", REPO / "docs" / "api.md", REPO / "app" / "static" / "index.html"):
        assert rule in normalized(path.read_text(encoding="utf-8")), f"{path.name} does not state SCORE_RULE"
    schemas = create_app(Settings(), lambda s, m: FakeEngine()).openapi()["components"]["schemas"]
    for model in ("AnswerOut", "ReadAnswerOut"):
        assert rule in normalized(schemas[model]["properties"]["score"]["description"]), model


def test_default_model_numbers_come_from_its_manifest():
    manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text(encoding="utf-8"))
    section = README[README.index("## The default model") :].split("\n## ", 1)[0]
    [korquad] = [s for s in manifest["scores"] if s["metric"] == "korquad"]
    assert f"EM {korquad['exact_match']:.2f} / F1 {korquad['f1']:.2f}" in section, "update the README from the manifest"
    test = manifest.get("calibration_test")
    if test:  # the shipped map's calibration error on the test split, and the raw share's
        assert f"{test['ece_after']:.3f}" in section and f"{test['ece_before']:.3f}" in section


def test_the_example_checker_can_fail():
    """The checker of tests/integration/test_readme_examples.py, on outputs it must reject and accept."""
    shown = {"answers": [{"text": "1889", "score": 0.97, "start": 125, "end": 129}], "windows": 1}
    same = {"answers": [{"text": "1889", "score": 0.94, "start": 125, "end": 129}], "windows": 1}
    assert readme_examples.compare(shown, same) == []
    bad = [
        {"answers": [{"text": "1889", "score": 0.90, "start": 125, "end": 129}], "windows": 1},
        {"answers": [{"text": "1889년", "score": 0.97, "start": 125, "end": 130}], "windows": 1},
        {"answers": [{"text": "1889", "score": 0.97, "start": 125, "end": 129, "id": None}], "windows": 1},
        {"answers": [], "windows": 1},
        {"answers": [{"text": "1889", "score": 0.97, "start": 125, "end": 129}], "windows": 2},
    ]
    for actual in bad:
        assert readme_examples.compare(shown, actual), actual
    text = (
        '```sh\ncurl -s localhost:8000/livez   # {"status": "alive"}\n'
        "curl -s localhost:8000/read -H 'content-type: application/json' -d '{\n  \"question\": \"q\"}' | jq .\n"
        '```\n\n```json\n{"error": {"code": "invalid_request"}}\n```\n'
    )
    livez, read = readme_examples.parse(text)
    assert (livez.method, livez.path, livez.output.value, livez.status) == ("GET", "/livez", {"status": "alive"}, 200)
    assert (read.method, read.path, read.headers) == ("POST", "/read", {"content-type": "application/json"})
    assert json.loads(read.body or b"") == {"question": "q"} and read.status == 422
