#!/usr/bin/env python3
"""Check Candystore's audit proofs with nothing of Candystore's code.

A second implementation, from the documented formats (docs/AUDIT.md) and the
standards they follow: RFC 9162 (Merkle tree, inclusion and consistency
proofs), C2SP signed-note and tlog-checkpoint (Ed25519). Uses hashlib and
PyNaCl (or, when PyNaCl is missing, the `cryptography` package).

  verify_proof.py inclusion BUNDLE PUBLIC_KEY      a `candystore prove` bundle
  verify_proof.py consistency PROOF PUBLIC_KEY     GET /audit/proof/consistency

PUBLIC_KEY is the verifier key text (name+id+base64) or a file holding it.
Exit 0 when the proof holds, 3 when it does not (with the reason on stderr).
"""

import base64
import hashlib
import json
import os
import struct
import sys


class NotProved(Exception):
    pass


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        import nacl.exceptions
        import nacl.signing

        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
            return True
        except nacl.exceptions.BadSignatureError:
            return False
    except ImportError:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
            return True
        except InvalidSignature:
            return False


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def read_key(arg: str):
    text = open(arg).read() if os.path.isfile(arg) else arg
    name, key_id, key = text.strip().split("+", 2)
    raw = base64.b64decode(key)
    if raw[0] != 1 or len(raw) != 33:
        raise NotProved("not an Ed25519 verifier key")
    public = raw[1:]
    if sha256(name.encode(), b"\n", b"\x01", public)[:4] != bytes.fromhex(key_id):
        raise NotProved("the key id does not match the key")
    return name, bytes.fromhex(key_id), public


def open_checkpoint(note: str, key):
    """The (origin, size, root) a signed note says, when the key signed it."""
    name, key_id, public = key
    at = note.find("\n\n")
    if at < 0:
        raise NotProved("the checkpoint is not a signed note")
    body, signatures = note[: at + 1], note[at + 2 :]
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise NotProved("a malformed signature line")
        signer, sig = line[2:].rsplit(" ", 1)
        raw = base64.b64decode(sig)
        if signer == name and raw[:4] == key_id and len(raw) == 68:
            if not ed25519_verify(public, raw[4:], body.encode()):
                raise NotProved("the checkpoint's signature does not verify")
            lines = body.split("\n")
            origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2])
            if len(root) != 32:
                raise NotProved("the checkpoint's root is not a SHA-256 hash")
            return origin, size, root
    raise NotProved("the checkpoint carries no signature by this key")


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01", left, right)


def verify_inclusion(leaf_hash: bytes, index: int, size: int, path, root: bytes):
    """RFC 9162, section 2.1.3.2."""
    if index >= size:
        raise NotProved("the leaf index is outside the tree")
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            raise NotProved("the audit path is too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise NotProved("the audit path is too short")
    if r != root:
        raise NotProved("the audit path does not lead to the signed root")


def verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes, proof):
    """RFC 9162, section 2.1.4.2."""
    if m > n:
        raise NotProved("the newer tree is smaller")
    if m == n:
        if proof or old_root != new_root:
            raise NotProved("two different trees of one size")
        return
    if m == 0:
        if proof:
            raise NotProved("a proof from the empty tree must be empty")
        return
    if not proof:
        raise NotProved("the proof is empty")
    path = list(proof)
    if m & (m - 1) == 0:
        path.insert(0, old_root)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise NotProved("the proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise NotProved("the proof is too short")
    if fr != old_root or sr != new_root:
        raise NotProved("the newer tree does not extend the older one")


def field(value) -> bytes:
    if value is None:
        return b"\xff" * 8
    return struct.pack(">Q", len(value)) + value


def commitment(e) -> bytes:
    """The salted commitment to an event's columns (docs/AUDIT.md, "Leaves")."""
    text = lambda k: None if e[k] is None else e[k].encode()
    parts = [
        text("id"),
        text("source"),
        struct.pack(">q", e["timestamp"]),
        text("event_type"),
        text("target"),
        text("routing_key"),
        text("exchange"),
        struct.pack(">q", e["received_at"]),
        text("payload"),
        text("envelope"),
        text("payload_member"),
        text("properties"),
        text("session_id"),
        text("correlation_id"),
        bytes([e["generation"] & 0xFF]),
        bytes([1 if e["sanitized"] else 0]),
        None if e["original_body"] is None else base64.b64decode(e["original_body"]),
    ]
    salt = base64.b64decode(e["salt"])
    return sha256(b"candystore/event/v1\n", salt, *[field(p) for p in parts])


def inclusion(bundle_path: str, key_arg: str) -> str:
    key = read_key(key_arg)
    bundle = json.load(open(bundle_path))
    if bundle.get("format") != "candystore-proof/v1":
        raise NotProved("not a candystore-proof/v1 bundle")
    e, p = bundle["event"], bundle["inclusion"]
    leaf = base64.b64decode(p["leaf"])
    if leaf[0] != 1 or len(leaf) not in (41, 77):
        raise NotProved("the leaf is not an event's")
    if struct.unpack(">q", leaf[1:9])[0] != e["timestamp"]:
        raise NotProved("the leaf's time is not the event's")
    if leaf[9:41] != commitment(e):
        raise NotProved("the event's columns do not make the leaf's commitment")
    origin, size, root = open_checkpoint(p["checkpoint"], key)
    if size != p["tree_size"]:
        raise NotProved("the checkpoint is of another tree size")
    path = [base64.b64decode(h) for h in p["audit_path"]]
    verify_inclusion(sha256(b"\x00", leaf), p["leaf_index"], size, path, root)
    return f"event {e['id']!r} is leaf {p['leaf_index']} of the tree of {size} leaves signed for {origin}"


def consistency(proof_path: str, key_arg: str) -> str:
    key = read_key(key_arg)
    c = json.load(open(proof_path))
    new_origin, n, new_root = open_checkpoint(c["to_checkpoint"], key)
    if c["from"] == 0:
        m, old_root = 0, sha256()
    else:
        old_origin, m, old_root = open_checkpoint(c["from_checkpoint"], key)
        if old_origin != new_origin:
            raise NotProved("the checkpoints are of two logs")
    if (m, n) != (c["from"], c["to"]):
        raise NotProved("the checkpoints are not of the sizes the proof says")
    verify_consistency(m, n, old_root, new_root, [base64.b64decode(h) for h in c["proof"]])
    return f"the tree of {n} leaves extends the tree of {m} ({new_origin})"


def main(argv) -> int:
    if len(argv) != 4 or argv[1] not in ("inclusion", "consistency"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        check = inclusion if argv[1] == "inclusion" else consistency
        print("proved: " + check(argv[2], argv[3]))
        return 0
    except (NotProved, KeyError, ValueError, IndexError) as e:
        print(f"NOT PROVED: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
