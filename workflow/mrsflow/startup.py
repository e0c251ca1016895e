"""What the Snakefile checks and computes before it builds the DAG.

- :func:`raw_folder_problem`: the raw folder of a real study (``data.source: sheets``) lies
  outside everything the workflow writes (``results/``, ``.snakemake/``), so no rule output,
  and no Snakemake option (``-F``, ``--delete-all-output``), can ever touch it; the twin,
  which the workflow writes itself, lies under ``results/``.
- :func:`results_problem`: ``results/`` can be written (a clear line instead of a
  traceback from deep inside Snakemake).
- :func:`live_run`, :func:`mark_run`, :func:`clear_run`: one run at a time in a working
  directory, with a message that names the other run (Snakemake's own lock is taken only
  after it has looked at the live run's half-written outputs and called them incomplete).
- :func:`stage_code_versions`: a version of each stage's code, carried by its rules as a
  param, so that an edit of a stage's module reruns that stage and what follows it.
- :func:`fail`: one line, exit code 2, no traceback.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RUN_MARKER = Path(".snakemake", "mrsflow-run.json")

# Each stage's entry modules (the ones its rules' CLI commands call) and the package data
# files they read. The imports of these modules inside the package are followed, so a
# change of a shared module (qc, nmrs, basis...) reruns every stage that uses it. The
# command-line plumbing (cli.py, __main__.py) is not part of any stage.
STAGES: Mapping[str, tuple[str, ...]] = {
    "twin": ("twin/generate.py", "twin/anatomy.py", "twin/design.py"),
    "basis": ("basis.py", "data/spin_systems.yaml", "data/macromolecules.yaml"),
    "mm": ("mm.py",),
    "convert": ("convert.py",),
    "preprocess": ("preprocess.py",),
    "linewidth": ("linewidth.py",),
    "segment": ("segment.py", "register.py"),
    "fit": ("fit/__init__.py", "agreement.py"),
    "quantify": ("collect.py",),
    "stats": ("stats.py",),
    "figures": ("figures.py",),
    "report": ("report.py", "verify.py"),
}


def fail(message: str) -> None:
    """Stop the workflow at start-up with one line on stderr and exit code 2."""
    print(f"mrsflow: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def backend_problem(fitting: dict) -> str | None:
    """Why the configured fitting backend cannot run here (LCModel asked for and not found),
    or None; checked at start-up so a missing program stops the run before any job."""
    if fitting.get("backend") != "lcmodel":
        return None
    from mrsflow.errors import InputError
    from mrsflow.fit import lcmodel

    try:
        if lcmodel.find_executable((fitting.get("lcmodel") or {}).get("executable")):
            return None
    except InputError as err:
        return f"fitting.backend lcmodel: {err}"
    return ("fitting.backend lcmodel: no LCModel executable found (set "
            f"fitting.lcmodel.executable or ${lcmodel.ENV_VAR}, or put lcmodel on PATH)")


# ------------------------------------------------------------------------------------------
# where the raw folder may lie
# ------------------------------------------------------------------------------------------
def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def raw_folder_problem(raw_dir: str | Path, *, twin: bool, workdir: str | Path = ".") -> str:
    """'' if ``raw_dir`` may be used, else why not.

    The twin's raw folder is written by the workflow and must lie under ``results/``. A real
    study's raw folder must lie outside ``results/`` and ``.snakemake/`` and must not contain
    the working directory (whose ``results/`` would then be written into it).
    """
    work = Path(workdir).resolve()
    raw = (work / Path(raw_dir)).resolve()
    results = work / "results"
    if twin:
        if not _inside(raw, results) or raw == results:
            return (f"data.raw_dir {raw_dir!r}: the synthetic twin writes its raw exports "
                    "under results/ only (the default is results/twin/raw); to analyse a "
                    "study's own raw folder set data.source: sheets")
        return ""
    for name in ("results", ".snakemake"):
        if _inside(raw, work / name):
            return (f"data.raw_dir {raw_dir!r} lies inside {name}/, which the workflow "
                    "writes and deletes; keep the raw folder outside the working directory's "
                    "results/ and .snakemake/")
    if _inside(work, raw):
        return (f"data.raw_dir {raw_dir!r} ({raw}) contains the working directory {work}, so "
                "results/ would be written into the raw folder; run snakemake from a "
                "directory outside it (for example with -d <analysis folder>)")
    return ""


def results_problem(workdir: str | Path = ".") -> str:
    """'' if ``results/`` (created if missing) accepts a new file, else the problem."""
    results = Path(workdir, "results")
    probe = results / f".write-test-{os.getpid()}"
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return (f"{results.resolve()}: the results folder is not writable "
                f"({err.strerror or err}); make it writable or run from another directory")
    return ""


# ------------------------------------------------------------------------------------------
# one run at a time
# ------------------------------------------------------------------------------------------
def _alive_snakemake(pid: int) -> bool | None:
    """True/False if process ``pid`` is/is not a live snakemake; None if it cannot be told
    (no /proc: alive is then taken from the signal-0 probe alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.is_dir():
        return None
    try:
        return b"snakemake" in cmdline.read_bytes()
    except OSError:
        return False


def live_run(workdir: str | Path = ".") -> str:
    """'' if no other snakemake run is working in ``workdir``, else a message naming it.

    A run leaves :data:`RUN_MARKER` (pid, host, start) while it executes jobs; a marker whose
    process is gone (a killed run) is ignored.
    """
    marker = Path(workdir, RUN_MARKER)
    try:
        info = json.loads(marker.read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if pid == os.getpid():
        return ""
    started = info.get("started", "?")
    if host != socket.gethostname():
        return (f"another snakemake run (host {host}, pid {pid}, started {started}) is working "
                f"in {Path(workdir).resolve()}; wait for it to finish. If it is no longer "
                f"running, delete {marker} and run again")
    alive = _alive_snakemake(pid)
    if alive is False:
        return ""
    return (f"another snakemake run (pid {pid}, started {started}) is working in "
            f"{Path(workdir).resolve()}; wait for it to finish or stop it (kill {pid}) before "
            "starting another one here")


def mark_run(workdir: str | Path = ".") -> None:
    """Leave the marker of this (executing) run (Snakefile ``onstart``)."""
    marker = Path(workdir, RUN_MARKER)
    marker.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
    marker.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": stamp}) + "\n")


def clear_run(workdir: str | Path = ".") -> None:
    """Remove this run's marker (Snakefile ``onsuccess``/``onerror``)."""
    marker = Path(workdir, RUN_MARKER)
    try:
        if int(json.loads(marker.read_text())["pid"]) == os.getpid():
            marker.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass


# ------------------------------------------------------------------------------------------
# code versions
# ------------------------------------------------------------------------------------------
def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _module_file(name: str) -> Path | None:
    """The package file of module ``mrsflow.<name>`` (dotted), or None if it is not ours."""
    parts = name.split(".")
    if parts[0] != "mrsflow":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _package_imports(path: Path, tree: ast.AST) -> set[Path]:
    """Package modules imported anywhere in ``tree`` (function-level imports included)."""
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    here = ["mrsflow", *rel.parts[:-1]]  # the package a relative import starts from
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            for k in range(1, len(name.split(".")) + 1):  # mrsflow, mrsflow.twin, ...
                f = _module_file(".".join(name.split(".")[:k]))
                if f is not None:
                    found.add(f)
    return found


def _file_digest(path: Path) -> tuple[str, frozenset[Path]]:
    """(digest, imported package modules) of a package file: Python as parsed (comments and
    docstrings do not count), anything else as bytes."""
    if path.suffix != ".py":
        return hashlib.sha256(path.read_bytes()).hexdigest(), frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = _package_imports(path, tree)
    dump = ast.dump(_strip_docstrings(tree), include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest(), frozenset(imports)


class _Digests:
    """:func:`_file_digest` of each file once, remembered in ``cache_file`` (JSON, keyed by
    path, mtime and size) between runs: parsing the package takes ~0.5 s, a look-up ~1 ms."""

    def __init__(self, cache_file: Path | None):
        self.cache_file = cache_file
        self.cache: dict = {}
        self.dirty = False
        if cache_file is not None:
            try:
                self.cache = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                self.cache = {}

    def __call__(self, path: Path) -> tuple[str, frozenset[Path]]:
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        st = path.stat()
        key = [st.st_mtime_ns, st.st_size]
        hit = self.cache.get(rel)
        if isinstance(hit, dict) and hit.get("stat") == key:
            imports = frozenset(PACKAGE_DIR / p for p in hit["imports"])
            # an unchanged file's import may now resolve elsewhere (a module became a
            # package, say fit.py -> fit/): a vanished import means: parse it again
            if all(f.is_file() for f in imports):
                return hit["digest"], imports
        digest, imports = _file_digest(path)
        self.cache[rel] = {"stat": key, "digest": digest,
                           "imports": sorted(p.relative_to(PACKAGE_DIR).as_posix()
                                             for p in imports)}
        self.dirty = True
        return digest, imports

    def save(self) -> None:
        if self.cache_file is None or not self.dirty:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f"{self.cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.cache, sort_keys=True))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a cache only


def code_version(entries: Iterable[str], digests=_file_digest) -> str:
    """SHA-256 (16 hex digits) over the entry files (relative to the package) and every
    package module they import, transitively."""
    todo = [PACKAGE_DIR / e for e in entries]
    todo.append(PACKAGE_DIR / "__init__.py")  # the package version is written into outputs
    seen: dict[Path, str] = {}
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f], imports = digests(f)
        todo.extend(imports - seen.keys())
    h = hashlib.sha256()
    for f in sorted(seen, key=lambda p: p.relative_to(PACKAGE_DIR).as_posix()):
        h.update(f"{f.relative_to(PACKAGE_DIR).as_posix()} {seen[f]}\n".encode())
    return h.hexdigest()[:16]


def stage_code_versions(cache_file: str | Path | None = None) -> dict[str, str]:
    """{stage: code version} for every stage of :data:`STAGES` (``cache_file``: where file
    digests are remembered between runs)."""
    digests = _Digests(Path(cache_file) if cache_file else None)
    versions = {stage: code_version(entries, digests) for stage, entries in STAGES.items()}
    digests.save()
    return versions
