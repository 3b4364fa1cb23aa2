"""Remote services the Coolify replay needs, as stand-ins on a public-looking host linked to the box.

Why: some Coolify operations reach out of the run server — a compose deployment clones the tenant's
repository (inside the helper) and sparse-checks it out on the node itself; a restart resolves the branch
head with `git ls-remote`; a database backup uploads the dump to S3 with `mc`. The box has no network, so
`Uplink` gives it one stand-in "internet" host: a network namespace routed from the box's namespace (the
way a node's uplink is), holding public TEST-NET-3 addresses that the node's egress rules let through:

- ``GIT_ADDR`` (203.0.113.80:80): git's smart HTTP protocol through git's own ``git http-backend`` (what
  GitHub speaks for public clones: ls-remote, shallow clone, fetch by commit);
- ``S3_ADDR`` (203.0.113.50:80): a PUT-object endpoint that checks each request's AWS Signature V4 against
  the configured key and secret (the only S3 call Coolify's backup upload makes after `mc alias set`), and
  keeps the objects so a test can compare them with the dump.

Containers reach both through the box's FORWARD path (DOCKER-USER allows public addresses), the node's own
shell through its routing table, exactly like GitHub and an object store on the internet. The servers run
in one process inside the stand-in namespace (`python -m inkmcp.nodes.replay_standins`); `Uplink.stop`
ends it by PID and deletes the namespace (which removes the link).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ADDR = ("203.0.113.80", 80)
S3_ADDR = ("203.0.113.50", 80)
S3_HOST = "objects.replay.test"
S3_REGION = "us-east-1"
LINK_NET = "192.0.2.{}/30"  # TEST-NET-1: the link between the box and the stand-in host
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class StandinError(RuntimeError):
    """The stand-in host cannot be set up; the message names the command that failed."""


# ------------------------------------------------------------------------------------------ git over HTTP


class GitHandler(BaseHTTPRequestHandler):
    """git's smart HTTP protocol: every request goes to `git http-backend` as a CGI, as on a git host."""

    protocol_version = "HTTP/1.1"  # keep-alive, as git hosts answer (every response has a Content-Length)
    root: Path

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH": os.environ.get("PATH", ""),
            "REQUEST_METHOD": self.command, "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length), "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=120,
                              check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        if proc.returncode != 0 and not head:
            status, payload = 500, proc.stderr
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("git: " + (format % args) + "\n")


def make_repository(root: Path, name: str, files: dict[str, str], branch: str = "main") -> str:
    """A bare repository `root/name` with one commit holding `files`; returns the commit's sha."""
    work = root / f".work-{name.replace('/', '_')}"
    bare = root / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(bare, ignore_errors=True)
    work.mkdir(parents=True)
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    git = ["git", "-c", "user.email=tenant@example.com", "-c", "user.name=tenant", "-C", str(work)]
    for args in (["init", "-q", "-b", branch], ["add", "-A"], ["commit", "-q", "-m", "replay"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    bare.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, capture_output=True)
    # A shallow fetch of one commit by id (Coolify's clone: fetch --depth=1 origin <sha>).
    subprocess.run(["git", "-C", str(bare), "config", "uploadpack.allowReachableSHA1InWant", "true"], check=True)
    sha = subprocess.run(["git", "-C", str(bare), "rev-parse", branch], check=True, capture_output=True,
                         text=True).stdout.strip()
    shutil.rmtree(work)
    return sha


# ------------------------------------------------------------------------------------------ S3 PUT object


def sigv4_signature(secret: str, method: str, path: str, query: str, headers: dict[str, str], signed: list[str],
                    payload_hash: str, amz_date: str, scope: str) -> str:
    """AWS Signature Version 4 over one request (docs.aws.amazon.com: "Create a signed AWS API request")."""
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(urllib.parse.parse_qsl(query, keep_blank_values=True)))
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical = "\n".join([method, urllib.parse.quote(path, safe="/-_.~"), canonical_query, canonical_headers,
                           ";".join(signed), payload_hash])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


AUTH_RE = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8}/[^/]+/s3/aws4_request), "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


