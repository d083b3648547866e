"""What a TLS peer's certificate says: subject and expiry, read from its DER bytes.

A few lines of DER (X.690) walking instead of the cryptography package (about 6 MB of a
process whose budget is 40 MB) or an ``openssl`` subprocess per probe. Only the fields the
probe reports are read: the subject, as RFC 4514 text (the same text as cryptography's
``Name.rfc4514_string()``), and notAfter. Anything malformed gives ``(None, None)``.
"""

from __future__ import annotations

import calendar

_SEQUENCE, _SET, _OID, _UTCTIME, _GENTIME = 0x30, 0x31, 0x06, 0x17, 0x18
_VERSION = 0xA0
# RFC 4514 section 3 (and cryptography's) short names; other types print as a dotted OID.
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x1A: "ascii",  # VisibleString
    0x14: "latin-1",  # TeletexString (T61), as everyone reads it
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


class _DerError(ValueError):
    pass


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at `pos`."""
    if pos + 2 > len(data):
        raise _DerError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise _DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise _DerError("truncated")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, content start, content end, element start) of each element in [start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = _tlv(data, pos)
        out.append((tag, cstart, cend, pos))
        pos = cend
    return out


def _oid(raw: bytes) -> str:
    if not raw:
        raise _DerError("empty OID")
    first = raw[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


def _escape(value: str) -> str:
    """RFC 4514 section 2.4 escaping of an attribute value."""
    if not value:
        return ""
    out = value.replace("\\", "\\\\")
    for special in ('"', "+", ",", ";", "<", ">"):
        out = out.replace(special, "\\" + special)
    out = out.replace("\0", "\\00")
    if out[0] in ("#", " "):
        out = "\\" + out
    if out[-1] == " ":
        out = out[:-1] + "\\ "
    return out


def _attribute(data: bytes, start: int, end: int) -> str:
    (otag, ostart, oend, _), (vtag, vstart, vend, vpos) = _children(data, start, end)[:2]
    if otag != _OID:
        raise _DerError("attribute without a type")
    oid = _oid(data[ostart:oend])
    codec = _STRING_CODECS.get(vtag)
    if codec is None:
        text = "#" + data[vpos:vend].hex()
    else:
        text = _escape(data[vstart:vend].decode(codec))
    return f"{_SHORT_NAMES.get(oid, oid)}={text}"


def _name(data: bytes, start: int, end: int) -> str:
    rdns = []
    for tag, rstart, rend, _ in _children(data, start, end):
        if tag != _SET:
            raise _DerError("RDN is not a SET")
        rdns.append(
            "+".join(_attribute(data, s, e) for _, s, e, _ in _children(data, rstart, rend))
        )
    return ",".join(reversed(rdns))


def _time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii").rstrip("Z")
    if tag == _UTCTIME:
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    elif tag != _GENTIME:
        raise _DerError("not a time")
    fields = (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14] or "0")
    return float(calendar.timegm(tuple(int(f) for f in fields)))


def describe_certificate(der: bytes) -> tuple[str | None, float | None]:
    """(subject as RFC 4514 text, notAfter as epoch seconds) of a DER certificate."""
    try:
        tag, start, _ = _tlv(der, 0)
        if tag != _SEQUENCE:
            return None, None
        tag, tstart, tend = _tlv(der, start)
        fields = _children(der, tstart, tend)
        if fields and fields[0][0] == _VERSION:
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject
        _, vstart, vend, _ = fields[3]
        _, sstart, send, _ = fields[4]
        validity = _children(der, vstart, vend)
        vtag, nstart, nend, _ = validity[1]
        return _name(der, sstart, send), _time(vtag, der[nstart:nend])
    except (_DerError, IndexError, ValueError):
        return None, None
