"""Real rollout: 5 real node processes, an agent of ~10 MB (seeded files), `mcpz deploy --wait`.

Figures: the time from starting `mcpz deploy NAME@1.0.0 --replicas 5 --wait` to its exit (all
replicas healthy: MCP initialize + tools/list passed on every node), and the pack bytes the nodes
received from the registry: the growth of the packs in every node's object cache
(DATA/objects.git), which store exactly what git sent (thin packs are completed with the few
bases they lacked, so this is a slight over-count). Then version 1.0.1, differing by one file
(mcpz.toml), rolled out the same way: its bytes should be tiny, as each node's object cache
offers what it holds. Goal: the update sends under 64 KB per node (a commit, its trees and one
blob, not the agent again).

    python bench/bench_rollout.py [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _mesh as mesh
import _registry as rb

NAME = "bench/big"
NODES = 5
PAYLOAD = 10_000_000
GOAL_UPDATE_BYTES_PER_NODE = 64 * 1024


def node_pack_bytes(nodes: Path) -> int:
    """Bytes of pack data in every node's object cache."""
    return sum(p.stat().st_size for p in nodes.glob("*/objects.git/objects/pack/*.pack"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true")
    g.add_smoke(parser)
    args = parser.parse_args()
    nodes_n, payload = (2, 100_000) if args.smoke else (NODES, PAYLOAD)
    info = rb.print_machine(f"real rollout: {nodes_n} node processes, a {payload / 1e6:g} MB agent")
    load_before = g.load()
    with rb.Workdir("rollout", keep=args.keep) as work:
        reg = mesh.start_registry(work, MCPZ_REGISTRY_HEARTBEAT_INTERVAL="1")
        tok = mesh.token(reg, "bench", "read,publish,deploy,node")
        folder = work.path / "big"
        mesh.agent(folder, NAME, "1.0.0", work.env, payload_bytes=payload)
        mesh.release(folder, reg, NAME, "1.0.0", tok)
        nodes = [mesh.start_node(work, reg, tok, f"node-{i}") for i in range(1, nodes_n + 1)]
        try:
            mesh.connected(reg, tok, nodes_n)
            env = {**work.env, "MCPZ_REGISTRY": reg.url, "MCPZ_TOKEN": tok}
            rows = []
            figures: dict[str, object] = {}
            for version in ("1.0.0", "1.0.1"):
                if version != "1.0.0":
                    mesh.set_version(folder, work.env, version)
                    mesh.release(folder, reg, NAME, version, tok)
                before = node_pack_bytes(work.path / "nodes")
                started = time.perf_counter()
                cmd = rb.mcpz_cmd("deploy", f"{NAME}@{version}", "--replicas", str(nodes_n), "--wait")
                subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
                took = time.perf_counter() - started
                sent = node_pack_bytes(work.path / "nodes") - before
                view = mesh.api(reg, tok, f"/v1/deployments/{NAME}")
                running = [i for i in view["instances"] if i["status"] == "running" and not i["stopping"]]
                assert view["state"] == "ready" and len(running) == nodes_n, view
                spread = len({i["node"] for i in running})
                label = (
                    f"first rollout ({payload / 1e6:g} MB)"
                    if version == "1.0.0"
                    else "update (one file changed)"
                )
                rows.append(
                    (
                        label,
                        version,
                        spread,
                        f"{took:.2f} s",
                        f"{sent / 1e6:.3f} MB",
                        f"{sent / nodes_n / 1e3:.1f} KB",
                    )
                )
                key = "first" if version == "1.0.0" else "update"
                figures[f"{key}_seconds"] = round(took, 3)
                figures[f"{key}_nodes_used"] = spread
                figures[f"{key}_bytes_to_nodes"] = sent
        finally:
            mesh.stop_nodes(nodes)
            reg.stop()
    print(rb.table(("rollout", "version", "nodes used", "deploy --wait", "sent to nodes", "per node"), rows))
    per_node = int(str(figures["update_bytes_to_nodes"])) / nodes_n
    goals = [
        g.below(
            "update (one file changed) sends < 64 KB per node",
            per_node,
            GOAL_UPDATE_BYTES_PER_NODE,
            f"{per_node / 1e3:.1f} KB per node",
        )
    ]
    figures.update(nodes=nodes_n, agent_bytes=payload)
    g.finish("rollout", info, load_before, goals, figures, smoke=args.smoke)


if __name__ == "__main__":
    main()
