"""DICOM health: a C-ECHO (verification) to the site's DICOM endpoint."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

# pynetdicom logs every refused connection at ERROR with a traceback-like text; the caller
# reports the outcome itself, so keep the library quiet.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: str  # "success", "rejected", "aborted", "unreachable", "failed"
    reason: str  # one line a person can act on
    elapsed: float  # seconds from the association request to the end


def c_echo(host: str, port: int, called_ae: str, calling_ae: str = "BIDSFLUX_HEALTH",
           timeout: float = 5.0) -> EchoResult:
    """Send a C-ECHO to `called_ae` at host:port; never raises for network or DICOM failures."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    where = f"{called_ae}@{host}:{port}"
    start = time.monotonic()
    # pynetdicom reports a refused connection as an aborted association; probe TCP first so
    # the reason tells "nothing listens" apart from "the peer aborted".
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return EchoResult(False, "unreachable", f"nothing accepts connections at {host}:{port} "
                          f"({exc.strerror or exc}); is the DICOM receiver running and the port published?",
                          time.monotonic() - start)
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    except (OSError, ValueError) as exc:
        return EchoResult(False, "failed", f"cannot start an association with {where}: {exc}",
                          time.monotonic() - start)
    try:
        if assoc.is_established:
            status = assoc.send_c_echo()
            elapsed = time.monotonic() - start
            code = getattr(status, "Status", None) if status else None
            if code == 0x0000:
                return EchoResult(True, "success", f"C-ECHO to {where} succeeded", elapsed)
            if code is None:
                return EchoResult(False, "failed", f"{where} accepted the association but sent no "
                                  f"C-ECHO response within {timeout:g}s", elapsed)
            return EchoResult(False, "failed", f"{where} answered C-ECHO with status 0x{code:04X}", elapsed)
        elapsed = time.monotonic() - start
        if assoc.is_rejected:
            return EchoResult(False, "rejected", f"{where} rejected the association (is the called AE "
                              f"title '{called_ae}' right, and is '{calling_ae}' allowed?)", elapsed)
        if assoc.is_aborted:
            return EchoResult(False, "aborted", f"{where} aborted the association", elapsed)
        return EchoResult(False, "unreachable", f"no DICOM service answers at {host}:{port} within "
                          f"{timeout:g}s (connection refused or timed out; is the receiver running "
                          "and the port published?)", elapsed)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


__all__ = ["EchoResult", "c_echo"]
