"""Serving: `git clone` from our registry against `git clone` from C git servers, on loopback.

The repository is the push benchmark's agent (2,000 files / 20 MB, seed 1), pushed once with
`git push` to the registry (`mcpz registry serve`, its own process). The C git servers serve a
byte-for-byte copy of the registry's bare repository (same pack, same refs), so both sides start
from the same bytes on disk:

- `git http-backend` (C git's smart HTTP, the like-for-like peer: same protocol family, same
  client code path) run as CGI behind a tiny Python HTTP/1.1 server (bench/_registry.py); the shim
  adds a fork/exec per request and a 64 KB copy loop, both small next to a 7 MB pack;
- `git daemon` (git://), C git with no HTTP layer at all: the floor.

The `git` client speaks protocol v2 to the C servers by default and falls back to v0 with ours
(dulwich serves v0/v1 only); for one branch and one tag the difference is a few hundred bytes.
Figures, medians of --runs each, order rotated per round:

- full clone: `git clone URL DIR` (transfer, index-pack, checkout of 2,000 files);
- bare clone: `git clone --bare URL DIR` (transfer and the client's index-pack, no checkout);
- upload-pack alone: the two HTTP requests of a clone (ref advertisement, then want/done) made
  from this process with http.client, the whole pack read and dropped: the server's work plus
  the loopback wire, no client-side indexing (HTTP servers only; protocol v0 to both).

Goal (issue 3): `git clone` from the registry within 2x of C git end to end, judged against
`git http-backend`; the ratio to `git daemon` is printed beside it (no goal: the floor).

    python bench/bench_clone.py [--runs 5] [--keep] [--smoke]

(run it with the interpreter of the environment mcpz is installed in, e.g. `.venv/bin/python`)
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _goals as g
import _registry as rb

NAME = "bench/big"
GOAL_RATIO = 2.0


def pkt(data: bytes) -> bytes:
    return b"%04x%s" % (len(data) + 4, data)


def raw_upload_pack(port: int, prefix: str, want: bytes) -> tuple[float, float, int]:
    """(time to the first pack byte, total, bytes) of one stateless v0 fetch of everything."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("GET", f"{prefix}/info/refs?service=git-upload-pack")
        refs = conn.getresponse()
        advert = refs.read()
        if refs.status != 200 or want not in advert:
            raise RuntimeError(f"ref advertisement failed: HTTP {refs.status} {advert[:200]!r}")
        body = (
            pkt(
                b"want "
                + want
                + b" multi_ack_detailed side-band-64k thin-pack ofs-delta no-progress agent=bench\n"
            )
            + b"0000"
            + pkt(b"done\n")
        )
        conn.request(
            "POST",
            f"{prefix}/git-upload-pack",
            body=body,
            headers={
                "Content-Type": "application/x-git-upload-pack-request",
                "Accept": "application/x-git-upload-pack-result",
            },
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"upload-pack failed: HTTP {response.status} {response.read()[:200]!r}")
        first = response.read1(1 << 16)
        ttfb = time.perf_counter() - started
        size = len(first)
        while True:
            chunk = response.read1(1 << 16)
            if not chunk:
                break
            size += len(chunk)
        return ttfb, time.perf_counter() - started, size
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per server and kind")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    g.add_smoke(parser)
    args = parser.parse_args()
    files, total_bytes = (100, 500_000) if args.smoke else (2000, 20_000_000)
    if args.smoke:
        args.runs = 1

    info = rb.print_machine("clone: git clone from the registry vs C git servers")
    load_before = g.load()
    started = time.perf_counter()
    with rb.Workdir("bench-clone", keep=args.keep) as work:
        env = work.env
        reg = rb.Registry.start(work)
        token = reg.account("bench")
        template = work.path / "template"
        rb.write_tree(template, files=files, total_bytes=total_bytes, seed=1)
        source = work.path / "source"
        rb.make_agent_repo(source, template, NAME, "1.0.0", env)
        rb.run([rb.GIT, "tag", "v1.0.0"], env, cwd=source)
        rb.run([rb.GIT, "push", "-q", reg.git_url(NAME, token), "main", "v1.0.0"], env, cwd=source)
        head = rb.run([rb.GIT, "rev-parse", "main"], env, cwd=source).stdout.strip()

        # The C git servers serve a copy of exactly what the registry stores.
        c_root = work.path / "cgit"
        c_repo = c_root / "bench" / "big.git"
        shutil.copytree(reg.repo_path(NAME), c_repo)
        packs = sorted(p.name for p in (c_repo / "objects" / "pack").glob("*.pack"))
        pack_mb = sum(p.stat().st_size for p in (c_repo / "objects" / "pack").glob("*.pack")) / 1e6
        _, cgi_port = rb.start_http_backend(work, c_root)
        _, daemon_port = rb.start_git_daemon(work, c_root)
        print(
            f"repository: {files:,} files / {total_bytes / 1e6:g} MB, "
            f"stored as {len(packs)} pack(s) of {pack_mb:.1f} MB; "
            f"registry pid {reg.pid} :{reg.port}, http-backend :{cgi_port}, git daemon :{daemon_port}"
        )

        servers = {
            "registry": f"{reg.url}/git/{NAME}.git",
            "http-backend": f"http://127.0.0.1:{cgi_port}/bench/big.git",
            "git daemon": f"git://127.0.0.1:{daemon_port}/bench/big.git",
        }
        raw_prefix = {
            "registry": (reg.port, f"/git/{NAME}.git"),
            "http-backend": (cgi_port, "/bench/big.git"),
        }
        kinds = {"full": [], "bare": ["--bare"]}
        times: dict[tuple[str, str], list[float]] = {(k, s): [] for k in kinds for s in servers}
        raw: dict[str, list[tuple[float, float, int]]] = {s: [] for s in raw_prefix}
        n = 0

        def clone(server: str, kind: str, record: bool = True) -> None:
            nonlocal n
            n += 1
            target = work.path / f"clone-{n}"
            took = rb.timed([rb.GIT, "clone", "-q", *kinds[kind], servers[server], str(target)], env)
            if record:
                times[(kind, server)].append(took)
            shutil.rmtree(target)

        for server in servers:  # warm-up: page cache, the registry's first request
            clone(server, "bare", record=False)
        names = list(servers)
        for r in range(args.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for kind in kinds:
                for server in order:
                    clone(server, kind)
            for server in (s for s in order if s in raw_prefix):
                port, prefix = raw_prefix[server]
                raw[server].append(raw_upload_pack(port, prefix, head))
        # The clone checks out the same tree from both: verify once.
        check = work.path / "check"
        rb.run([rb.GIT, "clone", "-q", servers["registry"], str(check)], env)
        if rb.run([rb.GIT, "rev-parse", "HEAD"], env, cwd=check).stdout.strip() != head:
            raise RuntimeError("the registry's clone has a different HEAD")
        reg.stop()

    med = {key: rb.median(v) for key, v in times.items()}
    raw_med = {s: (rb.median(x[0] for x in v), rb.median(x[1] for x in v), v[0][2]) for s, v in raw.items()}

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    rows = []
    for kind, label in (
        ("full", "git clone (full checkout)"),
        ("bare", "git clone --bare (transfer + index-pack)"),
    ):
        ours, cgi, daemon = med[(kind, "registry")], med[(kind, "http-backend")], med[(kind, "git daemon")]
        rows.append(
            [label, rb.secs(ours), rb.secs(cgi), rb.secs(daemon), ratio(ours, cgi), ratio(ours, daemon)]
        )
    ro, rc = raw_med["registry"], raw_med["http-backend"]
    rows.append(
        ["upload-pack alone: first pack byte", rb.secs(ro[0]), rb.secs(rc[0]), "", ratio(ro[0], rc[0]), ""]
    )
    rows.append(
        ["upload-pack alone: whole response", rb.secs(ro[1]), rb.secs(rc[1]), "", ratio(ro[1], rc[1]), ""]
    )
    rows.append(["upload-pack response size", f"{ro[2] / 1e6:.2f} MB", f"{rc[2] / 1e6:.2f} MB", "", "", ""])
    print()
    print(
        rb.table(
            [
                f"clone (median of {args.runs})",
                "registry",
                "http-backend",
                "git daemon",
                "vs http-backend",
                "vs daemon",
            ],
            rows,
        )
    )
    full_ratio = med[("full", "registry")] / med[("full", "http-backend")]
    daemon_ratio = med[("full", "registry")] / med[("full", "git daemon")]
    goals = [
        g.at_most(
            f"full clone within {GOAL_RATIO:.0f}x of C git (git http-backend)",
            full_ratio,
            GOAL_RATIO,
            f"{full_ratio:.2f}x http-backend; {daemon_ratio:.2f}x git daemon, the floor",
        )
    ]
    print(f"{time.perf_counter() - started:.0f} s in all")
    g.finish(
        "clone",
        info,
        load_before,
        goals,
        {
            "runs": args.runs,
            "files": files,
            "pack_mb": round(pack_mb, 2),
            "clone_full_s": {s: round(med[("full", s)], 3) for s in servers},
            "clone_bare_s": {s: round(med[("bare", s)], 3) for s in servers},
            "upload_pack_s": {
                s: {"first_byte": round(v[0], 3), "total": round(v[1], 3), "bytes": v[2]}
                for s, v in raw_med.items()
            },
            "ratio_full_vs_http_backend": round(full_ratio, 2),
            "ratio_bare_vs_http_backend": round(med[("bare", "registry")] / med[("bare", "http-backend")], 2),
            "ratio_upload_pack_vs_http_backend": round(ro[1] / rc[1], 2),
            "ratio_full_vs_daemon": round(daemon_ratio, 2),
        },
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
