/**
 * `McpzClient`: the registry's HTTP API through types generated from its OpenAPI document
 * (src/schema.ts, by openapi-typescript; calls through openapi-fetch), plus what the document
 * cannot express: Sign-In with Ethereum, the token, pagination, typed errors, and MCP calls
 * through the gateway with the official MCP client.
 */

import createClient, { type Client as FetchClient, type Middleware } from "openapi-fetch";
import { Client as McpClient } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult, Tool } from "@modelcontextprotocol/sdk/types.js";
import { createSiweMessage } from "viem/siwe";
import { stringToHex, type EIP1193Provider, type LocalAccount } from "viem";

import type { components, paths } from "./schema.js";
import { CallError, McpzError, errorFromResponse } from "./errors.js";

type Schemas = components["schemas"];
export type WhoAmI = Schemas["WhoAmI"];
export type Session = Schemas["LoginOut"];
export type Challenge = Schemas["NonceOut"];
export type Listing = Schemas["ListingOut"];
export type SearchPage = Schemas["SearchOut"];
export type MarketInfo = Schemas["InfoOut"];
export type Agent = Schemas["AgentOut"];
export type Release = Schemas["ReleaseOut"];
export type Usage = Schemas["registry_server__usage__routes__UsageOut"];
export type Balance = Schemas["BalanceOut"];
export type BillingUsage = Schemas["registry_server__billing__routes__UsageOut"];
export type InvoiceList = Schemas["InvoiceListOut"];
export type Tier = Schemas["TierOut"];
export type SearchQuery = NonNullable<paths["/v1/market/search"]["get"]["parameters"]["query"]>;
export type UsageQuery = NonNullable<paths["/v1/usage"]["get"]["parameters"]["query"]>;

/**
 * A deployment and how far it got. The registry's OpenAPI document gives the deployment routes
 * no response schema, so this shape is written by hand (as mcpz.client.models.Deployment).
 */
export interface Deployment {
  name: string;
  namespace: string;
  agent: string;
  version: string;
  commit: string;
  revision: number;
  replicas: number;
  selector: Record<string, string>;
  /** "progressing", "ready", "failed" or "deleting" */
  state: string;
  ready: number;
  updated: number;
  old: number;
  stopping: number;
  by_status: Record<string, number>;
  created_at: string;
  updated_at: string;
  reason?: string;
  [key: string]: unknown;
}

/** Signs the sign-in message: a viem local account (a private key) or an EIP-1193 wallet. */
export type Signer = LocalAccount | { provider: EIP1193Provider; address?: `0x${string}` };

export interface ClientOptions {
  /** The registry's base URL, e.g. https://registry.example.com */
  registry: string;
  /** An API key or session token (`mcpz keys create`, or `signIn`). */
  token?: string | null;
  /** A fetch to use instead of the global one. */
  fetch?: typeof globalThis.fetch;
}

/** The statement of mcpz's sign-in message, as the CLI writes it (mcpz.client.signin). */
export const STATEMENT = "Sign in to the mcpz registry";
const MESSAGE_LIFETIME_MS = 5 * 60 * 1000;

/** `namespace/name` split in two, checked enough to build a path. */
function splitName(name: string): { namespace: string; name: string } {
  const [namespace, agent, ...rest] = name.split("/");
  if (!namespace || !agent || rest.length > 0) {
    throw new McpzError(`agent name ${JSON.stringify(name)} is not namespace/name`, { status: 400 });
  }
  return { namespace, name: agent };
}

/** The data of an openapi-fetch answer, or the typed exception for its error. */
async function unwrap<T>(answer: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  const { data, error, response } = await answer;
  if (!response.ok || data === undefined) {
    throw errorFromResponse(response, error);
  }
  return data;
}

export class McpzClient {
  readonly registry: string;
  token: string | null;
  /** The generated client, for any route this layer has no method for. */
  readonly api: FetchClient<paths>;
  private readonly fetchImpl: typeof globalThis.fetch;

