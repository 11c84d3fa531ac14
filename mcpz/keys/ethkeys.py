"""The one door through which mcpz and the registry import eth_account (and so py_ecc).

py_ecc calls `sys.setrecursionlimit(100000)` when it is first imported (its pairing code recurses
deeply). With that limit, input nested deep enough (JSON, pickles, ASTs) overflows the C stack and
kills the process with SIGSEGV instead of raising RecursionError. So py_ecc is imported here first,
and the limit the process had before is put back; later imports of eth_account or web3 find py_ecc
loaded and leave the limit alone. Import eth_account's names from here, never from eth_account:
tests/kernel/test_jsonlimits.py checks that no other module does.
"""

from __future__ import annotations

import sys

_limit = sys.getrecursionlimit()
import py_ecc  # noqa: E402, F401  (first, so that its setrecursionlimit runs here and is undone)

sys.setrecursionlimit(_limit)

from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct, encode_typed_data  # noqa: E402
from eth_account.signers.local import LocalAccount  # noqa: E402

__all__ = ["Account", "LocalAccount", "encode_defunct", "encode_typed_data"]
