"""Every snippet in ``docs/`` and the README is run, so the docs cannot drift from the code.

Each Markdown file's fenced blocks are taken in order:

- ``python`` blocks whose first line names a file (``# myapp/jobs.py``) are
  written to a package in a temporary directory and imported; the jobs they
  declare are synced into the database (as a starting scheduler does) and each
  declared function is called once. ``# settings.py`` blocks are executed and
  their ``APSCHEDULER_*`` settings applied: they must pass every system check
  of this app, the unknown-name warning included.
- other ``python`` blocks run in one namespace per file, against the test
  database. Names a snippet takes from its context (``when``, ``report``) come
  from an HTML comment just before it, ``<!-- snippet-setup ... -->``, which
  Markdown does not show.
- in ``sh`` blocks, every ``manage.py COMMAND ARGS`` line is parsed by that
  command's own parser (a renamed option fails here), and every ``make
  TARGET`` names a target of the Makefile.
- ``ini`` blocks must parse.

The other pages go on from the quick start, so its files are written (and its
jobs stored) before their snippets run.

``text`` blocks (output) and the other languages are not run.
"""

from __future__ import annotations

import configparser
import gc
import importlib
import re
import shlex
import sys
import types
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from django.core.checks import run_checks
from django.core.management import get_commands, load_command_class
from django.test.utils import override_settings
from django.utils import timezone

from django_apscheduler import conf, declared, executions, handoff
from django_apscheduler.jobstores import DjangoJobStore

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

_PIECE = re.compile(
    r"<!-- snippet-setup[^\n]*\n(?P<setup>.*?)-->|^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```",
    re.M | re.S,
)
_FILE_HEADER = re.compile(r"#\s*(?P<path>[\w/]+\.py)\s*$")


@dataclass
class Snippet:
    doc: str
    line: int
    lang: str
    code: str
    setup: str = ""

    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file the snippet shows (``myapp/jobs.py``), from its first line, if any."""
        match = _FILE_HEADER.fullmatch(self.code.splitlines()[0]) if self.code.strip() else None
        return match.group("path") if match else None


def snippets(doc: Path) -> list[Snippet]:
    text = doc.read_text()
    found: list[Snippet] = []
    setup = ""
    for match in _PIECE.finditer(text):
        if match.group("setup") is not None:
            setup = match.group("setup")
            continue
        line = text.count("\n", 0, match.start()) + 1
        found.append(Snippet(doc.name, line, match.group("lang"), match.group("code"), setup))
        setup = ""
    return found


@pytest.fixture
def isolated_registry():
    """An empty registry of declarations for the test; the previous one is restored after."""
    saved = dict(declared._registry)
    declared._registry.clear()
    yield declared._registry
    declared._registry.clear()
    declared._registry.update(saved)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A directory on ``sys.path`` for the snippets' files; their modules are forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if not isinstance(sys.modules[name], types.ModuleType):  # a stub a snippet's setup made
            del sys.modules[name]
        elif (tmp_path.as_posix() in str(getattr(sys.modules[name], "__file__", "") or "")) or (
            getattr(sys.modules[name], "__path__", None)
            and any(tmp_path.as_posix() in p for p in sys.modules[name].__path__)
        ):
            del sys.modules[name]


def _settings_snippet(snippet: Snippet) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(snippet.code, snippet.where(), "exec"), namespace)
    ours = {k: v for k, v in namespace.items() if k.startswith("APSCHEDULER_")}
    unknown = sorted(set(ours) - set(conf.DEFAULTS))
    assert not unknown, f"{snippet.where()}: unknown settings {unknown}"
    if "INSTALLED_APPS" in namespace:
        assert "django_apscheduler" in namespace["INSTALLED_APPS"], snippet.where()
    with override_settings(**ours):
        assert conf.problems() == [], snippet.where()
        ours_checked = [m for m in run_checks() if (m.id or "").startswith("django_apscheduler.")]
        assert ours_checked == [], f"{snippet.where()}: {ours_checked}"


def _file_snippet(snippet: Snippet, root: Path, path: str) -> list[str]:
    """Write the snippet's file, import it; return the ids of the jobs it declares."""
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    package = target.parent
    while package != root:
        (package / "__init__.py").touch()
        package = package.parent
    target.write_text(snippet.code)
    before = set(declared._registry)
    module = path[: -len(".py")].replace("/", ".")
    importlib.invalidate_caches()
    sys.modules.pop(module, None)
    importlib.import_module(module)
    return sorted(set(declared._registry) - before)


