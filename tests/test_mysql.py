"""MySQL decoder: real mariadbd traffic (captures/mysql*.jsonl.gz) and synthetic edge cases."""

from __future__ import annotations

import pytest
from conftest import capture

from usniff.decoders.base import Notice, Transaction
from usniff.decoders.mysql import MysqlDecoder, PacketReader, query_shape, redact_sql
from usniff.events import Record
from usniff.outputs.decoded import decode_records
from usniff.streams import Direction, conn_key

C, S = Direction.CLIENT, Direction.SERVER

Events = list[Transaction | Notice]


@pytest.fixture(scope="module")
def decoded() -> Events:
    return list(decode_records(capture("mysql")))


def find(events: Events, prefix: str) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction) and e.request.startswith(prefix)]


def notices(events: Events, kind: str) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and e.kind == kind]


def test_every_reply_decodes_with_a_latency(decoded: Events) -> None:
    txs = [e for e in decoded if isinstance(e, Transaction)]
    assert len(txs) == 44
    for tx in txs:
        assert tx.protocol == "mysql"
        if tx.command in ("COM_QUIT",) or tx.command.startswith("CLOSE "):
            assert tx.latency is None and tx.reply == ""
        else:
            assert tx.latency is not None and 0 <= tx.latency < 2, tx
            assert tx.reply and "(no reply)" not in tx.reply and "(incomplete)" not in tx.reply
    assert notices(decoded, "undecodable") == []


def test_handshake_and_login(decoded: Events) -> None:
    greetings = notices(decoded, "greeting")
    assert len(greetings) == 5
    assert greetings[0].details["server_version"] == "5.5.5-10.11.19-MariaDB-0+deb12u1"
    assert greetings[0].details["auth_plugin"] == "mysql_native_password"
    logins = find(decoded, "login ")
    assert [t.request for t in logins] == [
        "login user=root", "login user=app", "login user=root", "login user=root",
        "login user=app db=shop",
    ]  # fmt: skip
    assert [t.details["conn_id"] for t in logins] == [g.details["conn_id"] for g in greetings]
    switched = logins[1]
    assert switched.details["client_plugin"] == "client_ed25519"
    assert switched.details["auth_switch"] == "mysql_native_password"
    assert switched.reply == "auth switch to mysql_native_password; OK"
    assert len(str(logins[4].details["auth_response"])) == 40  # 20-byte scramble, hex


def test_compressed_connection_is_labelled(decoded: Events) -> None:
    [label] = notices(decoded, "label")
    assert label.summary == "compressed protocol: not decoded"
    assert not find(decoded, "SELECT 2")


def test_tls_connection_is_labelled() -> None:
    events = list(decode_records(capture("mysql_tls")))
    assert [n.summary for n in notices(events, "label")] == [
        "TLS (SSLRequest): encrypted, not decoded"
    ]
    assert [e for e in events if isinstance(e, Transaction)] == []


def test_text_resultsets_and_rows(decoded: Events) -> None:
    [cli_select] = find(decoded, "SELECT * FROM shop.orders")
    assert cli_select.client_comm == "mariadb" and cli_select.server_comm == "mariadbd"
    assert cli_select.reply == "3 rows"
    [rs] = cli_select.details["resultsets"]  # type: ignore[misc]
    assert rs["columns"] == ["id", "customer", "total", "created", "note"]
    assert rs["sample"][0] == "('1', 'ann', '10.50', '2024-01-02 03:04:05', NULL)"
    [one] = find(decoded, "SELECT customer FROM orders WHERE id = 2")
    assert one.details["resultsets"] == [
        {"columns": ["customer"], "rows": 1, "sample": ["('bob')"]}
    ]
    assert one.details["db"] == "shop" and one.command == "SELECT customer FROM orders WHERE id = ?"


def test_ok_err_and_db_tracking(decoded: Events) -> None:
    [err] = find(decoded, "SELECT * FROM missing_table")
    assert err.error and err.details["error_code"] == 1146 and err.details["sqlstate"] == "42S02"
    assert err.reply == "ERR 1146 (42S02): Table 'shop.missing_table' doesn't exist"
    [ins] = find(decoded, "INSERT INTO orders (customer, total) VALUES ('dan'")
    assert ins.reply == "OK, 1 row affected, insert id 4"
    [upd] = find(decoded, "UPDATE orders SET total")
    assert upd.details["affected_rows"] == 2
    [init] = find(decoded, "USE shop")
    assert init.command == "COM_INIT_DB" and init.reply == "OK"
    [ping] = find(decoded, "COM_PING")
    assert ping.reply == "OK"
    assert len(find(decoded, "COM_QUIT")) == 4


