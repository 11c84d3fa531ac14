"""A minimal Ethereum JSON-RPC client over httpx2: the library talks to chains without web3."""

from __future__ import annotations

from typing import Any

from mcpz.errors import McpzError, NetworkError


class RpcError(McpzError):
    """The node answered with a JSON-RPC error; `data` holds revert data when there is any."""

    def __init__(self, message: str, data: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.data = data


class JsonRpc:
    """Calls on one node. `label` names it in errors ("the local chain", "the chain at ...")."""

    def __init__(self, url: str, label: str, timeout: float = 30) -> None:
        import httpx2

        self.url = url
        self.label = label
        self._client = httpx2.Client(timeout=timeout)
        self._id = 0

    def __call__(self, method: str, *params: Any) -> Any:
        import httpx2

        self._id += 1
        try:
            answer = self._client.post(
                self.url, json={"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)}
            )
            body = answer.json()
        except (httpx2.HTTPError, ValueError) as e:
            raise NetworkError(f"{self.label} failed on {method}: {e}") from None
        if not isinstance(body, dict):
            raise NetworkError(f"{self.label} answered {method} with no JSON-RPC object")
        if "error" in body:
            error = body["error"] if isinstance(body["error"], dict) else {"message": body["error"]}
            data = error.get("data")
            raise RpcError(
                f"{self.label} refused {method}: {error.get('message', error)}",
                data=data if isinstance(data, str) else None,
            )
        return body.get("result")

    def close(self) -> None:
        self._client.close()
