"""SNMPv3 messages with the User-based Security Model (RFC 3412 and 3414), done here rather than by pysnmp
(whose message path answers ~600 values a second).

* Keys are localized once per user at start, with pysnmp's key services (so a passphrase gives the same
  keys it gave when pysnmp did everything); HMAC authentication (MD5, SHA-1, SHA-2: RFC 3414, 7860) with
  ``hmac``, AES-CFB privacy (RFC 3826; 192/256-bit keys as pysnmp extends them) with ``cryptography``;
  DES and 3DES, rare, through pysnmp's services.
* The checks run in RFC 3414's order (3.2): engine ID, user, security level, digest, time window,
  decryption. Each failure is counted in its usmStats counter and, if the message asks for reports, told
  in a Report-PDU, which is how net-snmp discovers the engine ID and synchronises boots and time.
* Nothing of the scoped PDU is decoded before the digest is checked.
* Engine boots: the agent's start time in seconds since 2020 (so a restarted agent has higher boots,
  with no file to keep); engine time: seconds since that start.
"""
from __future__ import annotations

import hmac
import os
import time
from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB moved to the "decrepit" modules in cryptography 47 (it is what RFC 3826 asks for)
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from ...errors import RockstarError
from ...snmp_settings import SnmpUser
from . import ber, respond

AUTH_FLAG, PRIV_FLAG, REPORTABLE_FLAG = 0x01, 0x02, 0x04
USM_STATS = (1, 3, 6, 1, 6, 3, 15, 1, 1)
UNSUPPORTED_SEC_LEVELS, NOT_IN_TIME_WINDOWS, UNKNOWN_USER_NAMES, UNKNOWN_ENGINE_IDS, WRONG_DIGESTS, \
    DECRYPTION_ERRORS = range(1, 7)
STAT_NAMES = {UNSUPPORTED_SEC_LEVELS: "unsupported_sec_levels", NOT_IN_TIME_WINDOWS: "not_in_time_windows",
              UNKNOWN_USER_NAMES: "unknown_user_names", UNKNOWN_ENGINE_IDS: "unknown_engine_ids",
              WRONG_DIGESTS: "wrong_digests", DECRYPTION_ERRORS: "decryption_errors"}
TIME_WINDOW = 150  # seconds (RFC 3414 2.2.3)
MAX_BOOTS = 2 ** 31 - 1
BOOTS_EPOCH = 1577836800  # 2020-01-01 UTC
MIN_MAX_SIZE = 484
AUTHORIZATION_ERROR = 16
# name: (hashlib name, MAC length); pysnmp's service names in agent.AUTH
HASHES = {"MD5": ("md5", 12), "SHA": ("sha1", 12), "SHA224": ("sha224", 16), "SHA256": ("sha256", 24),
          "SHA384": ("sha384", 32), "SHA512": ("sha512", 48)}
AUTH_SERVICE = {"MD5": "USM_AUTH_HMAC96_MD5", "SHA": "USM_AUTH_HMAC96_SHA", "SHA224": "USM_AUTH_HMAC128_SHA224",
                "SHA256": "USM_AUTH_HMAC192_SHA256", "SHA384": "USM_AUTH_HMAC256_SHA384",
                "SHA512": "USM_AUTH_HMAC384_SHA512"}
PRIV_SERVICE = {"DES": "USM_PRIV_CBC56_DES", "3DES": "USM_PRIV_CBC168_3DES", "AES": "USM_PRIV_CFB128_AES",
                "AES192": "USM_PRIV_CFB192_AES", "AES256": "USM_PRIV_CFB256_AES"}


class Auth:
    """HMAC-<hash> truncated to the protocol's MAC length, with the user's localized key."""

    def __init__(self, hash_name: str, key: bytes, size: int) -> None:
        self._hash = hash_name
        self._key = key
        self.size = size

    def sign(self, message: bytes) -> bytes:
        return hmac.digest(self._key, message, self._hash)[:self.size]  # OpenSSL's one-shot HMAC


