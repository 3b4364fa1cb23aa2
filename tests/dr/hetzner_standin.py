"""A stand-in for the Storage Box part of the Hetzner API (api.hetzner.com/v1), run as its own process so it can
listen inside the test's network namespace: `python -m tests.dr.hetzner_standin STATE BOX_HOME PORT`.

Contract followed (docs.hetzner.cloud/reference/hetzner, as hcloud-python 2.27 calls it):
- `Authorization: Bearer <token>` on every call, else 401 `{"error": {"code": "unauthorized", ...}}`;
- `GET /storage_boxes/{id}`, `GET|POST /storage_boxes/{id}/snapshots`, `GET /storage_boxes/{id}/snapshots/{sid}`,
  `POST /storage_boxes/{id}/actions/update_access_settings`, `GET /storage_boxes/actions/{id}`;
- POST bodies are JSON objects with only the documented keys and types (create snapshot: `description` string,
  `labels` string map; access settings: the five booleans), else 400 `invalid_input`; unknown ids 404 `not_found`;
- actions come back `running` and are `success` on the next read; snapshot names are the UTC creation time
  `YYYY-MM-DDTHH-MM-SS`, and a snapshot's files appear under `.zfs/snapshot/<name>/` of the box only while
  `access_settings.zfs_enabled` is true (read-only for the box user: owned by root).

Anything outside that is answered 404 and recorded in `violations` of STATE/state.json, which tests assert empty.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "standin-token-0123456789abcdef0123456789abcdef0123456789abcdef0123"
BOX_ID = 4242
ACCESS_KEYS = ("reachable_externally", "samba_enabled", "ssh_enabled", "webdav_enabled", "zfs_enabled")


class State:
    """JSON state on disk under a file lock, so a test process can read it and add a snapshot-plan snapshot."""

    def __init__(self, state_dir: Path, box_home: Path) -> None:
        self.dir, self.home = state_dir, box_home
        self.file, self.lock = state_dir / "state.json", state_dir / "state.lock"
        self._tlock = threading.Lock()

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "snapshots").mkdir(exist_ok=True)
        if not self.file.exists():
            self.file.write_text(json.dumps({
                "box": {"id": BOX_ID, "name": "inkmcp-postgres-backups", "username": "u4242", "server":
                        "u4242.your-storagebox.de", "system": "FSN1-BX42", "status": "active",
                        "created": "2026-11-01T00:00:00+00:00", "labels": {"role": "backups"},
                        "protection": {"delete": True}, "stats": {"size": 0, "size_data": 0, "size_snapshots": 0},
                        "storage_box_type": {"id": 1, "name": "bx11"}, "location": {"id": 1, "name": "fsn1"},
                        "snapshot_plan": {"max_snapshots": 14, "hour": 4, "minute": 0, "day_of_week": None,
                                          "day_of_month": None},
                        "access_settings": {"reachable_externally": False, "samba_enabled": False,
                                            "ssh_enabled": True, "webdav_enabled": False, "zfs_enabled": False}},
                "snapshots": [], "actions": [], "requests": [], "violations": [], "next_id": 100}))

    def __enter__(self) -> dict[str, Any]:
        self._tlock.acquire()
        self._fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.data: dict[str, Any] = json.loads(self.file.read_text())
        return self.data

    def __exit__(self, *exc: object) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.file)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._tlock.release()


def take_snapshot(state: State, data: dict[str, Any], *, automatic: bool, description: str | None = None,
                  labels: dict[str, str] | None = None, when: datetime | None = None) -> dict[str, Any]:
    """Freeze the box's files (everything but .zfs) as the snapshot plan or a manual POST would."""
    when = when or datetime.now(UTC)
    name = when.strftime("%Y-%m-%dT%H-%M-%S")
    while any(s["name"] == name for s in data["snapshots"]):
        when += timedelta(seconds=1)
        name = when.strftime("%Y-%m-%dT%H-%M-%S")
    dest = state.dir / "snapshots" / name
    shutil.copytree(state.home, dest, ignore=lambda d, names: [".zfs"] if Path(d) == state.home else [],
                    copy_function=shutil.copy2)
    for root, _dirs, files in os.walk(dest):  # root-owned, read-only to the box user
        os.chown(root, 0, 0)
        os.chmod(root, 0o755)  # noqa: S103 - a snapshot is world-readable on the box, like its source
        for f in files:
            os.chown(os.path.join(root, f), 0, 0)
            os.chmod(os.path.join(root, f), 0o644)
    data["next_id"] += 1
    snap = {"id": data["next_id"], "name": name, "description": description or "", "is_automatic": automatic,
            "labels": labels or {}, "storage_box": BOX_ID, "created": when.isoformat(),
            "stats": {"size": 0, "size_filesystem": 0}}
    data["snapshots"].append(snap)
    _sync_zfs_dir(state, data)
    return snap


