"""The CPU a figure was measured on, without importing torch (for the shell scripts that
print it before choosing what to run)."""

from __future__ import annotations

import platform


def cpu_description() -> str:
    """CPU model name, family/model numbers and the vector instructions the figures depend on,
    e.g. "AMD EPYC (family 25, model 1; avx2)": two CPUs with one name can differ several-fold
    (AVX-512 BF16 computes bf16 natively, without it bf16 is emulated and float32 is used)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    name = fields.get("model name", platform.machine())
    return (f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; "
            f"{', '.join(vector) or 'no avx2'})")
