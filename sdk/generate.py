"""Regenerate what the SDKs derive from the registry's OpenAPI document.

    .venv/bin/python sdk/generate.py           # write sdk/openapi.json and sdk/js/src/schema.ts
    .venv/bin/python sdk/generate.py --check   # exit 1 when either is stale (tests/sdk runs this)

sdk/openapi.json is the document as the registry app builds it (keys sorted, so diffs stay small);
the Go SDK's route test reads it, and openapi-typescript (sdk/js's node_modules) turns it into the
TypeScript types.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SDK = Path(__file__).resolve().parent
DOCUMENT = SDK / "openapi.json"
SCHEMA = SDK / "js" / "src" / "schema.ts"
GENERATOR = SDK / "js" / "node_modules" / ".bin" / "openapi-typescript"


def openapi_text() -> str:
    """The registry's OpenAPI document as JSON text, built in-process from a throwaway data folder."""
    from registry_server.app import create_app
    from registry_server.settings import RegistrySettings

    with tempfile.TemporaryDirectory() as data:
        app = create_app(RegistrySettings.load(data_dir=Path(data), env={}))
        return json.dumps(app.api.openapi(), indent=1, sort_keys=True) + "\n"


def typescript(document: str) -> str:
    """What openapi-typescript makes of `document`."""
    if not GENERATOR.exists():
        raise SystemExit(f"error: {GENERATOR} is missing: run `npm ci --prefix sdk/js`")
    with tempfile.TemporaryDirectory() as work:
        source, out = Path(work) / "openapi.json", Path(work) / "schema.ts"
        source.write_text(document, encoding="utf-8")
        subprocess.run([str(GENERATOR), str(source), "-o", str(out)], check=True, capture_output=True)
        return out.read_text(encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale")
    check = parser.parse_args().check
    document = openapi_text()
    stale = []
    for path, text in ((DOCUMENT, document), (SCHEMA, typescript(document))):
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(SDK.parent))
        if not check:
            path.write_text(text, encoding="utf-8")
    if check and stale:
        names = ", ".join(str(p) for p in stale)
        print(f"error: {names} stale: run `.venv/bin/python sdk/generate.py`", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
