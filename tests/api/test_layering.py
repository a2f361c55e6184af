"""The HTTP layer sees only the engine interface: importing it must not load onnxruntime or tokenizers."""

from __future__ import annotations

import subprocess
import sys


def test_http_layer_does_not_import_runtime_or_tokenizer():
    code = (
        "import sys; import app.main, app.api.routes, app.api.schemas, app.api.errors, app.api.middleware; "
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
