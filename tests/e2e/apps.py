"""Tenant apps the e2e tests deploy, as file maps for `git_repo`."""

PY_WEB = {
    "app.py": '''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

print("booting with secret", os.environ.get("API_SECRET", "-"), flush=True)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/db":
            import psycopg
            with psycopg.connect(os.environ["DATABASE_URL"]) as c:
                c.execute("CREATE TABLE IF NOT EXISTS hits (n serial PRIMARY KEY)")
                c.execute("INSERT INTO hits DEFAULT VALUES")
                body = {"hits": c.execute("SELECT count(*) FROM hits").fetchone()[0]}
        elif self.path == "/env":
            body = {"GREETING": os.environ.get("GREETING"), "PORT": os.environ.get("PORT")}
        elif self.path == "/whoami":
            body = {"uid": os.getuid(), "inkmcp_env": sorted(k for k in os.environ if k.startswith("INKMCP"))}
        else:
            body = {"ok": True, "version": open("VERSION").read().strip()}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
    "requirements.txt": "psycopg[binary]>=3.2\n",
    "VERSION": "1\n",
}

STATIC_SITE = {"index.html": "<!doctype html><h1>hello static</h1>\n", "about.html": "<p>about</p>\n"}

WS_ECHO = {
    "server.py": '''
import asyncio, os
from websockets.asyncio.server import serve

async def echo(ws):
    async for msg in ws:
        await ws.send("echo:" + msg)

async def main():
    async with serve(echo, "127.0.0.1", int(os.environ["PORT"])):
        await asyncio.Future()

asyncio.run(main())
''',
    "requirements.txt": "websockets>=13\n",
    "Procfile": "web: python server.py\n",
}

WORKER = {
    "worker.py": '''
import os, time
n = 0
while True:
    n += 1
    print(f"tick {n} token={os.environ.get('WORKER_TOKEN')}", flush=True)
    time.sleep(0.5)
''',
    "Procfile": "worker: python worker.py\n",
}

ON_DEMAND = {
    "app.py": '''
import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
started = time.time()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = f"awake since {started}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
}

# several services from one repo: a Node-built static site, an API with a release phase, a worker
MONOREPO = {
    "inkmcp.yaml": """
services:
  site:
    type: webapp_static
    path: site
    static_dir: dist
  api:
    path: api
    release: python migrate.py
    start: python server.py
  worker:
    type: backend
    path: api
    start: python worker.py
""",
    "site/package.json": '{"name": "site", "version": "1.0.0", "private": true, '
    '"scripts": {"build": "node build.js"}}\n',
    "site/package-lock.json": '{"name": "site", "version": "1.0.0", "lockfileVersion": 3, "requires": true, '
    '"packages": {"": {"name": "site", "version": "1.0.0"}}}\n',
    "site/build.js": "const fs = require('fs'); fs.mkdirSync('dist', {recursive: true});\n"
    "fs.writeFileSync('dist/index.html', '<h1>built by node ' + process.version + '</h1>');\n",
    "api/migrate.py": "import os, pathlib\n"
    "pathlib.Path('migrated.txt').write_text(os.environ.get('RELEASE_MARK', 'x'))\n"
    "print('migration ran', flush=True)\n",
    "api/server.py": '''
import os, pathlib
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = ("migrated=" + pathlib.Path("migrated.txt").read_text()).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
    "api/worker.py": "import time\nwhile True:\n    print('working', flush=True)\n    time.sleep(1)\n",
}
