"""ZeroMQ CURVE keys: encryption and client authentication for a feedback screen on another machine.

By default every rtnf socket is bound to loopback and needs no keys. When the
feedback screen (or the console) runs on another machine, the stream crosses
a network: CURVE then encrypts it and lets only clients whose public key the
operator installed subscribe.

Layout of a key folder made by :func:`generate_keys`::

    <folder>/rtnf.key              server public key   (copy to every client)
    <folder>/rtnf.key_secret       server secret key   (stays on the rtnf machine)
    <folder>/<client>.key          a client's public key
    <folder>/<client>.key_secret   a client's secret key (copy to that client only)
    <folder>/authorized/<client>.key   public keys the server accepts

Command: ``python -m rtnf.wire.keys FOLDER [--client screen --client console]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq

SERVER = "rtnf"
DEFAULT_CLIENTS = ("screen", "console")


class CurveKeyError(RuntimeError):
    """Missing or unusable key files; the message names the file."""


@dataclass(frozen=True)
class KeyFolder:
    """Paths of a key folder (see the module docstring)."""

    folder: Path

    @property
    def server_public(self) -> Path:
        return self.folder / f"{SERVER}.key"

    @property
    def server_secret(self) -> Path:
        return self.folder / f"{SERVER}.key_secret"

    @property
    def authorized(self) -> Path:
        return self.folder / "authorized"

    def client_secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"


def _check_curve() -> None:
    if not zmq.has("curve"):
        raise CurveKeyError("this libzmq was built without CURVE support (libsodium); CURVE keys cannot be used")


def generate_keys(folder: str | Path, clients: tuple[str, ...] | list[str] = DEFAULT_CLIENTS,
                  overwrite: bool = False) -> KeyFolder:
    """Write a server key pair and one key pair per client, and authorize the clients.

    Parameters
    ----------
    folder : str or Path
        Created if missing. Secret files are made readable by their owner only.
    clients : sequence of str
        Client names (``screen``, ``console``, ...); each gets a key pair whose
        public half is copied into ``authorized/``.
    overwrite : bool
        Replace existing keys (otherwise an existing server key is an error:
        regenerating it would lock out every installed client).

    Returns
    -------
    KeyFolder
    """
    import zmq.auth

    _check_curve()
    keys = KeyFolder(Path(folder))
    if keys.server_secret.exists() and not overwrite:
        raise CurveKeyError(f"{keys.server_secret} exists; pass overwrite=True (--overwrite) to replace the keys")
    keys.folder.mkdir(parents=True, exist_ok=True)
    keys.authorized.mkdir(exist_ok=True)
    for name in (SERVER, *clients):
        public, secret = zmq.auth.create_certificates(str(keys.folder), name)
        Path(secret).chmod(0o600)
        if name != SERVER:
            shutil.copy(public, keys.authorized / Path(public).name)
    return keys


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise CurveKeyError(f"CURVE key file {path} not found (generate keys with: python -m rtnf.wire.keys FOLDER)")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except Exception as exc:  # zmq.auth raises ValueError or OSError on a bad file
        raise CurveKeyError(f"CURVE key file {path} is not a zmq certificate: {exc}") from None
    if secret and secret_key is None:
        raise CurveKeyError(f"{path} holds no secret key")
    return public, secret_key


class CurveServer:
    """Makes a socket a CURVE server that accepts only the authorized clients' keys.

    Create it before binding the socket; keep it alive as long as the socket
    (it runs ZeroMQ's authentication handler in a thread of its own, on its
    own socket), and :meth:`stop` it after closing the socket.
    """

    def __init__(self, context: zmq.Context, folder: str | Path) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        _check_curve()
        self.keys = KeyFolder(Path(folder))
        self.public, self.secret = _load(self.keys.server_secret, secret=True)
        if not self.keys.authorized.is_dir():
            raise CurveKeyError(f"{self.keys.authorized} (the authorized clients' public keys) not found")
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.keys.authorized))

    def apply(self, socket: zmq.Socket) -> None:
        """Set the server options on ``socket`` (before ``bind``)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        """Stop the authentication thread."""
        self._auth.stop()


def secure_client(socket: zmq.Socket, folder: str | Path, name: str) -> None:
    """Set the CURVE client options on ``socket`` (before ``connect``).

    ``folder`` holds this client's ``<name>.key_secret`` and the server's
    public ``rtnf.key``.
    """
    _check_curve()
    keys = KeyFolder(Path(folder))
    public, secret = _load(keys.client_secret(name), secret=True)
    server_public, _ = _load(keys.server_public, secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


def main(argv: list[str] | None = None) -> int:
    """``python -m rtnf.wire.keys FOLDER``: generate CURVE keys for rtnf and its clients."""
    parser = argparse.ArgumentParser(prog="python -m rtnf.wire.keys", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="where to write the keys")
    parser.add_argument("--client", action="append", default=None,
                        help=f"client name (repeatable; default: {', '.join(DEFAULT_CLIENTS)})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing keys")
    args = parser.parse_args(argv)
    try:
        keys = generate_keys(args.folder, tuple(args.client or DEFAULT_CLIENTS), overwrite=args.overwrite)
    except CurveKeyError as exc:
        print(f"rtnf keys: {exc}", file=sys.stderr)
        return 1
    print(f"CURVE keys written to {keys.folder}:")
    print(f"  server secret (keep on the rtnf machine): {keys.server_secret}")
    print(f"  server public (copy to each client):      {keys.server_public}")
    for p in sorted(keys.authorized.glob("*.key")):
        print(f"  client {p.stem}: copy {keys.folder / (p.stem + '.key_secret')} to that client only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
