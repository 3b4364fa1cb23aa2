"""Coolify replay: the docker and compose command sequences Coolify runs on a run server, kept as data.

Why: a run server's sandbox (gVisor selector, authorization plugin, mount profiles, egress rules) is only
right if every command Coolify sends still works through it. Guessing what Coolify sends is how the
earlier design broke (``../shared/reviews/infra-review-2026-11-30.md``), so the commands live in
``coolify_replay.yaml`` beside this module, copied from Coolify's source and cited by file and line with
a verbatim excerpt. This module is the typed gate in front of that file:

- ``load_replay()`` parses and validates it: every placeholder used is declared, every step a file or
  container names exists, and every step's *key tokens* (``--rm``, ``/var/run/docker.sock``, ``compose
  up`` ...) appear both in its commands and in the upstream excerpt it cites, so an edit that drifts from
  the source fails on load, offline, without the Coolify snapshot.
- ``ReplayData.render(op_id, values)`` fills the ``{placeholders}`` the way Coolify fills them (uuids,
  network names, paths) and refuses a missing, unknown or malformed value with the name of the
  placeholder and an example, so a sandbox test cannot silently run a half-rendered command.
- ``check_sources()`` compares every excerpt with the cited lines of a snapshot (Coolify's git mirror,
  this repository) to notice upstream drift when a snapshot is at hand.

Placeholders are ``{name}`` with a lowercase identifier. Double braces (Go templates such as
``{{.Names}}`` or ``{{end}}``) and shell braces (``{1..10}``, ``{ cmd; }``) are literal text.

Transports: ``coolify_ssh`` is how Coolify runs a command list (joined with newlines and piped to
``ssh … 'bash -se'``: the first failing command ends the run with its exit code, which Coolify checks
unless the step says ``ignore_errors``). ``inkmcp_bash`` is how our Pulumi commands run a script
(``bash -euo pipefail -c``).
"""

from __future__ import annotations

import argparse
import base64
import copy
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATA_FILE = Path(__file__).with_name("coolify_replay.yaml")

PLACEHOLDER_RE = re.compile(r"(?<!\{)\{([a-z][a-z0-9_]*)\}(?!\})")
"""`{name}` but not `{{name}}`: Go templates in docker --format strings stay literal."""

ID_RE = r"^[a-z][a-z0-9_]*$"
HEX40 = r"^[0-9a-f]{40}$"

Transport = Literal["coolify_ssh", "inkmcp_bash"]
Origin = Literal["coolify", "inkmcp"]


class ReplayError(ValueError):
    """The replay data or a render request is wrong; the message says what to change."""


class MissingPlaceholderError(ReplayError):
    """A render request lacks a value the operation's commands or files need."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Upstream(_Model):
    """One repository the data cites, at one commit."""

    repo: str = Field(min_length=3)
    commit: Annotated[str, Field(pattern=HEX40)]
    version: str | None = None
    tag: str | None = None
    note: str = ""


class Source(_Model):
    """A cited line range with the verbatim (dedented) lines, so the data can be checked without the snapshot."""

    upstream: Origin | None = None
    file: str = Field(min_length=1)
    lines: tuple[int, int]
    excerpt: str = Field(min_length=1)

    @model_validator(mode="after")
    def _range_matches_excerpt(self) -> Source:
        start, end = self.lines
        if start < 1 or end < start:
            raise ValueError(f"{self.file}: lines must be [start, end] with 1 <= start <= end, got {list(self.lines)}")
        count = len(self.excerpt.rstrip("\n").split("\n"))
        if count != end - start + 1:
            raise ValueError(
                f"{self.file}:{start}-{end} cites {end - start + 1} lines but the excerpt has {count}; "
                "copy exactly the cited lines"
            )
        return self

    def cite(self, default: Origin) -> str:
        return f"{self.upstream or default}:{self.file}:{self.lines[0]}-{self.lines[1]}"


class Placeholder(_Model):
    """A value Coolify fills in at run time; `pattern` is what a real value looks like."""

    description: str = Field(min_length=1)
    example: str
    pattern: str = Field(min_length=1)

    @model_validator(mode="after")
    def _example_fits(self) -> Placeholder:
        try:
            rx = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from exc
        if not rx.fullmatch(self.example):
            raise ValueError(f"example {self.example!r} does not match its own pattern {self.pattern!r}")
        return self


class Step(_Model):
    """One remote invocation: Coolify's command list for one SSH `bash -se` run (or one of our scripts)."""

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$")]
    what: str = Field(min_length=1)
    transport: Transport = "coolify_ssh"
    commands: list[str] = Field(min_length=1)
    ignore_errors: bool = False
    when: str | None = None
    output_used: str | None = None
    sources: list[Source] = Field(min_length=1)
    key_tokens: list[str] = Field(min_length=1)

    @property
    def script(self) -> str:
        return "\n".join(self.commands)


