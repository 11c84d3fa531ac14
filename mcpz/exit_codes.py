"""Exit codes of the `mcpz` command, kept stable for CI scripts.

| code | meaning                                                         |
|------|-----------------------------------------------------------------|
| 0    | success (including "nothing to do")                             |
| 1    | a handled error that fits no narrower code                      |
| 2    | usage error: bad arguments, invalid manifest, bad name/version   |
| 3    | dependency resolution impossible                                |
| 4    | authentication required or refused (401/403)                    |
| 5    | not found: agent, version, revision or file                     |
| 6    | registry or network unreachable                                 |
| 7    | the agent failed: crashed, timed out, or a tool returned an error |
| 8    | refused by the registry: a push or publish it would not accept  |
| 9    | mcpz.lock is missing or out of date (`lock --check`, `install`, `push`) |
| 130  | interrupted (Ctrl-C)                                            |
"""

from __future__ import annotations

SUCCESS = 0
ERROR = 1
USAGE = 2
RESOLUTION_IMPOSSIBLE = 3
AUTH = 4
NOT_FOUND = 5
NETWORK = 6
AGENT_FAILED = 7
REFUSED = 8
LOCK_STALE = 9
INTERRUPTED = 130
