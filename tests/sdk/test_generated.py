"""What the SDKs derive from the registry's OpenAPI document is current: sdk/openapi.json (which the
Go SDK's route test reads) and sdk/js/src/schema.ts (openapi-typescript's output) equal a fresh
`sdk/generate.py`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import missing

ROOT = Path(__file__).resolve().parents[2]


def test_the_generated_openapi_document_and_typescript_types_are_current() -> None:
    if not (ROOT / "sdk" / "js" / "node_modules" / ".bin" / "openapi-typescript").exists():
        missing("sdk/js's npm packages (`npm ci --prefix sdk/js`)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "sdk" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
