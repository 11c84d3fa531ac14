"""The authorization server's rules, pure: which redirect URIs a client may register, PKCE (S256),
which resources a token may be bound to, OAuth scopes as mcpz scopes, and the two metadata documents.

The MCP authorization spec (revision 2026-07-28) builds on OAuth 2.1: authorization code with PKCE
S256 only, a `resource` (RFC 8707) naming the MCP server in both the authorization and the token
request, the token bound to it, protected resource metadata (RFC 9728) that names this registry as
the authorization server, and authorization server metadata (RFC 8414) with `iss` in every
authorization response (RFC 9207). No I/O here: the service and the routes pass data in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from registry_server.accounts.tokens import canonical_resource

GATEWAY_PATH = "/mcp"
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"
REGISTER_PATH = "/oauth/register"

SCOPES: dict[str, tuple[str, ...]] = {"call": ("call",)}
"""OAuth scope -> the mcpz scopes of the token it earns. Tokens from OAuth are bound to a gateway
resource, where only `call` means anything; keys for the API stay `mcpz keys create`'s."""
DEFAULT_SCOPE = "call"

MAX_REDIRECT_URIS = 10
MAX_URI = 512
MAX_STATE = 1024
VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class OAuthError(Exception):
    """An OAuth error (RFC 6749 5.2, 4.1.2.1; RFC 7591 3.2.2): its code, description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` may not be a redirect URI, or None. Public clients only: https anywhere, or http
    on a loopback address (RFC 8252 7.3, any port); no fragment, no user info."""
    if len(uri) > MAX_URI:
        return f"is longer than {MAX_URI} characters"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return f"has the scheme {parts.scheme or '(none)'}: use https, or http on a loopback address"
    if parts.fragment or "#" in uri:
        return "may not have a fragment"
    if parts.username is not None or parts.password is not None:
        return "may not carry a user name or password"
    host = (parts.hostname or "").lower()
    if not host:
        return "has no host"
    if parts.scheme == "https" or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "must be https, or http on a loopback address (127.0.0.1, [::1], localhost)"


