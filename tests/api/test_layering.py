"""The HTTP layer sees only the engine interface: importing it must not load onnxruntime or tokenizers.

app.main is the composition root: it builds the real engine, so it alone of app/ may import it."""

from __future__ import annotations

import subprocess
import sys


def test_http_layer_does_not_import_runtime_or_tokenizer():
    code = (
        "import sys; import app.api.routes, app.api.schemas, app.api.errors, app.api.middleware, app.api.auth; "
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