  constructor(options: ClientOptions) {
    this.registry = options.registry.replace(/\/+$/, "");
    this.token = options.token ?? null;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.api = createClient<paths>({ baseUrl: this.registry, fetch: this.fetchImpl });
    const auth: Middleware = {
      onRequest: ({ request }) => {
        if (this.token && !request.headers.has("authorization")) {
          request.headers.set("authorization", `Bearer ${this.token}`);
        }
        return request;
      },
    };
    this.api.use(auth);
  }

  // --- login ------------------------------------------------------------------------------

  /** Use `token` from now on; returns who it belongs to (so a bad token fails here). */
  async loginWithToken(token: string): Promise<WhoAmI> {
    this.token = token;
    return this.whoami();
  }

  /**
   * Sign-In with Ethereum (EIP-4361): a nonce from the registry, the message bound to the
   * registry URL this client was given (so a registry cannot have the wallet sign in to another
   * site), signed with `personal_sign`, traded for a session token that this client then uses.
   */
  async signIn(signer: Signer): Promise<Session> {
    const address = await signerAddress(signer);
    const challenge = await unwrap(this.api.POST("/v1/auth/nonce", { body: { address } }));
    const message = this.loginMessage(address, challenge, new Date());
    const signature = await signMessage(signer, address, message);
    const session = await unwrap(this.api.POST("/v1/auth/login", { body: { message, signature } }));
    this.token = session.token;
    return session;
  }

  /** The EIP-4361 message for `challenge`, bound to this client's registry URL. Pure. */
  loginMessage(address: `0x${string}`, challenge: Challenge, now: Date): string {
    const url = new URL(this.registry);
    return createSiweMessage({
      scheme: url.protocol.replace(/:$/, ""),
      domain: url.host,
      address,
      statement: STATEMENT,
      uri: challenge.uri,
      version: "1",
      chainId: challenge.chain_id,
      nonce: challenge.nonce,
      issuedAt: now,
      expirationTime: new Date(now.getTime() + MESSAGE_LIFETIME_MS),
    });
  }

  async whoami(): Promise<WhoAmI> {
    return unwrap(this.api.GET("/v1/whoami"));
  }

  // --- market -----------------------------------------------------------------------------

  /** One page of market search results (`more` says whether another follows). */
  async search(q: string, query: Omit<SearchQuery, "q"> = {}): Promise<SearchPage> {
    return unwrap(this.api.GET("/v1/market/search", { params: { query: { ...query, q } } }));
  }

  /** Every result of a search, page after page (`limit` is the page size). */
  async *searchAll(q: string, query: Omit<SearchQuery, "q" | "offset"> = {}): AsyncGenerator<Listing> {
    let offset = 0;
    for (;;) {
      const page = await this.search(q, { ...query, offset });
      yield* page.results;
      if (!page.more || page.results.length === 0) return;
      offset += page.results.length;
    }
  }

  /** An agent's market listing: description, tools, pricing, rating. */
  async listing(name: string): Promise<MarketInfo> {
    return unwrap(this.api.GET("/v1/market/agents/{namespace}/{name}", { params: { path: splitName(name) } }));
  }

  // --- index and deployments ----------------------------------------------------------------

  /** An agent's published versions (`mcpz info`). */
  async info(name: string): Promise<Agent> {
    return unwrap(this.api.GET("/v1/agents/{namespace}/{name}", { params: { path: splitName(name) } }));
  }

  /** A deployment's desired state and how far it got (`mcpz deploy status`). */
  async deployment(name: string): Promise<Deployment> {
    const answer = this.api.GET("/v1/deployments/{namespace}/{name}", { params: { path: splitName(name) } });
    return (await unwrap(answer)) as Deployment;
  }

  /** The deployments the token may see. */
  async deployments(): Promise<Deployment[]> {
    const body = (await unwrap(this.api.GET("/v1/deployments"))) as { deployments?: Deployment[] } | Deployment[];
    return Array.isArray(body) ? body : (body.deployments ?? []);
  }

  // --- usage and billing --------------------------------------------------------------------

  /** Calls counted by the gateway (`mcpz usage`): the account's calls, or every caller of `agent`. */
  async usage(query: UsageQuery = {}): Promise<Usage> {
    return unwrap(this.api.GET("/v1/usage", { params: { query } }));
  }

