"""``usniff wireshark``: install (or show, or remove) usniff's Wireshark Lua plugin.

The plugin (``usniff.lua`` beside this module) makes Wireshark dissect the
protocols usniff writes on ports stock Wireshark has no dissector for (taken
from the protocol registry when the plugin is written) and shows usniff's
per-packet process metadata as ``usniff.*`` fields (docs/pcapng.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..decoders.registry import BY_NAME, WIRESHARK_PORTS

NAME = "usniff.lua"
MARK = "local DECODE_AS = {} -- usniff: ports"
DBUS_MARK = "local DBUS_PORT = 0 -- usniff: dbus port"


def plugin_dir() -> Path:
    """Wireshark's personal plugin folder (Wireshark >= 2.5): no root needed."""
    return Path.home() / ".local" / "lib" / "wireshark" / "plugins"


def plugin_text() -> str:
    """The plugin, its port table filled in from the registry."""
    template = resources.files(__package__).joinpath(NAME).read_text()
    ports = ", ".join(f'{{ {port}, "{name}" }}' for port, name in WIRESHARK_PORTS)
    text = template.replace(MARK, f"local DECODE_AS = {{ {ports} }} -- from usniff's registry")
    dbus = f"local DBUS_PORT = {BY_NAME['dbus'].port} -- from usniff's registry"
    return text.replace(DBUS_MARK, dbus)


def install(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / NAME
    tmp = target.with_name(f".{NAME}.tmp")
    tmp.write_text(plugin_text())
    tmp.replace(target)
    return target


def uninstall(folder: Path) -> Path | None:
    target = folder / NAME
    if not target.exists():
        return None
    target.unlink()
    return target
