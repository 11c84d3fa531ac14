"""From an assignment to a folder and a process: fetch, verify, check out, resolve the command.

`pull_release` fetches the release's commit and each locked dependency's into the node's object
cache (only what is missing), verifies them, and checks them out in one atomic step: the release
at the folder's root, each dependency at `.mcpz/deps/{namespace}/{name}/` with the marker file
`mcpz install` writes there (`mcpz.deps.install`), so an agent finds its dependencies the same
way on a node as on a laptop. `process_spec` turns
the assignment's `[run]` command and env into the exact process to start there.

Before anything is fetched, the deploy's signed deployment statement is checked (`verify_deployment`:
the namespace's key signed it, it names what the deploy runs, and its revision is not lower than
one the node has seen); after the fetch, the release's signature (`verify_signature`). Both fail
the replica with `verify-failed`. The node also fetches the registry's revoked-keys list now and
then (`refresh_revocations`) and remembers what it says: a key revoked for a namespace stays refused.

The node's token goes only to the registry the node was started with: a deploy whose
`registry_url` names another host is fetched without it.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcpz.deps.install import DEPS_DIR as DEPS_PATH
from mcpz.deps.install import MARKER
from mcpz.keys.trust import NamespaceKeys, VerifiedDeployment, VerifiedRelease, Verifier
from mcpz.local.process import agent_process
from mcpz.manifest import Manifest, RunSpec
from mcpz.node.errors import StartError
from mcpz.node.fetch import FetchResult, ObjectCache
from mcpz.node.process import Limits, ProcessSpec
from mcpz.node.state import Assignment
from mcpz.repo.checkout import CheckoutStats, Nested, ReleaseError

logger = logging.getLogger(__name__)

DEPS_DIR = DEPS_PATH.parts  # (".mcpz", "deps"): where `mcpz install` puts them too

PASSED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
"""What a replica inherits of the node's own environment: enough to run, never a credential
(`MCPZ_TOKEN` and every other `MCPZ_*` stay with the node)."""

REVOCATIONS_MAX_AGE = 60.0
"""Seconds the node goes on with the revoked-keys list it fetched last before it fetches it again
(at most once per this, and only when it checks a deploy)."""


@dataclass(frozen=True, slots=True)
class RegistryAccess:
    """How the node reaches its registry's git repositories."""

    base_url: str  # http(s)://host[:port][/prefix], no trailing slash
    token: str | None = None
    ca_file: str | None = None

    def token_for(self, url: str) -> str | None:
        """The node's token, if `url` is on the node's own registry (same scheme, host, port)."""
        if self.token is None:
            return None
        mine = urllib.parse.urlsplit(self.base_url)
        theirs = urllib.parse.urlsplit(url)
        if (mine.scheme, mine.netloc.lower()) == (theirs.scheme, theirs.netloc.lower()):
            return self.token
        logger.warning("fetching from %s without the node's token: it is not %s", theirs.netloc, mine.netloc)
        return None

    def dependency_url(self, release_url: str, agent: str, dependency: str) -> str:
        """The repository of `dependency`, beside the release's own when its URL ends in `/{agent}.git`."""
        suffix = f"/{agent}.git"
        if release_url.endswith(suffix):
            return f"{release_url[: -len(suffix)]}/{dependency}.git"
        return f"{self.base_url}/git/{dependency}.git"


@dataclass(frozen=True, slots=True)
class Pulled:
    folder: Path
    fetches: tuple[FetchResult, ...]
    checkout: CheckoutStats

    @property
    def objects(self) -> int:
        return sum(f.objects for f in self.fetches)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.fetches)


def _namespace_keys(assignment: Assignment) -> NamespaceKeys | None:
    """The keys of the agent's namespace the deploy carried; None when it carried none."""
    from mcpz.errors import McpzError

    if not assignment.namespace_keys:
        return None
    try:
        return NamespaceKeys.from_json(json.loads(assignment.namespace_keys))
    except (ValueError, KeyError, TypeError, AttributeError, McpzError) as e:
        namespace = assignment.agent.split("/")[0]
        raise ReleaseError(f'the registry sent unreadable keys of "{namespace}": {e}') from e