class S3Handler(BaseHTTPRequestHandler):
    """PUT /<bucket>/<key> signed with SigV4 by `key`/`secret` is stored under root/<bucket>/<key>; every
    other request, or a wrong signature, answers an S3 XML error (what a real endpoint answers)."""

    protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (curl's uploads) at once
    root: Path
    access_key: str
    secret: str
    bucket: str

    def do_PUT(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.unquote(url.path).lstrip("/").split("/", 1)
        if len(parts) != 2 or not parts[1] or parts[0] != self.bucket:
            return self._error(404, "NoSuchBucket", f"only bucket {self.bucket!r} exists; got {url.path}")
        m = AUTH_RE.match(self.headers.get("Authorization", ""))
        if not m:
            return self._error(403, "AccessDenied", "no AWS4-HMAC-SHA256 Authorization header")
        key, scope, signed, signature = m.group(1), m.group(2), m.group(3).split(";"), m.group(4)
        if key != self.access_key:
            return self._error(403, "InvalidAccessKeyId", f"unknown access key {key}")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "host" not in signed or any(h not in headers for h in signed):
            return self._error(403, "AccessDenied", f"signed headers {signed} must include host and be present")
        amz_date = headers.get("x-amz-date", "")
        body_hash = hashlib.sha256(body).hexdigest()
        declared = headers.get("x-amz-content-sha256")
        if declared not in (None, "UNSIGNED-PAYLOAD", body_hash):
            return self._error(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 is not the body's hash")
        candidates = [declared] if declared else [body_hash, EMPTY_SHA256, "UNSIGNED-PAYLOAD"]
        if not any(hmac.compare_digest(signature, sigv4_signature(
                self.secret, "PUT", url.path, url.query, headers, signed, c, amz_date, scope)) for c in candidates):
            return self._error(403, "SignatureDoesNotMatch", "the request signature does not match")
        target = self.root / parts[0] / parts[1]
        if ".." in Path(parts[1]).parts:
            return self._error(400, "InvalidArgument", "key with ..")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324 - S3's ETag is the MD5
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def do_GET(self) -> None:
        self._error(501, "NotImplemented", "this stand-in models PUT object only")

    do_HEAD = do_GET
    do_POST = do_GET
    do_DELETE = do_GET

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"</Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("s3: " + (format % args) + "\n")


def serve(git_root: Path, s3_root: Path, access_key: str, secret: str, bucket: str,
          git_addr: tuple[str, int] = GIT_ADDR, s3_addr: tuple[str, int] = S3_ADDR) -> None:
    """Both servers in this process until SIGTERM; prints `ready` once both listen."""
    git = type("Git", (GitHandler,), {"root": git_root})
    s3 = type("S3", (S3Handler,), {"root": s3_root, "access_key": access_key, "secret": secret, "bucket": bucket})
    servers = [ThreadingHTTPServer(git_addr, git), ThreadingHTTPServer(s3_addr, s3)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for s in servers:
        s.shutdown()
        s.server_close()


# ------------------------------------------------------------------------------------------ the uplink


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise StandinError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Uplink:
    """The stand-in internet host for one box: namespace, link, routes, servers; `stop` removes all of it."""

    def __init__(self, box_netns: str, workdir: Path, s3_key: str, s3_secret: str, s3_bucket: str) -> None:
        tag = hashlib.sha256(f"{box_netns}{workdir}".encode()).hexdigest()[:8]
        self.box_netns = box_netns
        self.netns = f"inkrpl-{tag}"
        self.link = f"vrpl{tag[:6]}"
        self.workdir = workdir
        self.git_root = workdir / "git"
        self.s3_root = workdir / "s3"
        self.s3 = (s3_key, s3_secret, s3_bucket)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def git_base(self) -> str:
        return f"http://{GIT_ADDR[0]}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{S3_HOST}"

    @property
    def s3_resolve(self) -> str:
        return f"{S3_HOST}:{S3_ADDR[1]}={S3_ADDR[0]}"

    def start(self, timeout: float = 15.0) -> Uplink:
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.s3_root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(StandinError):
            _ip("netns", "del", self.netns)  # left over from a run that was killed
        with contextlib.suppress(StandinError):
            _ip("-n", self.box_netns, "link", "del", self.link)
        _ip("netns", "add", self.netns)
        try:
            _ip("-n", self.netns, "link", "set", "lo", "up")
            _ip("-n", self.box_netns, "link", "add", self.link, "type", "veth", "peer", "name", "eth0",
                "netns", self.netns)
            _ip("-n", self.box_netns, "addr", "add", LINK_NET.format(201), "dev", self.link)
            _ip("-n", self.box_netns, "link", "set", self.link, "up")
            _ip("-n", self.netns, "addr", "add", LINK_NET.format(202), "dev", "eth0")
            _ip("-n", self.netns, "link", "set", "eth0", "up")
            _ip("-n", self.netns, "route", "add", "default", "via", "192.0.2.201")
            for addr, _port in (GIT_ADDR, S3_ADDR):
                _ip("-n", self.netns, "addr", "add", f"{addr}/32", "dev", "lo")
                _ip("-n", self.box_netns, "route", "add", f"{addr}/32", "via", "192.0.2.202")
            key, secret, bucket = self.s3
            log = open(self.workdir / "standins.log", "a")
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "inkmcp.nodes.replay_standins",
                 "--git-root", str(self.git_root), "--s3-root", str(self.s3_root), "--s3-key", key,
                 "--s3-bucket", bucket],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                env={**os.environ, "INKMCP_REPLAY_S3_SECRET": secret})
            log.close()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            ready = threading.Event()
            threading.Thread(target=lambda: ready.set() if self.proc and self.proc.stdout and
                             self.proc.stdout.readline().strip() == "ready" else None, daemon=True).start()
            if not ready.wait(timeout):
                raise StandinError(f"stand-in servers did not start: see {self.workdir}/standins.log")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        with contextlib.suppress(StandinError):
            _ip("netns", "del", self.netns)  # takes the veth pair (and its routes in the box) with it

    def __enter__(self) -> Uplink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def objects(self) -> dict[str, bytes]:
        """What was uploaded: `bucket/key` -> content."""
        return {str(p.relative_to(self.s3_root)): p.read_bytes() for p in self.s3_root.rglob("*") if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inkmcp.nodes.replay_standins", description=__doc__.split("\n\n")[0])
    ap.add_argument("--git-root", type=Path, required=True)
    ap.add_argument("--s3-root", type=Path, required=True)
    ap.add_argument("--s3-key", required=True)
    ap.add_argument("--s3-bucket", required=True)
    args = ap.parse_args(argv)
    secret = os.environ.get("INKMCP_REPLAY_S3_SECRET")
    if not secret:
        raise SystemExit("set INKMCP_REPLAY_S3_SECRET (kept out of the command line, which any user can read)")
    serve(args.git_root, args.s3_root, args.s3_key, secret, args.s3_bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
