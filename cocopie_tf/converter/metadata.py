"""The ``cocopie`` metadata record stored in a .tflite file (format v1).

A small little-endian binary layout, specified in docs/metadata.md; this module
is its Python writer and reader. Every read is bounds-checked: malformed or
hostile bytes raise :class:`MetadataError` (a ValueError), never anything worse.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

NAME = "cocopie"
MAGIC = b"CCPM"
VERSION = 1
_HEADER = struct.Struct("<4sHHII")  # magic, version, flags, record count, payload crc32
_RECORD = struct.Struct("<IIIIIIHHHHI")  # size, subgraph, op, filter tensor, out_c, in_c,
#                                          k_h, k_w, num_patterns, group, filter crc32
MAX_PATTERNS = 255  # kernel codes are one byte: 0 = pruned, p + 1 = pattern p


class MetadataError(ValueError):
    """The metadata bytes are not a valid cocopie v1 record."""


def filter_crc(filter_bytes: bytes) -> int:
    return zlib.crc32(filter_bytes) & 0xFFFFFFFF


def encode(records: list[dict]) -> bytes:
    """records: dicts with subgraph, op_index, filter_tensor, out_c, in_c, k_h,
    k_w, group, filter_crc32, patterns (list of int masks), codes (uint8
    [out_c * in_c]), reorder (list of out_c ints), tuning (bytes)."""
    body = bytearray()
    for r in records:
        patterns = [int(p) for p in r["patterns"]]
        codes = np.asarray(r["codes"], np.uint8).ravel()
        reorder = np.asarray(r["reorder"], "<u4").ravel()
        tuning = bytes(r.get("tuning", b""))
        if len(patterns) > MAX_PATTERNS:
            raise MetadataError(f"{len(patterns)} patterns: at most {MAX_PATTERNS} fit the format")
        if codes.size != r["out_c"] * r["in_c"] or reorder.size != r["out_c"]:
            raise MetadataError("codes / reorder sizes do not match the filter")
        payload = (struct.pack(f"<{len(patterns)}I", *patterns) + codes.tobytes() +
                   reorder.tobytes() + struct.pack("<I", len(tuning)) + tuning)
        size = _RECORD.size + len(payload)
        body += _RECORD.pack(size, r["subgraph"], r["op_index"], r["filter_tensor"], r["out_c"],
                             r["in_c"], r["k_h"], r["k_w"], len(patterns), r.get("group", 1),
                             r["filter_crc32"]) + payload
    return _HEADER.pack(MAGIC, VERSION, 0, len(records), zlib.crc32(body) & 0xFFFFFFFF) + bytes(body)


def decode(data: bytes) -> dict:
    """Parses and validates a payload; raises MetadataError on any problem."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MetadataError(f"truncated: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, version, _flags, count, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MetadataError(f"bad magic {magic!r}")
    if version != VERSION:
        raise MetadataError(f"unsupported version {version} (this reader knows {VERSION})")
    if zlib.crc32(data[_HEADER.size:]) & 0xFFFFFFFF != crc:
        raise MetadataError("checksum mismatch: the record is corrupt")
    records, pos = [], _HEADER.size
    for i in range(count):
        if pos + _RECORD.size > len(data):
            raise MetadataError(f"record {i}: truncated header")
        (size, subgraph, op, tensor, out_c, in_c, k_h, k_w, n_pat, group,
         fcrc) = _RECORD.unpack_from(data, pos)
        if k_h * k_w == 0 or k_h * k_w > 32 or out_c == 0 or in_c == 0 or group == 0:
            raise MetadataError(f"record {i}: bad geometry {out_c}x{k_h}x{k_w}x{in_c}")
        n_codes = out_c * in_c
        need = _RECORD.size + 4 * n_pat + n_codes + 4 * out_c + 4
        if size < need or pos + size > len(data):
            raise MetadataError(f"record {i}: size {size} inconsistent with its contents")
        p = pos + _RECORD.size
        patterns = list(struct.unpack_from(f"<{n_pat}I", data, p))
        p += 4 * n_pat
        codes = np.frombuffer(data, np.uint8, n_codes, p)
        p += n_codes
        reorder = np.frombuffer(data, "<u4", out_c, p).astype(np.int64)
        p += 4 * out_c
        (n_tune,) = struct.unpack_from("<I", data, p)
        p += 4
        if p + n_tune != pos + size:
            raise MetadataError(f"record {i}: tuning block overruns the record")
        if codes.size and int(codes.max()) > n_pat:
            raise MetadataError(f"record {i}: kernel code {int(codes.max())} > {n_pat} patterns")
        if any(m == 0 or m >> (k_h * k_w) for m in patterns):
            raise MetadataError(f"record {i}: a pattern mask is empty or outside the kernel")
        if sorted(reorder.tolist()) != list(range(out_c)):
            raise MetadataError(f"record {i}: reorder is not a permutation of the filters")
        records.append(dict(subgraph=subgraph, op_index=op, filter_tensor=tensor, out_c=out_c,
                            in_c=in_c, k_h=k_h, k_w=k_w, group=group, filter_crc32=fcrc,
                            patterns=patterns, codes=codes.reshape(out_c, in_c).copy(),
                            reorder=reorder, tuning=data[p:p + n_tune]))
        pos += size
    if pos != len(data):
        raise MetadataError(f"{len(data) - pos} trailing bytes after the last record")
    return {"version": version, "records": records}