class FragmentRef(_Model):
    """`- use: <fragment>` inside an operation's steps: a shared sequence (e.g. Coolify's prepare_builder_image)."""

    use: Annotated[str, Field(pattern=ID_RE)]


class FileWrite(_Model):
    """A file Coolify writes before the containers start (compose files, configs, certificates)."""

    path: str = Field(min_length=1)
    location: Literal["host", "helper"]
    written_by: str
    mode: str | None = None
    base64_placeholder: Annotated[str, Field(pattern=ID_RE)] | None = None
    abbreviated: bool = False
    content: str
    sources: list[Source] = Field(min_length=1)
    key_tokens: list[str] = Field(min_length=1)


class Bind(_Model):
    source: str
    target: str
    read_only: bool = False


class Container(_Model):
    """What the container runtime sees for one container an operation creates."""

    name: str
    role: Literal[
        "platform_proxy",
        "deploy_helper",
        "backup_helper",
        "metrics_agent",
        "scale_to_zero",
        "tenant_app",
        "tenant_database",
        "tenant_oneoff",
    ]
    created_by: str
    via: Literal["docker_run", "compose_up", "compose_run"]
    image: str
    networks: list[str] = Field(default_factory=list)
    binds: list[Bind] = Field(default_factory=list)
    named_volumes: list[str] = Field(default_factory=list)
    docker_socket: bool = False
    pid_host: bool = False
    privileged: bool = False
    cap_add: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    runtime: str | None = None
    ports: list[str] = Field(default_factory=list)
    extra_hosts: list[str] = Field(default_factory=list)
    restart: str | None = None
    auto_remove: bool = False
    user: str | None = None
    entrypoint: str | None = None
    command: str | None = None
    healthcheck: str | None = None
    labels: list[str] = Field(default_factory=list)
    note: str = ""

    @model_validator(mode="after")
    def _socket_flag_matches_binds(self) -> Container:
        binds_socket = any(b.source == "/var/run/docker.sock" for b in self.binds)
        if binds_socket != self.docker_socket:
            raise ValueError(f"container {self.name}: docker_socket must say whether a bind's source is the socket")
        return self


_CONTAINER_TEXT_FIELDS = ("name", "image", "networks", "named_volumes", "command", "entrypoint", "user", "runtime")


def _container_texts(c: Container) -> list[str]:
    """The container fields that may hold placeholders (descriptive fields such as `note` are left alone)."""
    out: list[str] = []
    for field in _CONTAINER_TEXT_FIELDS:
        value = getattr(c, field)
        out += value if isinstance(value, list) else [value] if value else []
    for b in c.binds:
        out += [b.source, b.target]
    return out


def _fill_container(c: Container, values: Mapping[str, str]) -> Container:
    update: dict[str, object] = {}
    for field in _CONTAINER_TEXT_FIELDS:
        value = getattr(c, field)
        if isinstance(value, list):
            update[field] = [_fill(v, values) for v in value]
        elif value:
            update[field] = _fill(value, values)
    update["binds"] = [
        b.model_copy(update={"source": _fill(b.source, values), "target": _fill(b.target, values)}) for b in c.binds
    ]
    return c.model_copy(update=update)


class Expectation(_Model):
    """What 'working as Coolify expects' means after the steps: a check Coolify runs, or a property."""

    what: str = Field(min_length=1)
    command: str | None = None
    output: str | None = None
    when: str | None = None
    """Set when the check applies only to a configuration the rendered operation does not use (the runner
    reports it as not applicable instead of running it)."""
    sources: list[Source] = Field(default_factory=list)

    @field_validator("output")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v


