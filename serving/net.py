"""Loopback networking helpers for whoever starts a server: the infra validator, tests, bench."""
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it for a bind to port 0).

    The port is released before returning, so another process may take it before the caller
    binds it; a caller that must not fail retries on a new port (the infra validator does).

    Args:
      host: the interface to probe, an IPv4 address.
    Returns:
      A port number in 1..65535.
    Raises:
      OSError: `host` is not an address of this machine.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
