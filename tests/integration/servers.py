"""Real servers for the integration tests: `mlflow server` and a throw-away PostgreSQL cluster.

Everything listens on 127.0.0.1 only, runs in its own process group (so stopping it also stops
the workers it forked), and lives in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "run scripts/install-system-deps.sh (Debian, as root)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any MLFLOW_* setting, plus quiet, offline defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(PROJECT_ROOT),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        MLFLOW_DISABLE_TELEMETRY="true",  # no network here; do not try
        DO_NOT_TRACK="true",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """Like TemporaryDirectory, but also removes what another user (postgres) wrote in it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Service:
    """A background process in its own session; `stop()` ends its whole process group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path,
                 cwd: Path | None = None):
        self.name, self.log = name, log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Workers may outlive their parent for a moment: make sure the group is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log_file.close()


def wait_for_http(url: str, service: Service, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{service.name} not ready after {timeout:.0f} s:\n{service.log_tail()}")


def start_mlflow_server(backend_store_uri: str, artifacts: Path, log: Path,
                        app_name: str | None = None, **env: str) -> tuple[Service, str]:
    """`mlflow server` with proxied artifacts on a free loopback port; returns (service, url)."""
    port = free_port()
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", HOST, "--port", str(port),
        "--workers", "1",
    ]
    if app_name:
        args += ["--app-name", app_name]
    # No background job runner (GenAI jobs; eight huey processes the tests do not use).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
    service = Service(f"mlflow server ({backend_store_uri.split(':')[0]})", args,
                      base_env(**env), log, cwd=log.parent)
    url = f"http://{HOST}:{port}"
    try:
        wait_for_http(f"{url}/health", service)
    except BaseException:
        service.stop()
        raise
    return service, url


def run_report(args: list[str], env: dict[str, str], cwd: Path, check: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m report ARGS` as a user's shell would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "report", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"python -m report {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def run_id_of(result: subprocess.CompletedProcess) -> str:
    for line in result.stdout.splitlines():
        if line.startswith("MLflow run:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no 'MLflow run:' line in:\n{result.stdout}")


def forget_local_report(run_id: str) -> None:
    """`explain` also copies the report to reports/<run_id>/; those of test runs go."""
    shutil.rmtree(PROJECT_ROOT / "reports" / run_id, ignore_errors=True)


# --- PostgreSQL -----------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest installed server's bin folder (Debian keeps it off PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    return None


def postgres_skip_reason() -> str | None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run initdb as; " + INSTALL_HINT
        if not shutil.which("runuser"):
            return "running as root and no runuser(1) to start PostgreSQL as 'postgres'"
    return None


class PostgresCluster:
    """initdb + pg_ctl start in a temp folder, loopback only, password auth over TCP.

    As root, the cluster runs as the unprivileged `postgres` user (initdb refuses root). The
    password reaches clients through PGPASSWORD, never a command line or a URI.
    """

    user = "mlflow"

    def __init__(self, folder: Path):
        self.bin = postgres_bin_dir()
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.password = os.urandom(12).hex()
        self._as_root = os.geteuid() == 0

    def _run(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env=env or base_env(), cwd=self.folder,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        self.folder.chmod(0o700)
        if self._as_root:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.folder, postgres.pw_uid, postgres.pw_gid)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        pwfile.chmod(0o600)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-instructions")
        pwfile.unlink()
        options = (f"-k {self.folder} -p {self.port} -c listen_addresses={HOST} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "postgres.log"), "-w", "-t", "60", "start")
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", self.user, "mlflow",
                  env=base_env(PGPASSWORD=self.password))

    @property
    def uri(self) -> str:
        """SQLAlchemy URI without the password (the server gets PGPASSWORD)."""
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the test pins psycopg2.
        return f"postgresql+psycopg2://{self.user}@{HOST}:{self.port}/mlflow"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