class Operation(_Model):
    id: Annotated[str, Field(pattern=ID_RE)]
    title: str
    origin: Origin
    runs_on: Literal["run_server", "build_server"]
    summary: str
    source: Source
    steps: list[Step | FragmentRef] = Field(min_length=1)
    files: list[FileWrite] = Field(default_factory=list)
    containers: list[Container] = Field(default_factory=list)
    expect: list[Expectation] = Field(min_length=1)
    sandbox_needs: list[str] = Field(min_length=1)
    notes: list[str] = Field(default_factory=list)


class RenderedStep(_Model):
    id: str
    what: str
    transport: Transport
    script: str
    ignore_errors: bool

    def argv(self) -> list[str]:
        """The command that runs `script` the way the transport does (for coolify_ssh the script is stdin)."""
        if self.transport == "coolify_ssh":
            return ["bash", "-se"]
        return ["bash", "-euo", "pipefail", "-c", self.script]

    def stdin(self) -> str | None:
        return self.script + "\n" if self.transport == "coolify_ssh" else None


class RenderedFile(_Model):
    path: str
    location: Literal["host", "helper"]
    written_by: str
    mode: str | None
    content: str


class RenderedOperation(_Model):
    """One operation ready to run: scripts in order, files to expect, containers to look for afterwards."""

    id: str
    steps: list[RenderedStep]
    files: list[RenderedFile]
    containers: list[Container]
    expect: list[Expectation]
    values: dict[str, str]


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER_RE.findall(text))


def _fill(text: str, values: Mapping[str, str]) -> str:
    return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


def excerpt_key(origin: str, file: str, lines: tuple[int, int] | list[int]) -> str:
    """Key of a cited range in the file's `excerpts` table: `<origin>:<file>:<start>-<end>`."""
    return f"{origin}:{file}:{lines[0]}-{lines[1]}"


def _attach_excerpts(raw: dict) -> dict:
    """Copy each cited range's text from the top-level `excerpts` table into its source (stored once, cited often).

    Refuses a citation without an excerpt and an excerpt nobody cites, so the table cannot rot.
    """
    table = raw.get("excerpts")
    if not isinstance(table, dict):
        raise ValueError("`excerpts` must map '<origin>:<file>:<start>-<end>' to the verbatim lines")
    used: set[str] = set()
    problems: list[str] = []

    def fill(sources: object, origin: str, where: str) -> None:
        if not isinstance(sources, list):
            return
        for src in sources:
            if not isinstance(src, dict) or "excerpt" in src:
                continue
            lines = src.get("lines")
            if not isinstance(lines, list | tuple) or len(lines) != 2:
                continue
            key = excerpt_key(src.get("upstream") or origin, str(src.get("file")), lines)
            if key not in table:
                problems.append(f"{where}: no excerpt for {key}; add it under `excerpts`")
                continue
            src["excerpt"] = table[key]
            used.add(key)

    for name, steps in (raw.get("fragments") or {}).items():
        for step in steps or []:
            fill(step.get("sources"), "coolify", f"fragment {name}")
    for op in raw.get("operations") or []:
        origin = op.get("origin", "coolify")
        where = f"operation {op.get('id')}"
        fill([op.get("source")], origin, where)
        for step in op.get("steps") or []:
            if isinstance(step, dict):
                fill(step.get("sources"), origin, where)
        for item in (op.get("files") or []) + (op.get("expect") or []):
            fill(item.get("sources"), origin, where)
    problems += [f"excerpt {key} is not cited by any source; remove it" for key in sorted(set(table) - used)]
    if problems:
        raise ValueError("coolify replay citations are inconsistent:\n- " + "\n- ".join(problems))
    return raw


