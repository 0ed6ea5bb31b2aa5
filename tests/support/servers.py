"""Real Redis, MariaDB, php-fpm and nginx servers on Unix sockets in a temporary directory.

Reusable by every test tier (offline recorder, live capture tests)::

    with start_redis(tmp) as sock: ...
    with start_mariadb(tmp) as sock: ...   # root@localhost, no password
    with start_php_app(tmp) as sock: ...   # php-fpm's socket; nginx_socket(sock) in front

``redis_net_bytes`` / ``mariadb_bytes`` read the servers' own byte counters
(INFO stats total_net_input_bytes/total_net_output_bytes, SHOW GLOBAL STATUS
Bytes_received/Bytes_sent) so captures can be checked against the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not accept connections within {timeout}s")


@contextlib.contextmanager
def _running(args: list[str], sock: Path, timeout: float, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(sock, proc, timeout)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def start_redis(tmpdir: str | os.PathLike[str], *extra: str) -> Iterator[str]:
    """Run redis-server on ``tmpdir/redis.sock``; yield the socket path."""
    d = Path(tmpdir)
    sock = d / "redis.sock"
    args = [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "777"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(d), *extra]
    with _running(args, sock, 10, d / "redis.log") as path:
        yield path


@contextlib.contextmanager
def start_mariadb(tmpdir: str | os.PathLike[str], *extra: str) -> Iterator[str]:
    """Initialise a datadir and run mariadbd on ``tmpdir/mysqld.sock``; yield the socket path."""
    d = Path(tmpdir)
    datadir, sock = d / "mysql-data", d / "mysqld.sock"
    if not datadir.exists():
        subprocess.run(
            [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    args = [MARIADBD, "--no-defaults", "--skip-networking", f"--socket={sock}",
            f"--datadir={datadir}", "--user=root", f"--pid-file={d / 'mysqld.pid'}",
            "--innodb-buffer-pool-size=16M", "--skip-log-bin", *extra]  # fmt: skip
    with _running(args, sock, 60, d / "mysqld.log") as path:
        yield path


MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"


@contextlib.contextmanager
def start_memcached(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """Run memcached on ``tmpdir/memcached.sock`` (text protocol); yield the socket path."""
    d = Path(tmpdir)
    sock = d / "memcached.sock"
    args = [MEMCACHED, "-s", str(sock), "-a", "0777", "-u", "root", "-m", "16"]
    with _running(args, sock, 10, d / "memcached.log") as path:
        yield path


def redis_net_bytes(sock: str) -> tuple[int, int]:
    """(total_net_input_bytes, total_net_output_bytes) as the server counts them."""
    client = redis.Redis(unix_socket_path=sock)
    try:
        stats = client.info("stats")
        return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])
    finally:
        client.close()


def mariadb_bytes(sock: str, user: str = "root", password: str = "") -> tuple[int, int]:
    """(Bytes_received, Bytes_sent) from SHOW GLOBAL STATUS."""
    conn = pymysql.connect(unix_socket=sock, user=user, password=password)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Bytes_received','Bytes_sent')")
            values = dict(cur.fetchall())
        return int(values["Bytes_received"]), int(values["Bytes_sent"])
    finally:
        conn.close()


PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))
PG_USER = "app"  # a user with a password, authenticated by SCRAM-SHA-256
PG_PASSWORD = "pg-secret-123"
PG_PLAIN_USER = "plain"  # a user authenticated by a cleartext password
PG_HBA = f"""\
local all {PG_USER} scram-sha-256
local all {PG_PLAIN_USER} password
local all all trust
"""


@contextlib.contextmanager
def start_postgres(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """initdb and run postgres (as the ``postgres`` user, which owns the data) with
    its socket in ``tmpdir/pg`` and pg_stat_statements loaded; the users PG_USER and
    PG_PLAIN_USER have the password PG_PASSWORD.  Yields the socket's path
    (``SOCKDIR/.s.PGSQL.5432``; clients are given SOCKDIR, ``psql -h SOCKDIR``)."""
    d = Path(tmpdir) / "pg"
    data = d / "data"
    d.mkdir(exist_ok=True)
    for p in (Path(tmpdir), d):
        p.chmod(0o777)  # the postgres user must reach the directory
    shutil.chown(d, "postgres")
    if not data.exists():
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_postgres, *initdb], check=True, capture_output=True)
        (data / "pg_hba.conf").write_text(PG_HBA)
    args = ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
            "-k", str(d), "-c", "listen_addresses=", "-c", "fsync=off",
            "-c", "shared_preload_libraries=pg_stat_statements"]  # fmt: skip
    with _running(args, d / ".s.PGSQL.5432", 60, d / "postgres.log") as sock:
        setup = (
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
            f"CREATE ROLE {PG_USER} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';"
            f"CREATE ROLE {PG_PLAIN_USER} LOGIN PASSWORD '{PG_PASSWORD}';"
        )
        subprocess.run(["psql", "-h", str(d), "-U", "postgres", "-q", "-c", setup, "postgres"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        yield sock


PODMAN = shutil.which("podman") or "/usr/bin/podman"


@contextlib.contextmanager
def start_podman(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """Run the Docker-compatible API server of podman on ``tmpdir/podman.sock``, with its
    storage, run state and event log in ``tmpdir``; yield the socket path.  ``tmpdir`` must
    be short: podman refuses a run root (``tmpdir/run``) longer than 50 characters."""
    d = Path(tmpdir)
    sock = d / "podman.sock"
    for sub in ("root", "run"):
        (d / sub).mkdir(exist_ok=True)
    args = [PODMAN, "--log-level=error", f"--root={d / 'root'}", f"--runroot={d / 'run'}",
            f"--tmpdir={d / 'run'}", "--events-backend=file", "--storage-driver=vfs",
            "system", "service", "--time=0", f"unix://{sock}"]  # fmt: skip
    with _running(args, sock, 30, d / "podman.log") as path:
        yield path


PHP_FPM = shutil.which("php-fpm8.2") or "/usr/sbin/php-fpm8.2"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# A small PHP app: each script's behaviour is what the FastCGI tests check.
PHP_APP = {
    "hello.php": '<?php echo "hello ", $_GET["name"] ?? "world", "\\n";\n',
    "post.php": (
        "<?php header('Content-Type: text/plain');\n"
        "$body = file_get_contents('php://input');\n"
        'echo strlen($body), " ", md5($body), "\\n";\n'
    ),
    "warn.php": (
        "<?php error_log('usniff-warning: disk almost full');\n"
        "trigger_error('usniff-notice', E_USER_WARNING);\n"
        'echo "warned\\n";\n'
    ),
    "slow.php": '<?php usleep(200000); echo "slept\\n";\n',
    "teapot.php": "<?php http_response_code(418); header('Content-Type: application/json');\n"
    'echo json_encode(["teapot" => true]), "\\n";\n',
    "fail.php": "<?php no_such_function();\n",
}


@contextlib.contextmanager
def start_php_fpm(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """Run php-fpm (one static pool of 4 workers, as root) on ``tmpdir/php-fpm.sock``
    serving the scripts of PHP_APP from ``tmpdir/app``; yield the socket path.

    No php.ini (``-n``): log_errors on, display_errors off, so PHP's warnings go
    to the web server over FCGI_STDERR (fastcgi.logging is on by default)."""
    d = Path(tmpdir)
    sock, app = d / "php-fpm.sock", d / "app"
    app.mkdir(exist_ok=True)
    for name, text in PHP_APP.items():
        (app / name).write_text(text)
    conf = d / "php-fpm.conf"
    conf.write_text(
        f"[global]\npid = {d / 'php-fpm.pid'}\nerror_log = {d / 'php-fpm.log'}\n"
        "daemonize = no\n"
        f"[app]\nuser = root\ngroup = root\nlisten = {sock}\nlisten.mode = 0666\n"
        "pm = static\npm.max_children = 4\n"
        "php_admin_value[log_errors] = On\nphp_admin_value[display_errors] = Off\n"
    )
    args = [PHP_FPM, "-n", "-y", str(conf), "-R", "--nodaemonize"]
    with _running(args, sock, 20, d / "php-fpm.out") as path:
        yield path


@contextlib.contextmanager
def start_nginx(tmpdir: str | os.PathLike[str], fpm_sock: str) -> Iterator[str]:
    """Run nginx on ``tmpdir/nginx.sock`` passing ``*.php`` to php-fpm on ``fpm_sock``
    over kept-alive FastCGI connections (``fastcgi_keep_conn on``); yield its socket."""
    d = Path(tmpdir)
    sock, app = d / "nginx.sock", d / "app"
    temp = "".join(f"{k}_temp_path {d / k};\n" for k in ("client_body", "proxy", "fastcgi",
                                                          "uwsgi", "scgi"))  # fmt: skip
    conf = d / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n"
        f"pid {d / 'nginx.pid'};\nerror_log {d / 'nginx-error.log'};\n"
        "events { worker_connections 64; }\n"
        f"http {{\naccess_log {d / 'nginx-access.log'};\n{temp}"
        f"upstream php {{ server unix:{fpm_sock}; keepalive 2; }}\n"
        f"server {{\nlisten unix:{sock};\nroot {app};\n"
        "location ~ \\.php$ {\ninclude /etc/nginx/fastcgi_params;\n"
        "fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n"
        "fastcgi_pass php;\nfastcgi_keep_conn on;\n}\n}\n}\n"
    )
    args = [NGINX, "-c", str(conf), "-p", str(d), "-e", str(d / "nginx-error.log")]
    with _running(args, sock, 20, d / "nginx.out") as path:
        yield path


def nginx_socket(fpm_sock: str) -> str:
    """The socket of the nginx that start_php_app started in front of ``fpm_sock``."""
    return str(Path(fpm_sock).with_name("nginx.sock"))


@contextlib.contextmanager
def start_php_app(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """php-fpm with nginx in front of it (on ``nginx_socket(sock)``); yield php-fpm's socket."""
    with start_php_fpm(tmpdir) as fpm, start_nginx(tmpdir, fpm) as nginx:
        assert nginx == nginx_socket(fpm)
        yield fpm
