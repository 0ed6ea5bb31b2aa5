"""Command line: `usniff [capture options]`, `usniff list`, `usniff read`, `usniff extcap`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from .. import __version__
from ..capture.collector import (
    BACKENDS,
    DEFAULT_BUFFER,
    Capture,
    CaptureError,
    CaptureOptions,
    _ring_size,
    filter_warnings,
)
from ..containers import Containers
from ..decoders.engine import DecoderOptions
from ..decoders.registry import CHOICES
from ..events import SOCK_TYPES, CaptureStats
from ..outputs.base import Output, OutputError
from ..outputs.sink import TransactionSink
from .loop import FLUSH_EVERY, run, write_batch

EXAMPLES = """
\b
Examples:
  usniff --path /run/redis.sock              decoded Redis commands and replies, live
  usniff --path /run/mysqld/mysqld.sock -w q.pcapng      capture for Wireshark
  usniff --pid 1234 -A                       all Unix-socket traffic of a process, ASCII
  usniff -X --type dgram                     hex dump of every datagram socket
  usniff --format json | jq .                one JSON object per record
  usniff list                                Unix sockets (like ss -xp)
  usniff read q.pcapng --stats               decode a capture offline (no root)
"""

PROTOCOLS = (*CHOICES, "raw")


PROTO_DESCRIPTOR = click.option(
    "--proto-descriptor",
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="A protobuf descriptor set (protoc --include_imports --descriptor_set_out=FILE): "
    "gRPC messages shown with their field names instead of field numbers.",
)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = units.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in units else t) * mult)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 64M)") from None


MIN_BUFFER = 1 << 20
# The kernel takes a BPF ring buffer's size as the map's max_entries, a u32 it
# requires to be a power of two (ringbuf_map_alloc, kernel/bpf/ringbuf.c): 2 GiB
# is the largest (its own limit, RINGBUF_MAX_DATA_SZ, is ~64 GiB).  A larger
# size would reach the kernel and fail every backend as "Invalid argument".
MAX_BUFFER = 1 << 31


def _buffer_size(text: str) -> int:
    """--buffer-size: smaller rings cannot hold a burst of 32 KiB records."""
    size = parse_size(text)
    if size < MIN_BUFFER:
        raise click.BadParameter(
            f"{text!r} is {size:,} bytes; the ring buffer needs at least 1M "
            "(sizes take a K, M or G suffix)",
            param_hint="'--buffer-size'",
        )
    ring = _ring_size(size)
    if ring > MAX_BUFFER:
        rounded = f", rounded up to the power of two {ring >> 30}G" if ring != size else ""
        raise click.BadParameter(
            f"{text!r} is {size:,} bytes{rounded}; the kernel's BPF ring buffer holds at most "
            "2G (its size is a power of two held in 32 bits): choose 1M to 2G",
            param_hint="'--buffer-size'",
        )
    return size


def _log(verbose: bool) -> Any:
    if not verbose:
        return None
    return lambda level, msg: click.echo(f"libbpf: {msg}", err=True)


def _byte_view(ascii_: bool, hexdump: bool, fmt: str, protocol: str | None) -> bool:
    """Byte views (-A, -X, JSON records) unless a decoder was asked for."""
    if protocol is not None:
        return protocol == "raw"
    return ascii_ or hexdump or fmt == "json"


def check_redact(
    redact: bool, *, write: str | None, ascii_: bool, hexdump: bool, fmt: str,
    protocol: str | None, stats: bool, dissect: str = "usniff",
) -> None:  # fmt: skip
    """--redact masks passwords in decoded output only: refuse it with an output
    that carries the raw bytes rather than let the passwords through."""
    if not redact:
        return
    what = ""
    if write:
        what = "-w: a pcapng file stores the raw bytes"
        instead = "capture without --redact, then `usniff read FILE --redact` shows it masked"
    elif dissect == "wireshark":
        what = "--dissect wireshark: Wireshark's dissectors show the raw bytes"
        instead = "use --dissect usniff"
    elif _byte_view(ascii_, hexdump, fmt, protocol) and not stats:
        opt = "-A" if ascii_ else "-X" if hexdump else "--protocol raw"
        opt = "--format json (raw records)" if fmt == "json" and protocol is None else opt
        what = f"{opt}: it prints the raw bytes"
        instead = "use decoded output (--protocol auto, resp or mysql), which masks them"
    if what:
        raise click.UsageError(f"--redact cannot mask {what}, passwords included; {instead}")


def make_outputs(
    stream: TextIO,
    *,
    write: str | None,
    rotate_mb: float | None,
    rotate_count: int | None,
    rotate_seconds: float | None,
    snaplen: int,
    ascii_: bool,
    hexdump: bool,
    fmt: str,
    protocol: str | None,
    stats: bool,
    redact: bool,
    live: bool = False,
    metrics: str | None = None,
    otlp: str | None = None,
    sinks_only: bool = False,
    proto_descriptor: str | None = None,
    containers: Containers | None = None,
    lines: bool = True,
) -> list[Output]:
    """The outputs the options ask for; ``containers`` names the records' cgroups
    (the live host's by default; a file's own when reading one).  ``lines``: with
    ``stats``, the decoded lines too (False: the table only, what --stats alone gives)."""
    outputs: list[Output] = []
    containers = containers or Containers()
    options = _decoder_options(proto_descriptor)
    proto = protocol if protocol and protocol != "raw" else "auto"
    decoded_beside = stats or not (
        sinks_only or write or _byte_view(ascii_, hexdump, fmt, protocol)
    )
    sinks = _sinks(metrics, otlp, decoded_beside, proto, redact, options, containers)
    listeners = [sink.event for sink in sinks] if decoded_beside else []
    if sinks_only:
        return list(sinks)
    if write:
        from ..outputs.pcapng import PcapngOutput

        try:
            outputs.append(
                PcapngOutput(
                    write,
                    rotate_bytes=int(rotate_mb * 1_000_000) if rotate_mb else None,
                    rotate_count=rotate_count,
                    rotate_seconds=rotate_seconds,
                    snaplen=snaplen,
                    containers=containers,
                )
            )
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        if not stats:
            return outputs + sinks  # the file (or stdout, for -w -) carries pcapng only
    if _byte_view(ascii_, hexdump, fmt, protocol) and not stats:
        from ..outputs.raw import JsonOutput, TextOutput

        if fmt == "json":
            outputs.append(JsonOutput(stream, containers))
        else:
            view = "ascii" if ascii_ else "hex" if hexdump else "preview"
            outputs.append(TextOutput(stream, view, containers))
    else:
        from ..outputs.decoded import DecodedOutput

        table_only = stats and (write or not lines)  # -w FILE --stats: the table, on stderr
        outputs.append(DecodedOutput(None if table_only else stream, proto, fmt, stats=stats,
                                     redact=redact, live=live, listeners=listeners,
                                     options=options, containers=containers))  # fmt: skip
    return outputs + sinks  # the first output's items are what -c counts


def _decoder_options(proto_descriptor: str | None) -> DecoderOptions:
    """The decoders' options from the CLI's (--proto-descriptor: gRPC field names)."""
    if not proto_descriptor:
        return {}
    from ..decoders.protobuf import Schema, SchemaError

    try:
        return {"http2": {"schema": Schema(proto_descriptor)}}
    except SchemaError as e:
        raise click.UsageError(f"--proto-descriptor {e}") from None


def _sinks(
    metrics: str | None,
    otlp: str | None,
    decoded_beside: bool,
    protocol: str,
    redact: bool,
    options: DecoderOptions,
    containers: Containers,
) -> list[TransactionSink]:
    """The --metrics and --otlp outputs.  Without a decoded output beside them the
    first decodes and hands each transaction to the others."""
    from ..outputs.metrics import MetricsOutput
    from ..outputs.otlp import OtlpOutput

    sinks: list[TransactionSink] = []
    try:
        if metrics:
            sinks.append(MetricsOutput(metrics, not decoded_beside, protocol, redact, options,
                                       containers=containers))  # fmt: skip
        if otlp:
            sinks.append(OtlpOutput(otlp, not decoded_beside and not sinks, protocol, redact,
                                    options, containers=containers))  # fmt: skip
    except OutputError as e:
        for sink in sinks:
            sink.stop()
        raise click.UsageError(str(e)) from None
    if sinks and not decoded_beside:
        sinks[0].listeners = [sink.event for sink in sinks[1:]]
    return sinks


def _reports(outputs: list[Output]) -> list[str]:
    from ..outputs.sink import TransactionSink

    return [o.report() for o in outputs if isinstance(o, TransactionSink) and o.report()]


def _lines(ctx: click.Context, fmt: str) -> bool:
    """Decoded lines beside --stats: only when --format asks for them."""
    return ctx.get_parameter_source(fmt) is not click.core.ParameterSource.DEFAULT


def _sinks_only(ctx: click.Context, kw: dict[str, Any]) -> bool:
    """--metrics / --otlp with no output asked for beside them (--format text asks for
    the lines)."""
    asked = kw["write"] or kw["stats"] or kw["ascii_"] or kw["hexdump"]
    default_format = ctx.get_parameter_source("fmt") is click.core.ParameterSource.DEFAULT
    return bool(kw["metrics"] or kw["otlp"]) and default_format and not asked


def _items(output: Output) -> str:
    """What ``output`` emits, as -c counts it."""
    from ..outputs.decoded import DecodedOutput
    from ..outputs.pcapng import PcapngOutput
    from ..outputs.sink import TransactionSink

    if isinstance(output, DecodedOutput):
        return "lines printed"
    if isinstance(output, TransactionSink):
        return "transactions counted"
    done = "written" if isinstance(output, PcapngOutput) else "printed"
    return f"records {done} (data, loss and close records)"


SUMMARY_SOCKETS = 10  # sockets named in the summary's losses, the worst first


def summary(stats: CaptureStats, shown: str = "") -> str:
    """The stop summary; ``shown`` (e.g. "12 lines printed") says what the output emitted."""
    text = f"usniff: {shown}\n" if shown else ""
    text += (
        f"usniff: {stats.records} records, {stats.bytes} bytes captured "
        f"({stats.bytes_kept} kept), {stats.lost_bytes} bytes lost "
        f"({stats.lost_records} loss records), backend {stats.backend}"
    )
    if stats.unwritten_bytes:
        text += (
            f"\nusniff:   {stats.unwritten_bytes} of the bytes lost were captured "
            "but could not be written"
        )
    if stats.unattributed_lost:
        text += (
            f"\nusniff:   {stats.unattributed_lost} of the bytes lost were on sockets that "
            "closed before their loss could be reported"
        )
    if stats.missed_sends:
        text += (
            f"\nusniff:   {stats.missed_sends} sends were missed by the kernel's kprobes "
            "(their bytes are lost; how many is not known)"
        )
    worst = sorted(stats.per_socket_lost.items(), key=lambda kv: (-kv[1], kv[0]))
    for ino, lost in worst[:SUMMARY_SOCKETS]:
        text += f"\nusniff:   socket {ino}: {lost} bytes lost"
    if len(worst) > SUMMARY_SOCKETS:
        rest = sum(lost for _, lost in worst[SUMMARY_SOCKETS:])
        text += f"\nusniff:   {len(worst) - SUMMARY_SOCKETS} more sockets: {rest} bytes lost"
    return text


@click.group(
    invoke_without_command=True,
    epilog=EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="usniff")
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="PATH|@NAME",
    help="Socket file or @abstract name (either end; repeatable).",
)
@click.option(
    "--pid", "pids", multiple=True, type=int, help="Process id on either end (repeatable)."
)
@click.option("--comm", "comms", multiple=True, help="Sending process name (repeatable).")
@click.option(
    "--cgroup",
    "cgroups",
    multiple=True,
    metavar="PATH",
    help="Processes on either end in this cgroup v2 or below it: a path under the cgroup2 "
    "mount or absolute (repeatable).",
)
@click.option(
    "--container",
    "containers",
    multiple=True,
    metavar="ID|NAME",
    help="Processes on either end in this container (docker, podman, containerd, CRI-O): "
    "its name or an id prefix (repeatable).",
)
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(list(SOCK_TYPES.values())),
    help="Socket type (repeatable).",
)
@click.option(
    "-s",
    "--snaplen",
    type=int,
    default=0,
    show_default=True,
    help="Bytes kept per message; 0 keeps every byte. Decoded lines say what was cut.",
)
@click.option(
    "-c",
    "--count",
    type=int,
    default=0,
    help="Stop after N printed items: decoded lines (transactions, notices, undecoded "
    "records), or records with -A/-X/json/-w.",
)
@click.option("--duration", type=float, default=0.0, help="Stop after S seconds.")
@click.option("-A", "ascii_", is_flag=True, help="Print payloads as ASCII.")
@click.option("-X", "hexdump", is_flag=True, help="Print payloads as hex and ASCII.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("-w", "write", metavar="FILE", help="Write pcapng (Wireshark) to FILE, '-' = stdout.")
@click.option("-C", "rotate_mb", type=float, help="Rotate -w files every N million bytes.")
@click.option("-W", "rotate_count", type=int, help="Keep at most N rotated files.")
@click.option(
    "-G",
    "rotate_seconds",
    type=float,
    help="Rotate -w files every N seconds; FILE needs strftime conversions that change "
    "every period (cap-%H%M%S.pcapng): a name that would repeat is refused.",
)
@click.option(
    "-U",
    "packet_buffered",
    is_flag=True,
    help="Write out after every batch (<= 0.2 s), not once a second: less to lose on SIGKILL.",
)
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    help="Decoder: auto (default for text), one protocol's, or raw (default for -A/-X/json). "
    "auto decodes a connection only on evidence of its protocol; other connections' "
    "records are printed raw, marked [not decoded].",
)
@click.option(
    "--stats",
    is_flag=True,
    help="Live per-command table, printed at exit: counts, errors, unanswered requests, "
    "latency percentiles of the answered ones. Latency is the server-side time from the "
    "request's last byte to the reply's first byte, as the two ends sent them. The table "
    "only (stderr), unless --format text|json asks for the decoded lines too.",
)
@click.option(
    "--metrics",
    metavar="ADDR",
    help="Serve Prometheus metrics on ADDR (HOST:PORT, :PORT or a Unix socket path) while "
    "capturing: requests, errors and latency per socket path, protocol and operation; bytes, "
    "messages and losses per socket path. Alone, it is the only output; with -w, --stats, "
    "--format text|json, -A or -X, it runs beside them.",
)
@PROTO_DESCRIPTOR
@click.option(
    "--otlp",
    metavar="URL",
    help="Export each decoded transaction as an OpenTelemetry span (OTLP/HTTP protobuf to "
    "URL/v1/traces, e.g. http://collector:4318), batched; a full queue drops and counts. "
    "Alone or beside other outputs, as --metrics.",
)
@click.option(
    "--redact",
    is_flag=True,
    help="Mask passwords in decoded output (Redis AUTH, HELLO, ACL SETUSER, MIGRATE, CONFIG; "
    "MySQL auth, IDENTIFIED BY; PostgreSQL passwords, SCRAM proofs, cancel keys, PASSWORD "
    "'...'; HTTP Authorization, Cookie, X-Registry-Auth headers and body previews; FastCGI "
    "Authorization, Cookie, PHP_AUTH_PW params and secret query values); refused "
    "with -w, -A, -X and raw JSON, which carry raw bytes.",
)
@click.option(
    "--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True
)
@click.option(
    "--buffer-size",
    "buffer_size",
    default=f"{DEFAULT_BUFFER >> 20}M",
    show_default=True,
    help="Kernel ring buffer size: 1M to 2G, rounded up to a power of two.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show backend selection and libbpf's log.")
@click.pass_context
def main(ctx: click.Context, /, **kw: Any) -> None:  # fmt: skip
    """usniff: capture and decode traffic on Unix domain sockets (eBPF)."""
    if ctx.invoked_subcommand is not None:
        return
    check_redact(
        kw["redact"], write=kw["write"], ascii_=kw["ascii_"], hexdump=kw["hexdump"],
        fmt=kw["fmt"], protocol=kw["protocol"], stats=kw["stats"],
    )  # fmt: skip
    containers = Containers()
    try:
        cgroups = containers.select(kw["cgroups"], kw["containers"])
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    opts = CaptureOptions(
        paths=list(kw["paths"]),
        pids=list(kw["pids"]),
        comms=list(kw["comms"]),
        cgroups=cgroups,
        types=list(kw["types"]),
        snaplen=kw["snaplen"],
        buffer_size=_buffer_size(kw["buffer_size"]),
        backend=kw["backend"],
        log=_log(kw["verbose"]),
    )
    try:
        cap = Capture(opts)
    except CaptureError as e:
        raise click.ClickException(str(e)) from None
    if kw["verbose"]:
        for backend, reason in cap.reasons.items():
            click.echo(f"usniff: backend {backend} not used: {reason}", err=True)
        if cap.copy_note():
            click.echo(f"usniff: {cap.copy_note()}", err=True)
    for warning in filter_warnings(opts.paths, opts.pids):
        click.echo(f"usniff: warning: {warning}", err=True)
    try:
        outputs = make_outputs(
            sys.stdout,
            write=kw["write"],
            rotate_mb=kw["rotate_mb"],
            rotate_count=kw["rotate_count"],
            rotate_seconds=kw["rotate_seconds"],
            snaplen=kw["snaplen"],
            ascii_=kw["ascii_"],
            hexdump=kw["hexdump"],
            fmt=kw["fmt"],
            protocol=kw["protocol"],
            stats=kw["stats"],
            redact=kw["redact"],
            metrics=kw["metrics"],
            otlp=kw["otlp"],
            sinks_only=_sinks_only(ctx, kw),
            proto_descriptor=kw["proto_descriptor"],
            live=True,
            containers=containers,
            lines=_lines(ctx, "fmt"),
        )
    except OutputError as e:
        cap.close()
        raise click.ClickException(str(e)) from None
    status, shown = 0, ""
    try:
        outcome = run(
            cap,
            outputs,
            count=kw["count"],
            duration=kw["duration"],
            flush_every=0.0 if kw["packet_buffered"] else FLUSH_EVERY,
            on_ready=lambda: click.echo(
                f"usniff: capturing with the {cap.stats.backend} backend", err=True
            ),
        )
        stats, shown = outcome.stats, f"{outcome.emitted} {_items(outputs[0])}"
    except OutputError as e:
        click.echo(f"usniff: {e}", err=True)
        stats, status = cap.stats, 1
    except BrokenPipeError:
        sys.stderr.write(summary(cap.stats) + "\n")
        os._exit(0)  # the reader went away (e.g. `| head`): nothing more to say
    click.echo(summary(stats, shown), err=True)
    for line in _reports(outputs):
        click.echo(line, err=True)
    ctx.exit(status)


@main.command("list")
@click.option("--path", "path_filter", help="Only sockets whose path contains this.")
def list_cmd(path_filter: str | None) -> None:
    """Unix sockets: path, type, state, inode, peer inode, queues, processes (like `ss -xp`).

    Recv-Q and Send-Q are `ss -x`'s: bytes queued (for a listener: connections
    not yet accepted, and the backlog).  A process in a container is shown as
    comm[pid]@container.  Bytes of a name or process name that do not print are
    shown as \\xNN."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..capture.sockets import list_sockets, printable

    try:
        socks = list_sockets()
    except OSError as e:
        raise click.ClickException(f"cannot list sockets (sock_diag): {e}") from None
    containers = Containers()
    table = Table(box=None, header_style="bold")
    right = ("inode", "peer", "recv-q", "send-q")
    for col in ("path", "type", "state", *right, "processes"):
        table.add_column(col, justify="right" if col in right else "left")
    for s in sorted(socks, key=lambda s: (s.path == "", s.name, s.inode)):
        if path_filter and path_filter not in s.path:
            continue
        recv_q, send_q = (str(q) for q in s.queues) if s.queues else ("-", "-")
        procs = ",".join(
            f"{printable(c)}[{p}]"
            + (f"@{printable(lb)}" if (lb := containers.of_pid(p).label) else "")
            for p, c in s.procs
        )
        path = "@" + printable(s.name[1:]) if s.name[:1] == b"\0" else printable(s.name)
        cells = (path or "-", s.type, s.state, str(s.inode), str(s.peer or "-"), recv_q, send_q)
        table.add_row(*(Text(c) for c in (*cells, procs)))  # Text: no rich markup in names
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


