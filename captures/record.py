"""Record the scripted Redis and MariaDB sessions used by the offline decoder tests.

    .venv/bin/python -m captures.record            # writes captures/redis.jsonl.gz, mysql.jsonl.gz

Starts a real redis-server and a real mariadbd in a temporary directory, puts a
recording relay (tests/support/recorder.py) in front of each and drives them with
their own clients (redis-cli, redis-benchmark, mariadb) and with redis-py /
pymysql for the rest.  The expected values asserted by tests/test_resp.py and
tests/test_mysql.py come from these scripts.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pymysql
import redis

HERE = Path(__file__).resolve().parent

from tests.support.mysql_stmt import COM_STMT_CLOSE, COM_STMT_RESET, stmt_execute, stmt_prepare  # noqa: E402
from tests.support.recorder import Relay, save_records  # noqa: E402
from tests.support.servers import start_mariadb, start_redis  # noqa: E402

BIG_REDIS = b"0123456789abcdef" * 20000  # 320000 bytes
BIG_MYSQL = 17 * 1024 * 1024 + 123  # > 16 MiB: packets continue with 0xffffff


def _raw(sock: str, *chunks: bytes, pause: float = 0.05) -> bytes:
    """Send chunks one by one on a fresh connection; return everything received."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.settimeout(0.5)
        for chunk in chunks:
            s.sendall(chunk)
            time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                part = s.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            got += part
        return got


def _cmd(*args: bytes | str) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_session(relay: str) -> None:
    cli = ["redis-cli", "-s", relay]
    for args in (
        ["SET", "user:42", '{"name":"ann","age":42}'],
        ["GET", "user:42"],
        ["INCR", "counter"],
        ["RPUSH", "list", "a", "b", "c"],
        ["LRANGE", "list", "0", "-1"],
        ["GET", "nokey"],
        ["LPUSH", "user:42", "x"],
        ["NOSUCHCMD", "arg"],
    ):
        subprocess.run(cli + args, check=True, capture_output=True)
    subprocess.run(
        ["redis-benchmark", "-s", relay, "-n", "200", "-c", "2", "-P", "4", "-t", "set,get"],
        check=True,
        capture_output=True,
    )
    _raw(relay, b"PING\r\n", b"SET inline:1 hello\r\n", b"GET inline:1\r\n", b"QUIT\r\n")
    _raw(
        relay,
        _cmd("CLIENT", "REPLY", "OFF"),
        _cmd("SET", "quiet", "1"),
        _cmd("CLIENT", "REPLY", "ON"),
        _cmd("CLIENT", "REPLY", "SKIP"),
        _cmd("SET", "skipped", "2"),
        _cmd("GET", "skipped"),
    )
    r = redis.Redis(unix_socket_path=relay)
    r.execute_command("ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all")
    pipe = r.pipeline(transaction=False)
    for i in range(20):
        pipe.set(f"pipe:{i}", i)
    for i in range(20):
        pipe.get(f"pipe:{i}")
    pipe.execute()
    tx = r.pipeline(transaction=True)
    tx.incr("counter").set("tx:key", "v").get("tx:key")
    tx.execute()
    r.hset("hash", mapping={"f1": "v1", "f2": "v2"})
    r.sadd("set", "m1", "m2")
    r.zadd("zset", {"z": 1.5})
    r.set("big", BIG_REDIS)
    assert r.get("big") == BIG_REDIS
    r.strlen("big")
    # an aborted transaction: WATCH, concurrent change, EXEC -> nil
    other = redis.Redis(unix_socket_path=relay)
    with r.pipeline(transaction=True) as watched:
        watched.watch("watched")
        other.set("watched", "changed")
        watched.multi()
        watched.set("watched", "mine")
        with contextlib.suppress(redis.WatchError):
            watched.execute()
    # blocking: one times out, one is served by another client
    r.blpop(["empty:queue"], timeout=0.2)
    threading.Timer(0.15, lambda: other.lpush("jobs", "job1")).start()
    r.blpop(["jobs"], timeout=5)
    # AUTH with username/password (redacted by --redact)
    authed = redis.Redis(unix_socket_path=relay, username="app", password="s3cret")
    authed.ping()
    authed.close()
    _pubsub_resp2(relay, other)
    _monitor(relay, other)
    _resp3(relay, other)
    other.close()
    r.close()


