"""A git host (the GitHub stand-in's smart HTTP) in a process of its own, for benchmarks that time InkMCP's fetch.

Why: in production InkMCP fetches a tenant's repository over https from a git host (GitHub); the host's side of
that fetch (advertising refs, `upload-pack`, `pack-objects`) runs on the host's machines, and only InkMCP's side
(`git fetch`, `git-remote-http`, `index-pack`, in the git jail) is InkMCP's work. A `file://` or local-path
repository makes InkMCP's machine do both sides: its child processes then include the server's `upload-pack` and
`pack-objects`, which no production deploy runs. Served from here, over the real smart-HTTP protocol
(`git http-backend`, as `inkmcp.github.standin` serves it to the tests) and over TLS (a certificate for 127.0.0.1
made per run, `ca_file`; `bundle` is the system's CA bundle with it, which the benchmark hands InkMCP's git as its
bundle, so that TLS costs what it costs against a public host), the server's side
is a remote service like the Coolify stand-in, and its own time is taken the same way: inside this child, at its
ASGI boundary, from the moment uvicorn hands it a request until the answer is written (the CGI `git http-backend`
and the pack it makes included). uvicorn's parsing and TLS here and the loopback transfer count as InkMCP's, as
for the Coolify stand-in; the client's side of TLS is InkMCP's as in production.

Admin routes (never timed, never logged as git requests): `POST /_bench/repo` `{"name", "files"}` creates a public
repository `bench/NAME` with one commit of `files` and answers its clone URL; `GET /_bench/git?since=N` answers
the git requests after the first N with their own times.

The child stops when its stdin closes (the parent's `stop()`, or the parent's death).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.standin_process import stop_child
from inkmcp.build import source

OWNER = "bench"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key, valid for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    cert.chmod(0o644)  # read by git as whichever user the git jail runs it
    return cert, key


def serve(root: Path, tls: Path) -> None:
    """The child: the GitHub stand-in over TLS with timed git requests and the admin routes; prints `{"url"}` on
    stdout, then serves until stdin closes."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from inkmcp.github.standin.app import StandinGitHub

    standin = StandinGitHub(root)
    standin.add_user(OWNER)
    inner = standin.app
    timed: list[dict[str, Any]] = []  # one per git request: path, status, seconds (its own time)

    async def admin(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if scope["path"] == "/_bench/repo":
            body = await request.json()
            repo = standin.create_repo(OWNER, body["name"], files=body["files"])
            await JSONResponse({"url": standin.clone_url(repo)})(scope, receive, send)
            return
        since = int(request.query_params.get("since", "0"))
        await JSONResponse({"total": len(timed), "requests": timed[since:]})(scope, receive, send)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_bench/"):
            await admin(scope, receive, send)
            return
        status = [0]

        async def noted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t = time.perf_counter()
        try:
            await inner(scope, receive, noted)
        finally:
            if scope["type"] == "http":
                timed.append({"path": scope["path"], "status": status[0], "seconds": time.perf_counter() - t})

    cert, key = make_certificate(tls)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           lifespan="off", ssl_certfile=str(cert), ssl_keyfile=str(key)))
    thread = threading.Thread(target=server.run, name="git-standin", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the git stand-in did not start")
        time.sleep(0.01)
    standin.url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    print(json.dumps({"url": standin.url}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes it
    finally:
        server.should_exit = True
        thread.join(10)


class GitStandinProcess:
    """The parent's handle on the child: `repo(files)` makes a repository and answers its clone URL; `since(n)`
    the git requests after the first n, each with its own time in the child (`seconds`)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # the certificate where any user can read it (a benchmark's own temporary directory is 0700)
        self._tls = Path(tempfile.mkdtemp(prefix="inkmcp-bench-git-tls-"))
        self._tls.chmod(0o755)
        self.ca_file = self._tls / "cert.pem"
        self.bundle = self._tls / "bundle.pem"
        self._proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root), "--tls", str(self._tls)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the git stand-in process did not start")
        self.url: str = json.loads(line)["url"]
        system = Path(source.CA_BUNDLE).read_text() if source.CA_BUNDLE else ""
        self.bundle.write_text(system + self.ca_file.read_text())
        self.bundle.chmod(0o644)
        import ssl

        import httpx

        self._admin = httpx.Client(base_url=self.url, timeout=30,
                                   verify=ssl.create_default_context(cafile=str(self.ca_file)))
        self._made = 0

    def repo(self, files: dict[str, str]) -> str:
        self._made += 1
        r = self._admin.post("/_bench/repo", json={"name": f"app{self._made}", "files": files})
        r.raise_for_status()
        return str(r.json()["url"])

    def since(self, n: int) -> list[dict[str, Any]]:
        r = self._admin.get("/_bench/git", params={"since": n})
        r.raise_for_status()
        return list(r.json()["requests"])

    def count(self) -> int:
        r = self._admin.get("/_bench/git", params={"since": 10**12})
        r.raise_for_status()
        return int(r.json()["total"])

    def stop(self) -> None:
        stop_child(self._proc, getattr(self, "_admin", None))
        shutil.rmtree(self._tls, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the GitHub stand-in's git smart HTTP in its own process")
    parser.add_argument("--serve", type=Path, required=True, help="directory for the hosted bare repositories")
    parser.add_argument("--tls", type=Path, required=True, help="directory for the certificate and its key")
    args = parser.parse_args()
    serve(args.serve, args.tls)
