"""The machine a measurement ran on, named the same way by the benchmarks and the reports."""

from __future__ import annotations

import platform
import re

__all__ = ["cpu_name"]


def cpu_name() -> str:
    """The CPU's model name, family and model, and its microarchitecture where the family and
    model say it (AMD's family 25 holds Zen 3 and Zen 4, family 26 is Zen 5)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return name

    def field(key: str) -> str:
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, flags=re.M)
        return m.group(1).strip() if m else ""

    name = field("model name") or name
    vendor, family, model = field("vendor_id"), field("cpu family"), field("model")
    arch = ""
    if vendor == "AuthenticAMD" and family.isdigit() and model.isdigit():
        f, m = int(family), int(model)
        zen4 = 0x10 <= m <= 0x1F or 0x60 <= m <= 0x7F or 0xA0 <= m <= 0xAF
        arch = {26: "Zen 5"}.get(f, "Zen 4" if f == 25 and zen4 else ("Zen 3" if f == 25 else ""))
    elif vendor == "GenuineIntel" and " amx_int8" in f" {field('flags')} ":
        arch = "Intel with AMX"
    return f"{name} (family {family}, model {model}{', ' + arch if arch else ''})"
