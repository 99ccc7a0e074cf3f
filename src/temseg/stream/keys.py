"""CURVE key pairs for an encrypted, authenticated mask stream.

Layout of a key folder (Z85 text files written by :func:`zmq.auth.create_certificates`)::

    server.key              server public key   -> give to every client
    server.key_secret       server secret key   -> stays on the publishing machine
    clients/<name>.key      client public key
    clients/<name>.key_secret   client secret key -> give to that client only
    authorized/<name>.key   public keys the publisher accepts (copy or delete to manage access)
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class KeyFiles:
    """Paths written or reused by :func:`generate_keys`."""

    server_public: Path
    server_secret: Path
    authorized: Path
    client_secrets: dict[str, Path]


def generate_keys(out_dir: Path, clients: Sequence[str] = ("client",)) -> KeyFiles:
    """Create (or extend) a key folder: a server key pair unless one exists,
    and a key pair per client name, each authorized.

    Existing keys are never overwritten: a client name that already has keys
    raises :class:`FileExistsError`. Secret key files are made owner-only (0600).
    """
    out_dir = Path(out_dir)
    names = list(clients)
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"client name {name!r}: use letters, digits, '_', '.', '-'")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate client names in {names}")
    client_dir, authorized = out_dir / "clients", out_dir / "authorized"
    for name in names:
        for path in (client_dir / f"{name}.key", client_dir / f"{name}.key_secret"):
            if path.exists():
                raise FileExistsError(f"{path} exists; choose another client name")
    for folder in (out_dir, client_dir, authorized):
        folder.mkdir(parents=True, exist_ok=True)
    server_public, server_secret = out_dir / "server.key", out_dir / "server.key_secret"
    if not server_secret.exists():
        if server_public.exists():
            raise FileExistsError(f"{server_public} exists without {server_secret.name}")
        zmq.auth.create_certificates(out_dir, "server")
        server_secret.chmod(0o600)
    secrets: dict[str, Path] = {}
    for name in names:
        public, secret = zmq.auth.create_certificates(client_dir, name)
        Path(secret).chmod(0o600)
        shutil.copyfile(public, authorized / f"{name}.key")
        secrets[name] = Path(secret)
    return KeyFiles(server_public, server_secret, authorized, secrets)


def load_client_keys(
    curve_keys: Path, client_key: Path | None = None
) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) keys for a subscriber.

    ``curve_keys`` is either the server's public key file (``server.key``;
    ``client_key`` is then required) or a key folder, whose
    ``clients/client.key_secret`` is the default ``client_key``.
    """
    curve_keys = Path(curve_keys)
    if curve_keys.is_dir():
        server_file = curve_keys / "server.key"
        if client_key is None:
            client_key = curve_keys / "clients" / "client.key_secret"
    else:
        server_file = curve_keys
    if client_key is None:
        raise ValueError("a CURVE subscriber needs its client secret key file (.key_secret)")
    for path in (server_file, Path(client_key)):
        if not path.is_file():
            raise FileNotFoundError(f"no key file {path}")
    server_public, _ = zmq.auth.load_certificate(server_file)
    client_public, client_secret = zmq.auth.load_certificate(client_key)
    if client_secret is None:
        raise ValueError(f"{client_key} holds no secret key; pass the .key_secret file")
    return server_public, client_public, client_secret
