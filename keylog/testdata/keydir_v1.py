#!/usr/bin/env python3
"""Test vectors of key directory v1 (docs/protocol.md, "Key directory v1"),
computed without clinkd's Go code: Python 3's hashlib and the arithmetic
below, written from RFC 8032 (edwards25519), RFC 9381 (ECVRF) and the
spec's text. Writes v1_vectors.json beside this file:

    python3 keylog/testdata/keydir_v1.py

It first reproduces RFC 9381 Appendix B.3, examples 16 to 18, and exits 1
if it cannot. Every vector states its expected outcome.
"""
import hashlib, json, os, sys

# --- edwards25519 (RFC 8032, section 5.1) ---------------------------------
p = 2**255 - 19
q = 2**252 + 27742317777372353535851937790883648493
d = (-121665 * pow(121666, p - 2, p)) % p
I = pow(2, (p - 1) // 4, p)

def inv(x): return pow(x, p - 2, p)

def add(P, Q):
    (x1, y1), (x2, y2) = P, Q
    t = d * x1 * x2 * y1 * y2 % p
    return ((x1 * y2 + x2 * y1) * inv(1 + t) % p, (y1 * y2 + x1 * x2) * inv(1 - t) % p)

def mul(k, P):
    R = (0, 1)
    while k:
        if k & 1: R = add(R, P)
        P, k = add(P, P), k >> 1
    return R

def neg(P): return ((-P[0]) % p, P[1])

def encode(P):
    x, y = P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")

def decode(s):
    """RFC 8032 5.1.3, strict: None for y >= p or x = 0 with the sign set."""
    if len(s) != 32: return None
    n = int.from_bytes(s, "little")
    sign, y = n >> 255, n & (2**255 - 1)
    if y >= p: return None
    u, v = (y * y - 1) % p, (d * y * y + 1) % p
    x = u * pow(v, 3, p) * pow(u * pow(v, 7, p), (p - 5) // 8, p) % p
    if v * x * x % p == (-u) % p: x = x * I % p
    elif v * x * x % p != u: return None
    if x == 0 and sign: return None
    if x & 1 != sign: x = p - x
    return (x, y)

B = decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))
IDENT = (0, 1)

# --- ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381) -----------------------------
SUITE = b"\x03"
def h512(*parts): return hashlib.sha512(b"".join(parts)).digest()

def secret(sk):
    h = bytearray(h512(sk))
    h[0] &= 248; h[31] &= 127; h[31] |= 64
    return int.from_bytes(h[:32], "little"), h512(sk)[32:]

def encode_to_curve(salt, alpha):
    for ctr in range(256):
        H = decode(h512(SUITE, b"\x01", salt, alpha, bytes([ctr]), b"\x00")[:32])
        if H is None: continue
        H = mul(8, H)
        if H != IDENT: return H
    raise ValueError("no point")

def challenge(*pts):
    return int.from_bytes(h512(SUITE, b"\x02", *[encode(P) for P in pts], b"\x00")[:16], "little")

def proof_to_hash(G): return h512(SUITE, b"\x03", encode(mul(8, G)), b"\x00")

def prove(sk, alpha):
    x, prefix = secret(sk)
    Y = mul(x, B)
    H = encode_to_curve(encode(Y), alpha)
    G = mul(x, H)
    k = int.from_bytes(h512(prefix, encode(H)), "little") % q
    c = challenge(Y, H, G, mul(k, B), mul(k, H))
    s = (k + c * x) % q
    return encode(G) + c.to_bytes(16, "little") + s.to_bytes(32, "little"), proof_to_hash(G), encode(Y)

def verify(pk, alpha, pi):
    if len(pk) != 32 or len(pi) != 80: return None
    Y = decode(pk)
    if Y is None or mul(8, Y) == IDENT: return None
    G = decode(pi[:32])
    if G is None: return None
    c = int.from_bytes(pi[32:48], "little")
    s = int.from_bytes(pi[48:], "little")
    if s >= q: return None
    H = encode_to_curve(pk, alpha)
    U = add(mul(s, B), neg(mul(c, Y)))
    V = add(mul(s, H), neg(mul(c, G)))
    if challenge(Y, H, G, U, V) != c: return None
    return proof_to_hash(G)

# RFC 9381 Appendix B.3, examples 16-18, as printed in the RFC.
RFC = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
     "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb", "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
     "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7", "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
     "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f"),
]
for sk, pk, alpha, pi, beta in RFC:
    gpi, gbeta, gpk = prove(bytes.fromhex(sk), bytes.fromhex(alpha))
    if (gpk.hex(), gpi.hex(), gbeta.hex()) != (pk, pi, beta) or verify(bytes.fromhex(pk), bytes.fromhex(alpha), gpi) != gbeta:
        sys.exit("RFC 9381 B.3 example not reproduced: this implementation is wrong")