  /** The account's balance in the currency's minor unit (integers). */
  async balance(): Promise<Balance> {
    return unwrap(this.api.GET("/v1/billing/balance"));
  }

  /** What the account's calls cost. */
  async billingUsage(query: { since?: string | null; limit?: number } = {}): Promise<BillingUsage> {
    return unwrap(this.api.GET("/v1/billing/usage", { params: { query } }));
  }

  async invoices(): Promise<InvoiceList> {
    return unwrap(this.api.GET("/v1/billing/invoices"));
  }

  async tier(): Promise<Tier> {
    return unwrap(this.api.GET("/v1/billing/tier"));
  }

  // --- the gateway ----------------------------------------------------------------------------

  /** The gateway URL of an agent: `{registry}/mcp/{namespace}/{name}` (`name@version` pins). */
  gatewayUrl(name: string): URL {
    const [base, version] = name.split("@", 2);
    const { namespace, name: agent } = splitName(base ?? "");
    const suffix = version ? `@${encodeURIComponent(version)}` : "";
    return new URL(`${this.registry}/mcp/${namespace}/${agent}${suffix}`);
  }

  /**
   * An MCP session with a deployed agent, through the official MCP client over Streamable HTTP
   * with this client's token. Close it when done (`await session.close()`).
   */
  async connect(name: string): Promise<McpClient> {
    const headers: Record<string, string> = this.token ? { authorization: `Bearer ${this.token}` } : {};
    const transport = new StreamableHTTPClientTransport(this.gatewayUrl(name), {
      requestInit: { headers },
      fetch: this.fetchImpl,
    });
    const client = new McpClient({ name: "@mcpz/client", version: "0.2.0" });
    try {
      await client.connect(transport);
    } catch (error) {
      throw gatewayError(error);
    }
    return client;
  }

  /** The tools a deployed agent offers. */
  async tools(name: string): Promise<Tool[]> {
    return this.withSession(name, async (session) => (await session.listTools()).tools);
  }

  /** One `tools/call` through the gateway (metered); a tool that reports an error throws CallError. */
  async call(name: string, tool: string, args: Record<string, unknown> = {}): Promise<CallToolResult> {
    return this.withSession(name, async (session) => {
      const result = (await session.callTool({ name: tool, arguments: args })) as CallToolResult;
      if (result.isError) {
        throw new CallError(`${tool} failed: ${textOf(result) || "the tool reported an error"}`);
      }
      return result;
    });
  }

  private async withSession<T>(name: string, work: (session: McpClient) => Promise<T>): Promise<T> {
    const session = await this.connect(name);
    try {
      return await work(session);
    } catch (error) {
      throw gatewayError(error);
    } finally {
      await session.close();
    }
  }
}

/** The text parts of a tool's result, joined. */
export function textOf(result: CallToolResult): string {
  return result.content
    .filter((part): part is { type: "text"; text: string } => part.type === "text")
    .map((part) => part.text)
    .join("\n");
}

function gatewayError(error: unknown): McpzError {
  if (error instanceof McpzError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const status = (error as { code?: unknown }).code;
  return new CallError(message, { status: typeof status === "number" && status >= 400 && status < 600 ? status : 0 });
}

async function signerAddress(signer: Signer): Promise<`0x${string}`> {
  if ("provider" in signer) {
    if (signer.address) return signer.address;
    const accounts = (await signer.provider.request({ method: "eth_requestAccounts" })) as `0x${string}`[];
    const first = accounts[0];
    if (!first) throw new McpzError("the wallet offered no account to sign in with");
    return first;
  }
  return signer.address;
}

async function signMessage(signer: Signer, address: `0x${string}`, message: string): Promise<`0x${string}`> {
  if ("provider" in signer) {
    // personal_sign takes the message as hex-encoded UTF-8, then the address (EIP-1193 wallets).
    const hex = stringToHex(message);
    return (await signer.provider.request({ method: "personal_sign", params: [hex, address] })) as `0x${string}`;
  }
  if (!signer.signMessage) throw new McpzError("this account cannot sign messages");
  return signer.signMessage({ message });
}
