"""Print the README's configuration table from app.settings.Settings (the README test checks they agree)."""

from __future__ import annotations

from app.settings import Settings


def rows() -> list[str]:
    out = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if name == "model_dir":
            default = "models/default (in the repository)"
        out.append(f"| `QA_{name.upper()}` | `{default}` | {field.description or ''} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