def test_multi_statements_and_multi_resultsets(decoded: Events) -> None:
    [multi] = find(decoded, "SELECT 1 AS one;")
    assert multi.reply == "1 row; 1 row; OK, 49 rows affected"
    assert [rs["sample"] for rs in multi.details["resultsets"]] == [  # type: ignore[attr-defined]
        ["('1')"], ["('two', '2.5')"],
    ]  # fmt: skip
    [call] = find(decoded, "CALL two_sets()")
    assert call.reply == "4 rows; 1 row; OK"


def test_load_data_local_infile(decoded: Events) -> None:
    cli, py = find(decoded, "LOAD DATA LOCAL INFILE")
    assert py.reply.startswith("LOCAL INFILE /") and py.reply.endswith("OK, 50 rows affected")
    assert py.bytes_in > sum(len(f"sku{i},{i}\n") for i in range(50))
    assert cli.reply.endswith("OK, 50 rows affected") and cli.details["progress_reports"] == 1


def test_packets_over_16_mib(decoded: Events) -> None:
    big = 17 * 1024 * 1024 + 123
    [insert] = find(decoded, "INSERT INTO blobs VALUES")
    assert insert.bytes_in > 2 * big  # hex literal, several 0xffffff packets
    assert insert.details["query_bytes"] > 2 * big and insert.reply == "OK, 1 row affected"
    [select] = find(decoded, "SELECT data FROM blobs")
    assert select.reply == "1 row" and select.bytes_out > big


def test_prepared_statements(decoded: Events) -> None:
    sql = "SELECT id, customer, total, created, note FROM orders WHERE id > ? AND customer <> ?"
    [prep] = find(decoded, "PREPARE SELECT id")
    assert prep.reply == "stmt 1: 2 params, 5 columns"
    first, second = find(decoded, "EXECUTE SELECT")
    assert first.request == f"EXECUTE {sql} (1, 'bob')" and first.reply == "2 rows"
    assert first.details["resultsets"] == [
        {
            "columns": ["id", "customer", "total", "created", "note"],
            "rows": 2,
            "sample": [
                "(3, 'cid', '7.25', 2024-03-04 05:06:07, 'y')",
                "(4, 'dan', '1.00', NULL, NULL)",
            ],
        }
    ]
    assert second.request == f"EXECUTE {sql} (0, NULL)" and second.reply == "0 rows"
    assert find(decoded, "RESET SELECT")[0].reply == "OK"
    [close] = find(decoded, "CLOSE SELECT")
    assert close.ts_reply is None
    [ins] = find(decoded, "EXECUTE INSERT")
    assert ins.request.endswith("('eve', 3.5)") and ins.reply == "OK, 1 row affected, insert id 5"
    [bad] = find(decoded, "PREPARE SELEC broken")
    assert bad.error and bad.details["error_code"] == 1064


def test_redaction() -> None:
    events = list(decode_records(capture("mysql"), redact=True))
    requests = [e.request for e in events if isinstance(e, Transaction)]
    assert "SET PASSWORD FOR app@localhost = PASSWORD('***')" in requests
    assert "ALTER USER app@localhost IDENTIFIED BY '***'" in requests
    assert "CREATE USER app@localhost IDENTIFIED BY '***'" in requests
    assert not [r for r in requests if "'secret'" in r]
    logins = [e for e in events if isinstance(e, Transaction) and e.command == "LOGIN"]
    assert {t.details["auth_response"] for t in logins} == {"***"}
    assert [e.request for e in find(events, "EXECUTE SELECT")][0].endswith(" ***")
    assert redact_sql("GRANT x TO u IDENTIFIED VIA ed25519 USING PASSWORD('pw')") == (
        "GRANT x TO u IDENTIFIED VIA ed25519 USING PASSWORD('***')"
    )


def test_query_shape() -> None:
    assert query_shape("SELECT * FROM t WHERE id = 42 AND name='x''y' AND v IN (1, 2,3)") == (
        "SELECT * FROM t WHERE id = ? AND name=? AND v IN (?+)"
    )
    assert query_shape("select  a1,\n b FROM t2 limit 10") == "select a1, b FROM t2 limit ?"


