"""MinIO stand-in for the admin API bidsflux uses, checking requests as MinIO does.

MinIO's server cannot run here. This serves /minio/admin/v3/{add-user,remove-user,user-info,
list-users,add-canned-policy,info-canned-policy,set-user-or-group-policy} and the few S3 bucket
calls (HEAD/PUT bucket, ListObjectsV2) on http://127.0.0.1:<port>, and refuses what MinIO refuses:
- every request must carry a valid AWS Signature V4 (service "s3"), written here from AWS's
  SigV4 specification and MinIO's cmd/signature-v4.go (doesSignatureMatch: canonical request
  with the signed headers, host required among them, x-amz-content-sha256 as payload hash, 15
  minutes clock skew allowed, cmd/signature-v4-utils.go isValidRegion: an unset server region
  accepts any); admin calls only with the root credentials;
- x-amz-content-sha256 must match the body (ErrContentSHA256Mismatch);
- add-user bodies are madmin-encrypted with the caller's secret key (cmd/admin-handlers-users.go
  AddUser: madmin.DecryptData(cred.SecretKey, body)); list-users answers encrypted the same way
  (madmin EncryptData). The format, from madmin-go encrypt.go: salt(32) | AEAD id (1: 0 = AES-256-GCM,
  1 = ChaCha20-Poly1305) | nonce(8) | sio DARE 2.0 fragments of 16 KiB + 16-byte tag; key =
  Argon2id(secret, salt, t=1, m=64 MiB, p=4, 32 bytes); fragment nonce = nonce || uint32le(seq from 1);
  additional data = 0x00 || tag of the empty message under seq 0, first byte 0x80 on the final fragment;
- errors are MinIO's JSON error bodies (cmd/api-errors.go codes and statuses) for admin calls, S3
  XML errors for bucket calls."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

# cmd/api-errors.go: code -> (HTTP status, description)
ERRORS = {
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the signature you provided. Check your key and signing method."),
    "InvalidAccessKeyId": (403, "The Access Key Id you provided does not exist in our records."),
    "AccessDenied": (403, "Access Denied."),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed; the region is wrong."),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does not match what was computed."),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the server's time is too large."),
    "AccessDeniedUnsignedHeaders": (403, "There were headers present in the request which were not signed"),
    "XMinioInvalidIAMCredentials": (403, "User is not allowed to be same as admin access key"),
    "XMinioAdminConfigBadJSON": (400, "JSON configuration provided is of incorrect format"),
    "XMinioAdminNoSuchUser": (404, "The specified user does not exist."),
    "XMinioAdminNoSuchPolicy": (404, "The canned policy does not exist."),
    "XMinioMalformedPolicy": (400, "Policy has invalid resource."),
    "XMinioInvalidArgument": (400, "Invalid arguments specified."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket succeeded and you already own it."),
}
MAX_SKEW = dt.timedelta(minutes=15)  # cmd/globals.go globalMaxSkewTime
CHUNK = 16 * 1024


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ---- madmin encryption (see the module docstring) ----------------------------------------------------

def _key(secret: str, salt: bytes) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(secret.encode(), salt, time_cost=1, memory_cost=64 * 1024, parallelism=4, hash_len=32,
                           type=Type.ID)


def _cipher(aead_id: int, key: bytes):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    if aead_id == 0:
        return AESGCM(key)
    if aead_id == 1:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown AEAD id {aead_id}")


def madmin_decrypt(secret: str, data: bytes) -> bytes:
    if len(data) < 41:
        raise ValueError("too short")
    salt, aead_id, nonce = data[:32], data[32], data[33:41]
    aead = _cipher(aead_id, _key(secret, salt))
    ad = bytearray(b"\x00" + aead.encrypt(nonce + b"\0\0\0\0", b"", None))
    stream, out, seq, pos = data[41:], bytearray(), 1, 0
    while pos < len(stream):
        frag = stream[pos:pos + CHUNK + 16]
        pos += len(frag)
        if pos >= len(stream):
            ad[0] = 0x80
        out += aead.decrypt(nonce + struct.pack("<I", seq), frag, bytes(ad))
        seq += 1
    return bytes(out)


def madmin_encrypt(secret: str, plain: bytes) -> bytes:
    salt, nonce = os.urandom(32), os.urandom(8)
    aead = _cipher(0, _key(secret, salt))
    ad = bytearray(b"\x00" + aead.encrypt(nonce + b"\0\0\0\0", b"", None))
    out, seq = bytearray(salt + b"\x00" + nonce), 1
    chunks = [plain[i:i + CHUNK] for i in range(0, len(plain), CHUNK)] or [b""]
    for i, chunk in enumerate(chunks):
        if i == len(chunks) - 1:
            ad[0] = 0x80
        out += aead.encrypt(nonce + struct.pack("<I", seq), chunk, bytes(ad))
        seq += 1
    return bytes(out)


# ---- SigV4 -------------------------------------------------------------------------------------------

def _enc(s: str) -> str:
    return quote(s, safe="-_.~")


def verify_sigv4(method: str, raw_path: str, raw_query: str, headers: dict[str, str], body: bytes,
                 secrets: dict[str, str], region: str = "") -> str:
    """The access key of a correctly signed request; Refused(code) otherwise."""
    auth = headers.get("authorization", "")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]*)/s3/aws4_request, "
                     r"SignedHeaders=([a-z0-9;\-]+), Signature=([0-9a-f]{64})", auth)
    if not m:
        raise Refused("AccessDenied")
    access, day, req_region, signed, signature = m.groups()
    if access not in secrets:
        raise Refused("InvalidAccessKeyId")
    if region and req_region not in (region, "US" if region == "us-east-1" else region):
        raise Refused("AuthorizationHeaderMalformed")
    names = signed.split(";")
    if "host" not in names:
        raise Refused("AccessDeniedUnsignedHeaders")
    amz_date = headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise Refused("AccessDenied") from None
    if abs(dt.datetime.now(dt.UTC) - when) > MAX_SKEW or amz_date[:8] != day:
        raise Refused("RequestTimeTooSkewed")
    payload_hash = headers.get("x-amz-content-sha256", "")
    if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
        raise Refused("XAmzContentSHA256Mismatch")
    query = sorted((_enc(k), _enc(v)) for k, v in parse_qsl(raw_query, keep_blank_values=True))
    canonical = "\n".join([
        method, quote(unquote(raw_path), safe="/-_.~"), "&".join(f"{k}={v}" for k, v in query),
        "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in names), signed, payload_hash])
    scope = f"{day}/{req_region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    k = ("AWS4" + secrets[access]).encode()
    for part in (day, req_region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        raise Refused("SignatureDoesNotMatch")
    return access


# ---- state and server ------------------------------------------------------------------------------

@dataclass
class MinioState:
    root: tuple[str, str]
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # access -> {secretKey, status, policyName}
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    buckets: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (method, admin command or S3 path, status)
    bodies: list[bytes] = field(default_factory=list)  # raw request bodies, to check no secret travels in clear


def _valid_policy(doc: Any) -> bool:
    # A policy needs a Version and statements each with Effect, Action and Resource (minio/pkg policy.ParseConfig).
    return (isinstance(doc, dict) and doc.get("Version") in ("2012-10-17", "2008-10-17")
            and isinstance(doc.get("Statement"), list) and bool(doc["Statement"])
            and all(isinstance(s, dict) and s.get("Effect") in ("Allow", "Deny") and s.get("Action") and s.get("Resource")
                    for s in doc["Statement"]))


class MinioAdminStandin:
    def __init__(self, root_user: str, root_password: str) -> None:
        self.state = MinioState((root_user, root_password))
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> MinioAdminStandin:
        standin = self

        class _H(_Handler):
            owner = standin

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def secrets(self) -> dict[str, str]:
        out = {k: v["secretKey"] for k, v in self.state.users.items() if v["status"] == "enabled"}
        out[self.state.root[0]] = self.state.root[1]
        return out

    # Admin commands (cmd/admin-handlers-users.go, cmd/admin-handlers-policies.go); return (status, body bytes).
    def admin(self, method: str, command: str, q: dict[str, str], body: bytes) -> tuple[int, bytes]:
        st, secret = self.state, self.state.root[1]
        if (method, command) == ("PUT", "add-user"):
            access = q.get("accessKey", "")
            if access == st.root[0]:
                raise Refused("XMinioInvalidIAMCredentials")
            try:
                info = json.loads(madmin_decrypt(secret, body))
            except Exception:  # noqa: BLE001 - any decryption or JSON failure is ErrAdminConfigBadJSON
                raise Refused("XMinioAdminConfigBadJSON") from None
            # auth.IsAccessKeyValid / IsSecretKeyValid: at least 3 and 8 characters.
            if len(access) < 3 or len(str(info.get("secretKey", ""))) < 8 or info.get("status") not in ("enabled", "disabled"):
                raise Refused("XMinioInvalidArgument")
            old = st.users.get(access, {})
            st.users[access] = {"secretKey": info["secretKey"], "status": info["status"], "policyName": old.get("policyName", "")}
            return 200, b""
        if (method, command) == ("DELETE", "remove-user"):
            if st.users.pop(q.get("accessKey", ""), None) is None:
                raise Refused("XMinioAdminNoSuchUser")
            return 200, b""
        if (method, command) == ("GET", "user-info"):
            user = st.users.get(q.get("accessKey", ""))
            if user is None:
                raise Refused("XMinioAdminNoSuchUser")
            return 200, json.dumps({"policyName": user["policyName"], "status": user["status"]}).encode()
        if (method, command) == ("GET", "list-users"):
            listing = {k: {"policyName": v["policyName"], "status": v["status"]} for k, v in st.users.items()}
            return 200, madmin_encrypt(secret, json.dumps(listing).encode())
        if (method, command) == ("PUT", "add-canned-policy"):
            try:
                doc = json.loads(body)
            except ValueError:
                raise Refused("XMinioMalformedPolicy") from None
            if not q.get("name") or not _valid_policy(doc):
                raise Refused("XMinioMalformedPolicy")
            st.policies[q["name"]] = doc
            return 200, b""
        if (method, command) == ("GET", "info-canned-policy"):
            if q.get("name") not in st.policies:
                raise Refused("XMinioAdminNoSuchPolicy")
            return 200, json.dumps(st.policies[q["name"]]).encode()
        if (method, command) == ("PUT", "set-user-or-group-policy"):
            user = st.users.get(q.get("userOrGroup", ""))
            if q.get("isGroup") != "false" or user is None:
                raise Refused("XMinioAdminNoSuchUser")
            names = [n for n in q.get("policyName", "").split(",") if n]
            if any(n not in st.policies for n in names):
                raise Refused("XMinioAdminNoSuchPolicy")
            user["policyName"] = ",".join(names)  # replaces the mapping
            return 200, b""
        raise Refused("XMinioInvalidArgument")


class _Handler(BaseHTTPRequestHandler):
    owner: MinioAdminStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self, method: str) -> None:
        o = self.owner
        split = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        q = dict(parse_qsl(split.query, keep_blank_values=True))
        is_admin = split.path.startswith("/minio/admin/v3/")
        command = split.path.removeprefix("/minio/admin/v3/") if is_admin else split.path
        with o.lock:
            o.state.bodies.append(body)
            try:
                caller = verify_sigv4(method, split.path, split.query, headers, body, o.secrets())
                if is_admin:
                    if caller != o.state.root[0]:
                        raise Refused("AccessDenied")  # only the root user holds admin:* here
                    status, out = o.admin(method, command, q, body)
                    ctype = "application/json"
                else:
                    status, out = self._s3(method, split.path.strip("/"), q, caller)
                    ctype = "application/xml"
            except Refused as exc:
                status, desc = ERRORS[exc.code]
                if is_admin:
                    out = json.dumps({"Code": exc.code, "Message": desc, "Resource": split.path,
                                      "RequestId": "standin", "HostId": "standin"}).encode()
                    ctype = "application/json"
                else:
                    out = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{exc.code}</Code>"
                           f"<Message>{desc}</Message><Resource>{split.path}</Resource></Error>").encode()
                    ctype = "application/xml"
            o.state.calls.append((method, command, status))
        self._reply(status, out, ctype)

    def _s3(self, method: str, bucket: str, q: dict[str, str], caller: str) -> tuple[int, bytes]:
        st = self.owner.state
        if "/" in bucket or not bucket:
            raise Refused("XMinioInvalidArgument")
        if method == "HEAD":
            if bucket not in st.buckets:
                raise Refused("NoSuchBucket")
            return 200, b""
        if method == "PUT":
            if caller != st.root[0]:
                raise Refused("AccessDenied")
            if bucket in st.buckets:
                raise Refused("BucketAlreadyOwnedByYou")
            st.buckets.add(bucket)
            return 200, b""
        if method == "GET" and q.get("list-type") == "2":
            if bucket not in st.buckets:
                raise Refused("NoSuchBucket")
            return 200, (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>{bucket}</Name>"
                         "<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
                         "</ListBucketResult>").encode()
        raise Refused("XMinioInvalidArgument")
