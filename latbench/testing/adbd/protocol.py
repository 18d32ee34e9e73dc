"""ADB wire format: message headers, checksums, the connection banner and RSA key checks.

Everything here is pure (no I/O) so that the daemon and the tests share one definition of the
protocol. Numbers and layouts follow AOSP ``packages/modules/adb`` (``adb.h``, ``file_sync_protocol.h``,
``shell_protocol.h``, ``adb_auth.h``).
"""
from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils


def _cmd(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


A_SYNC, A_CNXN, A_OPEN, A_OKAY = _cmd(b"SYNC"), _cmd(b"CNXN"), _cmd(b"OPEN"), _cmd(b"OKAY")
A_CLSE, A_WRTE, A_AUTH, A_STLS = _cmd(b"CLSE"), _cmd(b"WRTE"), _cmd(b"AUTH"), _cmd(b"STLS")
COMMAND_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY", A_CLSE: "CLSE", A_WRTE: "WRTE",
                 A_AUTH: "AUTH", A_STLS: "STLS"}

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001  # from this version on, nobody sends or checks data checksums
A_VERSION = 0x01000001                 # what a current adbd speaks
MAX_PAYLOAD_V1 = 4 * 1024
MAX_PAYLOAD = 1024 * 1024              # our own limit; the link uses min(host's, ours)

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20

HEADER = struct.Struct("<6I")  # command, arg0, arg1, data_length, data_check, magic

# Features we advertise. Deliberately no ``delayed_ack`` (flow control stays one WRTE per OKAY) and no
# ``ls_v2``/``sendrecv_v2`` (we answer LIS2 anyway, but clients must not depend on it).
FEATURES = ("shell_v2", "stat_v2", "fixed_push_mkdir")


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"0x{self.command:08x}")


def checksum(data: bytes) -> int:
    """ADB's "checksum": the byte sum, used only below :data:`A_VERSION_SKIP_CHECKSUM`."""
    return sum(data) & 0xFFFFFFFF


def pack(message: Message, version: int) -> bytes:
    """Header and payload as one buffer (written with one send, as adbd does)."""
    check = checksum(message.data) if version < A_VERSION_SKIP_CHECKSUM else 0
    header = HEADER.pack(message.command, message.arg0, message.arg1, len(message.data), check,
                         message.command ^ 0xFFFFFFFF)
    return header + message.data


@dataclass(frozen=True)
class Header:
    command: int
    arg0: int
    arg1: int
    length: int
    check: int
    magic: int

    def valid_magic(self) -> bool:
        return self.magic == self.command ^ 0xFFFFFFFF


def unpack_header(raw: bytes) -> Header:
    return Header(*HEADER.unpack(raw))


def device_banner(props: dict[str, str], features: tuple[str, ...] = FEATURES) -> bytes:
    """``device::ro.product.name=…;ro.product.model=…;ro.product.device=…;features=…`` as adbd builds it."""
    parts = [f"{key}={props.get(key, '')}" for key in ("ro.product.name", "ro.product.model", "ro.product.device")]
    parts.append("features=" + ",".join(features))
    return ("device::" + ";".join(parts)).encode()


# ---------------------------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class AndroidPublicKey:
    """An adb public key: the mincrypt ``RSAPublicKey`` struct, base64, then `` user@host``."""

    modulus: int
    exponent: int
    comment: str = ""

    @classmethod
    def parse(cls, text: bytes | str) -> AndroidPublicKey:
        """Parse ``adbkey.pub`` text or an AUTH RSAPUBLICKEY payload (which ends with a NUL)."""
        if isinstance(text, bytes):
            text = text.rstrip(b"\0").decode("ascii", "replace")
        b64, _, comment = text.strip().partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as err:
            raise ValueError(f"adb public key is not base64: {err}") from None
        if len(raw) < 8:
            raise ValueError(f"adb public key too short ({len(raw)} bytes)")
        words, _n0inv = struct.unpack_from("<II", raw, 0)
        expected = 8 + 8 * words + 4
        if words == 0 or len(raw) != expected:
            raise ValueError(f"adb public key has {len(raw)} bytes, expected {expected} for a "
                             f"{words * 32}-bit modulus (mincrypt RSAPublicKey layout)")
        modulus = int.from_bytes(raw[8:8 + 4 * words], "little")
        exponent = struct.unpack_from("<I", raw, 8 + 8 * words)[0]
        return cls(modulus, exponent, comment.strip())

    @classmethod
    def from_cryptography(cls, key: rsa.RSAPublicKey, comment: str = "") -> AndroidPublicKey:
        numbers = key.public_numbers()
        return cls(numbers.n, numbers.e, comment)

    def encode(self) -> str:
        """The ``adbkey.pub`` text (mincrypt struct: len, n0inv, n[], rr[], exponent; little-endian words)."""
        words = (self.modulus.bit_length() + 31) // 32
        n0inv = (-pow(self.modulus, -1, 1 << 32)) % (1 << 32)
        rr = pow(2, 64 * words, self.modulus)  # R^2 mod n, R = 2^(32*words)
        raw = (struct.pack("<II", words, n0inv) + self.modulus.to_bytes(4 * words, "little")
               + rr.to_bytes(4 * words, "little") + struct.pack("<I", self.exponent))
        text = base64.b64encode(raw).decode()
        return f"{text} {self.comment}" if self.comment else text

    def verify(self, token: bytes, signature: bytes) -> bool:
        """True when ``signature`` is the RSA PKCS#1 v1.5 signature of ``token`` taken as a SHA-1 digest.

        adb signs the 20-byte token with ``RSA_sign(NID_sha1, ...)``: the token itself is placed in the
        SHA-1 DigestInfo (it is not hashed again), hence ``Prehashed``.
        """
        if len(token) != TOKEN_SIZE:
            return False
        key = rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
        try:
            key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def same_key(self, other: AndroidPublicKey) -> bool:
        return (self.modulus, self.exponent) == (other.modulus, other.exponent)


# ---------------------------------------------------------------------------------------- shell v2
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW_SIZE = 0, 1, 2, 3, 4, 5
SHELL_PACKET = struct.Struct("<BI")  # id, length


def shell_packet(packet_id: int, data: bytes) -> bytes:
    return SHELL_PACKET.pack(packet_id, len(data)) + data


# -------------------------------------------------------------------------------------------- sync
def sync_id(name: bytes) -> int:
    return _cmd(name)


SYNC_REQUEST = struct.Struct("<2I")          # id, length (then `length` bytes of path)
SYNC_STAT_V1 = struct.Struct("<4I")          # STAT, mode, size, mtime                       16 bytes
SYNC_STAT_V2 = struct.Struct("<2I2Q4IQ3q")   # id, error, dev, ino, mode, nlink, uid, gid, size, a/m/ctime  72
SYNC_DENT_V1 = struct.Struct("<5I")          # DENT, mode, size, mtime, namelen (then name)  20 bytes
SYNC_DENT_V2 = struct.Struct("<2I2Q4IQ3qI")  # DNT2, error, ... like STA2, namelen             76 bytes
SYNC_DATA_MAX = 64 * 1024
assert (SYNC_STAT_V1.size, SYNC_STAT_V2.size, SYNC_DENT_V1.size, SYNC_DENT_V2.size) == (16, 72, 20, 76)