@main.command("read")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--protocol", type=click.Choice(PROTOCOLS), help="Decoder (default auto).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--stats",
    is_flag=True,
    help="Per-command table: counts, errors, unanswered requests, latency (request's last "
    "byte to reply's first byte) of the answered ones. The table only, unless --format "
    "text|json asks for the decoded lines too.",
)
@click.option(
    "--redact", is_flag=True, help="Mask passwords (decoded output only; see usniff --help)."
)
@click.option("-A", "ascii_", is_flag=True, help="Print payloads as ASCII (raw records).")
@click.option("-X", "hexdump", is_flag=True, help="Print payloads as hex and ASCII (raw records).")
@click.option(
    "--dissect",
    type=click.Choice(["usniff", "wireshark"]),
    default="usniff",
    show_default=True,
    help="Whose dissectors decode the file.",
)
@PROTO_DESCRIPTOR
def read_cmd(file: str, protocol: str | None, fmt: str, stats: bool, redact: bool,
             ascii_: bool, hexdump: bool, dissect: str,
             proto_descriptor: str | None) -> None:  # fmt: skip
    """Decode a pcap/pcapng file offline (usniff's, or tcpdump's of a protocol over TCP)."""
    from .read import PcapReadError, dissect_wireshark, read_records

    check_redact(redact, write=None, ascii_=ascii_, hexdump=hexdump, fmt=fmt,
                 protocol=protocol, stats=stats, dissect=dissect)  # fmt: skip
    out = sys.stdout
    if dissect == "wireshark":
        for pkt in dissect_wireshark(file):
            fields = " ".join(f"{k}={v}" for k, v in pkt.fields.items())
            out.write(f"{pkt.number} {pkt.ts:.6f} {pkt.protocol} {fields}\n")
        return
    containers = Containers(root="")  # names from the file's comments, not this host's
    outputs = make_outputs(
        out, write=None, rotate_mb=None, rotate_count=None, rotate_seconds=None, snaplen=0,
        ascii_=ascii_, hexdump=hexdump, fmt=fmt, protocol=protocol, stats=stats, redact=redact,
        proto_descriptor=proto_descriptor, containers=containers,
        lines=_lines(click.get_current_context(), "fmt"),
    )  # fmt: skip
    stats_ = CaptureStats(backend="file")
    damage = None
    batch = []
    try:
        try:
            for rec in read_records(file, containers):
                batch.append(rec)
                if rec.kind == "lost":
                    stats_.lost_records += 1
                    stats_.lost_bytes += rec.lost
                else:
                    stats_.records += 1
                    stats_.bytes += rec.length
                if len(batch) >= 4096:
                    write_batch(outputs, batch)
                    batch = []
        except PcapReadError as e:  # raised after the last readable record
            damage = e
        write_batch(outputs, batch)
    finally:
        for o in outputs:
            o.close(stats_)
    if damage is not None:  # after the output, so that it is the last word
        raise click.ClickException(str(damage))


