"""The wallet (an encrypted JSON keystore), where passphrases and tokens are kept, and what is never shown."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from eth_account import Account
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

from mcpz import credentials
from mcpz.errors import UsageError
from mcpz.keys import wallet

PASSPHRASE = "Plover-Quartz-Umbra-71"
KEY = "0x" + "5e" * 32


class DictKeyring(KeyringBackend):
    """An in-process keyring: the real `keyring` API over a dict.

    keyring picks its default backend among *all* backend classes it knows, this one included, so
    it is viable only while a test has installed it (else every later test would get it).
    """

    active = False

    @properties.classproperty
    def priority(cls) -> float:
        if not cls.active:
            raise RuntimeError("installed only by the dict_keyring fixture")
        return 1

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.items.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


@pytest.fixture(autouse=True)
def cheap_keystores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wallet.SCRYPT_N_ENV, "1024")


@pytest.fixture
def dict_keyring() -> Iterator[DictKeyring]:
    before = keyring.get_keyring()
    DictKeyring.active = True
    backend = DictKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(before)
        DictKeyring.active = False


@pytest.fixture
def no_keyring() -> Iterator[None]:
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the keystore ------------------------------------------------------------------------------


def test_create_writes_a_standard_private_keystore(isolated_env: Path) -> None:
    made = wallet.Wallet.create(PASSPHRASE)
    assert made.path == isolated_env / "data" / "wallet" / "keystore.json"
    assert mode(made.path) == 0o600 and mode(made.path.parent) == 0o700
    data = json.loads(made.path.read_text())
    assert data["version"] == 3 and data["crypto"]["kdf"] == "scrypt"
    # Any Ethereum tool can open it.
    key = Account.decrypt(data, PASSPHRASE)
    assert Account.from_key(key).address == made.address
    loaded = wallet.Wallet.load()
    assert loaded.address == made.address
    assert loaded.unlock(PASSPHRASE).address == made.address
    with pytest.raises(wallet.WrongPassphrase) as wrong:
        loaded.unlock("not it")
    assert "not it" not in str(wrong.value) and wrong.value.exit_code == 4
    with pytest.raises(wallet.WalletExists):
        wallet.Wallet.create(PASSPHRASE)
    assert [p.name for p in made.path.parent.iterdir()] == ["keystore.json"]  # no temp files left


def test_default_scrypt_cost_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(wallet.SCRYPT_N_ENV)
    assert wallet._scrypt_n(os.environ) == 2**18
    for bad in ("1000", "16", "lots"):
        with pytest.raises(UsageError):
            wallet._scrypt_n({wallet.SCRYPT_N_ENV: bad})


def test_import_a_key_or_a_keystore(tmp_path: Path) -> None:
    imported = wallet.Wallet.import_key(KEY, PASSPHRASE, path=tmp_path / "a.json")
    assert imported.address == Account.from_key(KEY).address
    with pytest.raises(UsageError) as bad:
        wallet.Wallet.import_key("0x1234", PASSPHRASE, path=tmp_path / "b.json")
    assert "1234" not in str(bad.value)

    other = Account.encrypt(bytes.fromhex(KEY[2:]), "keystore pass", iterations=1024)
    kept = wallet.Wallet.import_keystore(json.dumps(other), "keystore pass", path=tmp_path / "c.json")
    assert kept.address == imported.address and json.loads((tmp_path / "c.json").read_text()) == other
    with pytest.raises(wallet.WrongPassphrase):
        wallet.Wallet.import_keystore(json.dumps(other), "nope", path=tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()
    with pytest.raises(wallet.InvalidKeystore):
        wallet.Wallet.import_keystore('{"version": 3}', "x", path=tmp_path / "e.json")


def test_passphrase_comes_from_env_then_keyring_then_prompt(
    dict_keyring: DictKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = Account.from_key(KEY).address
    with pytest.raises(wallet.NoPassphrase):
        wallet.get_passphrase(address)
    assert wallet.get_passphrase(address, prompt=lambda: "typed") == "typed"
    assert wallet.remember_passphrase(address, "kept")
    assert dict_keyring.items == {("mcpz-wallet", address): "kept"}
    assert wallet.get_passphrase(address, prompt=lambda: "typed") == "kept"
    monkeypatch.setenv(wallet.PASSPHRASE_ENV, "from env")
    assert wallet.get_passphrase(address) == "from env"
    assert wallet.forget_passphrase(address) and not dict_keyring.items


def test_without_a_keyring_nothing_is_remembered(no_keyring: None) -> None:
    assert not wallet.remember_passphrase("0x" + "00" * 20, "x")
    with pytest.raises(wallet.NoPassphrase):
        wallet.get_passphrase("0x" + "00" * 20)


# --- the credential store ----------------------------------------------------------------------


def test_tokens_go_to_the_keyring_when_there_is_one(dict_keyring: DictKeyring, isolated_env: Path) -> None:
    where = credentials.store_token("http://r.example", "mcpz_secret_in_keyring")
    assert where == "keyring"
    assert dict_keyring.items == {("mcpz", "http://r.example"): "mcpz_secret_in_keyring"}
    assert not (isolated_env / "config" / credentials.FILE_NAME).exists()
    assert credentials.get_token("http://r.example") == "mcpz_secret_in_keyring"
    assert credentials.delete_token("http://r.example")
    assert credentials.get_token("http://r.example") is None


def test_the_file_fallback_is_0600(no_keyring: None) -> None:
    warnings: list[str] = []
    path = Path(credentials.store_token("http://r.example", "mcpz_in_a_file", warn=warnings.append))
    assert mode(path) == 0o600
    assert len(warnings) == 1 and "mcpz_in_a_file" not in warnings[0]
    assert credentials.get_token("http://r.example") == "mcpz_in_a_file"


SECRET_SERVICE_SCRIPT = textwrap.dedent(
    """
    import keyring
    from keyring.backends import SecretService
    from mcpz import credentials
    backend = keyring.get_keyring()
    assert isinstance(backend, SecretService.Keyring), backend
    assert credentials.store_token("http://r.example", "mcpz_secret_service_token") == "keyring"
    assert credentials.get_token("http://r.example", env={}) == "mcpz_secret_service_token"
    assert keyring.get_password("mcpz", "http://r.example") == "mcpz_secret_service_token"
    assert credentials.delete_token("http://r.example", env={})
    print("ok")
    """
)


def test_a_token_in_the_real_secret_service(tmp_path: Path) -> None:
    """gnome-keyring's Secret Service on a private D-Bus session (Debian: gnome-keyring, dbus)."""
    for tool in ("dbus-run-session", "gnome-keyring-daemon"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages gnome-keyring and dbus)")
    script = tmp_path / "check.py"
    script.write_text(SECRET_SERVICE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "PYTHON_KEYRING", "MCPZ_TOKEN"))}
    env["HOME"] = str(tmp_path)
    env["XDG_DATA_HOME"] = str(tmp_path / "share")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700)
    inner = (
        "printf 'test-unlock' | gnome-keyring-daemon --unlock --components=secrets >/dev/null "
        f"&& {sys.executable} {script}"
    )
    done = subprocess.run(
        ["dbus-run-session", "--", "sh", "-c", inner], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


# --- the commands ------------------------------------------------------------------------------


def test_wallet_commands(
    cli: Any, monkeypatch: pytest.MonkeyPatch, no_keyring: None, isolated_env: Path
) -> None:
    # No terminal and no MCPZ_WALLET_PASSPHRASE: refused, not asked.
    refused = cli("wallet", "create")
    assert refused.exit_code == 2 and "MCPZ_WALLET_PASSPHRASE" in refused.stderr
    missing = cli("wallet", "address")
    assert missing.exit_code == 2 and "mcpz wallet create" in missing.stderr

    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    created = cli("-v", "--json", "wallet", "create", "--remember")
    assert created.exit_code == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["passphrase_in_keyring"] is False and "not kept" in created.stderr
    address = body["address"]
    assert cli("wallet", "address").stdout.strip() == address
    again = cli("wallet", "create")
    assert again.exit_code == 2 and "exists already" in again.stderr

    keystore = cli("wallet", "export")
    assert keystore.exit_code == 0
    assert Account.from_key(Account.decrypt(json.loads(keystore.stdout), PASSPHRASE)).address == address

    unconfirmed = cli("wallet", "export", "--private-key")
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.stderr
    exported = cli("--json", "wallet", "export", "--private-key", "--yes")
    assert exported.exit_code == 0, exported.stderr
    private_key = json.loads(exported.stdout)["private_key"]
    assert Account.from_key(private_key).address == address

    # The passphrase and the key appear nowhere else, even with -v and --json.
    for args in (("wallet", "address"), ("wallet", "export"), ("wallet", "create")):
        for extra in ((), ("-v",), ("-v", "--json")):
            shown = cli(*extra, *args)
            everything = shown.stdout + shown.stderr
            assert PASSPHRASE not in everything and private_key[2:] not in everything.lower(), args


def test_import_from_stdin_and_keystore(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    imported = cli("-v", "--json", "wallet", "import", input=KEY + "\n")
    assert imported.exit_code == 0, imported.stderr
    assert json.loads(imported.stdout)["address"] == Account.from_key(KEY).address
    assert KEY[2:] not in imported.stdout + imported.stderr
    assert cli("wallet", "import", input=KEY + "\n").exit_code == 2

    other = tmp_path / "keystore.json"
    other.write_text(json.dumps(Account.encrypt(bytes.fromhex("77" * 32), PASSPHRASE, iterations=1024)))
    monkeypatch.setenv("MCPZ_DATA_DIR", str(tmp_path / "elsewhere"))
    from_file = cli("--json", "wallet", "import", "--keystore", str(other))
    assert from_file.exit_code == 0, from_file.stderr
    assert json.loads(from_file.stdout)["address"] == Account.from_key("0x" + "77" * 32).address


def test_the_passphrase_from_the_keyring_unlocks(
    cli: Any, dict_keyring: DictKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", PASSPHRASE)
    created = cli("--json", "wallet", "create", "--remember")
    assert created.exit_code == 0, created.stderr
    address = json.loads(created.stdout)["address"]
    assert dict_keyring.items == {("mcpz-wallet", address): PASSPHRASE}
    monkeypatch.delenv("MCPZ_WALLET_PASSPHRASE")
    exported = cli("--json", "wallet", "export", "--private-key", "--yes")
    assert exported.exit_code == 0, exported.stderr