def _pubsub_resp2(relay: str, publisher: redis.Redis) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(relay)
        s.sendall(_cmd("SUBSCRIBE", "news", "sports"))
        time.sleep(0.05)
        s.sendall(_cmd("PSUBSCRIBE", "n*"))
        time.sleep(0.05)
        publisher.publish("news", "hello")
        publisher.publish("sports", "goal")
        time.sleep(0.05)
        s.sendall(_cmd("PING"))
        time.sleep(0.05)
        s.sendall(_cmd("UNSUBSCRIBE"))
        time.sleep(0.05)
        s.sendall(_cmd("PUNSUBSCRIBE"))
        time.sleep(0.05)
        s.sendall(_cmd("QUIT"))
        time.sleep(0.05)


def _monitor(relay: str, other: redis.Redis) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(relay)
        s.sendall(_cmd("MONITOR"))
        time.sleep(0.05)
        other.set("monitored", "1")
        other.get("monitored")
        time.sleep(0.05)


def _resp3(relay: str, other: redis.Redis) -> None:
    r3 = redis.Redis(unix_socket_path=relay, protocol=3, username="app", password="s3cret")
    r3.hgetall("hash")
    r3.smembers("set")
    r3.zscore("zset", "z")
    r3.eval("redis.setresp(3); return true", 0)
    r3.eval("redis.setresp(3); return {big_number='123456789012345678901234567890'}", 0)
    r3.eval("redis.setresp(3); return {double=3.25}", 0)
    r3.info("server")
    r3.execute_command("CLIENT", "TRACKING", "ON")
    r3.get("tracked")
    other.set("tracked", "new")  # -> invalidate push on the RESP3 connection
    time.sleep(0.05)
    r3.ping()
    p = r3.pubsub()
    p.subscribe("resp3chan")
    p.get_message(timeout=0.2)
    other.publish("resp3chan", "pushed")
    p.get_message(timeout=0.2)
    p.unsubscribe("resp3chan")
    p.get_message(timeout=0.2)
    p.close()
    r3.close()


# --------------------------------------------------------------------------- MySQL


def _mysql_cli(relay: str, *args: str, user: str = "root", password: str = "") -> None:
    cmd = ["mariadb", "--no-defaults", "-S", relay, "-u", user]
    cmd += [f"-p{password}"] if password else []
    subprocess.run(cmd + list(args), check=True, capture_output=True)


def _lenenc_str(value: bytes) -> bytes:
    assert len(value) < 251
    return bytes([len(value)]) + value