class ReplayData(_Model):
    """The whole data file, validated; see the module docstring for what is checked."""

    schema_version: Literal[1]
    upstreams: dict[Origin, Upstream]
    transports: dict[Transport, str]
    placeholders: dict[str, Placeholder]
    fragments: dict[str, list[Step]] = Field(default_factory=dict)
    operations: list[Operation] = Field(min_length=1)
    excerpts: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _excerpts(cls, raw: object) -> object:
        if isinstance(raw, dict):
            return _attach_excerpts(copy.deepcopy(raw))
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ReplayData:
        problems: list[str] = []
        for name in self.placeholders:
            if not re.fullmatch(ID_RE, name):
                problems.append(f"placeholder name {name!r} must be a lowercase identifier")
        ids = [op.id for op in self.operations]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append(f"operation id {dup!r} is used twice")
        used_anywhere: set[str] = set()
        for op in self.operations:
            try:
                steps = self._expand(op)
            except ReplayError as exc:
                problems.append(str(exc))
                continue
            problems += self._check_operation(op, steps, used_anywhere)
        for name in sorted(set(self.placeholders) - used_anywhere):
            problems.append(f"placeholder {name!r} is declared but no operation uses it; remove it")
        if problems:
            raise ValueError("coolify replay data is inconsistent:\n- " + "\n- ".join(problems))
        return self

    def _expand(self, op: Operation) -> list[Step]:
        steps: list[Step] = []
        for item in op.steps:
            if isinstance(item, FragmentRef):
                if item.use not in self.fragments:
                    raise ReplayError(
                        f"{op.id}: step list uses unknown fragment {item.use!r}; known: {sorted(self.fragments)}"
                    )
                steps += self.fragments[item.use]
            else:
                steps.append(item)
        return steps

    def _check_operation(self, op: Operation, steps: list[Step], used_anywhere: set[str]) -> list[str]:
        problems: list[str] = []
        step_ids = [s.id for s in steps]
        for dup in sorted({i for i in step_ids if step_ids.count(i) > 1}):
            problems.append(f"{op.id}: step id {dup!r} appears twice (a fragment used twice?)")
        derived = {f.base64_placeholder for f in op.files if f.base64_placeholder}
        for name in sorted(derived & set(self.placeholders)):
            problems.append(f"{op.id}: {name!r} is derived from a file's content and must not be declared")
        texts: list[tuple[str, str]] = []
        for s in steps:
            texts += [(f"step {s.id}", c) for c in s.commands]
            problems += _token_problems(f"{op.id}: step {s.id}", s.key_tokens, s.script, s.sources)
        for f in op.files:
            texts += [(f"file {f.path}", f.path), (f"file {f.path}", f.content)]
            if f.written_by not in step_ids:
                problems.append(f"{op.id}: file {f.path} is written_by unknown step {f.written_by!r}")
            problems += _token_problems(f"{op.id}: file {f.path}", f.key_tokens, f"{f.path}\n{f.content}", f.sources)
        for c in op.containers:
            if c.created_by not in step_ids:
                problems.append(f"{op.id}: container {c.name} is created_by unknown step {c.created_by!r}")
            texts += [(f"container {c.name}", t) for t in _container_texts(c)]
        for e in op.expect:
            if e.command:
                texts.append(("expect", e.command))
        used: set[str] = set()
        for where, text in texts:
            for name in placeholders_in(text):
                used.add(name)
                if name not in self.placeholders and name not in derived:
                    problems.append(f"{op.id}: {where} uses undeclared placeholder {{{name}}}")
        for f in op.files:
            if f.base64_placeholder:
                inner = placeholders_in(f.content) & derived
                if inner:
                    problems.append(f"{op.id}: file {f.path} content uses derived placeholders {sorted(inner)}")
                if f.base64_placeholder not in used:
                    problems.append(f"{op.id}: file {f.path} derives {{{f.base64_placeholder}}} but no step writes it")
        used_anywhere |= used - derived
        return problems

    # ----------------------------------------------------------------------------------------------
    def operation(self, op_id: str) -> Operation:
        for op in self.operations:
            if op.id == op_id:
                return op
        raise ReplayError(f"unknown operation {op_id!r}; choose one of: {', '.join(o.id for o in self.operations)}")

    def steps(self, op_id: str) -> list[Step]:
        """The operation's steps with fragments expanded, in the order Coolify runs them."""
        return self._expand(self.operation(op_id))

    def required_placeholders(self, op_id: str) -> list[str]:
        """Placeholders a caller must pass to render `op_id` (derived base64 values are computed)."""
        op = self.operation(op_id)
        derived = {f.base64_placeholder for f in op.files if f.base64_placeholder}
        names: set[str] = set()
        for s in self.steps(op_id):
            for c in s.commands:
                names |= placeholders_in(c)
        for f in op.files:
            names |= placeholders_in(f.path) | placeholders_in(f.content)
        for c in op.containers:
            for t in _container_texts(c):
                names |= placeholders_in(t)
        for e in op.expect:
            names |= placeholders_in(e.command or "")
        return sorted(names - derived)

    def example_values(self, op_id: str) -> dict[str, str]:
        return {n: self.placeholders[n].example for n in self.required_placeholders(op_id)}

    def render(self, op_id: str, values: Mapping[str, str]) -> RenderedOperation:
        """Fill one operation's commands and files; refuse missing, unknown or malformed values."""
        op = self.operation(op_id)
        needed = self.required_placeholders(op_id)
        unknown = sorted(set(values) - set(self.placeholders))
        if unknown:
            declared = ", ".join(sorted(self.placeholders))
            raise ReplayError(f"render {op_id}: unknown placeholder(s) {unknown}; this data declares: {declared}")
        missing = [n for n in needed if n not in values]
        if missing:
            hints = "; ".join(
                f"{n} (e.g. {self.placeholders[n].example!r}: {self.placeholders[n].description})" for n in missing
            )
            raise MissingPlaceholderError(f"render {op_id}: missing value for placeholder(s) {missing}: pass {hints}")
        full: dict[str, str] = {}
        for name in needed:
            value = values[name]
            if not isinstance(value, str):
                raise ReplayError(f"render {op_id}: placeholder {name} must be a string, got {type(value).__name__}")
            spec = self.placeholders[name]
            if not re.fullmatch(spec.pattern, value):
                raise ReplayError(
                    f"render {op_id}: value {value!r} for placeholder {name} does not match {spec.pattern!r} "
                    f"({spec.description}); e.g. {spec.example!r}"
                )
            full[name] = value
        files: list[RenderedFile] = []
        for f in op.files:
            content = _fill(f.content, full)
            if f.base64_placeholder:
                full[f.base64_placeholder] = base64.b64encode(content.encode()).decode()
            files.append(
                RenderedFile(
                    path=_fill(f.path, full), location=f.location, written_by=f.written_by, mode=f.mode, content=content
                )
            )
        steps = [
            RenderedStep(
                id=s.id, what=s.what, transport=s.transport, script=_fill(s.script, full), ignore_errors=s.ignore_errors
            )
            for s in self.steps(op_id)
        ]
        return RenderedOperation(
            id=op_id,
            steps=steps,
            files=files,
            containers=[_fill_container(c, full) for c in op.containers],
            expect=[e.model_copy(update={"command": _fill(e.command, full)}) if e.command else e for e in op.expect],
            values=full,
        )

    def sources(self) -> list[tuple[str, Origin, Source]]:
        """Every citation in the data, with where it is used and which upstream it refers to."""
        out: list[tuple[str, Origin, Source]] = []
        for name, frag in self.fragments.items():
            for s in frag:
                out += [(f"fragment {name} step {s.id}", src.upstream or "coolify", src) for src in s.sources]
        for op in self.operations:
            out.append((f"{op.id}", op.source.upstream or op.origin, op.source))
            for item in op.steps:
                if isinstance(item, Step):
                    out += [(f"{op.id} step {item.id}", src.upstream or op.origin, src) for src in item.sources]
            for f in op.files:
                out += [(f"{op.id} file {f.path}", src.upstream or op.origin, src) for src in f.sources]
            for e in op.expect:
                out += [(f"{op.id} expect", src.upstream or op.origin, src) for src in e.sources]
        return out