class AesPriv:
    """AES in CFB-128 (RFC 3826): IV = engine boots, engine time, salt; the salt a 64-bit counter."""

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)
        self._salt = int.from_bytes(os.urandom(8), "big")

    def decrypt(self, boots: int, engine_time: int, salt: bytes, data: bytes) -> bytes:
        if len(salt) != 8:
            raise ValueError("AES salt of 8 octets expected")
        iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + salt
        decryptor = Cipher(self._algorithm, CFB(iv)).decryptor()
        return decryptor.update(data) + decryptor.finalize()

    def encrypt(self, boots: int, engine_time: int, data: bytes) -> tuple[bytes, bytes]:
        """``(salt, ciphertext)``."""
        self._salt = (self._salt + 1) & 0xFFFFFFFFFFFFFFFF
        salt = self._salt.to_bytes(8, "big")
        iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + salt
        encryptor = Cipher(self._algorithm, CFB(iv)).encryptor()
        return salt, encryptor.update(data) + encryptor.finalize()


class PysnmpPriv:
    """DES-CBC (RFC 3414) or 3DES-EDE (Reeder draft): pysnmp's own service does the cipher."""

    def __init__(self, service, key: bytes) -> None:
        self._service = service
        self._key = key

    def decrypt(self, boots: int, engine_time: int, salt: bytes, data: bytes) -> bytes:
        from pyasn1.type import univ
        return bytes(self._service.decrypt_data(univ.OctetString(self._key), (boots, engine_time,
                                                univ.OctetString(salt)), univ.OctetString(data)))

    def encrypt(self, boots: int, engine_time: int, data: bytes) -> tuple[bytes, bytes]:
        from pyasn1.type import univ
        ciphertext, salt = self._service.encrypt_data(univ.OctetString(self._key), (boots, engine_time, None),
                                                      data)
        return bytes(salt), bytes(ciphertext)


class LocalUser:
    """A USM user with keys localized to this engine; ``level`` is the least security level it may use."""

    def __init__(self, user: SnmpUser, engine_id: bytes) -> None:
        from pyasn1.type import univ
        from pysnmp.entity import config

        self.name = user.name.encode()
        self.auth: Auth | None = None
        self.priv: AesPriv | PysnmpPriv | None = None
        self.level = 0
        if user.auth_protocol == "NONE":
            return
        auth_id = getattr(config, AUTH_SERVICE[user.auth_protocol])
        auth_service = config.AUTH_SERVICES[auth_id]
        engine = univ.OctetString(engine_id)
        key = auth_service.localize_key(auth_service.hash_passphrase(univ.OctetString(user.auth_key.encode())),
                                        engine)
        hash_name, size = HASHES[user.auth_protocol]
        self.auth = Auth(hash_name, bytes(key), size)
        self.level = AUTH_FLAG
        if user.priv_protocol == "NONE":
            return
        priv_service = config.PRIV_SERVICES[getattr(config, PRIV_SERVICE[user.priv_protocol])]
        master = priv_service.hash_passphrase(auth_id, univ.OctetString(user.priv_key.encode()))
        key = bytes(priv_service.localize_key(auth_id, master, engine))
        if user.priv_protocol.startswith("AES"):
            self.priv = AesPriv(key[:priv_service.KEY_SIZE])
        else:
            self.priv = PysnmpPriv(priv_service, key)
        self.level = AUTH_FLAG | PRIV_FLAG


class Refused(RockstarError):
    """A message failing a USM check: ``stat`` says which, ``flags`` at what level to report it."""

    def __init__(self, stat: int, flags: int = 0) -> None:
        super().__init__(stat)
        self.stat = stat
        self.flags = flags