def _sync_zfs_dir(state: State, data: dict[str, Any]) -> None:
    """`.zfs/snapshot` in the box home: a view of the snapshots while zfs_enabled, absent otherwise."""
    zfs = state.home / ".zfs"
    if zfs.is_symlink() or zfs.exists():
        if zfs.is_symlink():
            zfs.unlink()
        else:
            shutil.rmtree(zfs)
    if data["box"]["access_settings"]["zfs_enabled"]:
        view = state.dir / "zfs"
        view.mkdir(exist_ok=True)
        link = view / "snapshot"
        if not link.is_symlink():
            link.symlink_to(state.dir / "snapshots")
        zfs.symlink_to(view)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message, "details": {}}})

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.state as data:
            data["requests"].append({"method": method, "path": path, "body": raw.decode(errors="replace")})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._error(401, "unauthorized", "unable to authenticate")
            body: Any = None
            if method == "POST":
                if "application/json" not in (self.headers.get("Content-Type") or ""):
                    data["violations"].append(f"{method} {path}: no JSON content type")
                    return self._error(400, "invalid_input", "expected application/json")
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._error(400, "json_error", "invalid JSON")
                if not isinstance(body, dict):
                    return self._error(400, "invalid_input", "body must be an object")
            return self._route(data, method, path, body)

    def _route(self, data: dict[str, Any], method: str, path: str, body: Any) -> None:
        box = data["box"]
        if m := re.fullmatch(r"/storage_boxes/actions/(\d+)", path):
            if method != "GET":
                return self._violation(data, method, path)
            for action in data["actions"]:
                if action["id"] == int(m[1]):
                    if action["status"] == "running":  # finished by the time anyone looks again
                        action.update(status="success", progress=100, finished=_now())
                    return self._send(200, {"action": action})
            return self._error(404, "not_found", "action not found")
        m = re.fullmatch(r"/storage_boxes/(\d+)(/.*)?", path)
        if m is None:
            return self._violation(data, method, path)
        if int(m[1]) != box["id"]:
            return self._error(404, "not_found", f"storage box {m[1]} not found")
        rest = m[2] or ""
        if rest == "" and method == "GET":
            return self._send(200, {"storage_box": box})
        if rest == "/snapshots" and method == "GET":
            return self._send(200, {"snapshots": data["snapshots"]})
        if (sm := re.fullmatch(r"/snapshots/(\d+)", rest)) and method == "GET":
            for snap in data["snapshots"]:
                if snap["id"] == int(sm[1]):
                    return self._send(200, {"snapshot": snap})
            return self._error(404, "not_found", "snapshot not found")
        if rest == "/snapshots" and method == "POST":
            extra = set(body) - {"description", "labels"}
            labels = body.get("labels", {})
            if extra or not isinstance(body.get("description", ""), str) or not isinstance(labels, dict) or \
                    not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                data["violations"].append(f"POST {path}: invalid body {body}")
                return self._error(400, "invalid_input", "invalid input")
            snap = take_snapshot(self.state, data, automatic=False, description=body.get("description"),
                                 labels=labels)
            action = self._action(data, "create_snapshot")
            return self._send(201, {"snapshot": {"id": snap["id"], "storage_box": box["id"]}, "action": action})
        if rest == "/actions/update_access_settings" and method == "POST":
            if not body or set(body) - set(ACCESS_KEYS) or not all(isinstance(v, bool) for v in body.values()):
                data["violations"].append(f"POST {path}: invalid body {body}")
                return self._error(400, "invalid_input", "invalid input")
            box["access_settings"].update(body)
            _sync_zfs_dir(self.state, data)
            return self._send(201, {"action": self._action(data, "update_access_settings")})
        return self._violation(data, method, path)

    def _action(self, data: dict[str, Any], command: str) -> dict[str, Any]:
        data["next_id"] += 1
        action = {"id": data["next_id"], "command": command, "status": "running", "progress": 0,
                  "started": _now(), "finished": None, "error": None,
                  "resources": [{"id": data["box"]["id"], "type": "storage_box"}]}
        data["actions"].append(action)
        return action

    def _violation(self, data: dict[str, Any], method: str, path: str) -> None:
        data["violations"].append(f"{method} {path}: not in the contract")
        self._error(404, "not_found", "not found")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def main(argv: list[str]) -> None:
    state_dir, box_home, port = Path(argv[0]), Path(argv[1]), int(argv[2])
    state = State(state_dir, box_home)
    state.init()
    Handler.state = state
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
