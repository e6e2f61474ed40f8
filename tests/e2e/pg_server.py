"""A real PostgreSQL 15 for the tests: initdb into a temp dir, a free
loopback port, trust auth on loopback, started and stopped by the test.
PostgreSQL refuses to run as root, so it runs as the postgres user."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import free_port, wait_for

PG_BIN = "/usr/lib/postgresql/15/bin"


def as_postgres(args, **kw):
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--"] + args
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class PgServer:
    def __init__(self, tmp_path):
        # Its own directory: pytest's are private to root, and the server is not.
        self.dir = Path(tempfile.mkdtemp(prefix="jobd-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        as_postgres([f"{PG_BIN}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                     "--no-sync", "-E", "UTF8", "--locale", "C"])
        self.proc = None
        self.start()

    def start(self):
        args = [f"{PG_BIN}/postgres", "-D", str(self.data), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off",
                "-c", "max_connections=100"]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--"] + args
        self.log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        wait_for(lambda: subprocess.run(
            [f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True).returncode == 0, timeout=30, interval=0.1, what="postgres")

    def conninfo(self):
        return f"hostaddr=127.0.0.1 port={self.port} dbname=postgres user=postgres"

    def psql(self, sql, db="postgres"):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def stop(self, mode="fast"):
        if self.proc and self.proc.poll() is None:
            sig = {"fast": 2, "immediate": 3}[mode]     # SIGINT fast, SIGQUIT immediate
            # Signal the postmaster itself: runuser does not pass SIGQUIT on.
            try:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, sig)
            except (OSError, ValueError, IndexError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def remove(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
