"""A new mirror's first fetch over https spoken by InkMCP's process (inkmcp/build/http_fetch.py, issue 8).

Against the GitHub stand-in's smart HTTP over TLS in a process of its own (benchmarks/git_standin_process.py: `git
http-backend`, protocol v2), with real git reading the mirrors it leaves: the same refs, tags peeled the same, as
`git fetch` writes; proof of which path ran from the git host's own request log (git starts with `GET
/info/refs`, the in-process path never does); and whatever the in-process path cannot take ends in git's fetch,
with nothing of the attempt left in the mirror.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks.git_standin_process import GitStandinProcess
from inkmcp.build import http_fetch
from inkmcp.build import source as source_mod
from inkmcp.build.source import SourcePolicy, SourceWorkspace, fetch_commit

ALLOW = SourcePolicy(allow_local=True)  # the stand-in listens on 127.0.0.1
FILES = {"app.py": "print('in process')\n", "Procfile": "web: python app.py\n"}


@pytest.fixture(scope="module")
def githost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitStandinProcess, Path]]:
    root = tmp_path_factory.mktemp("githost")
    host = GitStandinProcess(root)
    try:
        yield host, root
    finally:
        host.stop()


@pytest.fixture(autouse=True)
def trust_the_host(githost: tuple[GitStandinProcess, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "CA_BUNDLE", str(githost[0].bundle))  # the system's authorities and the host's


@pytest.fixture(autouse=True)
async def kept_connections_closed() -> AsyncIterator[None]:
    """The test's event loop ends with it: so do the in-process fetch's kept-alive connections to the host."""
    yield
    await http_fetch.close_clients()


def workspace(base: Path) -> SourceWorkspace:
    mirrors, locks = base / "mirrors", base / "locks"
    mirrors.mkdir(mode=0o700, parents=True)
    locks.mkdir(mode=0o700)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)


def repo_with_tags(githost: tuple[GitStandinProcess, Path]) -> str:
    """A repository with two branches, an annotated and a lightweight tag, and HEAD on main (on the host's disk)."""
    host, root = githost
    url = host.repo(FILES)
    bare = root / "bench" / urlsplit(url).path.rsplit("/", 1)[1]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "--git-dir", str(bare)]
    main = subprocess.check_output([*git, "rev-parse", "refs/heads/main"], text=True).strip()
    tree = subprocess.check_output([*git, "rev-parse", f"{main}^{{tree}}"], text=True).strip()
    second = subprocess.check_output([*git, "commit-tree", tree, "-p", main, "-m", "second"], text=True).strip()
    subprocess.run([*git, "update-ref", "refs/heads/feature/x", second], check=True)
    subprocess.run([*git, "tag", "-a", "v1.0", "-m", "release", main], check=True)
    subprocess.run([*git, "tag", "light", second], check=True)
    return url


def refs_of(mirror: Path) -> list[str]:
    """Every ref with its object and, for an annotated tag, the object it peels to (as git reads them)."""
    out = subprocess.check_output(["git", "--git-dir", str(mirror), "for-each-ref",
                                   "--format=%(refname) %(objectname) %(*objectname)"], text=True)
    return sorted(line.strip() for line in out.splitlines())


def paths_since(host: GitStandinProcess, n: int) -> list[str]:
    return [r["path"].rsplit("/", 1)[1] for r in host.since(n)]