def refresh_revocations(
    access: RegistryAccess, verifier: Verifier, max_age: float = REVOCATIONS_MAX_AGE
) -> int:
    """Fetch the registry's revoked-keys list (GET /v1/revoked-keys) if it is due, and remember the
    revocations whose signatures check out. Best effort: a registry that cannot answer leaves the
    node with what it remembers (a warning is logged). Returns how many revocations were new."""
    import httpx2

    if not verifier.revocations_due(max_age):
        return 0
    url = f"{access.base_url}/v1/revoked-keys"
    token = access.token_for(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=access.ca_file) if access.ca_file else True
    )
    try:
        response = httpx2.get(url, headers=headers, timeout=5.0, verify=verify)
        response.raise_for_status()
        body = response.json()
    except (httpx2.HTTPError, ValueError) as e:
        logger.warning("cannot fetch the registry's revoked keys (%s): going on with those known", e)
        return 0
    if not isinstance(body, dict):
        logger.warning("the registry's revoked-keys list is not a JSON object: ignored")
        return 0
    learned = verifier.learn_revocations(body)
    if learned:
        logger.info("learned %d key revocation(s) from the registry", learned)
    return learned


def verify_deployment(assignment: Assignment, verifier: Verifier) -> VerifiedDeployment | None:
    """Check the deployer's signed statement the deploy carried: signed by the namespace's pinned
    key, naming this deployment, agent, version and commit, at a revision not lower than the
    highest the node has seen (which it then remembers). ReleaseError (verify-failed) otherwise.
    None: an unsigned deploy, let through by --allow-unsigned."""
    from mcpz.errors import McpzError
    from mcpz.keys import signing

    deployment = assignment.deployment
    signatures = [signature for _signer, signature in assignment.deployment_signatures]
    if not assignment.deployment_statement:
        if verifier.allow_unsigned:
            logger.warning("running a replica of unsigned deployment %s (--allow-unsigned)", deployment)
            return None
        raise ReleaseError(
            f"deployment {deployment} is not signed",
            hint="deploy with a wallet: `mcpz deploy` signs when one exists (`mcpz wallet create`)",
        )
    try:
        statement = signing.DeploymentStatement.parse(assignment.deployment_statement)
    except signing.StatementError as e:
        raise ReleaseError(f"the deployment statement of {deployment} is malformed: {e.message}") from e
    asked = (assignment.deployment, assignment.agent, assignment.version, assignment.commit)
    signed = (statement.deployment, statement.name, statement.version, statement.commit)
    if asked != signed:
        raise ReleaseError(
            f"the deploy asks for {asked[0]}: {asked[1]} {asked[2]} at {asked[3][:12]}, but the deployment "
            f"statement signed says {signed[0]}: {signed[1]} {signed[2]} at {signed[3][:12]}",
            hint="the registry changed the deployment after it was signed",
        )
    keys = _namespace_keys(assignment)
    if keys is None:
        if signatures:
            raise ReleaseError(
                f'the registry sent no keys of "{deployment.split("/")[0]}", so the deployment\'s '
                "signature cannot be checked"
            )
        keys = NamespaceKeys(deployment.split("/")[0], None)
    try:
        verified = verifier.verify_deployment(statement, signatures, keys=keys)
    except McpzError as e:  # a TrustError, or keys of another namespace
        raise ReleaseError(e.message, hint=e.hint) from e
    if verified.signer is not None:
        logger.info(
            "deployment %s revision %d is signed by %s", deployment, verified.revision, verified.signer
        )
    return verified


def verify_signature(cache: ObjectCache, assignment: Assignment, verifier: Verifier) -> VerifiedRelease:
    """Check that the namespace's pinned key signed the release at the commit just fetched, with
    the manifest bytes read from that commit. ReleaseError (verify-failed) when it does not."""
    from mcpz.errors import McpzError

    signatures = [signature for _signer, signature in assignment.signatures]
    if not signatures and verifier.allow_unsigned:
        logger.warning(
            "running unsigned release %s %s (--allow-unsigned)", assignment.agent, assignment.version
        )
        return VerifiedRelease(assignment.agent, assignment.version, assignment.commit, None)
    namespace = assignment.agent.split("/")[0]
    keys = _namespace_keys(assignment)
    if keys is None:
        if not signatures:
            message = f"{assignment.agent} {assignment.version} is not signed"
        else:
            message = (
                f'the registry sent no keys of "{namespace}", so the release\'s signature cannot be checked'
            )
        raise ReleaseError(
            message, hint="publish signed releases (`mcpz push` with a wallet, or `mcpz sign`)"
        )
    try:
        return verifier.verify_release(
            name=assignment.agent,
            version=assignment.version,
            commit=assignment.commit,
            manifest=cache.manifest_bytes(assignment.commit),
            signatures=signatures,
            keys=keys,
            tools=assignment.tools_digest or None,
        )
    except ReleaseError:
        raise
    except McpzError as e:  # a TrustError, or keys of another namespace
        raise ReleaseError(e.message, hint=e.hint) from e


