"""TLS material for a deployment: a throwaway CA and server certificate, or a user's own certificate folder.

Flower's SuperLink and SuperNodes take PEM files (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``,
``--root-certificates``); this module only makes or finds them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"

#: What a loopback deployment's clients dial: its certificate must name both.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS setup: the CA every client trusts, and the server's certificate and private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def generate_certificates(folder: Path, hosts: Sequence[str] = LOOPBACK_HOSTS, valid_days: int = 7) -> TlsFiles:
    """Make a throwaway CA and a server certificate for ``hosts``, signed by it, in ``folder``.

    Good for loopback and tests only: the CA's key is discarded, so nothing else can ever be signed by it, and no
    system trusts it. IP addresses go into the subject alternative name as IPs, names as DNS names, since TLS
    clients match the address they dialled against the SAN, not the common name.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("generate_certificates needs at least one host name or IP address")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdated a little so a clock a few seconds behind on a peer does not see a certificate "not yet valid".
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-kd throwaway CA")])
    no_usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **no_usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **no_usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created owner-only from the start, not chmod-ed after the key was already readable.
    fd = os.open(files.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    return files


def load_certificates(folder: Path | str, host: str | None = None) -> TlsFiles:
    """The TLS files in a user's ``folder`` (absolute paths), checked before any server is started with them.

    Raises ``ValueError`` naming the file when one is missing or not PEM, when the key does not belong to the
    certificate, or when the certificate is not for ``host`` (where clients will reach the SuperLink): the server
    would otherwise fail deep inside its TLS stack, or every client's handshake would fail until a timeout.
    """
    folder = Path(folder).expanduser().resolve()
    files = TlsFiles(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
    missing = [path.name for path in asdict(files).values() if not path.is_file()]
    if missing:
        raise ValueError(
            f"certificate folder {folder} lacks {', '.join(missing)} (needs {CA_CERT}, {SERVER_CERT}, {SERVER_KEY})"
        )
    try:
        ssl.create_default_context(cafile=str(files.ca_cert))
    except ssl.SSLError as err:
        raise ValueError(f"{files.ca_cert} is not a PEM CA certificate ({err})") from err
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.server_cert, files.server_key)
    except ssl.SSLError as err:
        raise ValueError(
            f"{files.server_cert} and {files.server_key} are not a PEM certificate and its private key ({err})"
        ) from err
    hosts = certificate_hosts(files.server_cert) if host is not None else []
    if host is not None and host not in hosts:
        raise ValueError(
            f"{files.server_cert} is for {', '.join(hosts) or 'no host'}, not for {host}, where the SuperNodes reach "
            "the SuperLink"
        )
    return files


def certificate_hosts(path: Path) -> list[str]:
    """The host names and IP addresses a PEM certificate's subject alternative names cover."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))]
