"""sealtrail: Linux host agent (eBPF observation, in-kernel enforcement, tamper-evident journal)."""

__version__ = "0.1.0"
