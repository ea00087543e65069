"""The throwaway certificates of a loopback deployment, in a real TLS handshake, and a user's certificate folder."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from pathlib import Path

import pytest

from fl_kd.simulations.health import DeploymentError, answers
from fl_kd.simulations.tls import TlsFiles, generate_certificates, load_certificates


def _handshake(tls: TlsFiles, trusted_ca: Path, server_hostname: str) -> str:
    """Serve one TLS connection with ``tls``'s server certificate; connect trusting ``trusted_ca``; return the reply."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        # The server side fails on purpose when the client rejects its certificate.
        with contextlib.suppress(OSError), server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.sendall(b"hello over tls")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls_conn:
                return tls_conn.recv(64).decode()
    finally:
        thread.join(timeout=5)
        listener.close()


def test_throwaway_certificates_pass_strict_verification_for_ip_and_name(tmp_path: Path) -> None:
    tls = generate_certificates(tmp_path / "certs")
    assert _handshake(tls, tls.ca_cert, "127.0.0.1") == "hello over tls"
    assert _handshake(tls, tls.ca_cert, "localhost") == "hello over tls"
    assert tls.server_key.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"


def test_certificates_from_another_ca_or_for_another_host_are_rejected(tmp_path: Path) -> None:
    tls = generate_certificates(tmp_path / "ours")
    other = generate_certificates(tmp_path / "theirs")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, other.ca_cert, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tls, tls.ca_cert, "example.org")


def test_load_certificates_names_the_missing_file(tmp_path: Path) -> None:
    generate_certificates(tmp_path)
    assert load_certificates(tmp_path).ca_cert == (tmp_path / "ca.crt").resolve()
    (tmp_path / "server.key").unlink()
    with pytest.raises(ValueError, match=r"lacks server\.key"):
        load_certificates(tmp_path)


def test_load_certificates_refuses_files_a_server_could_not_use(tmp_path: Path) -> None:
    """Checked before any server starts: garbage files ended in a TLS-stack traceback naming no file, and a
    certificate for another host in a timeout of every SuperNode's handshake."""
    ours = generate_certificates(tmp_path / "ours")
    assert load_certificates(tmp_path / "ours", host="127.0.0.1") == TlsFiles(
        ours.ca_cert.resolve(), ours.server_cert.resolve(), ours.server_key.resolve()
    )
    other_host = generate_certificates(tmp_path / "remote", hosts=("superlink.example.org",))
    with pytest.raises(ValueError, match=r"server\.pem is for superlink\.example\.org, not for 127\.0\.0\.1"):
        load_certificates(tmp_path / "remote", host="127.0.0.1")
    assert load_certificates(tmp_path / "remote", host="superlink.example.org").server_key == other_host.server_key

    (tmp_path / "remote" / "server.key").write_bytes(ours.server_key.read_bytes())  # another certificate's key
    with pytest.raises(ValueError, match=r"server\.pem and .*server\.key are not a PEM certificate and its"):
        load_certificates(tmp_path / "remote")
    (tmp_path / "ours" / "server.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"server\.pem and .*server\.key are not a PEM certificate"):
        load_certificates(tmp_path / "ours")
    (tmp_path / "ours" / "ca.crt").write_text("not a certificate either\n")
    with pytest.raises(ValueError, match=r"ca\.crt is not a PEM CA certificate"):
        load_certificates(tmp_path / "ours")


def _https_server(tls: TlsFiles) -> tuple[http.server.HTTPServer, str]:
    """A health endpoint served with ``tls``'s certificate on 127.0.0.1 (an ephemeral port), in a thread."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def test_a_server_whose_certificate_does_not_verify_stops_the_wait_at_once(tmp_path: Path) -> None:
    """It waited out the whole start-up timeout (180 s by default) and then said only that it timed out."""
    ours = generate_certificates(tmp_path / "ours")
    remote = generate_certificates(tmp_path / "remote", hosts=("superlink.example.org",))
    for served, trusted, reason in (
        (ours, ours, None),
        (ours, remote, "unable to get local issuer"),
        (remote, remote, "mismatch"),
    ):
        server, address = _https_server(served)
        try:
            if reason is None:
                assert answers(address, trusted)
            else:
                with pytest.raises(DeploymentError, match=f"on {address} does not verify: .*{reason}"):
                    answers(address, trusted)
        finally:
            server.shutdown()
            server.server_close()
    assert not answers(address, ours)  # nobody listening: not up yet, which is no error
