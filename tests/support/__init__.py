"""Test support: server fixtures, the usniff runner, ground-truth counters, tshark helpers.

* usniff.py: the one runner of the usniff CLI (``Usniff``: ready when it captures,
  stdout/stderr collected), ``run``, ``wait_until``.
* servers.py: real servers on private sockets (redis, mariadb, postgres, memcached,
  php-fpm, nginx, podman) and their own byte counters (``RedisInfo``, ``mariadb_bytes``).
* tshark.py: the real tshark, its "Follow stream" output read back.
* live.py: in-process captures (``Capture`` + workloads from tests/progs).
* live_helpers.py, http_session.py, pg_session.py, php_session.py, mysql_stmt.py:
  the scripted client sessions and the counters read around them.
* decoded.py: a decoded live run (JSON lines, --stats) and what tests read from it.
* captures.py, recorder.py: the recorded captures in captures/ as Records.
* pcap_helpers.py, pcap_damage.py: synthetic connections, damaged pcap/pcapng files.

Used by the tests, bench/ and captures/ as the package ``tests.support``
(run them from the repository root: ``python -m pytest``, ``python -m bench``,
``python -m captures.record``).  May import: usniff (any stage), nothing of the
tests themselves.
"""