class V3:
    """The SNMPv3 path of an agent: ``counts`` is the agent's ``Counters``, ``view()`` its view."""

    def __init__(self, engine_id: bytes, users: list[SnmpUser], counts, view: Callable,
                 boots: int | None = None) -> None:
        self.engine_id = engine_id
        self.users = {u.name.encode(): LocalUser(u, engine_id) for u in users}
        self.counts = counts
        self.view = view
        self.boots = boots if boots is not None else max(1, min(MAX_BOOTS - 1, int(time.time()) - BOOTS_EPOCH))
        self.started = time.monotonic()

    def engine_time(self) -> int:
        return int(time.monotonic() - self.started)

    def handle(self, data: bytes, pos: int, end: int) -> bytes | None:
        """The response (or report) to the v3 message whose msgGlobalData starts at ``data[pos]``."""
        gs, ge = ber.expect(data, 0x30, pos, end)
        s, e = ber.expect(data, 0x02, gs, ge)
        msg_id = ber.to_int(data, s, e)
        s, e = ber.expect(data, 0x02, e, ge)
        max_size = ber.to_int(data, s, e)
        s, e = ber.expect(data, 0x04, e, ge)
        if e - s != 1 or msg_id < 0 or max_size < MIN_MAX_SIZE:
            raise ber.Malformed
        flags = data[s]
        s, e = ber.expect(data, 0x02, e, ge)
        model = ber.to_int(data, s, e)
        if e != ge:
            raise ber.Malformed
        if model != 3:
            self.counts.unknown_security_models += 1
            return None
        if flags & PRIV_FLAG and not flags & AUTH_FLAG:
            self.counts.invalid_msgs += 1
            return None
        # UsmSecurityParameters, inside an OCTET STRING
        us, ue = ber.expect(data, 0x04, ge, end)
        ps, pe = ber.expect(data, 0x30, us, ue)
        if pe != ue:
            raise ber.Malformed
        s, e = ber.expect(data, 0x04, ps, pe)
        engine_id = data[s:e]
        s, e = ber.expect(data, 0x02, e, pe)
        boots = ber.to_int(data, s, e)
        s, e = ber.expect(data, 0x02, e, pe)
        engine_time = ber.to_int(data, s, e)
        s, e = ber.expect(data, 0x04, e, pe)
        name = data[s:e]
        auth_start, auth_end = ber.expect(data, 0x04, e, pe)
        s, e = ber.expect(data, 0x04, auth_end, pe)
        if e != pe or len(name) > 32:
            raise ber.Malformed
        salt = data[s:e]
        data_tag, ds, de = ber.read(data, ue, end)
        if de != end or data_tag != (0x04 if flags & PRIV_FLAG else 0x30):
            raise ber.Malformed
        try:
            user = self._check(data, flags, engine_id, name, auth_start, auth_end, boots, engine_time)
            if flags & PRIV_FLAG:
                scoped = self._decrypt(user, boots, engine_time, salt, data[ds:de])
            else:
                scoped = data[ue:end]  # the plaintext ScopedPDU, header included
        except Refused as refused:
            setattr(self.counts, STAT_NAMES[refused.stat], getattr(self.counts, STAT_NAMES[refused.stat]) + 1)
            if not flags & REPORTABLE_FLAG:
                return None
            request_id = self._request_id(data, ue, end) if not flags & PRIV_FLAG else b"\x02\x01\x00"
            known = self.users.get(name) if refused.flags else None
            return self._report(msg_id, refused, name, known, request_id)
        return self._answer(msg_id, flags, max_size, user, scoped)

    # -- the checks --------------------------------------------------------------------------------
    def _check(self, data: bytes, flags: int, engine_id: bytes, name: bytes, auth_start: int, auth_end: int,
               boots: int, engine_time: int) -> LocalUser:
        if engine_id != self.engine_id:
            raise Refused(UNKNOWN_ENGINE_IDS)
        user = self.users.get(name)
        if user is None:
            raise Refused(UNKNOWN_USER_NAMES)
        if flags & AUTH_FLAG and user.auth is None or flags & PRIV_FLAG and user.priv is None:
            raise Refused(UNSUPPORTED_SEC_LEVELS)
        if flags & AUTH_FLAG:
            auth = user.auth
            assert auth is not None  # refused above otherwise
            if auth_end - auth_start != auth.size:
                raise Refused(WRONG_DIGESTS)
            blanked = data[:auth_start] + bytes(auth.size) + data[auth_end:]
            if not hmac.compare_digest(auth.sign(blanked), data[auth_start:auth_end]):
                raise Refused(WRONG_DIGESTS)
            if boots != self.boots or boots == MAX_BOOTS or abs(engine_time - self.engine_time()) > TIME_WINDOW:
                raise Refused(NOT_IN_TIME_WINDOWS, AUTH_FLAG)
        return user

    @staticmethod
    def _decrypt(user: LocalUser, boots: int, engine_time: int, salt: bytes, ciphertext: bytes) -> bytes:
        try:
            assert user.priv is not None  # _check refused a privacy request of a user without it
            scoped = user.priv.decrypt(boots, engine_time, salt, ciphertext)
            tag, s, e = ber.read(scoped, 0, len(scoped))  # DES leaves padding after the scoped PDU
            if tag != 0x30:
                raise ber.Malformed
        except Exception:  # a wrong key gives garbage: RFC 3414 3.2.8 counts it here
            raise Refused(DECRYPTION_ERRORS) from None
        return scoped[:e]

    @staticmethod
    def _request_id(data: bytes, start: int, end: int) -> bytes:
        """The request-id TLV of a plaintext scoped PDU, for a report; 0 if it cannot be read."""
        try:
            s, e = ber.expect(data, 0x30, start, end)
            e = ber.expect(data, 0x04, s, e)[1]
            e = ber.expect(data, 0x04, e, end)[1]
            _, ps, pe = ber.read(data, e, end)
            s, e = ber.expect(data, 0x02, ps, pe)
            ber.to_int(data, s, e)
            return data[ps:e]
        except ber.Malformed:
            return b"\x02\x01\x00"

    # -- answers -----------------------------------------------------------------------------------
    def _answer(self, msg_id: int, flags: int, max_size: int, user: LocalUser, scoped: bytes) -> bytes | None:
        end = len(scoped)
        s, e = ber.expect(scoped, 0x30, 0, end)
        if e != end:
            raise ber.Malformed
        ces, cee = ber.expect(scoped, 0x04, s, e)
        cns, cne = ber.expect(scoped, 0x04, cee, e)
        if scoped[ces:cee] not in (self.engine_id, b"") or cne != cns:
            self.counts.refused_v3 += 1  # another context: nothing is served there
            return None
        request = respond.parse_pdu(scoped, cne, e)
        if request is None:
            return None
        limit = min(max_size, respond.MAX_MESSAGE)
        room = limit - 100 - 2 * len(self.engine_id) - len(user.name) - (user.auth.size if user.auth else 0)
        if flags & (AUTH_FLAG | PRIV_FLAG) < user.level:
            self.counts.refused_v3 += 1  # below the user's level: as snmpd's VACM says
            pdu = respond.response_pdu(request.request_id, AUTHORIZATION_ERROR, 0, request.varbinds)
        else:
            pdu = respond.respond(request, self.view, room, self.counts)
        return self._message(msg_id, flags & (AUTH_FLAG | PRIV_FLAG), user, user.name, self._scoped(pdu))

    def _scoped(self, pdu: bytes) -> bytes:
        return ber.tlv(0x30, ber.octets(self.engine_id) + b"\x04\x00" + pdu)

    def _report(self, msg_id: int, refused: Refused, name: bytes, user: LocalUser | None,
                request_id: bytes) -> bytes:
        value = getattr(self.counts, STAT_NAMES[refused.stat]) % 2 ** 32
        varbind = ber.varbind(USM_STATS + (refused.stat, 0), ber.integer(0x41, value, False))
        pdu = ber.tlv(respond.REPORT, request_id + b"\x02\x01\x00\x02\x01\x00" + ber.varbind_list([varbind]))
        flags = refused.flags if user is not None else 0
        return self._message(msg_id, flags, user, name, self._scoped(pdu))

    def _message(self, msg_id: int, flags: int, user: LocalUser | None, name: bytes, scoped: bytes) -> bytes:
        """A whole SNMPv3 message, encrypted and authenticated as ``flags`` say."""
        boots, engine_time = self.boots, self.engine_time()
        salt = b""
        # a secured message has a user, whose keys for these flags _check found
        auth = user.auth if user is not None and flags & AUTH_FLAG else None
        priv = user.priv if user is not None and flags & PRIV_FLAG else None
        if flags & PRIV_FLAG:
            assert priv is not None
            salt, ciphertext = priv.encrypt(boots, engine_time, scoped)
            msg_data = ber.octets(ciphertext)
        else:
            msg_data = scoped
        size = auth.size if auth is not None else 0
        head = ber.octets(self.engine_id) + ber.int32(boots) + ber.int32(engine_time) + ber.octets(name)
        inner = head + ber.octets(bytes(size)) + ber.octets(salt)
        params = ber.octets(ber.tlv(0x30, inner))
        header = (b"\x02\x01\x03" + ber.tlv(0x30, ber.int32(msg_id) + ber.int32(respond.MAX_MESSAGE)
                                          + ber.octets(bytes((flags,))) + b"\x02\x01\x03"))
        body = header + params + msg_data
        message = ber.tlv(0x30, body)
        if auth is None or not size:
            return message
        # where the MAC goes: after the headers of the message, of the parameters' OCTET STRING and
        # SEQUENCE, the fields before it, and its own OCTET STRING header (2 octets: a MAC is < 128)
        at = (len(message) - len(body)) + len(header) + (len(params) - len(inner)) + len(head) + 2
        return message[:at] + auth.sign(message) + message[at + size:]
