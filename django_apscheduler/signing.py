"""Signed job rows: a stored ``job_state`` is unpickled only if this app signed it.

Unpickling runs code the pickle names, so whoever can write the job table
could run code in every process that reads it (schedulers, the admin, the
``apscheduler`` command). Every ``job_state`` this app writes therefore
carries an HMAC in ``DjangoJob.job_signature``, and nothing is unpickled
before that HMAC is checked.

The HMAC follows Django's signing conventions (``django.core.signing``): an
HMAC-SHA256 from :func:`django.utils.crypto.salted_hmac` with a salt of this
app's own, keyed with ``SECRET_KEY``; a signature made with one of
``SECRET_KEY_FALLBACKS`` is accepted too, so the key can rotate (the row is
signed with the current key when it is next written). The signed message
binds the state to the row's id: another row's valid signature and state,
copied under this id, do not verify.

:func:`check` turns a row's ``(id, job_state, job_signature)`` into the
verified bytes or the reason they are refused; :func:`loads` is the only
``pickle.loads`` of stored states, and takes verified bytes only.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.crypto import constant_time_compare
from django.utils.encoding import force_bytes

from django_apscheduler.exceptions import UntrustedJobStateError

#: The salt of this app's key (Django's convention: one salt per purpose).
SALT = "django_apscheduler.signing.job_state"

#: Length of a signature: a SHA-256 HMAC in hex.
SIGNATURE_LENGTH = 64


class Verified(bytes):
    """A stored job state whose signature :func:`check` has verified; made nowhere else."""


@dataclass(frozen=True)
class Check:
    """What :func:`check` found: the verified state, or the ``problem`` with the row.

    ``problem`` is empty, ``"unsigned"`` or ``"signature mismatch"``;
    ``current`` is False for a state signed with a ``SECRET_KEY_FALLBACKS``
    key (valid, to be signed again with the current key).
    """

    state: Verified | None
    problem: str = ""
    current: bool = False

    @property
    def ok(self) -> bool:
        return self.state is not None


def _message(job_id: str, job_state: bytes | memoryview) -> bytes:
    """The signed bytes: the id (length first, so no id/state split is ambiguous) and the state."""
    ident = str(job_id).encode("utf-8", "surrogatepass")
    return b"%d:" % len(ident) + ident + bytes(job_state)


#: The HMAC key derived from each secret seen.
_derived: dict[bytes, bytes] = {}


def _signature(message: bytes, secret: Any) -> str:
    """``salted_hmac(SALT, message, secret=secret, algorithm="sha256").hexdigest()``.

    The same HMAC, with the key Django derives from the salt and the secret
    computed once per secret instead of once per message (every fire signs
    and checks a state), and the HMAC itself in one call into OpenSSL.
    """
    raw = force_bytes(secret)
    key = _derived.get(raw)
    if key is None:
        key = _derived.setdefault(raw, hashlib.sha256(force_bytes(SALT) + raw).digest())
    return hmac.digest(key, message, "sha256").hex()


def _keys() -> list[Any]:
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]


def sign(job_id: str, job_state: bytes | memoryview) -> str:
    """The signature of ``job_state`` stored under ``job_id``, with the current ``SECRET_KEY``."""
    return _signature(_message(job_id, job_state), settings.SECRET_KEY)


def check(job_id: str, job_state: bytes | memoryview | None, signature: Any) -> Check:
    """Verify a row's signature; never unpickles and never raises for a bad row.

    A missing (NULL or empty) signature is ``"unsigned"``; any other value that
    no key made for this id and state is ``"signature mismatch"``.
    """
    if not signature:
        return Check(None, UntrustedJobStateError.UNSIGNED)
    if not isinstance(signature, str) or job_state is None:
        return Check(None, UntrustedJobStateError.MISMATCH)
    message = _message(job_id, job_state)
    for index, key in enumerate(_keys()):
        if constant_time_compare(_signature(message, key), signature):
            return Check(Verified(bytes(job_state)), current=index == 0)
    return Check(None, UntrustedJobStateError.MISMATCH)


def verify(job_id: str, job_state: bytes | memoryview | None, signature: Any) -> Verified:
    """The verified state of a row; :class:`UntrustedJobStateError` naming the job if it is not."""
    checked = check(job_id, job_state, signature)
    if checked.state is None:
        raise UntrustedJobStateError(job_id, checked.problem)
    return checked.state


def loads(state: Verified) -> Any:
    """Unpickle a verified state (the only ``pickle.loads`` of stored job states)."""
    if not isinstance(state, Verified):
        raise TypeError(
            "django_apscheduler unpickles only job states whose signature was checked "
            "(signing.verify); got unverified bytes"
        )
    return pickle.loads(state)


def load_state(job_id: str, job_state: bytes | memoryview | None, signature: Any) -> Any:
    """Verify a row's signature, then unpickle its state (``UntrustedJobStateError`` if refused)."""
    return loads(verify(job_id, job_state, signature))


def seal(name: str, payload: bytes) -> bytes:
    """``payload`` (a pickle this app wrote, stored elsewhere than ``job_state``) with its signature.

    For the pickled call of a handed-off fire (``DjangoJobExecution.task_call``):
    the same rule as for job states, so no table this app unpickles from is a
    way to run code. ``name`` binds the payload to its row (``"handoff-call:<job id>"``).
    """
    return sign(name, payload).encode("ascii") + bytes(payload)


def unseal(name: str, sealed: bytes | memoryview | None) -> Verified:
    """The verified payload of :func:`seal`; :class:`UntrustedJobStateError` naming ``name`` if not."""
    data = bytes(sealed or b"")
    signature = data[:SIGNATURE_LENGTH].decode("ascii", "replace") if data else ""
    return verify(name, data[SIGNATURE_LENGTH:], signature)
