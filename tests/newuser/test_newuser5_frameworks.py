"""Node frameworks whose template has no `start` script, and a Next app exported to files (newuser5, 2026-12-02).

- Nuxt 3 (`nuxi init`: build, dev, generate, preview) and SvelteKit with adapter-node (dev, build, preview) were
  planned as static sites from 'dist': the build wrote a server (.output/server/index.mjs, build/index.js) and no
  index.html, and the deploy failed after the build with "static_dir 'dist' does not exist after the build". They run
  the server their build writes now.
- A Next app with `output: 'export'` in next.config ran `npx next start`, which refuses that configuration and exits
  (the deploy failed at health_check); it is served as the static site `next build` writes to out/.

- A Gradio app (`demo.launch()`) ran as `python app.py`: Gradio's server on 127.0.0.1:7860. It runs with
  GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT=$PORT now, which launch() reads for what it is not given.

Read as deploy_app reads a checkout (`derive_plan`); what the planned command does once built is the framework's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import ServiceType


def _plan(root: Path, files: dict[str, str], service_type: ServiceType | None = None) -> tuple[object, ServiceType]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return derive_plan(root, service_name="web", service_type=service_type, build_command=None, start_command=None,
                       port=None)  # fmt: skip


NUXT = json.dumps({"name": "n", "private": True, "type": "module", "scripts": {
    "build": "nuxt build", "dev": "nuxt dev", "generate": "nuxt generate", "preview": "nuxt preview",
    "postinstall": "nuxt prepare"}, "dependencies": {"nuxt": "^3.12.0", "vue": "^3.4.0"}})
SVELTE = json.dumps({"name": "s", "type": "module", "scripts": {"dev": "vite dev", "build": "vite build",
                     "preview": "vite preview"}, "devDependencies": {
    "@sveltejs/kit": "^2", "@sveltejs/adapter-node": "^5", "vite": "^5", "svelte": "^4"}})
NEXT = json.dumps({"name": "x", "scripts": {"dev": "next dev", "build": "next build", "start": "next start"},
                   "dependencies": {"next": "14", "react": "18"}})


def test_nuxt_runs_the_server_its_build_writes(tmp_path: Path) -> None:
    plan, kind = _plan(tmp_path, {"package.json": NUXT, "nuxt.config.ts": "export default defineNuxtConfig({})\n"})
    assert kind == ServiceType.webapp
    assert [p.command for p in plan.processes] == ["node .output/server/index.mjs"]
    assert plan.build_command == "npm run build" and plan.static_dir is None
    assert "runs `node .output/server/index.mjs` (detected; start_command overrides)" in plan.notes


def test_nuxt_generate_stays_a_static_site(tmp_path: Path) -> None:
    package = json.loads(NUXT)
    package["scripts"]["build"] = "nuxt generate"
    plan, kind = _plan(tmp_path, {"package.json": json.dumps(package)})
    assert kind == ServiceType.webapp_static and plan.processes == ()


@pytest.mark.parametrize(("config", "runs"), [
    ("import adapter from '@sveltejs/adapter-node';\nexport default {kit: {adapter: adapter()}};\n", "node build"),
    ("import adapter from '@sveltejs/adapter-node';\nexport default {kit: {adapter: adapter({ out: 'server' })}};\n",
     "node server"),
])  # fmt: skip
def test_sveltekit_with_adapter_node_runs_its_server(tmp_path: Path, config: str, runs: str) -> None:
    plan, kind = _plan(tmp_path, {"package.json": SVELTE, "svelte.config.js": config})
    assert kind == ServiceType.webapp and [p.command for p in plan.processes] == [runs]


def test_sveltekit_with_adapter_static_stays_a_static_site(tmp_path: Path) -> None:
    package = json.loads(SVELTE)
    package["devDependencies"]["@sveltejs/adapter-static"] = package["devDependencies"].pop("@sveltejs/adapter-node")
    _, kind = _plan(tmp_path, {"package.json": json.dumps(package)})
    assert kind == ServiceType.webapp_static


@pytest.mark.parametrize("config", ["next.config.js", "next.config.mjs", "next.config.ts"])
def test_next_with_output_export_is_the_static_site_it_exports(tmp_path: Path, config: str) -> None:
    exported = "const c = {\n  output: 'export',\n};\nexport default c\n"
    plan, kind = _plan(tmp_path, {"package.json": NEXT, config: exported})
    assert kind == ServiceType.webapp_static and plan.processes == ()
    assert plan.static_dir == "out" and plan.build_command == "npm run build"
    assert any("output: 'export'" in note for note in plan.notes), plan.notes


def test_next_standalone_and_plain_next_still_run_next_start(tmp_path: Path) -> None:
    plan, kind = _plan(tmp_path, {"package.json": NEXT, "next.config.js": "module.exports = {output: 'standalone'}\n"})
    assert kind == ServiceType.webapp and [p.command for p in plan.processes] == ["npm start"]


GRADIO = "import gradio as gr\n\ndemo = gr.Interface(fn=lambda name: 'Hello ' + name, inputs='text', outputs='text')\n"


@pytest.mark.parametrize(("launch", "runs"), [
    ("demo.launch()\n", "GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=$PORT python app.py"),
    ("if __name__ == '__main__':\n    demo.launch(share=False)\n",
     "GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=$PORT python app.py"),
    ("demo.launch(server_name='0.0.0.0', server_port=int(os.environ['PORT']))\n", "python app.py"),  # its own
])  # fmt: skip
def test_gradio_listens_where_the_route_is(tmp_path: Path, launch: str, runs: str) -> None:
    plan, kind = _plan(tmp_path, {"requirements.txt": "gradio\n", "app.py": "import os\n" + GRADIO + launch})
    assert kind == ServiceType.webapp and [p.command for p in plan.processes] == [runs]