def challenge_of(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is a well-formed PKCE verifier (43-128 unreserved characters) whose S256
    challenge is `challenge`."""
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= VERIFIER_CHARS:
        return False
    return hmac.compare_digest(challenge_of(verifier), challenge)


def challenge_problem(challenge: str | None, method: str | None) -> str | None:
    if not challenge:
        return "code_challenge is required (PKCE)"
    if method != "S256":
        return "code_challenge_method must be S256"
    if len(challenge) != 43 or not set(challenge) <= VERIFIER_CHARS:
        return "code_challenge is not an S256 challenge (43 base64url characters)"
    return None


def parse_scope(text: str | None) -> tuple[str, ...]:
    """The OAuth scopes of a `scope` parameter (space-separated; none: the default), known ones only,
    else OAuthError invalid_scope."""
    names = (text or DEFAULT_SCOPE).split()
    unknown = sorted(set(names) - set(SCOPES))
    if unknown:
        raise OAuthError("invalid_scope", f"unknown scope {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not names:
        raise OAuthError("invalid_scope", "no scope requested")
    return tuple(s for s in SCOPES if s in names)


def mcpz_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The mcpz scopes a token for these OAuth scopes carries."""
    return tuple(sorted({m for s in scopes for m in SCOPES[s]}))


def resource_of(public: str, resource: str | None) -> str:
    """The canonical form of a requested `resource`, when it is one this registry serves: its
    gateway (`{public}/mcp`) or one deployment there (`{public}/mcp/{ns}/{name}[@version]`).
    Else OAuthError invalid_target (RFC 8707 2)."""
    if not resource:
        raise OAuthError("invalid_target", "resource is required: the URL of the MCP server (RFC 8707)")
    try:
        canonical = canonical_resource(resource)
    except ValueError as e:
        raise OAuthError("invalid_target", f"resource {resource!r} is not usable: {e}") from None
    gateway = public + GATEWAY_PATH
    if canonical == gateway:
        return canonical
    rest = canonical.removeprefix(gateway + "/") if canonical.startswith(gateway + "/") else None
    parts = rest.split("/") if rest else []
    if len(parts) != 2 or not all(parts):
        raise OAuthError(
            "invalid_target",
            f"resource {resource!r} is not served here: use {gateway}/{{namespace}}/{{name}}",
        )
    return canonical


def protected_resource_metadata(public: str, resource: str) -> dict[str, object]:
    """RFC 9728 2: the gateway (or one deployment on it) names this registry as its authorization server."""
    return {
        "resource": resource,
        "authorization_servers": [public],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "mcpz gateway",
    }


def authorization_server_metadata(public: str) -> dict[str, object]:
    """RFC 8414 2: this registry as an authorization server (issuer: its public URL)."""
    return {
        "issuer": public,
        "authorization_endpoint": public + AUTHORIZE_PATH,
        "token_endpoint": public + TOKEN_PATH,
        "registration_endpoint": public + REGISTER_PATH,
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }


def resource_metadata_url(public: str, path: str) -> str:
    """Where the protected resource metadata of the gateway path `path` is (RFC 9728 3.1)."""
    return public + PROTECTED_RESOURCE_PATH + path


def registration(body: object) -> tuple[str, list[str], list[str]]:
    """A client registration request (RFC 7591 2) -> (client name, redirect URIs, grant types), else
    OAuthError invalid_redirect_uri / invalid_client_metadata. Public clients only: whatever
    `token_endpoint_auth_method` is asked for, the client is registered with `none`."""
    if not isinstance(body, dict):
        raise OAuthError("invalid_client_metadata", "the registration must be a JSON object")
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a non-empty list of URLs")
    if len(uris) > MAX_REDIRECT_URIS:
        raise OAuthError("invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} redirect URIs")
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise OAuthError("invalid_redirect_uri", f"redirect URI {uri!r} {problem}")
    grants = body.get("grant_types", ["authorization_code", "refresh_token"])
    if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
        raise OAuthError("invalid_client_metadata", "grant_types must be a list of strings")
    unsupported = sorted(set(grants) - {"authorization_code", "refresh_token"})
    if unsupported or "authorization_code" not in grants:
        raise OAuthError(
            "invalid_client_metadata",
            "grant_types may only be authorization_code (required) and refresh_token"
            + (f"; not {', '.join(unsupported)}" if unsupported else ""),
        )
    responses = body.get("response_types", ["code"])
    if responses != ["code"]:
        raise OAuthError("invalid_client_metadata", 'response_types must be ["code"]')
    name = body.get("client_name", "")
    if not isinstance(name, str) or len(name) > 128:
        raise OAuthError("invalid_client_metadata", "client_name must be text of at most 128 characters")
    return name.strip() or "an MCP client", list(dict.fromkeys(uris)), list(dict.fromkeys(grants))


class NoRedirect(OAuthError):
    """An authorization request whose client or redirect URI is not known: the error is shown to
    the person, never sent to the redirect URI (RFC 6749 4.1.2.1)."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """An authorization request that passed every check (RFC 6749 4.1.1, RFC 7636 4.3, RFC 8707 2)."""

    client_id: str
    redirect_uri: str
    state: str | None
    challenge: str
    scopes: tuple[str, ...]
    resource: str

    def fields(self) -> dict[str, str]:
        """The request as the consent form carries it back."""
        out = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            "scope": " ".join(self.scopes),
            "resource": self.resource,
        }
        if self.state is not None:
            out["state"] = self.state
        return out


def authorization_request(
    params: Mapping[str, str], registered: tuple[str, ...] | None, public: str
) -> AuthorizationRequest:
    """Check an authorization request against its client's registered redirect URIs (None: no such
    client). NoRedirect when the client or redirect URI is wrong; OAuthError (to redirect with)
    for anything else."""
    if registered is None:
        raise NoRedirect("invalid_client", "this client is not registered here (unknown client_id)")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in registered:  # exact match (OAuth 2.1 4.1.1)
        raise NoRedirect("invalid_request", "redirect_uri is not one this client registered")
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "response_type must be code")
    problem = challenge_problem(params.get("code_challenge"), params.get("code_challenge_method"))
    if problem:
        raise OAuthError("invalid_request", problem)
    state = params.get("state")
    if state is not None and len(state) > MAX_STATE:
        raise OAuthError("invalid_request", f"state is longer than {MAX_STATE} characters")
    scopes = parse_scope(params.get("scope"))
    resource = resource_of(public, params.get("resource"))
    return AuthorizationRequest(
        client_id=params["client_id"],
        redirect_uri=redirect_uri,
        state=state,
        challenge=params["code_challenge"],
        scopes=scopes,
        resource=resource,
    )


def redirect_to(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """The redirect URI with the response's parameters added to its query (RFC 6749 4.1.2)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return redirect_uri + ("&" if "?" in redirect_uri else "?") + query


def origin_of(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


MAX_DOCUMENT = 64 * 1024


def is_document_client_id(client_id: str | None) -> bool:
    """Whether `client_id` names a client ID metadata document: an https URL with a path
    (draft-ietf-oauth-client-id-metadata-document), which the registry fetches, never registers."""
    if not client_id or len(client_id) > MAX_URI or not client_id.startswith("https://"):
        return False
    try:
        parts = urlsplit(client_id)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return False
    return (
        bool(parts.hostname) and parts.path not in ("", "/") and not parts.fragment and parts.username is None
    )


def document_client(client_id: str, document: object) -> tuple[str, list[str], list[str]]:
    """A fetched client ID metadata document -> (client name, redirect URIs, grant types), checked
    as a registration is; OAuthError invalid_client when it is not this client's or not usable."""
    if not isinstance(document, dict):
        raise OAuthError("invalid_client", "the client metadata document is not a JSON object")
    if document.get("client_id") != client_id:
        raise OAuthError("invalid_client", "the client metadata document's client_id is not its own URL")
    if document.get("token_endpoint_auth_method", "none") != "none":
        raise OAuthError(
            "invalid_client", 'only public clients are served: token_endpoint_auth_method "none"'
        )
    try:
        return registration(document)
    except OAuthError as e:
        raise OAuthError("invalid_client", f"client metadata document: {e.description}") from None


def cache_seconds(cache_control: str | None, default: int = 300, longest: int = 86_400) -> int:
    """How long a fetched document may be reused, from its Cache-Control (0: not at all)."""
    directives = [d.strip().lower() for d in (cache_control or "").split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name == "max-age" and value.strip().isdigit():
            return min(int(value), longest)
    return default