async def test_the_first_fetch_is_in_process_and_leaves_what_git_fetch_leaves(
        githost: tuple[GitStandinProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = githost[0]
    url = repo_with_tags(githost)
    before = host.count()
    fast = await fetch_commit(url, None, workspace=workspace(tmp_path / "fast"), policy=ALLOW)
    assert paths_since(host, before) == ["git-upload-pack", "git-upload-pack"]  # ls-refs, fetch: no GET, no git

    monkeypatch.setattr(source_mod, "IN_PROCESS_FETCH", False)
    before = host.count()
    slow = await fetch_commit(url, None, workspace=workspace(tmp_path / "git"), policy=ALLOW)
    assert paths_since(host, before)[0] == "refs"  # git's discovery: GET /info/refs
    assert fast.sha == slow.sha and fast.size == slow.size
    fast_refs, git_refs = refs_of(fast.mirror), refs_of(slow.mirror)
    assert fast_refs == git_refs, (fast_refs, git_refs)
    assert any(line.startswith("refs/tags/v1.0 ") and len(line.split()) == 3 for line in fast_refs), fast_refs
    assert any(line.startswith("refs/inkmcp/HEAD ") for line in fast_refs), fast_refs
    # git itself finds the mirror whole: every object of every ref is there
    subprocess.run(["git", "--git-dir", str(fast.mirror), "fsck", "--connectivity-only", "--no-dangling"],
                   check=True, capture_output=True)


async def test_a_second_fetch_into_the_same_mirror_is_gits(githost: tuple[GitStandinProcess, Path],
                                                          tmp_path: Path) -> None:
    """Only an empty mirror's fetch is taken here: a redeploy's fetch negotiates what the mirror has (git)."""
    host = githost[0]
    url = host.repo(FILES)
    ws = workspace(tmp_path)
    await fetch_commit(url, None, workspace=ws, policy=ALLOW)
    before = host.count()
    again = await fetch_commit(url, None, workspace=ws, policy=ALLOW)
    assert paths_since(host, before)[0] == "refs", paths_since(host, before)
    assert len(again.sha) == 40


async def test_a_server_that_does_not_answer_v2_gets_gits_fetch_and_the_mirror_holds_one_pack(
        githost: tuple[GitStandinProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked in protocol v0 (as a server without v2 answers), the in-process path cannot read the answer: git fetches
    into a new mirror, and nothing of the attempt stays."""
    host = githost[0]
    monkeypatch.setitem(http_fetch._HEADERS, "Git-Protocol", "version=0")
    url = host.repo(FILES)
    before = host.count()
    fetched = await fetch_commit(url, None, workspace=workspace(tmp_path), policy=ALLOW)
    paths = paths_since(host, before)
    assert paths[0] == "git-upload-pack" and "refs" in paths, paths  # the attempt, then git's discovery
    assert len(fetched.sha) == 40
    packs = list((fetched.mirror / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 1, packs
    assert not list(fetched.mirror.glob("packed-refs.*")), list(fetched.mirror.iterdir())


async def test_a_bundle_without_the_hosts_authority_fails_on_the_certificate_both_ways(
        githost: tuple[GitStandinProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inkmcp.errors import SourceError

    host = githost[0]
    assert source_mod.CA_BUNDLE is not None
    system_only = tmp_path / "system-only.pem"
    system_only.write_text(Path(host.bundle).read_text().replace(host.ca_file.read_text(), ""))
    monkeypatch.setattr(source_mod, "CA_BUNDLE", str(system_only))
    url = host.repo(FILES)
    before = host.count()
    with pytest.raises(SourceError) as e:
        await fetch_commit(url, None, workspace=workspace(tmp_path / "ws"), policy=ALLOW)
    assert "certificate" in str(e.value).lower(), str(e.value)
    assert paths_since(host, before) == [], "a request reached the host over an unverified connection"


@pytest.mark.parametrize("line", [
    b"%s refs/heads/../../etc\n", b"%s refs/heads/a.lock\n", b"%s refs/heads/x@{1}\n", b"%s refs/pull/1/head\n",
    b"%s refs/heads/.hidden\n", b"%s refs/heads/a//b\n", b"%s refs/heads/\n",
])
def test_ref_names_git_would_have_to_judge_go_to_git(line: bytes) -> None:
    body = http_fetch._pkt(line % (b"a" * 40)) + b"0000"
    with pytest.raises(http_fetch._NotHere):
        http_fetch.parse_ls_refs(body)


def test_ls_refs_answers_that_are_not_v2s_go_to_git() -> None:
    oid = b"b" * 40
    good = http_fetch._pkt(oid + b" HEAD symref-target:refs/heads/main\n") + http_fetch._pkt(
        oid + b" refs/heads/main\n") + http_fetch._pkt(oid + b" refs/tags/v1 peeled:" + b"c" * 40 + b"\n") + b"0000"
    refs = http_fetch.parse_ls_refs(good)
    assert refs.head == oid.decode() and refs.tips == {"refs/heads/main": oid.decode(), "refs/tags/v1": oid.decode()}
    assert refs.peeled == {"refs/tags/v1": "c" * 40}
    for bad in (good[:-4],  # no final flush
                http_fetch._pkt(b"d" * 64 + b" refs/heads/main\n") + b"0000",  # sha-256
                b"001e# service=git-upload-pack\n0000",  # a v0 advertisement
                b"0000",  # an empty repository: git words it
                good[:10]):  # cut short
        with pytest.raises(http_fetch._NotHere):
            http_fetch.parse_ls_refs(bad)


def test_the_pack_stream_takes_band_one_and_stops_at_an_error_band_or_trailing_bytes() -> None:
    pkt = http_fetch._pkt
    stream = http_fetch._PackStream()
    assert stream.feed(pkt(b"packfile\n") + pkt(b"\x02progress") + pkt(b"\x01PACK")) == [b"PACK"]
    assert stream.feed(pkt(b"\x01more")[:3]) == [] and stream.feed(pkt(b"\x01more")[3:] + b"0000") == [b"more"]
    assert stream.ended
    for bad in (pkt(b"packfile\n") + pkt(b"\x03fatal: no"),  # the host's error band
                pkt(b"acknowledgments\n") + b"0000",  # a section after `done` v2 never sends first
                pkt(b"packfile\n") + pkt(b"\x01x") + b"0000" + b"extra"):  # bytes after the end
        with pytest.raises(http_fetch._NotHere):
            http_fetch._PackStream().feed(bad)


def test_a_pinned_source_connects_to_the_checked_address_with_the_hosts_name() -> None:
    pin = ("http.curloptResolve=github.com:443:140.82.121.4,140.82.121.3",)
    target = http_fetch.target_of("https://github.com/o/r.git", pin)
    assert target == http_fetch.Target(url="https://140.82.121.4:443/o/r.git", host_header="github.com",
                                       sni="github.com")
    assert http_fetch.target_of("https://github.com/o/r.git", ()) == http_fetch.Target(url="https://github.com/o/r.git")
    # anything else is git's: credentials in the URL, another setting, a pin for another host or port, ssh
    assert http_fetch.target_of("https://x:tok@github.com/o/r.git", ()) is None
    assert http_fetch.target_of("https://github.com/o/r.git", ("http.proxy=x",)) is None
    assert http_fetch.target_of("https://github.com/o/r.git", ("http.curloptResolve=evil.com:443:1.2.3.4",)) is None
    assert http_fetch.target_of("https://github.com:8443/o/r.git", pin) is None
    assert http_fetch.target_of("ssh://git@github.com/o/r.git", ()) is None


async def test_a_pinned_address_whose_certificate_is_not_the_hosts_is_refused(
        githost: tuple[GitStandinProcess, Path], tmp_path: Path) -> None:
    """The attack DNS pinning is for, from the other side: the name (github.com) pinned to an address whose server
    holds another certificate (the stand-in's, for 127.0.0.1 only). The TLS check is against the name, so the
    handshake fails and no request reaches that server."""
    host = githost[0]
    url = host.repo(FILES)
    parts = urlsplit(url)
    target = http_fetch.Target(url=url, host_header="github.com", sni="github.com")

    async def never() -> None:
        raise AssertionError("index-pack started: the pack was asked for over an unverified connection")

    before = host.count()
    mirror = tmp_path / "m"
    mirror.mkdir()
    assert not await http_fetch.first_fetch(target, mirror, never, ca_bundle=str(host.bundle), seconds=10,
                                            head_ref="refs/inkmcp/HEAD")
    assert paths_since(host, before) == [], parts.netloc
    assert list(mirror.iterdir()) == []


async def test_a_pack_without_a_tip_asked_for_is_dropped_and_git_fetches(
        githost: tuple[GitStandinProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose pack lacks a commit it advertised (as a broken or hostile one would send): the pack index-pack
    wrote is removed with the attempt's other files, and git's fetch leaves the only pack. The index check itself
    runs on the real index: every advertised tip is found, an unknown name is not."""
    host = githost[0]
    seen: list[bool] = []
    real = http_fetch._idx_lacks

    def lacks(idx: Path, oids: set[str]) -> bool:
        assert real(idx, oids) is False and real(idx, {"0" * 40}) is True and real(idx, {"f" * 40}) is True
        seen.append(True)
        (idx.parent / "tmp_pack_left").write_bytes(b"")  # as index-pack's temporary file after a failure
        return True  # as if the host had left one out

    monkeypatch.setattr(http_fetch, "_idx_lacks", lacks)
    url = host.repo(FILES)
    before = host.count()
    fetched = await fetch_commit(url, None, workspace=workspace(tmp_path), policy=ALLOW)
    assert seen == [True]
    assert paths_since(host, before)[:3] == ["git-upload-pack", "git-upload-pack", "refs"], paths_since(host, before)
    left = sorted(p.name for p in (fetched.mirror / "objects" / "pack").iterdir())
    # git's pack only: the attempt's temporary file went with its pack (the pack's name is its content's, so git's
    # own pack of the same objects has the same name; an inode number can be reused at once)
    assert len(left) == 2 and left[0].endswith(".idx") and left[1].endswith(".pack"), left