vrf = []
for sk, pk, alpha, pi, beta in RFC:
    vrf.append({"name": "RFC 9381 B.3", "pk": pk, "alpha": alpha, "pi": pi, "expect": "valid", "beta": beta})
SK0, PK0 = bytes.fromhex(RFC[0][0]), bytes.fromhex(RFC[0][1])
PREFIX = b"clinkme-keydir vrf v1\n"
JIDS = ["alice@example.org", "bob@example.org", "carol@example.net", "dave@example.org", "erin@example.org", "\u00fcnal@b\u00fccher.example"]
index_of = {}
for j in JIDS:
    a = PREFIX + j.encode()
    pi, beta, _ = prove(SK0, a)
    index_of[j] = beta[:32]
    vrf.append({"name": "clinkme input " + j, "pk": PK0.hex(), "alpha": a.hex(), "pi": pi.hex(), "expect": "valid", "beta": beta.hex(), "index": beta[:32].hex(), "jid": j})
a = PREFIX + b"alice@example.org"
pi, beta, _ = prove(SK0, a)
bad = lambda name, pk, alpha, pi: vrf.append({"name": name, "pk": pk.hex(), "alpha": alpha.hex(), "pi": pi.hex(), "expect": "invalid"})
bad("another key", bytes.fromhex(RFC[1][1]), a, pi)
bad("alpha with a trailing byte", PK0, a + b"\x00", pi)
for byte in (0, 31, 32, 47, 48, 79):
    f = bytearray(pi); f[byte] ^= 1
    bad("proof byte %d flipped" % byte, PK0, a, bytes(f))
s = int.from_bytes(pi[48:], "little")
bad("s + q (not reduced)", PK0, a, pi[:48] + (s + q).to_bytes(32, "little"))
bad("Gamma not canonical (the identity as y = p + 1)", PK0, a, (p + 1).to_bytes(32, "little") + pi[32:])
bad("small-order key (the identity)", encode(IDENT), a, pi)
bad("79-byte proof", PK0, a, pi[:79])
bad("81-byte proof", PK0, a, pi + b"\x00")
for v in vrf:
    got = verify(bytes.fromhex(v["pk"]), bytes.fromhex(v["alpha"]), bytes.fromhex(v["pi"]))
    assert (got is not None) == (v["expect"] == "valid"), v["name"]

# --- the map (docs/protocol.md, "The map") --------------------------------
EMPTY = bytes(32)
def sha(b): return hashlib.sha256(b).digest()
def value(ended, fp, entry, version):
    return bytes([2 if ended else 1]) + fp + entry.to_bytes(8, "big") + version.to_bytes(8, "big")