def mysql_session(relay: str, tmp: Path) -> None:
    _mysql_cli(
        relay,
        "-e",
        "CREATE DATABASE shop; "
        "CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(40), "
        "total DECIMAL(10,2), created DATETIME, note TEXT); "
        "INSERT INTO shop.orders (customer, total, created, note) VALUES "
        "('ann', 10.50, '2024-01-02 03:04:05', NULL), ('bob', 20.00, '2024-02-03 04:05:06', 'x'), "
        "('cid', 7.25, '2024-03-04 05:06:07', 'y'); "
        "CREATE TABLE shop.items (sku VARCHAR(20), qty INT); "
        "CREATE TABLE shop.blobs (id INT, data LONGBLOB); "
        "CREATE USER app@localhost IDENTIFIED BY 'secret'; "
        "GRANT ALL ON *.* TO app@localhost; "
        "SELECT * FROM shop.orders",
    )
    # auth switch: the client starts with ed25519, the account uses mysql_native_password
    _mysql_cli(
        relay, "--default-auth=client_ed25519", "-e", "SELECT 1", user="app", password="secret"
    )
    _mysql_cli(relay, "--compress", "-e", "SELECT 2")
    infile = tmp / "items.csv"
    infile.write_text("".join(f"sku{i},{i}\n" for i in range(50)))
    _mysql_cli(
        relay,
        "--local-infile=1",
        "-e",
        f"LOAD DATA LOCAL INFILE '{infile}' INTO TABLE shop.items FIELDS TERMINATED BY ','",
    )
    conn = pymysql.connect(
        unix_socket=relay,
        user="app",
        password="secret",
        database="shop",
        client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
        local_infile=True,
        max_allowed_packet=64 << 20,
    )
    with conn.cursor() as cur:
        conn.select_db("shop")
        conn.ping()
        cur.execute("SELECT * FROM orders WHERE total > 5 ORDER BY id")
        cur.execute("SELECT customer FROM orders WHERE id = 2")
        with contextlib.suppress(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM missing_table")
        cur.execute("INSERT INTO orders (customer, total) VALUES ('dan', 1.00)")
        cur.execute("UPDATE orders SET total = total + 1 WHERE customer IN ('ann', 'bob')")
        cur.execute("SELECT 1 AS one; SELECT 'two' AS two, 2.5 AS half; UPDATE items SET qty = 0")
        while cur.nextset():
            pass
        cur.execute(
            "CREATE PROCEDURE two_sets() "
            "BEGIN SELECT id FROM orders; SELECT COUNT(*) FROM items; END"
        )
        cur.execute("CALL two_sets()")
        while cur.nextset():
            pass
        cur.execute(f"LOAD DATA LOCAL INFILE '{infile}' INTO TABLE items FIELDS TERMINATED BY ','")
        cur.execute("INSERT INTO blobs VALUES (1, %s)", (b"b" * BIG_MYSQL,))
        cur.execute("SELECT data FROM blobs WHERE id = 1")
        assert len(cur.fetchone()[0]) == BIG_MYSQL
        cur.execute("SET PASSWORD FOR app@localhost = PASSWORD('secret')")
        cur.execute("ALTER USER app@localhost IDENTIFIED BY 'secret'")
    stmt, _, _ = stmt_prepare(
        conn, "SELECT id, customer, total, created, note FROM orders WHERE id > ? AND customer <> ?"
    )
    stmt_execute(conn, stmt, [(8, struct.pack("<q", 1)), (253, _lenenc_str(b"bob"))])
    stmt_execute(conn, stmt, [(8, struct.pack("<q", 0)), (253, None)])
    conn._execute_command(COM_STMT_RESET, struct.pack("<I", stmt))
    conn._read_packet()
    conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt))  # no reply
    ins, _, _ = stmt_prepare(conn, "INSERT INTO orders (customer, total) VALUES (?, ?)")
    stmt_execute(conn, ins, [(253, _lenenc_str(b"eve")), (5, struct.pack("<d", 3.5))])
    with contextlib.suppress(pymysql.err.ProgrammingError):
        stmt_prepare(conn, "SELEC broken")
    conn.close()  # COM_QUIT


def mysql_tls_session(relay: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = pymysql.connect(unix_socket=relay, user="root", ssl=ctx)
    conn.ping()
    conn.close()


def _record(
    out: Path, start: Callable[..., object], session: Callable[[str], None], *extra: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="us-", dir="/tmp") as tmp:
        with start(tmp, *extra) as sock:  # type: ignore[attr-defined]
            relay = str(Path(tmp) / "relay.sock")
            with Relay(relay, sock) as rec:
                session(relay)
                rec.wait_idle()
        save_records(out, rec.records)
        print(f"{out}: {len(rec.records)} records")


def _tls_cert(tmp: Path) -> tuple[str, str]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return f"--ssl-cert={cert}", f"--ssl-key={key}"


def main() -> None:
    _record(HERE / "redis.jsonl.gz", start_redis, redis_session)
    with tempfile.TemporaryDirectory(prefix="us-", dir="/tmp") as files:
        _record(
            HERE / "mysql.jsonl.gz",
            start_mariadb,
            lambda relay: mysql_session(relay, Path(files)),
            "--max-allowed-packet=64M",
            "--local-infile=1",
        )
        tls = _tls_cert(Path(files))
        _record(HERE / "mysql_tls.jsonl.gz", start_mariadb, mysql_tls_session, *tls)


if __name__ == "__main__":
    main()
