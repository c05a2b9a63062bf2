"""Every code block in README.md and docs/**/*.md runs exactly as written, or says why not.

The convention: the line just before a block's opening fence is an HTML comment (invisible
on GitHub and in the MkDocs site) that says how the block is checked. A block without one
fails ``test_every_block_says_how_it_is_checked``, so no example slips in untested.

``<!-- run: python -->``
    A complete program. It runs as ``python example.py`` with this interpreter, in an
    empty temporary directory. Tags after ``python`` name the servers it needs:
    ``redis``, ``postgres``, ``nats`` (the local ones on their usual ports; skipped when
    unreachable, failed under ``EVENTMILL_REQUIRE_SERVICES=1`` as for every service
    test) and ``kafka`` (a Tansu broker this module starts; the program reads its
    address from ``$KAFKA_URL``). Programs that use a server name their topics
    ``shop.*`` and their PostgreSQL schema ``shop``; the runner deletes those before
    and after each run.
``<!-- run: shell -->``
    Shell commands, run with ``bash -euo pipefail`` in the page's shell session: one per
    page, like a newcomer's terminal in a fresh clone after ``make test`` — the working
    directory holds a symlink to every top-level entry of the checkout (``.venv``,
    ``Makefile``, ``pyproject.toml``, ...), so ``.venv/bin/eventmill`` is there but not
    on ``PATH``, and ``./eventmill-data`` is the session's own; no ``EVENTMILL_*`` or
    ``RAZORPAY_*`` variable (nor any other the service reads: ``PUBSUB_BACKEND``, ``REDIS_URL``,
    ...) is set. Variables a block sets are seen by the page's next
    blocks (the runner exports them and carries them over, with the working directory).
``<!-- run: shell, service -->``
    The same, and the page's service must be running: if no ``run: serve`` block started
    one, the runner starts ``.venv/bin/eventmill serve`` in the session's directory.
``<!-- run: serve -->``
    A command that runs the service in the foreground (``make serve``,
    ``RAZORPAY_WEBHOOK_SECRET=... make serve``: the reader's other terminal). It runs as
    written, in the background, in the session's directory; a service the page started
    before is stopped first (the reader's Ctrl-C: SIGINT), and the block is done when
    ``/readyz`` answers 200.
``<!-- output -->``
    The expected standard output of the run block just before it. ``...`` stands for any
    text (ids, times); trailing blank lines are ignored.
``<!-- not-run: reason -->``
    Not run, for what truly cannot run here (a Dockerfile, a manifest, a config file shown
    as an example, a command synopsis). TOML, YAML, JSON and Python blocks are still
    parsed.

The port: a test never takes 8080 (a developer's own service may be there). The service
runs on a free port, passed to the serve command as ``EVENTMILL_PORT``. Shell blocks reach
it through ``$EVENTMILL``, which a page sets with the line ``EVENTMILL=http://127.0.0.1:8080``;
that one line is the only text the runner changes (it gets the test service's address),
and no other shell line may name port 8080.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, require_service

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>run|output|not-run)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")
_ADDRESS_LINE = re.compile(r"^(export )?EVENTMILL=http://127\.0\.0\.1:8080$", re.M)
_PORT_8080 = re.compile(r"(127\.0\.0\.1|localhost|0\.0\.0\.0):8080")
_SERVERS = {"redis", "postgres", "nats", "kafka"}
_SHELL_LANGS = {"sh", "bash", "shell"}
_PARSERS = {"toml", "yaml", "yml", "json", "python", "py"}
_DROPPED_ENV = (
    *("EVENTMILL_", "RAZORPAY_", "PUBSUB_BACKEND", "KAFKA_BROKERS", "REDIS_URL", "NATS_URL"),
    *("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"),
)
_NOT_LINKED = {".git", "eventmill-data", "site", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


@dataclass
class Block:
    page: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    kind: str | None = None
    """``run``, ``output``, ``not-run``, or None (no marker)."""
    arg: str = ""
    output: Block | None = None
    """The ``output`` block that follows this run block, if any."""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def tags(self) -> list[str]:
        return [t.strip() for t in self.arg.split(",") if t.strip()]


def parse_blocks(page: Path) -> list[Block]:
    """Every fenced code block of ``page`` with the marker on the line before it."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j].removeprefix(indent))
            j += 1
        else:
            raise AssertionError(f"{page.relative_to(ROOT)}:{i + 1}: code block never closed")
        info = opening["info"].strip()
        block = Block(page, i + 1, info.split()[0].lower() if info else "", "\n".join(body) + "\n")
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.match(lines[k]) if k >= 0 else None
        if marker is not None:
            block.kind, block.arg = marker["kind"], marker["arg"] or ""
            if block.kind == "output" and blocks and blocks[-1].kind == "run":
                blocks[-1].output = block
        blocks.append(block)
        i = j + 1
    return blocks