def leaf(i, v): return sha(b"\x02" + i + v)
def node(l, r): return sha(b"\x03" + l + r)
def bit(i, k): return (i[k // 8] >> (7 - k % 8)) & 1

def V(m, keys, depth):
    if not keys: return EMPTY
    if len(keys) == 1: return leaf(keys[0], m[keys[0]])
    return node(V(m, [k for k in keys if bit(k, depth) == 0], depth + 1), V(m, [k for k in keys if bit(k, depth) == 1], depth + 1))

def root(m): return V(m, sorted(m), 0)

def prove_map(m, x):
    """Walk from the root: the siblings, and where the search ends."""
    keys, sib, depth = sorted(m), [], 0
    while True:
        if not keys: return 2, sib, None
        if len(keys) == 1:
            return (1, sib, None) if keys[0] == x else (3, sib, keys[0])
        same = [k for k in keys if bit(k, depth) == bit(x, depth)]
        other = [k for k in keys if bit(k, depth) != bit(x, depth)]
        sib.append(V(m, other, depth + 1))
        keys, depth = same, depth + 1

def encode_proof(m, typ, sib, other):
    bm = bytearray((len(sib) + 7) // 8)
    body = b""
    for k, s in enumerate(sib):
        if s == EMPTY: bm[k // 8] |= 0x80 >> (k % 8)
        else: body += s
    out = bytes([typ]) + len(sib).to_bytes(2, "big") + bytes(bm) + body
    if typ == 3: out += other + m[other]
    return out

def ix(name, shared_with=None, shared=0, last=None):
    x = bytearray(sha(name.encode()))
    if shared_with is not None:
        for k in range(shared):
            msk = 0x80 >> (k % 8)
            x[k // 8] = (x[k // 8] & ~msk) | (shared_with[k // 8] & msk)
    if last is not None: x[31] = (x[31] & 0xfe) | last
    return bytes(x)

fp = lambda n: sha(("key %d" % n).encode())
base = ix("base")
idx = [base, ix("a", base, 1), ix("b", base, 8), ix("c", base, 20), ix("d", base, 20), ix("e"), ix("f"), ix("g", base, 3), ix("h"), ix("i")]
twin0 = ix("twin", None, 0, 0)
twin1 = twin0[:31] + bytes([twin0[31] ^ 1])   # differs only in bit 255
idx += [twin0, twin1]
assert len(set(idx)) == 12
steps, m = [], {}
for n, i in enumerate(idx):
    m[i] = value(False, fp(n), 10 + n, 1)
    steps.append({"op": "set", "index": i.hex(), "value": m[i].hex(), "root": root(m).hex()})
m[idx[3]] = value(True, fp(3), 40, 2)     # an end: a tombstone
steps.append({"op": "set", "index": idx[3].hex(), "value": m[idx[3]].hex(), "root": root(m).hex()})
m[idx[3]] = value(False, fp(99), 41, 3)   # published again
steps.append({"op": "set", "index": idx[3].hex(), "value": m[idx[3]].hex(), "root": root(m).hex()})
m[idx[5]] = value(True, fp(5), 42, 2)
steps.append({"op": "set", "index": idx[5].hex(), "value": m[idx[5]].hex(), "root": root(m).hex()})
final = root(m)

proofs = []
def add_proof(name, x, stated, typ, sib, other, expect, raw=None):
    enc = raw if raw is not None else encode_proof(m, typ, sib, other)
    proofs.append({"name": name, "index": x.hex(), "value": stated.hex() if stated else "", "proof": enc.hex(), "expect": expect})
for name, x in [("found", idx[0]), ("found at depth 256", twin1), ("ended", idx[5]), ("republished", idx[3])]:
    t, s_, o = prove_map(m, x)
    assert t == 1
    add_proof(name, x, m[x], t, s_, o, "valid")
absent_empty = absent_other = None
for k in range(2000):
    x = sha(b"absent %d" % k)
    t, s_, o = prove_map(m, x)
    if t == 2 and absent_empty is None: absent_empty = x
    if t == 3 and absent_other is None: absent_other = x
t, s_, o = prove_map(m, absent_empty); add_proof("none: empty subtree", absent_empty, None, t, s_, o, "valid")
t, s_, o = prove_map(m, absent_other); add_proof("none: another index's leaf", absent_other, None, t, s_, o, "valid")
x = idx[0]; t, s_, o = prove_map(m, x)
flipped = list(s_); flipped[-1] = bytes([flipped[-1][0] ^ 1]) + flipped[-1][1:]
add_proof("a sibling flipped", x, m[x], t, flipped, o, "not current")
add_proof("another value (version + 1)", x, value(False, fp(0), 10, 2), t, s_, o, "not current")
add_proof("a stale value (the reset key)", idx[3], value(False, fp(3), 13, 1), *prove_map(m, idx[3]), "not current")
add_proof("absence claimed for a present index (path cut to empty)", x, None, 2, s_, None, "bad absence")
tt, ss, oo = prove_map(m, absent_other)
add_proof("absence: the other leaf shares too few bits", x, None, 3, s_, oo, "bad absence")
add_proof("absence: the other leaf is the index itself", x, None, 3, s_, x, "bad absence")
enc = encode_proof(m, t, s_, o)
add_proof("trailing byte", x, m[x], t, s_, o, "malformed", enc + b"\x00")
add_proof("truncated", x, m[x], t, s_, o, "malformed", enc[:-1])
add_proof("unknown type 4", x, m[x], t, s_, o, "malformed", b"\x04" + enc[1:])
add_proof("an empty sibling written out", x, m[x], t, s_, o, "malformed",
          bytes([1]) + (len(s_) + 1).to_bytes(2, "big") + bytes((len(s_) + 8) // 8) + b"".join(s_) + EMPTY)
add_proof("bitmap bit past the depth", x, m[x], t, s_, o, "malformed",
          enc[:3] + bytes([enc[3] | (0x80 >> len(s_)) if len(s_) < 8 else enc[3]]) + enc[4:] if len(s_) < 8 else enc[:2] + bytes([0]) + b"\xff")
sib1 = s_ + [EMPTY]
add_proof("deepest sibling empty (not canonical)", x, m[x], 1, sib1, None, "malformed")

# --- v1 records -----------------------------------------------------------
def rec(lines): return ("clinkme-keydir v1\n" + "".join(l + "\n" for l in lines)).encode()
vrfkey = "clink.example.org/keydir+%s+%s"  # filled below
import base64
typ = b"\xffECVRF-EDWARDS25519-SHA512-TAI"
kid = sha(b"clink.example.org/keydir\n" + typ + PK0)[:4].hex()
vrfkey = "clink.example.org/keydir+%s+%s" % (kid, base64.b64encode(typ + PK0).decode())
h = lambda b: b.hex()
ai = index_of["alice@example.org"]
records = [
    {"record": rec(["kind genesis", "vrf " + vrfkey, "migrate 0", "time 1795636800", "map " + h(EMPTY)]).decode(), "expect": "ok"},
    {"record": rec(["kind publish", "index " + h(ai), "fingerprint " + h(fp(1)), "version 1", "time 1795636800", "map " + h(final)]).decode(), "expect": "ok"},
    {"record": rec(["kind reset", "index " + h(ai), "fingerprint " + h(fp(1)), "version 2", "time 1795636801", "map " + h(final)]).decode(), "expect": "ok"},
    {"record": rec(["kind delete", "index " + h(ai), "fingerprint " + h(fp(1)), "version 4", "time 1795636802", "map " + h(final)]).decode(), "expect": "ok"},
    {"record": rec(["kind migrate", "index " + h(ai), "label 8820a796657171cb9c9b14aac1cda110ce8f328b96a46a6a68ec2aa240b3f7bd", "version 3", "time 1795636803", "map " + h(final)]).decode(), "expect": "ok"},
    {"record": rec(["kind tick", "time 1795640400", "map " + h(final)]).decode(), "expect": "ok"},
    {"record": rec(["kind publish", "index " + h(ai).upper(), "fingerprint " + h(fp(1)), "version 1", "time 1", "map " + h(final)]).decode(), "expect": "malformed: upper-case hex"},
    {"record": rec(["kind publish", "index " + h(ai), "fingerprint " + h(fp(1)), "version 01", "time 1", "map " + h(final)]).decode(), "expect": "malformed: leading zero"},
    {"record": rec(["kind publish", "index " + h(ai), "fingerprint " + h(fp(1)), "version 0", "time 1", "map " + h(final)]).decode(), "expect": "malformed: version 0"},
    {"record": rec(["kind reset", "index " + h(ai), "fingerprint " + h(fp(1)), "version 1", "time 1", "map " + h(final)]).decode(), "expect": "malformed: a reset at version 1"},
    {"record": rec(["kind publish", "fingerprint " + h(fp(1)), "index " + h(ai), "version 1", "time 1", "map " + h(final)]).decode(), "expect": "malformed: lines reordered"},
    {"record": rec(["kind publish", "index " + h(ai), "fingerprint " + h(fp(1)), "version 1", "time 1"]).decode(), "expect": "malformed: no map line"},
    {"record": rec(["kind publish", "index " + h(ai), "fingerprint " + h(fp(1)), "version 1", "time 1", "map " + h(final), "extra 1"]).decode(), "expect": "malformed: trailing line"},
    {"record": rec(["kind rotate", "time 1", "map " + h(final)]).decode(), "expect": "malformed: unknown kind"},
    {"record": rec(["kind tick", "time 1", "map " + h(final)]).decode().replace("\n", "\r\n", 1), "expect": "malformed: CR"},
    {"record": rec(["kind tick", "time 1", "map " + h(final)]).decode().replace("v1", "v2", 1), "expect": "unsupported version"},
    {"record": "clinkme-keydir v0\nlabel 8820a796657171cb9c9b14aac1cda110ce8f328b96a46a6a68ec2aa240b3f7bd\nkind publish\nfingerprint 5b71a88df7275813d065ebf04eae0914b5643f9e0407937eb432af1b68d9c020\ntime 1795636800\n", "expect": "unsupported version"},
]
for r in records:
    if r["expect"] == "ok":
        r["leaf_hash"] = sha(b"\x00" + r["record"].encode()).hex()

out = {
    "comment": ["Key directory v1 test vectors (docs/protocol.md), written by keydir_v1.py from RFC 8032, RFC 9381 and the spec, not by clinkd.",
                "Regenerate: python3 keylog/testdata/keydir_v1.py. Every vector has an expected outcome; a reader that meets one it does not know must fail."],
    "vrf_key": vrfkey,
    "vrf": vrf,
    "map_steps": steps,
    "map_root": final.hex(),
    "map_proofs": proofs,
    "records": records,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "v1_vectors.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("wrote", path)
