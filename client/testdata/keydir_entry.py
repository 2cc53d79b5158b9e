#!/usr/bin/env python3
"""Makes keydir_entry.json, the test vector of docs/protocol.md, "Checking
an entry": how a device rebuilds the leaf of a lookup entry from the
entry's own fields and checks its inclusion proof.

Computed with Python's hashlib and openssl, sharing no code with clinkd:
run it from this directory (python3 keydir_entry.py > keydir_entry.json)
to check the committed file. The keys are the public test keys of
client/envelope/testdata/keys.
"""

import base64
import hashlib
import json
import subprocess
import sys

ORIGIN = "clink.example.org/keydir"


def spki_der(name):
    return subprocess.run(
        ["openssl", "pkey", "-in", f"../envelope/testdata/keys/{name}.pem", "-pubout", "-outform", "DER"],
        check=True, capture_output=True).stdout


def label(jid):
    return hashlib.sha256(b"clinkme-keydir label v0\n" + jid.encode()).hexdigest()


def record(jid, kind, fp, t):
    return f"clinkme-keydir v0\nlabel {label(jid)}\nkind {kind}\nfingerprint {fp}\ntime {t}\n"


def leaf_hash(rec):
    return hashlib.sha256(b"\x00" + rec.encode()).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(leaves):
    """RFC 6962 section 2.1 Merkle tree hash of a list of leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    """RFC 6962 section 2.1.1 audit path of leaf m."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def b64(b):
    return base64.b64encode(b).decode()


keys = {name: spki_der(name) for name in ("alice", "bob", "carol", "dave")}
fps = {name: hashlib.sha256(der).hexdigest() for name, der in keys.items()}

# The log: five entries, alice's publish at index 2.
log = [
    ("bob@example.org", "publish", "bob", 1795636700),
    ("carol@example.net", "publish", "carol", 1795636710),
    ("alice@example.org", "publish", "alice", 1795636800),
    ("carol@example.net", "reset", "carol", 1795636900),
    ("dave@example.org", "publish", "dave", 1795637000),
]
records = [record(j, k, fps[n], t) for j, k, n, t in log]
hashes = [leaf_hash(r) for r in records]
root = mth(hashes)


def entry(jid, index, t, fp, key, proof):
    hs = "".join(f"<hash>{b64(h)}</hash>" for h in proof)
    return (f"<entry xmlns='urn:clinkme:keydir:0' jid='{jid}' status='found' index='{index}' time='{t}' "
            f"fingerprint='{fp}'><key>{b64(key)}</key><proof>{hs}</proof></entry>")


good = path(2, hashes)
flipped = [good[0], bytes([good[1][0] ^ 1]) + good[1][1:], good[2]]
alice_rec = records[2]
cases = [
    {"name": "alice's binding", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 2, 1795636800, fps["alice"], keys["alice"], good),
     "record": alice_rec, "leaf_hash": leaf_hash(alice_rec).hex(), "expect": "ok"},
    {"name": "time one second later", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 2, 1795636801, fps["alice"], keys["alice"], good),
     "expect": "bad proof"},
    {"name": "another index", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 1, 1795636800, fps["alice"], keys["alice"], good),
     "expect": "bad proof"},
    {"name": "index outside the tree", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 5, 1795636800, fps["alice"], keys["alice"], good),
     "expect": "bad proof"},
    {"name": "a proof hash changed", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 2, 1795636800, fps["alice"], keys["alice"], flipped),
     "expect": "bad proof"},
    {"name": "another key, with its own fingerprint", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 2, 1795636800, fps["bob"], keys["bob"], good),
     "expect": "bad proof"},
    {"name": "fingerprint attribute not the key's", "asked": "alice@example.org",
     "entry": entry("alice@example.org", 2, 1795636800, fps["bob"], keys["alice"], good),
     "expect": "bad answer"},
    {"name": "entry for another JID than asked", "asked": "bob@example.org",
     "entry": entry("alice@example.org", 2, 1795636800, fps["alice"], keys["alice"], good),
     "expect": "bad answer"},
    {"name": "the JID asked in another spelling", "asked": "alice@example.org",
     "entry": entry("Alice@example.org", 2, 1795636800, fps["alice"], keys["alice"], good),
     "expect": "bad answer"},
    {"name": "a reset's leaf offered as a binding (rebuilt as publish, it does not match)", "asked": "carol@example.net",
     "entry": entry("carol@example.net", 3, 1795636900, fps["carol"], keys["carol"], path(3, hashes)),
     "expect": "bad proof"},
    {"name": "carol's binding", "asked": "carol@example.net",
     "entry": entry("carol@example.net", 1, 1795636710, fps["carol"], keys["carol"], path(1, hashes)),
     "record": records[1], "leaf_hash": leaf_hash(records[1]).hex(), "expect": "ok"},
]

out = {
    "comment": [
        "Test vector of docs/protocol.md, 'Checking an entry'. Made by keydir_entry.py with Python's hashlib",
        "and openssl (for the keys' SubjectPublicKeyInfo DER), not with clinkd. Each case is a lookup entry",
        "as received, the JID the device asked for, and the expected outcome of checking it against the",
        "checkpoint: ok, bad proof (client.ErrBadProof) or bad answer (client.ErrBadAnswer). Read by",
        "client.TestKeydirEntryVectors.",
    ],
    "checkpoint": {"origin": ORIGIN, "size": len(hashes), "root": b64(root)},
    "log": [{"index": i, "jid": j, "kind": k, "fingerprint": fps[n], "time": t,
             "record": records[i], "leaf_hash": hashes[i].hex()} for i, (j, k, n, t) in enumerate(log)],
    "cases": cases,
}
json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
sys.stdout.write("\n")
