"""The compiled settlement contracts (contracts/build/, committed and shipped in the wheel).

`node contracts/compile.mjs` writes them with the solc pinned in contracts/package.json; CI recompiles and
fails if the bytes differ, so what is loaded here is what the Solidity source says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcpz.bundled import bundled_path

SETTLEMENT = "McpzSettlement"
TEST_TOKEN = "TestToken"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str


def load_artifact(name: str) -> Artifact:
    path = bundled_path("contracts") / "build" / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no compiled contract {name} at {path}; run `node contracts/compile.mjs` in a source checkout"
        ) from None
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"], compiler=data["compiler"])
