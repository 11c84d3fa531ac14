/**
 * Errors as typed exceptions. Every JSON error the registry sends has one body,
 * `{"error": {"message", "hint", "request_id", "code"}}` (the OpenAPI document's ErrorOut);
 * the exception carries all of it, so a report can quote the request id.
 */

/** The error body the registry sends with every 4xx/5xx JSON answer. */
export interface ErrorBody {
  message: string;
  hint?: string | null;
  request_id?: string;
  code?: string | null;
}

/** Any failure talking to a registry: an HTTP error answer, or an answer that is no JSON. */
export class McpzError extends Error {
  override readonly name: string = "McpzError";
  /** The HTTP status, or 0 when no answer came (network failure). */
  readonly status: number;
  /** What to do next, when the registry says. */
  readonly hint: string | null;
  /** The registry's request id (also its X-Request-Id header). */
  readonly requestId: string | null;
  /** A stable code for sign-in and signature refusals, e.g. `nonce_refused`. */
  readonly code: string | null;

  constructor(
    message: string,
    init: { status?: number; hint?: string | null; requestId?: string | null; code?: string | null } = {},
  ) {
    super(message);
    this.status = init.status ?? 0;
    this.hint = init.hint ?? null;
    this.requestId = init.requestId ?? null;
    this.code = init.code ?? null;
  }
}

/** 401: no token, or the token is invalid or expired. */
export class AuthError extends McpzError {
  override readonly name = "AuthError";
}
/** 403: the token lacks the scope, or the account may not act in the namespace. */
export class ForbiddenError extends McpzError {
  override readonly name = "ForbiddenError";
}
/** 404: no such agent, version, namespace, deployment or key. */
export class NotFoundError extends McpzError {
  override readonly name = "NotFoundError";
}
/** 409: refused because it conflicts with the current state. */
export class ConflictError extends McpzError {
  override readonly name = "ConflictError";
}
/** 400 and 422: the request is malformed. */
export class BadRequestError extends McpzError {
  override readonly name = "BadRequestError";
}
/** 429: too many requests; `retryAfter` in seconds when the registry says. */
export class RateLimitError extends McpzError {
  override readonly name = "RateLimitError";
  retryAfter: number | null = null;
}
/** An MCP call through the gateway failed (a JSON-RPC error, or the tool reported an error). */
export class CallError extends McpzError {
  override readonly name = "CallError";
}

const CLASSES: Record<number, typeof McpzError> = {
  400: BadRequestError,
  401: AuthError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  422: BadRequestError,
  429: RateLimitError,
};

/** The typed exception for an error answer: `body` is the parsed JSON (or undefined). */
export function errorFromResponse(response: Response, body: unknown): McpzError {
  const detail = (body as { error?: ErrorBody } | undefined)?.error;
  const requestId = detail?.request_id ?? response.headers.get("x-request-id");
  const message =
    typeof detail?.message === "string" ? detail.message : `${response.status} ${response.statusText || "error"}`;
  const Class = CLASSES[response.status] ?? McpzError;
  const error = new Class(message, {
    status: response.status,
    hint: detail?.hint ?? null,
    requestId: requestId ?? null,
    code: detail?.code ?? null,
  });
  if (error instanceof RateLimitError) {
    const after = Number(response.headers.get("retry-after"));
    error.retryAfter = Number.isFinite(after) && after > 0 ? after : null;
  }
  return error;
}
