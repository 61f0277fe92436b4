"""Create or update a virtual environment with django-apscheduler installed for development.

Run it with the interpreter the environment should use::

    python3.12 scripts/bootstrap.py --venv .venv-py3.12-django6 --django 6

It installs the package in editable mode with the ``test`` extra and the
requested Django series. A stamp file in the environment records what was
installed (Python version, Django requirement, the packaging files), so a
second run with nothing changed returns at once. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING_FILES = ("setup.cfg", "setup.py", "pyproject.toml")
STAMP = ".django-apscheduler-stamp"
MARIADB_APT_PACKAGES = ("libmariadb-dev", "pkg-config")
#: The browser the admin's browser tests drive (Playwright with Debian's Chromium).
CHROMIUM = Path("/usr/bin/chromium")


def django_requirement(spec: str) -> str:
    """``"5.2"`` -> ``"Django>=5.2,<5.3"``, ``"6"`` -> ``"Django>=6.0,<7"``; others as given."""
    if re.fullmatch(r"\d+", spec):
        return f"Django>={spec}.0,<{int(spec) + 1}"
    match = re.fullmatch(r"(\d+)\.(\d+)", spec)
    if match:
        major, minor = match.groups()
        return f"Django>={major}.{minor},<{major}.{int(minor) + 1}"
    return spec if spec.lower().startswith("django") else f"Django{spec}"


def default_extras(spec: str) -> str:
    """``test``, plus ``tasks`` where django-tasks-db installs (it needs Django 5.2 or later)."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?", spec)
    if match and (int(match.group(1)), int(match.group(2) or 0)) < (5, 2):
        return "test"
    return "test,tasks"


def stamp_text(requirements: list[str]) -> str:
    digest = hashlib.sha256()
    for name in PACKAGING_FILES:
        path = ROOT / name
        digest.update(name.encode() + b"\0")
        if path.exists():
            digest.update(path.read_bytes())
    return "\n".join(
        [f"python {platform.python_version()}", *requirements, f"files {digest.hexdigest()}", ""]
    )


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_version(path: Path) -> str | None:
    cfg = path / "pyvenv.cfg"
    if not cfg.exists() or not venv_python(path).exists():
        return None
    for line in cfg.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return value.strip()
    return None


def mariadb_client_available() -> bool:
    """Can mysqlclient be built here (it finds the MariaDB/MySQL client through pkg-config)?"""
    if os.environ.get("MYSQLCLIENT_CFLAGS") and os.environ.get("MYSQLCLIENT_LDFLAGS"):
        return True
    if not shutil.which("pkg-config"):
        return False
    return any(
        subprocess.run(["pkg-config", "--exists", lib], check=False).returncode == 0
        for lib in ("mysqlclient", "mariadb")
    )


def ensure_mariadb_client() -> None:
    """Install the MariaDB client headers mysqlclient builds against, if missing and we may."""
    if mariadb_client_available():
        return
    packages = " ".join(MARIADB_APT_PACKAGES)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"mysqlclient needs the MariaDB client headers: apt-get install {packages}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *MARIADB_APT_PACKAGES], check=True, env=env
        )
        if mariadb_client_available():
            return
    sys.exit(
        "error: mysqlclient (the MariaDB driver of the test extra) needs the MariaDB client\n"
        "headers and pkg-config, which are missing. Install them, then run make again:\n"
        f"    sudo apt-get install {packages}      # Debian/Ubuntu\n"
        "or set MYSQLCLIENT_CFLAGS and MYSQLCLIENT_LDFLAGS for your client library."
    )


def ensure_chromium() -> None:
    """Install Debian's Chromium for the browser tests when missing and we are root with apt.

    Playwright's own browser download is not used: the tests launch
    ``/usr/bin/chromium``. Without root or apt, say what to install; the
    browser tests then fail naming the missing browser.
    """
    if CHROMIUM.exists():
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"The browser tests need {CHROMIUM}: apt-get install chromium")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
        if CHROMIUM.exists():
            return
    print(
        f"warning: the admin's browser tests need Chromium at {CHROMIUM}, which is missing.\n"
        "Install it, then run make again:\n"
        "    sudo apt-get install chromium      # Debian/Ubuntu",
        file=sys.stderr,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", required=True, type=Path, help="environment directory")
    parser.add_argument("--django", required=True, help='Django series ("5.2", "6") or spec')
    parser.add_argument(
        "--extras",
        default=None,
        help='extras of the package to install (default "test", plus "tasks" on Django 5.2+)',
    )
    args = parser.parse_args()
    if args.extras is None:
        args.extras = default_extras(args.django)

    path = args.venv if args.venv.is_absolute() else ROOT / args.venv
    package = f".[{args.extras}]" if args.extras else "."
    requirements = [f"-e {package}", django_requirement(args.django)]
    wanted = stamp_text(requirements)
    stamp = path / STAMP
    label = f"{args.venv} (Python {platform.python_version()}, {requirements[1]})"
    if "test" in args.extras:
        ensure_chromium()
    if stamp.exists() and stamp.read_text() == wanted and venv_python(path).exists():
        print(f"Virtual environment {label} is up to date.")
        return 0

    started = time.monotonic()
    version = venv_version(path)
    if version != platform.python_version():
        print(f"Creating virtual environment {label}...")
        venv.EnvBuilder(with_pip=True, clear=path.exists()).create(path)
    else:
        print(f"Updating virtual environment {label}...")
    stamp.unlink(missing_ok=True)

    if "mysql" in args.extras or "test" in args.extras:
        ensure_mariadb_client()

    log = path / "pip.log"
    pip = [str(venv_python(path)), "-m", "pip", "install", "--disable-pip-version-check"]
    command = [*pip, "-e", package, requirements[1]]
    with log.open("w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        lines = log.read_text().splitlines()
        print("\n".join(lines[-60:]), file=sys.stderr)
        print(f"error: pip install failed (full log: {log})", file=sys.stderr)
        return done.returncode

    versions = subprocess.run(
        [
            str(venv_python(path)),
            "-c",
            "import django, apscheduler; print(django.get_version(), apscheduler.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stamp.write_text(wanted)
    print(
        f"Installed django-apscheduler with Django {versions[0]} and APScheduler {versions[1]} "
        f"in {time.monotonic() - started:.1f} s (pip's log: {log})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
