"""A throwaway PostgreSQL server (Debian's ``postgresql`` package) for tests and the cluster bench.

``initdb`` into a temporary folder, ``pg_ctl start`` on the given address
and port (optionally inside a network namespace), trust authentication for
one user, fsync off; everything is removed on exit. As root, the server runs
as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

USER = "anchor"


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (the newest installed major version), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def running_postgres(
    host: str = "127.0.0.1", port: int = 55432, *, prefix: Sequence[str] = ()
) -> Iterator[str]:
    """A server on ``host:port`` for the duration; yields its ``postgresql://`` URL (database ``anchor``).
    ``prefix``: a command that runs the server somewhere else (``ip netns exec hub``)."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="anchor-pg-"))
    if os.geteuid() == 0:
        server = pwd.getpwnam("postgres")
        os.chown(folder, server.pw_uid, server.pw_gid)
    data = folder / "data"

    def run(argv: list[str]) -> None:
        subprocess.run(
            [*prefix, *_as_server_user(argv)], check=True, capture_output=True, text=True, timeout=60
        )

    try:
        run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"])
        with (data / "pg_hba.conf").open("a") as hba:  # other test hosts connect too (a private network)
            hba.write(f"host all {USER} all trust\n")
        options = f"-k {folder} -c listen_addresses={host} -p {port} -c fsync=off -c full_page_writes=off"
        run(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "log"),
                "-w",
                "start",
            ]
        )
        try:
            run([str(binaries / "createdb"), "-h", str(folder), "-p", str(port), "-U", USER, USER])
            yield f"postgresql://{USER}@{host}:{port}/{USER}"
        finally:
            run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.strip() or exc.stdout.strip()}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
