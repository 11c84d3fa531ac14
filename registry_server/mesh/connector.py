"""The cloud connector: an agent on a user's own machine, attached as a development deployment
(its endpoint, `/v1/connect/{namespace}/{name}`, is in `registry_server.mesh.routes`).

`mcpz connect` opens that WebSocket (a token with scope `deploy` in the namespace, as for a
deployment) and speaks the mesh protocol as a node that runs exactly one replica and takes no
deploys: `hello`, `welcome`, heartbeats, and `call`/`result`/`cancel`/`notify`. While it is
connected, the gateway serves the agent at `/mcp/{namespace}/{name}@dev`, to the namespace's
owner and members only: a development agent runs on someone's laptop, not for the public.

One connector per agent at a time: a second is refused (close 4409) while the first is up, so a
forgotten terminal cannot silently take another's calls.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from mcpz.mesh import Frame, Heartbeat, Hello, Notify, Result, Welcome
from registry_server.mesh.calls import DEV_VERSION, Target
from registry_server.mesh.hub import NodeConnection

log = logging.getLogger("registry_server.connector")

DEV_REPLICA = "dev"
DEV_EPOCH = 1
CLOSE_TAKEN = 4409


class ConnectorConnection(NodeConnection):
    """A connector's socket: one development replica, calls and nothing else."""

    def __init__(self, *args: Any, agent: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = agent

    async def on_hello(self, hello: Hello) -> None:
        hub = self.hub
        if self.agent in hub.calls.dev:
            self.close(CLOSE_TAKEN, f"{self.agent} is connected from another machine already")
            return
        node_id = f"dev-{secrets.token_hex(6)}"
        self.node_id = node_id
        hub.connections[node_id] = self
        hub.calls.dev[self.agent] = Target(
            deployment=self.agent,
            replica_id=DEV_REPLICA,
            epoch=DEV_EPOCH,
            node_id=node_id,
            agent=self.agent,
            version=DEV_VERSION,
        )
        self.send(
            Welcome(
                id=self.next_id(),
                node_id=node_id,
                heartbeat_interval=hub.heartbeat_interval,
                grace=hub.grace,
                server_time=time.time(),
            )
        )
        self.welcomed = True
        log.info("connector attached", extra={"agent": self.agent, "node_name": hello.node_name})

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Result):
            self.hub.calls.on_result(self, frame)
        elif isinstance(frame, Notify):
            self.hub.calls.on_notify(self, frame)
        elif not isinstance(frame, Heartbeat):
            log.debug("connector sent a %s frame: ignored", frame.TYPE)

    def detach(self) -> None:
        target = self.hub.calls.dev.get(self.agent)
        if target is not None and target.node_id == self.node_id:
            del self.hub.calls.dev[self.agent]
            log.info("connector detached", extra={"agent": self.agent})