@main.command("extcap", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def extcap_cmd(args: tuple[str, ...]) -> None:
    """Wireshark extcap interface; `usniff extcap --install` registers it."""
    from .extcap import main as extcap_main

    sys.exit(extcap_main(list(args)))


@main.command("wireshark")
@click.option("--install", "action", flag_value="install", help="Write the plugin (no root).")
@click.option("--uninstall", "action", flag_value="uninstall", help="Remove the plugin.")
@click.option("--show", "action", flag_value="show", help="Print the plugin on stdout.")
@click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
    help="Plugin folder (default: Wireshark's personal one, ~/.local/lib/wireshark/plugins).",
)  # fmt: skip
def wireshark_cmd(action: str | None, folder: Path | None) -> None:
    """usniff's Wireshark Lua plugin: usniff.pid, usniff.comm, usniff.peer_pid,
    usniff.peer_comm, usniff.path, usniff.inode ... as fields and columns, and the
    dissectors of the protocols stock Wireshark has no port for (FastCGI). Install it
    as the user who runs Wireshark."""
    from . import wireshark

    where = folder or wireshark.plugin_dir()
    if action == "install":
        click.echo(f"usniff: wrote {wireshark.install(where)}; restart Wireshark to load it")
    elif action == "uninstall":
        gone = wireshark.uninstall(where)
        click.echo(f"usniff: removed {gone}" if gone else f"usniff: no plugin in {where}")
    elif action == "show":
        click.echo(wireshark.plugin_text(), nl=False)
    else:
        raise click.UsageError("give --install, --uninstall or --show")
