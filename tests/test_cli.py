"""Command-line checks that need no kernel: option values refused with a reason."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from usniff.cli.main import main, parse_size


def test_sizes_take_suffixes() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1.5k") == 1536
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("4096") == 4096


def test_a_ring_too_small_for_records_is_refused() -> None:
    # a bare number is bytes: "--buffer-size 256" once made a ring that could
    # hold no 32 KiB record, and every byte was reported lost
    out = CliRunner().invoke(main, ["--buffer-size", "256", "--duration", "1"])
    assert out.exit_code == 2
    assert "'256' is 256 bytes; the ring buffer needs at least 1M" in out.output


def test_a_ring_larger_than_the_kernel_takes_is_refused() -> None:
    # the size reached the kernel and every backend failed as "load BPF
    # object: Invalid argument"
    refusals = (("64G", "68,719,476,736 bytes"), ("3G", "rounded up to the power of two 4G"))
    for size, said in refusals:
        out = CliRunner().invoke(main, ["--buffer-size", size, "--duration", "1"])
        assert out.exit_code == 2, out.output
        assert said in out.output and "holds at most 2G" in out.output
        assert "choose 1M to 2G" in out.output


REDIS_PCAPNG = str(Path(__file__).resolve().parent.parent / "captures" / "redis.pcapng")


def test_redact_is_refused_where_it_cannot_mask() -> None:
    # these outputs carry the raw bytes; --redact once passed silently
    for args, said in (
        (["-A"], "-A: it prints the raw bytes"),
        (["-X"], "-X: it prints the raw bytes"),
        (["--format", "json"], "--format json (raw records): it prints the raw bytes"),
        (["--protocol", "raw"], "--protocol raw: it prints the raw bytes"),
        (["-w", "q.pcapng"], "-w: a pcapng file stores the raw bytes"),
        (["-w", "q.pcapng", "--stats"], "-w: a pcapng file stores the raw bytes"),
        (["read", REDIS_PCAPNG, "-X"], "-X: it prints the raw bytes"),
        (["read", REDIS_PCAPNG, "--format", "json"], "--format json (raw records)"),
        (["read", REDIS_PCAPNG, "--dissect", "wireshark"], "--dissect wireshark"),
    ):
        out = CliRunner().invoke(main, [*args, "--redact"])
        assert out.exit_code == 2, (args, out.output)
        assert f"--redact cannot mask {said}" in out.output and "passwords included" in out.output
    # decoded output masks: allowed
    out = CliRunner().invoke(main, ["read", REDIS_PCAPNG, "--format", "json", "--protocol", "resp",
                                    "--redact"])  # fmt: skip
    assert out.exit_code == 0 and '"request":"AUTH app ***"' in out.output
