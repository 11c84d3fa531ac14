"""`mcpz.Client`, the Python SDK, against a real registry: the example of docs/python-sdk.md runs
as written (with a real node), and a push from Python is signed exactly as `mcpz push` signs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveRegistry
from gitutil import api
from test_signed_releases import OWNER, STRANGER, sign_in

import mcpz
from mcpz.client.models import SessionToken, WhoAmI
from mcpz.errors import AuthError
from mcpz.keys.wallet import NoPassphrase, Wallet
from mcpz.repo.repository import AgentRepo

ROOT = Path(__file__).resolve().parents[2]
AGENT = "acme/weather"
PASSPHRASE = "Tidal-Copper-Owl-27"


def doc_example() -> str:
    """The one ```python block of docs/python-sdk.md."""
    text = (ROOT / "docs" / "python-sdk.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/python-sdk.md should hold exactly one runnable example"
    return str(blocks[0])


@pytest.mark.slow
def test_the_documented_example_runs_against_a_registry_and_a_node(mesh: object) -> None:
    reg = mesh.reg  # type: ignore[attr-defined]
    token = reg.account("acme", "read,publish,deploy,call,admin")
    mesh.node("n1")  # type: ignore[attr-defined]
    mesh.connected(1)  # type: ignore[attr-defined]
    env = {"MCPZ_REGISTRY": reg.url, "MCPZ_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-c", doc_example()],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "logged in as acme"
    assert "published acme/weather 0.1.0 signed by nobody" in lines  # no wallet in this test's home
    assert "latest: 0.1.0 ['0.1.0']" in lines
    assert "locked 0 agents" in lines
    assert "deployment acme/weather ready 1/1" in lines
    assert any(line.startswith("tools: ") and "add" in line for line in lines), lines
    assert "2 + 3 = 5" in lines
    assert token not in done.stdout + done.stderr


def agent(tmp_path: Path) -> Path:
    folder = tmp_path / "weather"
    mcpz.init_agent(folder, AGENT)
    return folder


def bump(folder: Path, version: str) -> None:
    manifest = folder / "mcpz.toml"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1))
    with AgentRepo.open(folder) as repo:
        repo.commit(f"version {version}")


@pytest.mark.slow
def test_a_push_from_python_is_signed_as_mcpz_push_signs_it(
    sqlite_registry: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = sqlite_registry
    owner = sign_in(reg, OWNER)
    assert api(reg, "/v1/namespaces", owner, method="POST", json={"name": "acme"}).status_code == 201
    folder = agent(tmp_path)

    # The user's wallet, unlocked from the environment as the CLI does, signs by default.
    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    Wallet.import_key(OWNER.key.hex(), PASSPHRASE)
    client = mcpz.Client(reg.url, token=owner)
    pushed = client.push(folder)
    assert (pushed.published, pushed.version, pushed.signer) == (True, "0.1.0", OWNER.address)
    release = client.release(AGENT, "0.1.0")
    assert release.signer == OWNER.address
    assert [s.signer for s in release.signatures] == [OWNER.address]
    assert release.commit == pushed.commit

    # `mcpz.push` is the same workflow, with the key given by the caller.
    bump(folder, "0.2.0")
    second = mcpz.push(folder, reg.url, owner, signer=lambda: OWNER)
    assert (second.version, second.signer) == ("0.2.0", OWNER.address)
    assert client.release(AGENT, "0.2.0").signer == OWNER.address

    # A wallet that cannot be unlocked stops the push before anything is sent.
    monkeypatch.delenv("MCPZ_WALLET_PASSPHRASE")
    bump(folder, "0.3.0")
    with pytest.raises(NoPassphrase):
        client.push(folder)
    assert [r.version for r in client.info(AGENT).versions] == ["0.1.0", "0.2.0"]

    # sign=False publishes unsigned, as --no-sign does; a stranger's key is refused by the registry.
    unsigned = client.push(folder, sign=False)
    assert (unsigned.version, unsigned.signer) == ("0.3.0", None)
    assert client.release(AGENT, "0.3.0").signatures == []
    bump(folder, "0.4.0")
    with pytest.raises(AuthError, match="signing it failed"):
        mcpz.Client(reg.url, token=owner, signer=lambda: STRANGER).push(folder)
    assert client.release(AGENT, "0.4.0").signatures == []  # published, unsigned: `mcpz sign` later


@pytest.mark.slow
def test_login_whoami_and_typed_answers(sqlite_registry: LiveRegistry) -> None:
    reg = sqlite_registry
    client = mcpz.Client(reg.url, signer=None)
    session = client.login(wallet=OWNER)
    assert isinstance(session, SessionToken)
    who = client.whoami()
    assert (who.account, who.namespaces) == (OWNER.address.lower(), [OWNER.address.lower()])
    assert who.to_dict()["account"] == who.account  # the JSON as served, for --json
    token = reg.account("acme")
    checked = mcpz.Client(reg.url).login(token)
    assert isinstance(checked, WhoAmI) and checked.account == "acme"
    assert token not in repr(mcpz.Client(reg.url, token=token))
    with pytest.raises(AuthError):
        mcpz.Client(reg.url, token="mcpz_" + "0" * 40).whoami()