def _sync_and_call(ids: list[str], where: str) -> None:
    """Store the declared jobs as a starting scheduler does, then call each one once."""
    declarations = {job_id: declared._registry[job_id] for job_id in ids}
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_jobstore(DjangoJobStore(), "default")
    scheduler.start(paused=True)
    try:
        report = declared.sync(scheduler, declarations=declarations)
        assert sorted(report.declared) == ids, where
        for job_id in ids:
            stored = scheduler.get_job(job_id)
            assert stored is not None, f"{where}: job {job_id!r} was not stored"
    finally:
        scheduler.shutdown(wait=False)
    for declaration in declarations.values():
        if handoff.is_task(declaration.func):
            continue  # a task is handed to its workers, never called here (docs/workers.md)
        declaration.func(
            *declaration.options.get("args", ()), **declaration.options.get("kwargs", {})
        )


def _shell_snippet(snippet: Snippet, makefile: str) -> int:
    """Check the ``manage.py`` and ``make`` lines; return how many were checked."""
    commands = get_commands()
    checked = 0
    for raw in snippet.code.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if "manage.py" in words:
            args = words[words.index("manage.py") + 1 :]
            name = args[0]
            assert name in commands, f"{snippet.where()}: no command {name!r} ({raw})"
            command = load_command_class(commands[name], name)
            parser = command.create_parser("manage.py", name)
            try:
                parser.parse_args(args[1:])
            except SystemExit:
                pytest.fail(f"{snippet.where()}: {raw!r} does not parse")
            checked += 1
        elif words[0] == "make":
            for word in words[1:]:
                if "=" in word:
                    continue
                assert re.search(rf"^{re.escape(word)}:", makefile, re.M), (
                    f"{snippet.where()}: no make target {word!r}"
                )
            checked += 1
    return checked


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_snippet_runs(doc, project, isolated_registry):
    """Each of the doc's snippets runs as the docs say (see the module docstring)."""
    makefile = (ROOT / "Makefile").read_text()
    namespace: dict[str, Any] = {
        "__name__": f"docs_{doc.stem}",
        "timezone": timezone,
        "timedelta": timedelta,
        "SimpleNamespace": SimpleNamespace,
    }
    ran = 0
    pieces = snippets(doc)
    if doc.name not in ("quickstart.md", "README.md"):
        # The other pages go on from the quick start: its files (and jobs) exist.
        quick = [s for s in snippets(ROOT / "docs" / "quickstart.md") if s.lang == "python"]
        pieces = [s for s in quick if s.file and s.file != "settings.py"] + pieces
    try:
        for snippet in pieces:
            if snippet.lang == "python":
                path = snippet.file
                if path == "settings.py":
                    _settings_snippet(snippet)
                elif path:
                    ids = _file_snippet(snippet, project, path)
                    if ids:
                        _sync_and_call(ids, snippet.where())
                else:
                    exec(compile(snippet.setup, snippet.where(), "exec"), namespace)
                    exec(compile(snippet.code, snippet.where(), "exec"), namespace)
                ran += 1
            elif snippet.lang == "sh":
                ran += _shell_snippet(snippet, makefile) > 0
            elif snippet.lang == "ini":
                configparser.ConfigParser(interpolation=None).read_string(snippet.code)
                ran += 1
    finally:
        for value in namespace.values():
            if isinstance(value, BaseScheduler) and value.running:
                value.shutdown(wait=False)
        executions.recorder.flush(timeout=30)
        namespace.clear()  # the snippets' receivers are weakly connected: this disconnects them
        gc.collect()
    if doc.name in (
        "quickstart.md",
        "README.md",
        "multiple-schedulers.md",
        "deployment.md",
        "observability.md",
    ):
        assert ran, f"{doc.name}: no snippet was run"


def test_snippets_are_found():
    """The extraction sees the blocks (a broken regex would make every test above pass)."""
    quick = snippets(ROOT / "docs" / "quickstart.md")
    assert [s.file for s in quick if s.lang == "python"][:2] == ["settings.py", "myapp/jobs.py"]
    assert any(s.setup and "when" in s.setup for s in quick)
    readme = snippets(ROOT / "README.md")
    assert any(s.lang == "sh" and "make demo" in s.code for s in readme)
