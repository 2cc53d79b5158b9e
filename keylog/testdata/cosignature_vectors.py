#!/usr/bin/env python3
"""Writes cosignature_vectors.json: witness policy cases for keylog's
WitnessPolicy (the server and the auditor) and the device's own check
(client/witness.go), with the outcome each must reach.

The two cosigned checkpoints below are real: litewitness of
filippo.io/torchwood v0.6.1 (two instances, w1 and w2, run by the lab with
their keys in ssh-agents) cosigned them on 2026-12-07, answering C2SP
tlog-witness add-checkpoint requests of a test log (clink.example.org/keydir).
The other cases are changes made to them here, byte by byte, with Python's
standard library only. Run from this directory: python3 cosignature_vectors.py
"""
import base64, json

LOG_VKEY = 'clink.example.org/keydir+64f016b5+AW18YgTFSNHPu0dpLLinneuHS3Z5Ty4qy2uy3qcuHUhc'
WITNESSES = ['w1.witness.example+57b5d8f6+BHjfZqfjqYviOImvagsQjPGeg9o4T7yLeVQX2OYOCGBl', 'w2.witness.example+101882d4+BKPXcpmYdn2iJgOpEFCIoV3iTA5B+e3N+O8cAbqtKqUs']
CP3 = 'clink.example.org/keydir\n3\nJuepCLEeDgtaydy1MBABTLXvSvOXbV6jWV1IpMD7cYs=\n\n— clink.example.org/keydir ZPAWtWcwDNo5YRkFaziPjv6ufdwppyN3JPPbVfwW76S4ZveXh9DJj/2bkm4d9tyDRNIkY4JL5E9psUJtT4bsF3Xwzwk=\n— w1.witness.example V7XY9gAAAABrFgSSYy7+mcXQL35hfpKMykWwnrsP27e5mKEnoeqBQiQI62Z0osK+xL2k62APSDkhw0cbX34wXA/P3p1sZoNmVHf4Dw==\n— w2.witness.example EBiC1AAAAABrFgSSFXJGZn7GkPq23s1yJdzqy2IpDiebUDqdXOXVk25CwP4NaDWTmF8fzD5mKZV6NpKtyVjRBbCPvCxdtui6XErPCQ==\n'
CP5 = 'clink.example.org/keydir\n5\nZTzt1rNsb3qLz18I0uDH5T6coDcROCnWumpdG0hbViU=\n\n— clink.example.org/keydir ZPAWtRbrcJ/HvNTJw4ibaQd9b9ns+z8GzE3aRc9YpgBHm/FbdqrKfhRTAT++3E9y0u8KWgmm6VC5cv6GuLQf6Y5oSws=\n— w1.witness.example V7XY9gAAAABrFgSStyE0OINn4VFKmHUhT3vOHqbhGi2LkusqjWZBEpgn/hOxtGLN3zKuRVC1tfH2lTNbusoE+9kJUEh194hA8zATBQ==\n— w2.witness.example EBiC1AAAAABrFgSSoHEst0U0QqFNyjbcyVlwawgFu/NGu/rLl4QWRZWw7rVPlyu7/rjlUqDwNpivRpIy28QC3DHO/2iKoygvuVwoAg==\n'

def split(cp):
    body, sigs = cp.split("\n\n", 1)
    lines = sigs.splitlines(keepends=True)
    return body + "\n\n", lines[0], lines[1:]  # body, the log's line, cosignature lines

def flip(line, at):
    """Flips one bit of the signature bytes of a line, at byte index at."""
    name, b64 = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 1
    return name + " " + base64.b64encode(bytes(raw)).decode() + "\n"

b3, log3, (w1_3, w2_3) = split(CP3)
b5, log5, (w1_5, w2_5) = split(CP5)
cases = []
def case(name, cp, threshold, expect, valid=None):
    c = {"name": name, "checkpoint": cp, "threshold": threshold, "expect": expect}
    if valid is not None:
        c["valid"] = valid
    cases.append(c)

case("size 3, both witnesses (litewitness)", CP3, 2, "ok", 2)
case("size 5, both witnesses (litewitness)", CP5, 2, "ok", 2)
case("size 5, no cosignature required", b5 + log5, 0, "ok", 0)
case("size 5 without cosignatures", b5 + log5, 1, "not cosigned", 0)
case("w2's Ed25519 signature with a bit flipped", b5 + log5 + w1_5 + flip(w2_5, 20), 2, "not cosigned", 1)
case("w2's Ed25519 signature with a bit flipped, one required", b5 + log5 + w1_5 + flip(w2_5, 20), 1, "ok", 1)
case("w1's timestamp changed", b5 + log5 + flip(w1_5, 11) + w2_5, 2, "not cosigned", 1)
case("w1's key hash changed", b5 + log5 + flip(w1_5, 0) + w2_5, 2, "not cosigned", 1)
case("w1's line twice, no w2", b5 + log5 + w1_5 + w1_5, 2, "not cosigned", 1)
case("w1's line under w2's name", b5 + log5 + w1_5 + w1_5.replace("w1.witness.example", "w2.witness.example"), 2, "not cosigned", 1)
case("the cosignatures of size 3 on the checkpoint of size 5", b5 + log5 + w1_3 + w2_3, 1, "not cosigned", 0)
case("the log's signature with a bit flipped", b5 + flip(log5, 30) + w1_5 + w2_5, 1, "bad checkpoint")
case("cosignatures only, no log signature", b5 + w1_5 + w2_5, 1, "bad checkpoint")

keys = [
    {"name": "w1", "key": WITNESSES[0], "expect": "ok"},
    {"name": "w2 (its base64 holds a plus sign)", "key": WITNESSES[1], "expect": "ok"},
    {"name": "the log's own key (type 0x01)", "key": LOG_VKEY, "expect": "bad key"},
    {"name": "key hash of another name", "key": WITNESSES[0].replace("w1.witness.example", "w3.witness.example"), "expect": "bad key"},
    {"name": "upper-case key hash", "key": WITNESSES[0].split("+")[0] + "+" + WITNESSES[0].split("+")[1].upper() + "+" + WITNESSES[0].split("+", 2)[2], "expect": "bad key"},
    {"name": "a key byte short", "key": WITNESSES[0][:-4] + "AAA=", "expect": "bad key"},
    {"name": "no name", "key": WITNESSES[0][len("w1.witness.example"):], "expect": "bad key"},
]

with open("cosignature_vectors.json", "w") as f:
    json.dump({"comment": "written by cosignature_vectors.py; the checkpoints of sizes 3 and 5 were cosigned by litewitness (filippo.io/torchwood v0.6.1)",
               "log_vkey": LOG_VKEY, "witnesses": WITNESSES, "cases": cases, "keys": keys}, f, indent=1, ensure_ascii=False)
    f.write("\n")
