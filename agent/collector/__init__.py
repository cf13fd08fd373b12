"""The collector: receives every host's journal, verifies it on arrival, keeps it, signs receipts.

Foundations here: ``pki`` (the collector CA, server and client certificates), ``signing`` (the
Ed25519 receipt key), ``config`` (``collector.toml``), ``store`` (one store interface, SQLite and
PostgreSQL backends) and ``provision`` (``collector init`` and ``collector enroll``). The layout of
a collector directory and of an enrollment bundle is in ``layout`` and docs/collector.md.
"""
