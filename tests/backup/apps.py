"""The app the restore drill deploys: it writes and counts rows in its Postgres, counts in its Redis (RESP over a
plain socket, so the build needs only psycopg), and shows an env var."""

DRILL_APP = {
    "app.py": r'''
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def redis(*args):
    u = urlsplit(os.environ["REDIS_URL"])
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        f = s.makefile("rb")
        replies = []
        for cmd in (("AUTH", u.username, u.password), args):
            s.sendall(f"*{len(cmd)}\r\n".encode() + b"".join(
                f"${len(str(a).encode())}\r\n{a}\r\n".encode() for a in cmd))
            line = f.readline().decode().strip()
            if line.startswith("$"):
                n = int(line[1:])
                line = f.read(n + 2)[:-2].decode() if n >= 0 else None
            elif line.startswith(":"):
                line = int(line[1:])
            replies.append(line)
        return replies[-1]


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        import psycopg
        if self.path in ("/write", "/count"):
            with psycopg.connect(os.environ["DATABASE_URL"]) as c:
                c.execute("CREATE TABLE IF NOT EXISTS rows (n serial PRIMARY KEY, note text)")
                if self.path == "/write":
                    c.execute("INSERT INTO rows (note) VALUES ('drill')")
                body = {"rows": c.execute("SELECT count(*) FROM rows").fetchone()[0]}
        elif self.path == "/incr":
            body = {"hits": redis("INCR", "hits")}
        elif self.path == "/hits":
            body = {"hits": int(redis("GET", "hits") or 0)}
        else:
            body = {"GREETING": os.environ.get("GREETING")}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
    "requirements.txt": "psycopg[binary]>=3.2\n",
}
