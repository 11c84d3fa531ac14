"""The committed contract artifacts load through mcpz.contracts, as the library and registry load them."""

from __future__ import annotations

import pytest

from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact


def test_the_settlement_artifact_has_its_interface_and_settings() -> None:
    artifact = load_artifact(SETTLEMENT)
    # solc's CBOR metadata trailer names the compiler: "solc" 0.8.28 (0x00081c).
    assert artifact.bytecode.startswith("0x") and artifact.bytecode.endswith("64736f6c634300081c0033")
    assert artifact.compiler.startswith("solc-js 0.8.28+")
    names = {e["name"] for e in artifact.abi if e.get("type") in ("function", "event", "error")}
    assert {
        "deposit", "depositWithPermit", "commitBatch", "claim", "claimMany", "pushPayouts", "setPushOptIn",
        "withdraw", "pause", "unpause", "unallocated", "verifyLeaf", "Deposited", "BatchCommitted", "Claimed",
        "Withdrawn", "InsufficientUnallocated", "AlreadyClaimed", "BatchExists",
    } <= names  # fmt: skip


def test_the_test_token_has_six_decimals_permit_and_mint() -> None:
    names = {e.get("name") for e in load_artifact(TEST_TOKEN).abi}
    assert {"decimals", "permit", "mint", "nonces", "DOMAIN_SEPARATOR"} <= names


def test_an_unknown_artifact_says_how_to_build_it() -> None:
    with pytest.raises(FileNotFoundError, match=r"node contracts/compile\.mjs"):
        load_artifact("NoSuchContract")