def _token_problems(where: str, tokens: list[str], text: str, sources: list[Source]) -> list[str]:
    problems = []
    excerpts = "\n".join(s.excerpt for s in sources)
    for t in tokens:
        if t not in text:
            problems.append(f"{where}: key token {t!r} is not in its commands (or path and content)")
        if t not in excerpts:
            cited = ", ".join(f"{s.file}:{s.lines[0]}-{s.lines[1]}" for s in sources)
            problems.append(f"{where}: key token {t!r} is not in the upstream excerpt it cites ({cited})")
    return problems


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 5x faster on this file


def validate_replay(raw: object) -> ReplayData:
    """Validate replay data already parsed from YAML; a ReplayError lists every problem found."""
    try:
        return ReplayData.model_validate(raw)
    except ValidationError as exc:
        raise ReplayError(f"coolify replay data does not validate:\n{exc}") from exc


def parse_replay(text: str) -> ReplayData:
    """Validate replay data given as YAML text."""
    try:
        raw = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        raise ReplayError(f"coolify replay data is not valid YAML: {exc}") from exc
    return validate_replay(raw)


@cache
def load_replay(path: Path = DATA_FILE) -> ReplayData:
    return parse_replay(path.read_text())


def _normalise(text: str) -> str:
    return textwrap.dedent("\n".join(line.rstrip() for line in text.rstrip("\n").split("\n")))