BLOCKS = {page: parse_blocks(page) for page in PAGES}
ALL = [b for blocks in BLOCKS.values() for b in blocks]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def _problem(block: Block) -> str | None:
    """What is wrong with a block's marker, or None."""
    if block.kind is None:
        return (
            "no marker: put <!-- run: ... -->, <!-- output --> or <!-- not-run: why --> before it"
        )
    if block.kind == "not-run":
        return None if block.arg else "<!-- not-run: ... --> needs a reason"
    if block.kind == "output":
        owner = next((b for b in ALL if b.output is block), None)
        return None if owner is not None else "<!-- output --> must follow a run block"
    tags = block.tags
    if not tags:
        return "<!-- run: ... --> needs python, shell or serve"
    what, extra = tags[0], set(tags[1:])
    if what == "python":
        if block.lang not in ("python", "py"):
            return f"run: python on a {block.lang or 'plain'} block"
        return None if extra <= _SERVERS else f"unknown tags {sorted(extra - _SERVERS)}"
    if what in ("shell", "serve"):
        if block.lang not in _SHELL_LANGS:
            return f"run: {what} on a {block.lang or 'plain'} block (use sh)"
        if what == "shell" and not extra <= {"service"}:
            return f"unknown tags {sorted(extra - {'service'})}"
        if what == "serve" and extra:
            return "run: serve takes no tags"
        text = _ADDRESS_LINE.sub("", block.code)
        if _PORT_8080.search(text):
            return (
                "names port 8080: use $EVENTMILL (set by the line EVENTMILL=http://127.0.0.1:8080)"
            )
        return None
    return f"unknown run kind {what!r}"


def test_every_block_says_how_it_is_checked() -> None:
    assert len(ALL) > 20, "the pages hold more examples than this: is the parser broken?"
    problems = [f"{b.where}: {p}" for b in ALL if (p := _problem(b)) is not None]
    assert not problems, "\n".join(problems)


# -- output comparison ---------------------------------------------------------------------


def matches(expected: str, actual: str) -> bool:
    """``actual`` equals ``expected`` where each ``...`` stands for any text."""
    expected, actual = expected.rstrip("\n"), actual.rstrip("\n")
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual, re.S) is not None


def _check_output(block: Block, stdout: str) -> None:
    if block.output is not None:
        assert matches(block.output.code, stdout), (
            f"{block.where}: printed\n{stdout}\nbut {block.output.where} shows\n{block.output.code}"
        )


def _clean_env() -> dict[str, str]:
    """The environment of a newcomer: no eventmill settings, no activated venv."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- Python examples -------------------------------------------------------------------------


def _python_blocks() -> list[Block]:
    return [b for b in ALL if b.kind == "run" and b.tags[:1] == ["python"]]


@pytest.fixture(scope="module")
def kafka_url() -> Iterator[str]:
    from tests.pubsub._kafka_server import tansu_server

    with tansu_server() as server:
        yield f"kafka://127.0.0.1:{server.port}"


async def _drop_shop_names(servers: set[str]) -> None:
    """Delete what the examples make on the shared servers: topics ``shop.*``, schema ``shop``."""
    if "redis" in servers:
        import redis.asyncio as aioredis

        client = aioredis.Redis(host="127.0.0.1", port=6379)
        try:
            keys = [k async for k in client.scan_iter(match="eventmill:shop.*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    if "nats" in servers:
        import nats

        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                if info.config.name and info.config.name.startswith("eventmill-shop_2E"):
                    await js.delete_stream(info.config.name)
        finally:
            await nc.close()
    if "postgres" in servers:
        import asyncpg

        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute("DROP SCHEMA IF EXISTS shop CASCADE")
        finally:
            await conn.close()


_ADDRESSES = {"redis": ("Redis", 6379), "postgres": ("PostgreSQL", 5432), "nats": ("NATS", 4222)}


@pytest.mark.parametrize("block", _python_blocks(), ids=_ids(_python_blocks()))
def test_python_example(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    servers = set(block.tags[1:])
    env = _clean_env()
    for name in sorted(servers - {"kafka"}):
        label, port = _ADDRESSES[name]
        require_service(label, "127.0.0.1", port)
    if "kafka" in servers:
        env["KAFKA_URL"] = request.getfixturevalue("kafka_url")
    shared = servers & {"redis", "nats", "postgres"}
    asyncio.run(_drop_shop_names(shared))
    script = tmp_path / "example.py"
    script.write_text(block.code)
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
    finally:
        asyncio.run(_drop_shop_names(shared))
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
    _check_output(block, done.stdout)


def test_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    """Every Python example that is run also type-checks as the library's own code does
    (``mypy --strict``): a reader's type checker accepts what the docs show."""
    blocks = _python_blocks()
    for n, block in enumerate(blocks):
        (tmp_path / f"example_{n:03d}.py").write_text(block.code)
    # the project's own settings for libraries without type information (asyncpg, …)
    untyped = [
        module
        for override in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"][
            "overrides"
        ]
        if override.get("ignore_missing_imports")
        for module in override["module"]
    ]
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n"
        + "".join(f"[mypy-{module}]\nignore_missing_imports = True\n" for module in untyped)
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *sorted(str(f) for f in tmp_path.glob("example_*.py")),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    where = {f"example_{n:03d}.py": block.where for n, block in enumerate(blocks)}
    report = "\n".join(
        f"{where.get(line.split(':', 1)[0], '')} {line}" for line in done.stdout.splitlines()
    )
    assert done.returncode == 0, f"mypy --strict on the docs' Python examples:\n{report}"


