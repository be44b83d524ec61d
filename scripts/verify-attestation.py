#!/usr/bin/env python3
"""Verifies a Tollgate attestation with securesystemslib alone, no Tollgate code.

The file is what `tollgate report --attestation` writes: a DSSE envelope (one JSON object on
one line) whose payload is an in-toto Statement v1 with the SLSA Verification Summary
Attestation v1 predicate, signed with the controller's Ed25519 report key. This is what a
customer's supply-chain tooling does: check the DSSE signature with the pinned key, then read
the statement.

usage: verify-attestation.py ENVELOPE_FILE PUBLIC_KEY_HEX

PUBLIC_KEY_HEX is the line `tollgate report public-key` prints. The key id is computed here
from the key (the first 16 hex digits of its sha256, as Tollgate names it), never taken from
the envelope. On success prints one JSON object (verificationResult, verifier, subjects) and
exits 0; exits 1 when the envelope does not verify or the statement is not a VSA; exits 3 when
securesystemslib is not installed (`pip install 'securesystemslib[crypto]'`).
"""

import binascii
import hashlib
import json
import sys

try:
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import FormatError, VerificationError
    from securesystemslib.signer import SSlibKey
except ImportError as error:
    print(
        f"securesystemslib is not installed ({error}); "
        "install it with: pip install 'securesystemslib[crypto]'",
        file=sys.stderr,
    )
    sys.exit(3)

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/verification_summary/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def invalid(message):
    print(f"invalid: {message}")
    return 1


def check_statement(statement):
    """Returns what is wrong with a VSA statement, or None."""
    if statement.get("_type") != STATEMENT_TYPE:
        return f"_type is {statement.get('_type')!r}"
    if statement.get("predicateType") != PREDICATE_TYPE:
        return f"predicateType is {statement.get('predicateType')!r}"
    subjects = statement.get("subject") or []
    if not subjects:
        return "no subject"
    for subject in subjects:
        digest = subject.get("digest", {}).get("sha256", "")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return f"subject {subject.get('name')!r} has no lowercase hex sha256 digest"
    predicate = statement.get("predicate") or {}
    for field in ("verifier", "timeVerified", "resourceUri", "policy", "verifiedLevels"):
        if not predicate.get(field):
            return f"predicate.{field} is missing"
    if not predicate["verifier"].get("id"):
        return "predicate.verifier.id is missing"
    if not predicate["policy"].get("uri"):
        return "predicate.policy.uri is missing"
    if predicate.get("verificationResult") not in ("PASSED", "FAILED"):
        return f"verificationResult is {predicate.get('verificationResult')!r}"
    return None


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, key_hex = argv[1], argv[2].strip()
    keyid = hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()[:16]
    key = SSlibKey(keyid, "ed25519", "ed25519", {"public": key_hex})
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    try:
        envelope = Envelope.from_dict(data)
        envelope.verify([key], 1)
    except (VerificationError, FormatError, ValueError, KeyError, binascii.Error) as error:
        return invalid(f"DSSE signature: {error}")
    if envelope.payload_type != PAYLOAD_TYPE:
        return invalid(f"payloadType is {envelope.payload_type!r}")
    try:
        statement = json.loads(envelope.payload)
    except ValueError as error:
        return invalid(f"payload is not JSON: {error}")
    problem = check_statement(statement)
    if problem:
        return invalid(problem)
    predicate = statement["predicate"]
    print(
        json.dumps(
            {
                "valid": True,
                "keyid": keyid,
                "verifier": predicate["verifier"]["id"],
                "verificationResult": predicate["verificationResult"],
                "verifiedLevels": predicate["verifiedLevels"],
                "subjects": [
                    {"name": s.get("name"), "sha256": s["digest"]["sha256"]}
                    for s in statement["subject"]
                ],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
