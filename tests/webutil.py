"""A small market on a live registry, for the web pages' tests (tests/test_web_*.py).

Agents are published the real way (mcpz.toml, `git tag vX`, `git push`); their tool definitions
are pinned through the releases' own service (`record_tools`), as `mcpz push` pins them; calls are
usage events recorded through the registry's own recorder, as the gateway records them.

    acme/weather  0.1.0 (forecast), 0.2.0 (forecast with `days`, alerts); README with hostile HTML
    acme/translate 1.0.0 (translate)
    globex/pdf-tools 0.3.0 (extract_text)
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import LiveRegistry
from gitutil import commit, git

from mcpz.keys.ethkeys import Account, encode_defunct
from registry_server.accounts import namespaces
from registry_server.market import service as market
from registry_server.releases.models import Agent, Release
from registry_server.releases.tools import record_tools
from registry_server.state import RegistryState
from registry_server.usage.events import Outcome, UsageEvent
from registry_server.usage.service import UsageRecorder

HOSTILE_README = """# Weather for agents

Forecasts for any city, from a **tiny** MCP server.

```sh
mcpz call acme/weather forecast city=Oslo
```

<script>window.__pwned = true; alert("pwned")</script>
<img src="x" onerror="window.__pwned = true">
[a link that runs code](javascript:window.__pwned=true)
<iframe src="https://evil.example"></iframe>
"""

FORECAST = {
    "name": "forecast",
    "description": "The weather forecast for a city.",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FORECAST_DAYS = {
    **FORECAST,
    "inputSchema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 3}},
        "required": ["city"],
    },
}
ALERTS = {
    "name": "alerts",
    "description": "Severe weather alerts for a region.",
    "inputSchema": {"type": "object", "properties": {"region": {"type": "string"}}, "required": ["region"]},
    "outputSchema": {"type": "object", "properties": {"alerts": {"type": "array"}}},
}
TRANSLATE = {
    "name": "translate",
    "description": "Translate text between languages.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}
EXTRACT = {
    "name": "extract_text",
    "description": "Extract the text of a PDF document.",
    "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
}


def _manifest(name: str, version: str, description: str, keywords: list[str]) -> str:
    words = ", ".join(f'"{k}"' for k in keywords)
    return (
        f'[agent]\nname = "{name}"\nversion = "{version}"\ndescription = "{description}"\n'
        f'license = "MIT"\nkeywords = [{words}]\n\n[run]\ncommand = ["python", "server.py"]\n'
    )


@dataclass
class MarketWorld:
    reg: LiveRegistry
    tokens: dict[str, str]

    @property
    def app_state(self) -> Any:
        return self.reg._handle.server.config.app.state  # type: ignore[attr-defined]

    @property
    def registry(self) -> RegistryState:
        state: RegistryState = self.app_state.registry
        return state

    @property
    def recorder(self) -> UsageRecorder:
        recorder: UsageRecorder = self.app_state.usage
        return recorder

    def account_for_wallet(self, address: str) -> int:
        """The account a wallet's first sign-in creates (made now, so it can have calls before)."""
        with self.registry.db.session() as session:
            return namespaces.account_for_address(session, address).id

    def calls(self, agent: str, account_id: int, n: int = 1, *, outcome: str = Outcome.OK) -> None:
        """`n` finished calls of `agent` by the account, through the registry's usage recorder."""
        now = time.time_ns() // 1000
        batch = uuid.uuid4().hex
        events = [
            UsageEvent(
                id=f"web-{batch}-{i}",  # at most 64 characters, as the gateway's ids
                account_id=account_id,
                token_id=None,
                agent=agent,
                version="0.2.0",
                tool="forecast",
                deployment=agent,
                replica_id="r1",
                node_id="n1",
                started_us=now - (i % 20) * 86_400_000_000 - 1_000_000,
                duration_us=2000 + 150 * i,
                outcome=outcome,
                bytes_in=100,
                bytes_out=300,
            )
            for i in range(n)
        ]
        self.recorder.record_many(events)
        with self.registry.db.session() as session:
            market.refresh_usage(session)