def pull_release(
    cache: ObjectCache,
    assignment: Assignment,
    folder: Path,
    access: RegistryAccess,
    verifier: Verifier | None = None,
) -> Pulled:
    """Fetch and verify the release and its dependencies, and check them out into `folder`.

    With a `verifier`, the deployment's statement is checked before the fetch and the release's
    signature after it, before the checkout. Blocking: run it in a worker thread. Raises FetchError
    or ReleaseError (CheckoutRefused).
    """
    if verifier is not None:
        refresh_revocations(access, verifier)
        verify_deployment(assignment, verifier)
    url = assignment.registry_url
    fetches = [
        cache.fetch(
            url,
            assignment.commit,
            agent=assignment.agent,
            version=assignment.version,
            token=access.token_for(url),
            ca_file=access.ca_file,
        )
    ]
    nested: list[Nested] = []
    for dep in assignment.dependencies:
        dep_url = access.dependency_url(url, assignment.agent, dep.name)
        fetches.append(
            cache.fetch(
                dep_url,
                dep.commit,
                agent=dep.name,
                version=dep.version,
                token=access.token_for(dep_url),
                ca_file=access.ca_file,
            )
        )
        namespace, name = dep.name.split("/")
        # The same marker `mcpz install` leaves, so a dependency folder reads the same either way.
        record = {"name": dep.name, "version": dep.version, "commit": dep.commit, "registry": access.base_url}
        marker = (MARKER, (json.dumps(record, indent=2) + "\n").encode())
        nested.append(Nested((*DEPS_DIR, namespace, name), dep.commit, files=(marker,)))
    if verifier is not None:
        verified = verify_signature(cache, assignment, verifier)
        if verified.signer is not None:
            logger.info("%s %s is signed by %s", assignment.agent, assignment.version, verified.signer)
    stats = cache.checkout(assignment.commit, folder, nested=nested)
    return Pulled(folder, tuple(fetches), stats)


def base_environment(
    environ: Mapping[str, str] | None = None, passed: Sequence[str] = PASSED_ENV
) -> dict[str, str]:
    """The part of the node's environment its replicas start from."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in passed if key in environ}


def process_spec(assignment: Assignment, folder: Path, base_env: Mapping[str, str]) -> ProcessSpec:
    """The process that serves `assignment` from `folder`: `python` is the node's interpreter,
    the manifest's env goes over `base_env`, and the replica learns who it is from `MCPZ_*`.

    Dependencies are on `PYTHONPATH` (each one's folder) and listed in `MCPZ_DEPS_DIR`.
    """
    env = dict(base_env)
    env.update(
        {
            "MCPZ_DEPLOYMENT": assignment.deployment,
            "MCPZ_REPLICA_ID": assignment.replica_id,
            "MCPZ_AGENT": assignment.agent,
            "MCPZ_VERSION": assignment.version,
            "MCPZ_COMMIT": assignment.commit,
        }
    )
    if assignment.dependencies:
        deps = folder.joinpath(*DEPS_DIR)
        env["MCPZ_DEPS_DIR"] = str(deps)
        paths = [str(deps / d.name) for d in assignment.dependencies]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
    manifest = Manifest(
        name=assignment.agent,
        version=assignment.version,
        run=RunSpec(command=assignment.command, env=dict(assignment.env)),
    )
    from mcpz.errors import McpzError

    try:
        resolved = agent_process(folder, env=env, manifest=manifest)
    except McpzError as e:
        raise StartError(e.message, hint=e.hint) from e
    limits = Limits(memory_bytes=assignment.memory_bytes, open_files=assignment.open_files)
    return ProcessSpec(argv=resolved.argv, cwd=resolved.cwd, env=resolved.env, limits=limits)
