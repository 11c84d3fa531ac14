// The hand-written layer against a loopback HTTP server that answers as the registry does:
// typed errors, pagination, the sign-in message. No registry needed.
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { privateKeyToAccount } from "viem/accounts";
import { parseSiweMessage } from "viem/siwe";
import { recoverMessageAddress } from "viem";

import { AuthError, McpzClient, NotFoundError, RateLimitError, STATEMENT } from "../src/index.js";

type Handler = (req: IncomingMessage, url: URL, res: ServerResponse) => void;
let handler: Handler = (_req, _url, res) => res.end();
let base = "";
const server = createServer((req, res) => handler(req, new URL(req.url ?? "/", "http://x"), res));

before(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server.close());

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

test("an error answer becomes a typed exception with the message, hint and request id", async () => {
  handler = (_req, _url, res) =>
    json(res, 404, { error: { message: "no agent acme/nope", hint: "mcpz market search", request_id: "r-1" } });
  const client = new McpzClient({ registry: base });
  await assert.rejects(client.info("acme/nope"), (error: unknown) => {
    assert.ok(error instanceof NotFoundError);
    assert.equal(error.message, "no agent acme/nope");
    assert.equal(error.hint, "mcpz market search");
    assert.equal(error.requestId, "r-1");
    assert.equal(error.status, 404);
    return true;
  });
});

test("401 is AuthError; 429 carries Retry-After; the token goes as a bearer header", async () => {
  let seen: string | undefined;
  handler = (req, url, res) => {
    seen = req.headers.authorization;
    if (url.pathname === "/v1/whoami") json(res, 401, { error: { message: "invalid token", request_id: "r-2" } });
    else json(res, 429, { error: { message: "slow down", request_id: "r-3" } }, { "retry-after": "7" });
  };
  const client = new McpzClient({ registry: `${base}/`, token: "mcpz_secret" });
  await assert.rejects(client.whoami(), AuthError);
  assert.equal(seen, "Bearer mcpz_secret");
  await assert.rejects(client.balance(), (error: unknown) => error instanceof RateLimitError && error.retryAfter === 7);
});

test("searchAll follows the pages until `more` is false", async () => {
  const offsets: string[] = [];
  handler = (_req, url, res) => {
    const offset = Number(url.searchParams.get("offset") ?? "0");
    offsets.push(String(offset));
    const results = [0, 1].map((i) => ({ name: `acme/a${offset + i}` }));
    json(res, 200, { query: url.searchParams.get("q"), corrected: false, suggestions: [], results, more: offset < 4 });
  };
  const client = new McpzClient({ registry: base });
  const names: string[] = [];
  for await (const listing of client.searchAll("weather", { limit: 2 })) names.push(listing.name);
  assert.deepEqual(names, ["acme/a0", "acme/a1", "acme/a2", "acme/a3", "acme/a4", "acme/a5"]);
  assert.deepEqual(offsets, ["0", "2", "4"]);
});

test("the sign-in message is mcpz's EIP-4361 text, bound to the client's registry URL", async () => {
  const account = privateKeyToAccount(`0x${"11".repeat(32)}`);
  const client = new McpzClient({ registry: "http://127.0.0.1:8080" });
  const now = new Date("2025-06-01T12:00:00Z");
  const challenge = {
    nonce: "k7Hq2ZpXw9LmRt4vBn3sQe8y",
    domain: "127.0.0.1:8080",
    uri: "http://127.0.0.1:8080/v1/auth/login",
    chain_id: 324,
    expires_at: "2025-06-01T12:10:00Z",
  };
  const message = client.loginMessage(account.address, challenge, now);
  assert.equal(
    message,
    [
      `http://127.0.0.1:8080 wants you to sign in with your Ethereum account:`,
      account.address,
      "",
      STATEMENT,
      "",
      "URI: http://127.0.0.1:8080/v1/auth/login",
      "Version: 1",
      "Chain ID: 324",
      "Nonce: k7Hq2ZpXw9LmRt4vBn3sQe8y",
      "Issued At: 2025-06-01T12:00:00.000Z",
      "Expiration Time: 2025-06-01T12:05:00.000Z",
    ].join("\n"),
  );
  assert.equal(parseSiweMessage(message).address, account.address);
  const signature = await account.signMessage({ message });
  assert.equal(await recoverMessageAddress({ message, signature }), account.address);
});
