"""Static sites after their build: which directory is served, how, and when a dev server must not be.

Why this exists: a Vite app keeps a *source* `index.html` at its root (it references `/src/main.tsx`),
and CRA / Vue CLI keep a source template in `public/index.html`. Serving either after `npm run build`
is a blank page. So the served directory is decided after the build, from what the build wrote:
`resolve()` prefers the directory whose `index.html` the build produced (written after the build
started), looking at the framework's own output setting first (Vite `build.outDir`, Angular
`outputPath`, Next `out`, Astro `dist`, Gatsby `public`, Nuxt `.output/public`, ...) and only then at a
root `index.html`. A `static_dir` the user gave (call, inkmcp.yaml, a platform file) is never overridden.

Serving: the site is served by a tiny stdlib HTTP server run by the tenant's own Python
(`server_argv`), as `python -m http.server` was, plus:
- single-page-app fallback: an unknown path without a file extension (`/users/42`) gets the app's
  `index.html` (200) when the framework is a client-side router app (Vite, CRA, Vue CLI, Angular,
  Preact, ...), or `200.html` when the build wrote one (SvelteKit/surge convention); a missing asset
  (`/missing.js`) is still a 404, so a broken asset reference is not masked by HTML;
- a `404.html` the build wrote (Next export, Astro, Gatsby, Docusaurus, ...) is the body of a 404.
Multi-page generators (Next export, Astro, Gatsby, Nuxt generate, Docusaurus, VitePress, Eleventy)
get no fallback: an unknown path there is a real 404.

`is_dev_server()` answers, for detection (inkmcp.build.detect), whether a package.json start
command is a development server (react-scripts start, vite, next dev, ...): such an app with a build
script is deployed as the static output of its build, never as its dev server.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from inkmcp.safefs import _open_dir_beneath, is_dir_beneath, read_beneath

# --- dev servers -------------------------------------------------------------------------------------------

_DEV_SERVER = re.compile(
    r"(?:^|[\s;&|()])(?:npx\s+|pnpm\s+(?:exec\s+)?|yarn\s+)?(?:"
    r"vite(?:\s+(?:dev|serve|preview))?(?=\s|$)(?!\s+(?:build|optimize))|astro\s+preview"
    r"|react-scripts\s+start|react-app-rewired\s+start|craco\s+start"
    r"|vue-cli-service\s+serve|ng\s+serve|next\s+dev|gatsby\s+develop|astro\s+dev"
    r"|nuxt\s+dev|nuxi\s+dev|svelte-kit\s+dev|ember\s+serve|webpack\s+serve|webpack-dev-server"
    r"|parcel(?:\s+serve)?(?=\s|$)(?!\s+build)|vitepress\s+dev|docusaurus\s+start|eleventy\s+--serve"
    r")"
)
_RUN_SCRIPT = re.compile(r"^(?:npm|pnpm|yarn|bun)\s+(?:run\s+|run-script\s+)?(?P<name>[\w:.-]+)\s*$")


def is_dev_server(command: str, package_json: dict[str, Any] | None) -> bool:
    """True when `command` starts a development server (hot reload, unoptimised bundles), or a preview
    server of the build (`vite preview`, `astro preview`: they serve the same files as the static site,
    but on their own port and with a warning that they are not for production).

    `command` is a start command or a package.json script body. `npm start`, `yarn dev`, `pnpm run
    start` are looked up in package_json["scripts"] first (one level: `start` -> `vite`).
    """
    text = command.strip()
    match = _RUN_SCRIPT.match(text)
    scripts = (package_json or {}).get("scripts")
    if match and isinstance(scripts, dict):
        name = match["name"]
        body = scripts.get(name)
        if isinstance(body, str):
            inner = _RUN_SCRIPT.match(body.strip())
            if inner and inner["name"] != name and isinstance(scripts.get(inner["name"]), str):
                body = scripts[inner["name"]]
            text = body.strip()
    return bool(_DEV_SERVER.search(text))


# --- where the build put the site ----------------------------------------------------------------------------

GENERIC_OUTPUT_DIRS = ("dist", "build", "out", ".output/public", "build/client", "_site", "public", "www")
_MULTI_PAGE = frozenset({
    "next", "gatsby", "astro", "nuxt", "nuxt3", "@sveltejs/kit", "@docusaurus/core", "vitepress", "vuepress",
    "@11ty/eleventy", "hexo", "@remix-run/dev", "@react-router/dev",
})  # fmt: skip
_SPA = frozenset({
    "vite", "react-scripts", "@vue/cli-service", "@angular/core", "@angular/cli", "preact-cli", "react-app-rewired",
    "@craco/craco", "parcel", "parcel-bundler", "webpack", "@rsbuild/core", "@farmfe/core", "ember-cli",
})  # fmt: skip
_OUT_DIR = re.compile(r"""\boutDir\s*:\s*['"`]([^'"`$]+)['"`]""")


def _read_json(anchor: Path, rel: str) -> dict[str, Any]:
    raw = read_beneath(anchor, rel)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _deps(package: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        if isinstance(package.get(key), dict):
            out |= set(package[key])
    return out


def _join(app_rel: str, sub: str) -> str | None:
    """`app_rel/sub` normalised, or None when `sub` is absolute or leaves the app directory."""
    path = PurePosixPath(sub.strip().strip("/") if not sub.startswith("/") else "/")
    if path.is_absolute() or ".." in path.parts:
        return None
    return os.path.normpath(os.path.join(app_rel, str(path)))


def framework_output_dirs(anchor: Path, app_rel: str) -> list[str]:
    """Output directories the app's own configuration names (relative to the app dir), most specific first."""
    package = _read_json(anchor, os.path.join(app_rel, "package.json"))
    deps = _deps(package)
    out: list[str] = []
    if "vite" in deps or "vitepress" in deps:
        for name in ("vite.config.ts", "vite.config.js", "vite.config.mts", "vite.config.mjs", "vite.config.cjs"):
            raw = read_beneath(anchor, os.path.join(app_rel, name))
            if raw and (m := _OUT_DIR.search(raw.decode(errors="replace"))):
                out.append(m[1])
                break
    if "@angular/core" in deps or "@angular/cli" in deps:
        angular = _read_json(anchor, os.path.join(app_rel, "angular.json"))
        projects = angular.get("projects") if isinstance(angular.get("projects"), dict) else {}
        for name, project in projects.items():
            options = (((project or {}).get("architect") or {}).get("build") or {}).get("options") or {}
            path = options.get("outputPath") if isinstance(options, dict) else None
            if isinstance(path, dict):  # {"base": "dist/app", "browser": "..."}
                base = path.get("base")
                browser = path.get("browser", "browser")
                if isinstance(base, str):
                    out += [f"{base}/{browser}" if browser else base, base]
            elif isinstance(path, str):
                out += [f"{path}/browser", path]
            out += [f"dist/{name}/browser", f"dist/{name}"]
    if "next" in deps:
        out.append("out")
    if "gatsby" in deps:
        out.append("public")
    if deps & {"nuxt", "nuxt3"}:
        out += [".output/public", "dist"]
    if "react-scripts" in deps or "@docusaurus/core" in deps or "@sveltejs/kit" in deps:
        out.append("build")
    if "@11ty/eleventy" in deps:
        out.append("_site")
    if "vitepress" in deps:
        out += ["docs/.vitepress/dist", ".vitepress/dist"]
    return list(dict.fromkeys(out))


def _file_mtime(anchor: Path, rel_dir: str, name: str = "index.html") -> float | None:
    """mtime of regular file `rel_dir/name` beneath `anchor` (no symlink followed), None if it is not one."""
    parts = [p for p in PurePosixPath(rel_dir).parts if p != "."]
    fd = _open_dir_beneath(anchor, parts)
    if fd is None:
        return None
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(fd)
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def index_mtime(anchor: Path, rel_dir: str) -> float | None:
    """mtime of `rel_dir/index.html` beneath `anchor` (no symlink followed), None if there is none."""
    return _file_mtime(anchor, rel_dir)


def resolve(anchor: Path, app_rel: str, static_dir: str | None, *, given: bool, built_since: float | None) -> str:
    """The directory to serve, relative to the app directory.

    `anchor` is the checkout root (its parents are InkMCP's), `app_rel` the app dir inside it; nothing
    below `anchor` is followed through a symlink (the tree is the tenant's). `built_since` is the
    time the build started (None when nothing was built): an index.html written after it is output.
    Order: a `given` static_dir as is; the build's fresh output (the framework's configured dir,
    then dist, build, out, ...); the planned dir if it holds an index.html; any of those dirs that
    holds one; finally the planned dir (whose absence the caller reports).
    """
    planned = static_dir or "."
    if given:
        return planned
    candidates = [planned] if planned != "." else []
    candidates += framework_output_dirs(anchor, app_rel) + list(GENERIC_OUTPUT_DIRS)
    found: list[tuple[str, float]] = []
    for sub in dict.fromkeys(candidates):
        rel = _join(app_rel, sub)
        if rel is None:
            continue
        mtime = _file_mtime(anchor, rel)
        if mtime is not None:
            found.append((sub, mtime))
    if built_since is not None:
        for sub, mtime in found:
            if mtime >= built_since:
                return sub
    if _file_mtime(anchor, _join(app_rel, planned) or app_rel) is not None:
        return planned
    if found:
        return found[0][0]
    return planned


# --- serving ---------------------------------------------------------------------------------------------------


def fallback_page(app_dir: Path, static_dir: str | None) -> str | None:
    """The page an unknown non-asset path gets (single-page apps), or None for a real 404.

    `app_dir` is the app directory, whose parents are InkMCP's; read without following symlinks.
    """
    served = os.path.normpath(static_dir or ".")
    if not is_dir_beneath(app_dir, served):
        return None
    if _file_mtime(app_dir, served, "200.html") is not None:
        return "200.html"
    if _file_mtime(app_dir, served, "404.html") is not None:
        return None  # the build wrote its own 404 page: a multi-page site
    if not is_spa(_read_json(app_dir, "package.json")):
        return None
    return "index.html" if _file_mtime(app_dir, served) is not None else None


def is_spa(package_json: dict[str, Any] | None) -> bool:
    """True when package.json's dependencies make a client-side-router app (Vite, CRA, Vue CLI, Angular, ...)
    and no multi-page generator (Next, Astro, Gatsby, Nuxt, Docusaurus, ...): unknown routes need index.html.
    Also what the Coolify mapping can pass as `is_spa` for a static build."""
    deps = _deps(package_json or {})
    return bool(deps & _SPA) and not deps & _MULTI_PAGE


# The server the tenant's Python runs (`python -I -c SOURCE ...`): stdlib only, because the tenant
# cannot import InkMCP (its install may not even be readable to the tenant user).
SERVER_SOURCE = r'''
import argparse, http.server, os, posixpath, urllib.parse
p = argparse.ArgumentParser(prog="inkmcp-static")
p.add_argument("--directory", required=True)
p.add_argument("--bind", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--fallback", default="")
a = p.parse_args()
ROOT = os.path.abspath(a.directory)

class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=ROOT, **kwargs)

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.exists(path):
            return super().send_head()
        last = posixpath.basename(urllib.parse.urlsplit(self.path).path)
        if a.fallback and "." not in last:
            self.path = "/" + a.fallback
            return super().send_head()
        page = os.path.join(ROOT, "404.html")
        if os.path.isfile(page):
            f = open(page, "rb")
            size = os.fstat(f.fileno()).st_size
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return f
        return super().send_head()

http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer((a.bind, a.port), Handler).serve_forever()
'''


def server_argv(python: str, directory: Path, port: int | None, fallback: str | None) -> tuple[str, ...]:
    """The argv of the static server for `directory` on 127.0.0.1:`port`."""
    return (python, "-I", "-c", SERVER_SOURCE, "--directory", str(directory), "--bind", "127.0.0.1",
            "--port", str(port), "--fallback", fallback or "")  # fmt: skip
