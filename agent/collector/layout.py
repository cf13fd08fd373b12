"""File names of a collector directory and of an enrollment bundle, in one place.

A collector directory (``collector init --dir DIR``, mode 0700)::

    collector.toml    the configuration (mode 0600: a store URL may hold a password)
    ca.crt  ca.key    the collector CA (absent with --ca-cert/--ca-key: the toml names them)
    server.crt        the server certificate; server.key its key (0600)
    collector.key     the Ed25519 receipt signing key (0600); collector.pub its public key
    store.sqlite      the default store (with its -wal and -shm files)
    witnesses.policy  optional: the witnesses that cosign the fleet log, and the quorum
                      (C2SP tlog-policy; docs/witness.md)

An enrollment bundle (``collector enroll --out OUTDIR``, mode 0700), what ``sealtrail agent
--forward-tls OUTDIR`` reads::

    client.crt        the host's client certificate (CN = host name)
    client.key        its private key (0600; absent with --csr or --cert: the host keeps its own)
    ca.crt            the CA that signed the collector's server certificate
    collector.pub     the collector's receipt key, loaded with ``PublicKey.load``
"""

from __future__ import annotations

CONFIG = "collector.toml"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SIGNING_KEY = "collector.key"
SIGNING_PUB = "collector.pub"
STORE = "store.sqlite"
WITNESS_POLICY = "witnesses.policy"

CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
BUNDLE_CA = CA_CERT
BUNDLE_PUB = SIGNING_PUB
