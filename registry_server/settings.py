"""Registry settings: flag > MCPZ_* variable > bundled configs/registry.toml."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpz.bundled import bundled_path
from mcpz.errors import UsageError
from mcpz.keys.signing import canonical_registry_url
from registry_server.tier_settings import Tier, parse_tiers


@dataclass(frozen=True)
class RegistrySettings:
    data_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_push_bytes: int = 100 * 1024 * 1024
    max_request_bytes: int = 10 * 1024 * 1024
    # Largest body of a JSON API request; seconds a client has to finish its request headers.
    max_json_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    default_token_days: int = 90
    # The URL clients use to reach this registry: what wallets sign in to and releases are signed for.
    public_url: str = ""
    chain_id: int = 1
    # JSON-RPC endpoint of that chain, for EIP-1271 contract-wallet signatures ("" = not configured).
    chain_rpc: str = ""
    # The deployment mesh: how often nodes beat, when a silent node is lost, how often to resync.
    heartbeat_interval: float = 5.0
    heartbeat_grace: float = 15.0
    resync_interval: float = 30.0
    hello_timeout: float = 10.0
    # A failed replica is tried again after retry_base seconds, twice as long after each failure in
    # a row, at most retry_cap (at once when its deployment is deployed again or a node joins).
    retry_base: float = 5.0
    retry_cap: float = 300.0
    # Who nodes serve: by default a node runs only deployments of namespaces its owner owns or is a
    # member of. `shared_nodes` makes every node serve every account; `shared_node_owners` makes
    # the nodes of those accounts a shared pool. `node_admins` (with an `admin` token) see every
    # node in /v1/nodes. A lost node is forgotten `lost_node_retention` seconds after it was lost.
    shared_nodes: bool = False
    shared_node_owners: tuple[str, ...] = ()
    node_admins: tuple[str, ...] = ()
    lost_node_retention: float = 86400.0
    # The gateway (/mcp/...): how long one call may take, how many may be in flight (then 503),
    # which browser origins and Host names may call it besides the registry's own (DNS
    # rebinding), and how often usage events are written to the database.
    call_timeout: float = 120.0
    max_calls_in_flight: int = 1000
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    usage_flush_interval: float = 1.0
    # Gateway sessions one account may hold; past it its oldest idle session ends.
    max_sessions_per_account: int = 64
    # Sign-in nonces: at most nonce_rate_limit per client address in nonce_rate_window seconds.
    nonce_rate_limit: int = 30
    nonce_rate_window: float = 60.0
    # The marketplace: accounts whose `admin` tokens decide on reported reviews, the reports that
    # hide a review until they do, and how often listings are swept for missed publishes and
    # their usage figures refreshed (seconds).
    market_admins: tuple[str, ...] = ()
    review_report_threshold: int = 3
    market_refresh_interval: float = 30.0
    # Billing: the platform's fee on every charge (basis points), the days a price increase waits
    # before it applies, the days a creator's earnings stay pending (refundable) before payout, and
    # the settlement token amounts are counted in.
    platform_fee_bps: int = 2000
    price_notice_days: float = 14.0
    refund_window_days: float = 7.0
    currency: str = "USDC"
    currency_decimals: int = 6
    # Platform tiers (docs/tiers.md): their limits, and the tier of accounts not given another.
    tiers: tuple[Tier, ...] = (Tier("free"),)
    default_tier: str = "free"
    # Settlement on chain (docs/settlement.md), apart from sign-in's chain: "" rpc = off. The
    # operator's key is no setting: registry_server/settlement/operator.py reads it from the
    # environment or `settlement_operator_keystore`, so it never reaches this repr or a log.
    settlement_rpc: str = ""
    settlement_chain_id: int = 0
    settlement_contract: str = ""
    settlement_confirmations: int = 12
    settlement_start_block: int = 0  # the contract's deployment block: nothing before it is read
    settlement_operator_keystore: str = ""
    # x402's relayer (docs/x402.md): the account that submits payers' transferWithAuthorization and
    # pays its gas; never the operator, whose nonces the payout job takes. Its key, like the operator's,
    # comes from the environment or this keystore (registry_server/settlement/operator.py).
    settlement_relayer_keystore: str = ""
    settlement_poll_interval: float = 3.0
    # Seconds a withdrawal voucher stays usable on chain; its amount is held off the balance until
    # it is used or has expired.
    settlement_voucher_ttl: int = 86400
    # Payouts (docs/settlement.md): how often a batch is built (seconds; 0 = only by `mcpz registry
    # payouts run`), the least a creator is paid in one (base units), how long a commit may sit in the
    # pool before it is replaced at the same nonce, and the most the operator pays per gas (gwei).
    settlement_payout_interval: float = 86400.0
    settlement_payout_minimum: int = 1_000_000
    settlement_stuck_after: float = 300.0
    settlement_max_fee_gwei: int = 500

    # Prometheus metrics (registry_server/metrics.py) on a port of their own, apart from the API:
    # 0 = off. The host is loopback unless the operator's Prometheus scrapes from elsewhere.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # W3C trace context on gateway calls (docs/metrics.md#traces): continued from the client's
    # `traceparent` (or begun) and passed to the agent in the request's `_meta`.
    gateway_trace: bool = True
    # OTLP/HTTP endpoint (e.g. http://collector:4318) to export sampled gateway calls to as spans;
    # "" = none (needs the `otel` extra).
    otlp_endpoint: str = ""
    # Garbage collection (docs/operations.md): `mcpz registry gc` every gc_interval seconds (0: only
    # when run by hand); unreachable git objects younger than gc_grace seconds are kept, and expired
    # or revoked tokens for token_retention seconds.
    gc_interval: float = 0.0
    gc_grace: float = 14 * 86400.0
    token_retention: float = 30 * 86400.0
    # Replica log history (docs/deployments.md#logs): per deployment, up to log_files files of
    # log_file_bytes each under <data>/logs; 0 in either keeps only the last 1,000 lines in memory.
    log_file_bytes: int = 1024 * 1024
    log_files: int = 3
    # Several replicas (docs/scaling.md): `replica` on (`mcpz registry serve --replica`) needs
    # PostgreSQL (MCPZ_DATABASE_URL) and NATS (MCPZ_NATS_URL); `replica_name` tells this one apart
    # (default: host:port:pid); a job's lease runs out `lease_ttl` seconds after its holder's last
    # renewal, so failover takes about that long.
    replica: bool = False
    nats_url: str = "nats://127.0.0.1:4222"
    replica_name: str = ""
    lease_ttl: float = 5.0

    @property
    def base_url(self) -> str:
        """The public URL as configured, else the address the registry listens on; no trailing `/`."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def settlement_on(self) -> bool:
        return bool(self.settlement_rpc)

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def usage_dir(self) -> Path:
        """Where this process journals usage: its own folder per replica, as replicas share `data_dir`."""
        if self.replica:
            return self.data_dir / "usage" / "replicas" / self.replica_name
        return self.data_dir / "usage"

    @classmethod
    def load(
        cls,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> RegistrySettings:
        env = os.environ if env is None else env
        with (bundled_path("configs") / "registry.toml").open("rb") as f:
            values: dict[str, Any] = tomllib.load(f)
        keys = ("host", "port", "max_push_bytes", "max_request_bytes", "default_token_days")
        mesh = (
            "heartbeat_interval", "heartbeat_grace", "resync_interval", "hello_timeout",
            "shared_nodes", "shared_node_owners", "node_admins", "lost_node_retention",
            "retry_base", "retry_cap",
        )  # fmt: skip
        gateway = (
            "call_timeout", "max_calls_in_flight", "allowed_origins", "allowed_hosts", "usage_flush_interval",
        )  # fmt: skip
        nonces = ("nonce_rate_limit", "nonce_rate_window")
        limits = ("max_json_bytes", "header_timeout", "max_sessions_per_account")
        market = ("market_admins", "review_report_threshold", "market_refresh_interval")
        metrics = ("metrics_host", "metrics_port", "gateway_trace", "otlp_endpoint")
        billing = (
            "platform_fee_bps",
            "price_notice_days",
            "refund_window_days",
            "currency",
            "currency_decimals",
            "default_tier",
        )
        settlement = (
            "settlement_rpc", "settlement_chain_id", "settlement_contract", "settlement_confirmations",
            "settlement_start_block", "settlement_operator_keystore", "settlement_relayer_keystore",
            "settlement_poll_interval",
            "settlement_voucher_ttl",
            "settlement_payout_interval", "settlement_payout_minimum", "settlement_stuck_after",
            "settlement_max_fee_gwei",
        )  # fmt: skip
        gc = ("gc_interval", "gc_grace", "token_retention", "log_file_bytes", "log_files")
        cluster = ("replica", "replica_name", "lease_ttl")
        for key in (
            *keys, "public_url", "chain_id", "chain_rpc", *mesh, *gateway, *nonces, *limits, *market,
            *billing, *settlement, *metrics, *gc, *cluster,
        ):  # fmt: skip
            var = f"MCPZ_REGISTRY_{key.upper()}"
            if env.get(var):
                values[key] = env[var]
        values.update({k: v for k, v in flags.items() if v is not None})
        if data_dir is None:
            data_dir = Path(env["MCPZ_REGISTRY_DATA"]) if env.get("MCPZ_REGISTRY_DATA") else None
        if data_dir is None:
            from mcpz.config import data_dir as user_data_dir

            data_dir = user_data_dir(env) / "registry"
        data_dir = data_dir.expanduser().resolve()
        database_url = env.get("MCPZ_DATABASE_URL") or f"sqlite:///{data_dir / 'registry.db'}"
        tiers, default_tier = parse_tiers(values.get("tiers"), str(values.get("default_tier", "")))
        try:
            return cls(
                data_dir=data_dir,
                database_url=database_url,
                host=str(values["host"]),
                port=int(values["port"]),
                max_push_bytes=int(values["max_push_bytes"]),
                max_request_bytes=int(values["max_request_bytes"]),
                max_json_bytes=int(values.get("max_json_bytes", 1024 * 1024)),
                header_timeout=float(values.get("header_timeout", 10.0)),
                default_token_days=int(values["default_token_days"]),
                public_url=str(values.get("public_url") or f"http://{values['host']}:{values['port']}"),
                chain_id=int(values.get("chain_id", 1)),
                chain_rpc=str(values.get("chain_rpc", "")),
                heartbeat_interval=float(values.get("heartbeat_interval", 5.0)),
                heartbeat_grace=float(values.get("heartbeat_grace", 15.0)),
                resync_interval=float(values.get("resync_interval", 30.0)),
                hello_timeout=float(values.get("hello_timeout", 10.0)),
                retry_base=float(values.get("retry_base", 5.0)),
                retry_cap=float(values.get("retry_cap", 300.0)),
                shared_nodes=_flag("shared_nodes", values.get("shared_nodes", False)),
                shared_node_owners=_names(values.get("shared_node_owners", ())),
                node_admins=_names(values.get("node_admins", ())),
                lost_node_retention=_positive(
                    "lost_node_retention", values.get("lost_node_retention", 86400.0)
                ),
                call_timeout=float(values.get("call_timeout", 120.0)),
                max_calls_in_flight=int(values.get("max_calls_in_flight", 1000)),
                allowed_origins=_origins(values.get("allowed_origins", ())),
                allowed_hosts=tuple(o.lower() for o in _origins(values.get("allowed_hosts", ()))),
                usage_flush_interval=float(values.get("usage_flush_interval", 1.0)),
                max_sessions_per_account=int(values.get("max_sessions_per_account", 64)),
                nonce_rate_limit=int(values.get("nonce_rate_limit", 30)),
                nonce_rate_window=float(values.get("nonce_rate_window", 60.0)),
                market_admins=_names(values.get("market_admins", ())),
                review_report_threshold=int(values.get("review_report_threshold", 3)),
                market_refresh_interval=float(values.get("market_refresh_interval", 30.0)),
                platform_fee_bps=int(values.get("platform_fee_bps", 2000)),
                price_notice_days=float(values.get("price_notice_days", 14.0)),
                refund_window_days=float(values.get("refund_window_days", 7.0)),
                currency=str(values.get("currency", "USDC")),
                currency_decimals=int(values.get("currency_decimals", 6)),
                tiers=tiers,
                default_tier=default_tier,
                settlement_rpc=str(values.get("settlement_rpc", "")),
                settlement_chain_id=int(values.get("settlement_chain_id", 0)),
                settlement_contract=str(values.get("settlement_contract", "")),
                settlement_confirmations=int(values.get("settlement_confirmations", 12)),
                settlement_start_block=int(values.get("settlement_start_block", 0)),
                settlement_operator_keystore=str(values.get("settlement_operator_keystore", "")),
                settlement_relayer_keystore=str(values.get("settlement_relayer_keystore", "")),
                settlement_poll_interval=float(values.get("settlement_poll_interval", 3.0)),
                settlement_voucher_ttl=int(values.get("settlement_voucher_ttl", 86400)),
                settlement_payout_interval=float(values.get("settlement_payout_interval", 86400.0)),
                settlement_payout_minimum=int(values.get("settlement_payout_minimum", 1_000_000)),
                settlement_stuck_after=float(values.get("settlement_stuck_after", 300.0)),
                settlement_max_fee_gwei=int(values.get("settlement_max_fee_gwei", 500)),
                metrics_host=str(values.get("metrics_host", "127.0.0.1")),
                metrics_port=int(values.get("metrics_port", 0)),
                gateway_trace=_flag("gateway_trace", values.get("gateway_trace", True)),
                otlp_endpoint=str(values.get("otlp_endpoint", "")),
                gc_interval=float(values.get("gc_interval", 0.0)),
                gc_grace=float(values.get("gc_grace", 14 * 86400.0)),
                token_retention=float(values.get("token_retention", 30 * 86400.0)),
                log_file_bytes=int(values.get("log_file_bytes", 1024 * 1024)),
                log_files=int(values.get("log_files", 3)),
                replica=_flag("replica", values.get("replica", False)),
                nats_url=env.get("MCPZ_NATS_URL") or str(values.get("nats_url", "nats://127.0.0.1:4222")),
                replica_name=_replica_name(values.get("replica_name", ""), values["port"]),
                lease_ttl=_positive("lease_ttl", values.get("lease_ttl", 5.0)),
            )
        except (KeyError, ValueError) as e:
            raise UsageError(f"invalid registry setting: {e}", hint="check MCPZ_REGISTRY_* variables") from e

    def __post_init__(self) -> None:
        if not 0 <= self.platform_fee_bps <= 10_000:
            raise UsageError(
                f"invalid registry setting: platform_fee_bps {self.platform_fee_bps} is not 0 to 10000",
                hint="set the platform fee in basis points: 2000 is 20 %",
            )
        if self.price_notice_days < 0 or self.refund_window_days < 0:
            raise UsageError(
                "invalid registry setting: price_notice_days and refund_window_days must not be negative",
                hint="fix them in configs/registry.toml or MCPZ_REGISTRY_*",
            )
        # A port out of range would be announced and then silently replaced by another one.
        if not 1 <= self.port <= 65535:
            raise UsageError(
                f"invalid registry setting: port {self.port} is not between 1 and 65535",
                hint="pass --port or MCPZ_REGISTRY_PORT with a port in that range",
            )
        if self.settlement_rpc and not (self.settlement_chain_id > 0 and self.settlement_contract):
            raise UsageError(
                "invalid registry setting: settlement_rpc is set without settlement_chain_id and "
                "settlement_contract",
                hint="set MCPZ_REGISTRY_SETTLEMENT_CHAIN_ID and MCPZ_REGISTRY_SETTLEMENT_CONTRACT "
                "(`mcpz chain dev` prints them for a local chain)",
            )
        if self.settlement_start_block < 0:
            raise UsageError(
                f"invalid registry setting: settlement_start_block {self.settlement_start_block} is negative",
                hint="set MCPZ_REGISTRY_SETTLEMENT_START_BLOCK to the contract's deployment block, or 0",
            )
        if self.settlement_confirmations < 1:
            raise UsageError(
                f"invalid registry setting: settlement_confirmations {self.settlement_confirmations} "
                "is below 1",
                hint="set MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS to the blocks a deposit waits (12)",
            )
        if not 0 <= self.metrics_port <= 65535:
            raise UsageError(
                f"invalid registry setting: metrics_port {self.metrics_port} is not between 0 and 65535",
                hint="set MCPZ_REGISTRY_METRICS_PORT to a free port, or 0 for no metrics",
            )
        if self.settlement_payout_interval < 0:
            raise UsageError(
                "invalid registry setting: settlement_payout_interval is negative",
                hint="set the seconds between payout batches, or 0 to build them only by "
                "`mcpz registry payouts run`",
            )
        for key in ("gc_interval", "gc_grace", "token_retention"):
            if not 0 <= getattr(self, key) < float("inf"):
                raise UsageError(
                    f"invalid registry setting: {key} must be 0 or more seconds, not {getattr(self, key)}",
                    hint=f"fix MCPZ_REGISTRY_{key.upper()}",
                )
        for key in _POSITIVE:
            if not getattr(self, key) > 0:
                raise UsageError(
                    f"invalid registry setting: {key} must be above 0, not {getattr(self, key)}",
                    hint=f"fix MCPZ_REGISTRY_{key.upper()}",
                )


_POSITIVE = (
    "settlement_payout_minimum",
    "settlement_stuck_after",
    "settlement_max_fee_gwei",
    "max_push_bytes",
    "max_request_bytes",
    "max_json_bytes",
    "header_timeout",
    "max_sessions_per_account",
    "heartbeat_interval",
    "heartbeat_grace",
    "resync_interval",
    "hello_timeout",
    "retry_base",
    "retry_cap",
    "call_timeout",
    "max_calls_in_flight",
    "usage_flush_interval",
    "nonce_rate_limit",
    "nonce_rate_window",
    "review_report_threshold",
    "market_refresh_interval",
    "settlement_poll_interval",
    "settlement_voucher_ttl",
)


def _replica_name(value: object, port: object) -> str:
    """The name a replica holds leases and keeps its journal under: given, or host-port (stable
    across restarts, so a restarted replica finds its own journal)."""
    import socket

    # No dots: the name is one token of the replicas' NATS subjects.
    name = str(value or f"{socket.gethostname().replace('.', '-')}-{port}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        raise ValueError(f"replica_name must be letters, digits, '_' or '-' (at most 64), not {name!r}")
    return name


def _flag(key: str, value: object) -> bool:
    """A boolean from TOML, or "true"/"false" (also 1/0, yes/no) from the environment."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{key} must be true or false, not {value!r}")


def _positive(key: str, value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{key} must be a positive number of seconds, not {value!r}")
    return number


def _names(value: object) -> tuple[str, ...]:
    """Account names as a list (TOML) or a comma-separated string (environment)."""
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return tuple(str(item).strip() for item in items if str(item).strip())


def _origins(value: object) -> tuple[str, ...]:
    """Origins as a list (TOML) or a comma-separated string (environment)."""
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())


def public_url(settings: RegistrySettings) -> str:
    """This registry's public base URL, canonical: what clients sign in to and sign releases for."""
    return canonical_registry_url(settings.base_url)
