"""One real TLS 1.3 connection on 127.0.0.1 between Python ssl contexts built from files, as
the collector's server and a forwarding agent will build them."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from agent.collector import pki


def handshake(
    server: tuple[Path, Path],
    server_trusts: Path,
    client: tuple[Path, Path] | None,
    client_trusts: Path,
    server_name: str = "127.0.0.1",
) -> str:
    """The server's view of one connection: the client certificate's fingerprint, or
    ``refused: <error>``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(*server)
    server_ctx.load_verify_locations(server_trusts)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_verify_locations(client_trusts)
    if client is not None:
        client_ctx.load_cert_chain(*client)
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    seen.append(pki.fingerprint(der) if der else "no certificate")
                    tls.sendall(b"k")
            except (ssl.SSLError, OSError) as exc:
                seen.append(f"refused: {exc}")

        thread = threading.Thread(target=serve)
        thread.start()
        client_error = ""
        try:
            with (
                socket.create_connection(listener.getsockname()[:2], timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                assert tls.version() == "TLSv1.3"
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            client_error = f"client refused: {exc}"
        thread.join(timeout=10)
    return seen[0] if seen else client_error
