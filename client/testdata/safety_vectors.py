# Makes safety_vectors.json: safety codes (docs/trust.md, "Safety codes")
# computed with Python's hashlib, independently of the Go code, which
# client.TestSafetyCodeVectors checks against them.
import hashlib, json, struct

def party(jid, fp):
    j = jid.encode()
    return struct.pack('>I', len(j)) + j + fp

def code(ja, fa, jb, fb):
    a, b = party(ja, fa), party(jb, fb)
    if b < a:
        a, b = b, a
    label = b"clinkme safety code v1"
    h = hashlib.sha512(struct.pack('>I', len(label)) + label + a + b).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + a + b).digest()
    return ' '.join('%05d' % (int.from_bytes(h[5*i:5*i+5], 'big') % 100000) for i in range(6))

cases = [
    ("alice@example.org", hashlib.sha256(b"alice key").digest(), "bob@example.org", hashlib.sha256(b"bob key").digest()),
    ("alice@example.org", hashlib.sha256(b"alice key").digest(), "bob@example.org", hashlib.sha256(b"operator key").digest()),
    ("jürgen@münchen.example", bytes(32), "a@b", bytes([255]) * 32),
    ("bob@example.org", hashlib.sha256(b"bob key").digest(), "alice@example.org", hashlib.sha256(b"alice key").digest()),
]
vs = [{"jid_a": ja, "fingerprint_a": fa.hex(), "jid_b": jb, "fingerprint_b": fb.hex(), "code": code(ja, fa, jb, fb)} for ja, fa, jb, fb in cases]
with open('safety_vectors.json', 'w') as f:
    json.dump({"comment": "docs/trust.md, Safety codes: computed by safety_vectors.py (Python's hashlib), independently of the Go code", "vectors": vs}, f, indent=1, ensure_ascii=False)
    f.write("\n")
