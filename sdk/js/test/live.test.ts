// Against a live registry with a deployed agent: tests/sdk/test_sdks.py starts one and passes
// MCPZ_REGISTRY, MCPZ_TOKEN (scopes read and call), MCPZ_AGENT (deployed, with the template's
// `add` tool) and MCPZ_TEST_KEY (a private key to sign in with). Skipped without them.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { privateKeyToAccount } from "viem/accounts";
import type { EIP1193Provider } from "viem";

import { AuthError, McpzClient, NotFoundError, textOf } from "../src/index.js";

const { MCPZ_REGISTRY: registry, MCPZ_TOKEN: token, MCPZ_AGENT: agent, MCPZ_TEST_KEY: key } = process.env;
const skip = registry && token && agent && key ? false : "no live registry (MCPZ_REGISTRY, MCPZ_TOKEN, MCPZ_AGENT, MCPZ_TEST_KEY)";
const packageDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("login with a token, and a bad token is AuthError", { skip }, async () => {
  const client = new McpzClient({ registry: registry! });
  const me = await client.loginWithToken(token!);
  assert.ok(me.scopes.includes("call"), JSON.stringify(me));
  await assert.rejects(new McpzClient({ registry: registry!, token: "mcpz_nonsense" }).whoami(), AuthError);
});

test("SIWE with a private key and through an EIP-1193 wallet", { skip }, async () => {
  const account = privateKeyToAccount(key as `0x${string}`);
  const client = new McpzClient({ registry: registry! });
  const session = await client.signIn(account);
  assert.equal(session.address.toLowerCase(), account.address.toLowerCase());
  assert.equal((await client.whoami()).account, session.account);

  // A wallet as a browser extension offers it: requests, not a key.
  const provider = {
    request: async ({ method, params }: { method: string; params?: unknown[] }) => {
      if (method === "eth_requestAccounts") return [account.address];
      if (method === "personal_sign") return account.signMessage({ message: { raw: (params as `0x${string}`[])[0]! } });
      throw new Error(`unexpected ${method}`);
    },
  } as unknown as EIP1193Provider;
  const wallet = new McpzClient({ registry: registry! });
  assert.equal((await wallet.signIn({ provider })).account, session.account);
});

test("search, info, deploy status, a call through the gateway, usage", { skip }, async () => {
  const client = new McpzClient({ registry: registry!, token: token! });
  const page = await client.search(agent!.split("/")[1]!);
  assert.ok(page.results.some((listing) => listing.name === agent), JSON.stringify(page));
  const info = await client.info(agent!);
  assert.ok(info.latest, JSON.stringify(info));
  await assert.rejects(client.info("acme/no-such-agent"), NotFoundError);
  const deployment = await client.deployment(agent!);
  assert.equal(deployment.state, "ready");
  assert.ok((await client.tools(agent!)).some((tool) => tool.name === "add"));
  const result = await client.call(agent!, "add", { a: 2, b: 3 });
  assert.equal(textOf(result), "5");
  let calls = 0;
  for (let i = 0; i < 50 && calls === 0; i++) {
    const usage = await client.usage({ agent, since: "1h" });
    calls = usage.summary.reduce((sum, row) => sum + row.calls, 0);
    if (calls === 0) await new Promise((resolve) => setTimeout(resolve, 200)); // usage is written in batches
  }
  assert.ok(calls >= 1);
});

test("the README's example runs as written", { skip }, () => {
  const readme = readFileSync(join(packageDir, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((match) => match[1]!);
  assert.equal(blocks.length, 1, "README.md should hold exactly one runnable ```js example");
  // Inside the package's folder, so that `@mcpz/client` resolves to this package (self-reference).
  const dir = mkdtempSync(join(packageDir, ".readme-"));
  const file = join(dir, "example.mjs");
  writeFileSync(file, blocks[0]!);
  try {
    const out = execFileSync(process.execPath, [file], { env: process.env, encoding: "utf8", timeout: 60_000 });
    assert.match(out, /2 \+ 3 = 5/);
    assert.match(out, /not found: no agent/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