def check_sources(data: ReplayData, snapshots: Mapping[str, Path]) -> list[str]:
    """Compare every excerpt with its cited lines in git snapshots (`origin -> repository dir`).

    Returns one line per mismatch (empty: the data matches its upstreams). Origins without a snapshot
    are not checked; a snapshot that lacks the cited commit is reported.
    """
    problems: list[str] = []
    cache_: dict[tuple[str, str], list[str] | None] = {}
    for where, origin, src in data.sources():
        repo = snapshots.get(origin)
        if repo is None:
            continue
        commit = data.upstreams[origin].commit
        key = (origin, src.file)
        if key not in cache_:
            proc = subprocess.run(
                ["git", "-C", str(repo), "show", f"{commit}:{src.file}"], capture_output=True, text=True, check=False
            )
            cache_[key] = proc.stdout.split("\n") if proc.returncode == 0 else None
        lines = cache_[key]
        if lines is None:
            problems.append(f"{where}: {origin}@{commit[:12]} has no file {src.file} in {repo}")
            continue
        start, end = src.lines
        if end > len(lines):
            problems.append(f"{where}: {src.file} has {len(lines)} lines, cited {start}-{end}")
            continue
        actual = _normalise("\n".join(lines[start - 1 : end]))
        if actual != _normalise(src.excerpt):
            problems.append(f"{where}: excerpt differs from {src.cite(origin)}:\n{actual}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m inkmcp.nodes.replay list | render OP [-s k=v ...] | check --coolify DIR [--inkmcp DIR]`."""
    ap = argparse.ArgumentParser(prog="python -m inkmcp.nodes.replay", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="operation ids with their upstream file:line")
    r = sub.add_parser("render", help="print one operation's rendered steps (example values unless -s given)")
    r.add_argument("op")
    r.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE")
    c = sub.add_parser("check", help="compare every excerpt with a git snapshot of its upstream")
    c.add_argument("--coolify", type=Path, help="git dir of coollabsio/coolify (e.g. from the search tool's fetch)")
    c.add_argument("--inkmcp", type=Path, help="git dir of this repository")
    args = ap.parse_args(argv)
    data = load_replay()
    if args.cmd == "list":
        for op in data.operations:
            print(f"{op.id:32} {op.source.cite(op.origin)}")
        return 0
    if args.cmd == "render":
        values = data.example_values(args.op)
        for item in args.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--set {item!r}: write NAME=VALUE")
            values[name] = value
        rendered = data.render(args.op, values)
        for f in rendered.files:
            print(f"# file ({f.location}) {f.path}\n{f.content}")
        for s in rendered.steps:
            print(
                f"# step {s.id}{' (errors ignored)' if s.ignore_errors else ''}: {' '.join(s.argv()[:2])}\n{s.script}"
            )
        return 0
    snapshots = {k: v for k, v in (("coolify", args.coolify), ("inkmcp", args.inkmcp)) if v is not None}
    if not snapshots:
        raise SystemExit("check: pass --coolify DIR and/or --inkmcp DIR")
    problems = check_sources(data, snapshots)
    for p in problems:
        print(p)
    print(f"{len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