# -- blocks that are not run -----------------------------------------------------------------


def _parsed_blocks() -> list[Block]:
    return [b for b in ALL if b.kind == "not-run" and b.lang in _PARSERS]


@pytest.mark.parametrize("block", _parsed_blocks(), ids=_ids(_parsed_blocks()))
def test_not_run_block_parses(block: Block) -> None:
    if block.lang == "toml":
        tomllib.loads(block.code)
    elif block.lang in ("yaml", "yml"):
        yaml.safe_load(block.code)
    elif block.lang == "json":
        json.loads(block.code)
    else:
        ast.parse(block.code, filename=block.where)


# -- shell sessions ----------------------------------------------------------------------------


@dataclass
class ShellSession:
    """One page's terminal(s): a project-root look-alike, the reader's variables, and the
    service the page started."""

    home: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=_clean_env)
    cwd: Path | None = None
    service: subprocess.Popen[bytes] | None = None
    service_log: Path | None = None

    def __post_init__(self) -> None:
        self.root = self.home / "project"
        self.root.mkdir()
        for entry in ROOT.iterdir():
            if entry.name not in _NOT_LINKED:
                (self.root / entry.name).symlink_to(entry)
        if not (self.root / ".venv").exists():
            (self.root / ".venv").symlink_to(Path(sys.prefix))
        if not (self.root / ".venv" / "bin" / "eventmill").exists():
            pytest.fail("no .venv/bin/eventmill: run `make .venv/.installed` first")
        stale = subprocess.run(
            ["make", "-q", ".venv/.installed"], cwd=self.root, env=self.env, capture_output=True
        )
        if stale.returncode != 0:
            pytest.fail("the venv is older than pyproject.toml: run `make .venv/.installed` first")
        self.cwd = self.root
        self.state = self.home / "state.env"
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, block: Block) -> str:
        code = _ADDRESS_LINE.sub(lambda m: f"{m[1] or ''}EVENTMILL={self.url}", block.code)
        script = self.home / "block.sh"
        script.write_text(f"set -a\n{code}\nenv -0 > {self.state}\n")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.cwd,
            env=self.env,
        )
        assert done.returncode == 0, (
            f"{block.where} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            + self._service_log()
        )
        carried = dict(
            item.split("=", 1) for item in self.state.read_text().split("\0") if "=" in item
        )
        self.cwd = Path(carried.pop("PWD", str(self.cwd)))
        for name in ("_", "SHLVL", "OLDPWD"):
            carried.pop(name, None)
        self.env = carried
        return done.stdout

    def serve(self, command: str, where: str) -> None:
        self.stop()
        for _ in range(3):  # another process may take the free port before the service binds it
            if self._start(command, where):
                return
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            if "EVENTMILL" in self.env:
                self.env["EVENTMILL"] = self.url
        pytest.fail(f"{where}: no free port for the service")

    def _start(self, command: str, where: str) -> bool:
        self.service_log = self.home / f"service-{where.split(' ')[0].replace('/', '_')}.log"
        with self.service_log.open("wb") as log:
            self.service = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=self.root,
                env={**_clean_env(), "EVENTMILL_PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                if "address already in use" in self.service_log.read_text(errors="replace"):
                    self.stop()
                    return False
                pytest.fail(f"{where}: the service exited{self._service_log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return True
            time.sleep(0.1)
        pytest.fail(f"{where}: the service did not become ready{self._service_log()}")

    def stop(self) -> None:
        """The reader's Ctrl-C: SIGINT to the service's process group; SIGKILL after 30 s.
        Returns once every process of the group is gone (the port is free again)."""
        proc, self.service = self.service, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                proc.poll()  # reap the group leader, else it stays a zombie of the group
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def _service_log(self) -> str:
        if self.service_log is None or not self.service_log.exists():
            return ""
        return f"\n--- service log ---\n{self.service_log.read_text(errors='replace')[-4000:]}"


def _shell_pages() -> list[Path]:
    return [
        page
        for page, blocks in BLOCKS.items()
        if any(b.kind == "run" and b.tags[:1] in (["shell"], ["serve"]) for b in blocks)
    ]


@pytest.mark.parametrize(
    "page", _shell_pages(), ids=[str(p.relative_to(ROOT)) for p in _shell_pages()]
)
def test_shell_session(page: Path, tmp_path: Path) -> None:
    session = ShellSession(tmp_path)
    try:
        for block in BLOCKS[page]:
            if block.kind != "run" or block.tags[0] not in ("shell", "serve"):
                continue
            if block.tags[0] == "serve":
                session.serve(block.code, block.where)
                continue
            if "service" in block.tags and session.service is None:
                session.serve(".venv/bin/eventmill serve", f"{block.where} (default service)")
            _check_output(block, session.run(block))
    finally:
        session.stop()
