"""Network namespaces for worker processes, each reached over a veth pair (standard library
only: imported by the harness and by the drivers in either virtual environment).

Namespace ``i`` gets ``10.231.<block + i>.0/30``: the root side of its veth pair is ``.1``
(where the delay proxy listens), the namespace side ``.2``. Every name carries a per-run
token, so :meth:`Namespaces.close` removes exactly what this run made, and a block whose
addresses are already on the machine is refused rather than shared.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import quote

SUBNET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Namespaces:
    """``count`` namespaces, created on enter and deleted (with their veths) on exit."""

    def __init__(self, count: int, block: int = 0) -> None:
        if not 0 <= block and block + count <= 256:
            raise ValueError("namespaces must fit in 10.231.0.0/16")
        self.count, self.block = count, block
        self.token = secrets.token_hex(2)
        self.names = [f"ofl-{self.token}-{i}" for i in range(count)]
        self._made_ns: list[str] = []
        self._made_links: list[str] = []

    def root_addr(self, i: int) -> str:
        """The address in the root namespace that namespace ``i`` reaches (the proxy's)."""
        return f"{SUBNET}.{self.block + i}.1"

    def ns_addr(self, i: int) -> str:
        return f"{SUBNET}.{self.block + i}.2"

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def __enter__(self) -> Namespaces:
        if os.geteuid() != 0:
            raise SystemExit("network namespaces need root")
        in_use = _ip("-o", "addr", "show").stdout
        for i in range(self.count):
            if f" {SUBNET}.{self.block + i}." in in_use:
                raise SystemExit(f"{SUBNET}.{self.block + i}.0/24 is in use on this machine")
        try:
            for i in range(self.count):
                self._make(i)
        except BaseException:
            self.close()
            raise
        return self

    def _make(self, i: int) -> None:
        ns, outer, inner = self.names[i], f"ov{self.token}{i}a", f"ov{self.token}{i}b"
        _ip("netns", "add", ns)
        self._made_ns.append(ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._made_links.append(outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{self.root_addr(i)}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        inside = ["netns", "exec", ns, "ip"]
        _ip(*inside, "addr", "add", f"{self.ns_addr(i)}/30", "dev", inner)
        _ip(*inside, "link", "set", inner, "up")
        _ip(*inside, "link", "set", "lo", "up")

    def close(self) -> None:
        # Deleting a namespace deletes the veth end inside it, and so the pair; a link made
        # before its namespace was (a failure half-way) is deleted by name.
        for ns in self._made_ns:
            _ip("netns", "del", ns, check=False)
        for link in self._made_links:
            if _ip("link", "show", link, check=False).returncode == 0:
                _ip("link", "del", link, check=False)
        self._made_ns, self._made_links = [], []

    def leftovers(self) -> list[str]:
        """Namespaces or links of this run still on the machine (none after close)."""
        ns = _ip("netns", "list").stdout
        links = _ip("-o", "link", "show").stdout
        return [n for n in self.names if n in ns] + [
            w for w in links.split() if w.startswith(f"ov{self.token}")
        ]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def rewrite(url: str, routes: Sequence[tuple[str, str]]) -> str:
    """``url`` with each backend ``host:port`` replaced by its proxy's ``host:port``, also
    where it is percent-encoded (a store URL inside a broker URL's query)."""
    for direct, proxied in routes:
        url = url.replace(direct, proxied).replace(quote(direct, safe=""), quote(proxied, safe=""))
    return url