def _connection(records: tuple[Record, ...], conn_id: int) -> list[Record]:
    """Records of the connection whose greeting carries ``conn_id``."""
    for r in records:
        greeting = r.path_is_own and r.offset == 0 and r.data[4:5] == b"\x0a"
        if (
            greeting
            and int.from_bytes(r.data[r.data.index(b"\0", 5) + 1 :][:4], "little") == conn_id
        ):
            key = conn_key(r)
            return [x for x in records if conn_key(x) == key]
    raise LookupError(conn_id)


def test_connection_seen_mid_stream_resyncs() -> None:
    """Drop the handshake and first queries: decoding starts at the next command."""
    records = _connection(capture("mysql"), 8)
    start = next(
        i
        for i, r in enumerate(records)
        if r.data.startswith(b"\x31\x00\x00\x00\x03SELECT * FROM orders")
    )
    events = list(decode_records(records[start + 1 :]))  # also drop that query, keep its reply
    txs = [e for e in events if isinstance(e, Transaction)]
    assert txs[0].request == "SELECT customer FROM orders WHERE id = 2" and txs[0].reply == "1 row"
    assert "conn_id" not in txs[0].details  # no handshake seen
    expect = [e for e in decode_records(records) if isinstance(e, Transaction)]
    assert [(t.request, t.reply) for t in txs] == [
        (t.request, t.reply) for t in expect[-len(txs) :]
    ]


def test_sequence_error_and_gap_declare_undecodable() -> None:
    d = MysqlDecoder()
    assert d.feed(C, b"\x06\x00\x00\x00\x03SEL 1", 1.0) == []
    events = d.feed(S, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 1.1)
    assert [getattr(e, "reply", None) for e in events] == ["OK"]
    d.feed(C, b"\x01\x00\x00\x00\x0e", 2.0)
    events = d.feed(S, b"\x07\x00\x00\x05\x00\x00\x00\x02\x00\x00\x00", 2.1)
    assert [type(e) for e in events] == [Transaction, Notice]
    assert isinstance(events[1], Notice) and events[1].summary == "sequence id 5, expected 1 (PING)"
    d.feed(C, b"\x01\x00\x00\x00\x0e", 3.0)
    [ok] = d.feed(S, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00", 3.1)
    assert isinstance(ok, Transaction) and ok.reply == "OK"
    events = d.gap(S, 100, 3.2, False)
    assert [e.kind for e in events if isinstance(e, Notice)] == ["undecodable"]


def test_packet_reader_joins_continuations_and_keeps_a_prefix() -> None:
    reader = PacketReader()
    body = b"x" * 0xFFFFFF
    wire = b"\xff\xff\xff\x00" + body + b"\x02\x00\x00\x01ab" + b"\x01\x00\x00\x02c"
    packets = [
        p for i in range(0, len(wire), 1 << 20) for p in reader.feed(wire[i : i + (1 << 20)])
    ]
    assert [(p.seq, p.last_seq, p.length) for p in packets] == [(0, 1, 0xFFFFFF + 2), (2, 2, 1)]
    assert len(packets[0].payload) == 64 * 1024 and not packets[0].complete
    assert packets[0].nbytes == 0xFFFFFF + 2 + 8


def test_latency_runs_to_the_first_packet_of_the_reply() -> None:
    d = MysqlDecoder()
    d.feed(C, b"\x09\x00\x00\x00\x03SELECT 1", 1.0)
    column = b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    head = b"\x01\x00\x00\x01\x01" + len(column).to_bytes(3, "little") + b"\x02" + column
    assert d.feed(S, head, 1.25) == []
    rows = b"\x05\x00\x00\x03\xfe\x00\x00\x02\x00" + b"\x02\x00\x00\x04\x011"
    [tx] = d.feed(S, rows + b"\x05\x00\x00\x05\xfe\x00\x00\x02\x00", 9.0)
    assert (tx.reply, tx.ts_reply, tx.latency) == ("1 row", 1.25, 0.25)


def test_cut_inside_a_packet_is_skipped_and_marked() -> None:
    d = MysqlDecoder()
    sql = b"INSERT INTO t VALUES ('" + b"x" * 3000 + b"')"
    packet = (len(sql) + 1).to_bytes(3, "little") + b"\x00\x03" + sql
    d.feed(C, packet[:120], 1.0)
    assert d.gap(C, len(packet) - 120, 1.0, True) == []
    [tx] = d.feed(S, b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00", 1.5)
    assert (tx.reply, tx.bytes_in, tx.cut, tx.latency) == (
        "OK, 1 row affected",
        len(packet),
        len(packet) - 120,
        0.5,
    )
    assert tx.details["query_bytes"] == len(sql) and not tx.unanswered