def publish(
    world: MarketWorld,
    root: Path,
    name: str,
    versions: list[tuple[str, list[dict[str, Any]]]],
    *,
    description: str,
    keywords: list[str],
    readme: str = "",
) -> None:
    namespace = name.split("/")[0]
    work = root / name.replace("/", "__")
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    for version, _tools in versions:
        files = {
            "mcpz.toml": _manifest(name, version, description, keywords),
            "server.py": "print('hello')\n",
        }
        if readme:
            files["README.md"] = readme
        commit(work, files, f"v{version}")
        git("tag", f"v{version}", cwd=work)
    git("push", "-q", world.reg.git_url(name, world.tokens[namespace]), "main", "--tags", cwd=work)
    state = world.registry
    with state.db.session() as session:
        agent = session.query(Agent).filter(Agent.name == name).one()
        for version, tools in versions:
            release = session.query(Release).filter_by(agent_id=agent.id, version=version).one()
            record_tools(session, release.id, tools, observed=False)
    with state.db.session() as session:
        market.refresh_listing(session, state.repos, name, force=True)


def seed(reg: LiveRegistry, root: Path) -> MarketWorld:
    world = MarketWorld(reg, {"acme": reg.account("acme"), "globex": reg.account("globex")})
    publish(
        world,
        root,
        "acme/weather",
        [("0.1.0", [FORECAST]), ("0.2.0", [FORECAST_DAYS, ALERTS])],
        description="Weather forecasts and alerts for any city",
        keywords=["weather", "forecast"],
        readme=HOSTILE_README,
    )
    publish(
        world,
        root,
        "acme/translate",
        [("1.0.0", [TRANSLATE])],
        description="Translate text between forty languages",
        keywords=["language", "text"],
    )
    publish(
        world,
        root,
        "globex/pdf-tools",
        [("0.3.0", [EXTRACT])],
        description="Read PDF documents",
        keywords=["pdf", "documents", "text"],
    )
    return world


CHROMIUM = os.environ.get("MCPZ_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium through playwright (executable_path: no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


# --- a wallet in the browser ------------------------------------------------------------------

WALLET = Account.from_key("0x" + "e5" * 32)

PROVIDER = """
(() => {
  const listeners = {};
  const provider = {
    isMcpzTestWallet: true,
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [ADDRESS];
      if (method === "eth_chainId") return "0x1";
      if (method === "personal_sign") return await window.mcpzTestSign(params[0], params[1]);
      throw Object.assign(new Error("unsupported method " + method), { code: 4200 });
    },
    on(event, fn) { (listeners[event] = listeners[event] || []).push(fn); },
    removeListener(event, fn) { listeners[event] = (listeners[event] || []).filter((f) => f !== fn); },
  };
  const info = Object.freeze({
    uuid: "5a1e0b9c-6f0e-4c3b-9d6e-0c2f3a4b5c6d",
    name: "Test Wallet",
    icon: "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 8 8'%3E"
      + "%3Crect width='8' height='8' fill='%23555'/%3E%3C/svg%3E",
    rdns: "dev.mcpz.test-wallet",
  });
  const announce = () => window.dispatchEvent(
    new CustomEvent("eip6963:announceProvider", { detail: Object.freeze({ info, provider }) }));
  window.addEventListener("eip6963:requestProvider", announce);
  announce();
})();
""".replace("ADDRESS", repr(WALLET.address))

"""An EIP-1193 provider announced through EIP-6963, injected before any page script runs (add it
with `context.add_init_script(PROVIDER)` and `context.expose_function("mcpzTestSign", wallet_sign)`):
its `personal_sign` is forwarded to Python, which signs as a wallet extension would."""


def wallet_sign(message_hex: str, address: str) -> str:
    """What the wallet does for personal_sign: EIP-191 over the message's bytes, with its key."""
    assert address.lower() == WALLET.address.lower()
    text = bytes.fromhex(message_hex.removeprefix("0x"))
    signed = WALLET.sign_message(encode_defunct(primitive=text))
    return "0x" + bytes(signed.signature).hex()
