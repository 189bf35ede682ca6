"""The ``cocopie`` metadata record stored in a .tflite file (formats v1, v2).

A small little-endian binary layout, specified in docs/metadata.md; this module
is its Python writer (v2) and reader (v1 and v2). Every read is bounds-checked:
malformed or hostile bytes raise :class:`MetadataError` (a ValueError), never
anything worse.

v2 adds, per record, the operator kind (CONV_2D or DEPTHWISE_CONV_2D) and two
ways to leave out what the reader can derive from the weights: the kernel codes
(each kernel's pattern is the library mask equal to its non-zero positions)
and the filter order (the reader's own). A converted file then carries a few
dozen bytes per pruned op instead of a byte per kernel, which for a pruned
1x1 conv was a quarter of its weights' size.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

NAME = "cocopie"
MAGIC = b"CCPM"
VERSION = 2  # what encode() writes; decode() reads 1 and 2
_HEADER = struct.Struct("<4sHHII")  # magic, version, flags, record count, payload crc32
_RECORD_V1 = struct.Struct("<IIIIIIHHHHI")  # size, subgraph, op, filter tensor, out_c, in_c,
#                                             k_h, k_w, num_patterns, group, filter crc32
_RECORD_V2 = struct.Struct("<IIIIIIHHHHIHH")  # v1 + op kind, record flags
MAX_PATTERNS = 255  # kernel codes are one byte: 0 = pruned, p + 1 = pattern p

OP_CONV_2D, OP_DEPTHWISE_CONV_2D = 0, 1
OP_KINDS = {OP_CONV_2D: "CONV_2D", OP_DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D"}
CODES_FROM_WEIGHTS = 1  # record flag: no codes stored
OWN_ORDER = 2           # record flag: no filter order stored


class MetadataError(ValueError):
    """The metadata bytes are not a valid cocopie record."""


def filter_crc(filter_bytes: bytes) -> int:
    return zlib.crc32(filter_bytes) & 0xFFFFFFFF


def kernel_masks(filt: np.ndarray, op_kind: int = OP_CONV_2D) -> np.ndarray:
    """Non-zero positions of every kernel as a bit mask (bit ky * k_w + kx),
    [out_c, in_c]. ``filt`` as stored in the file: OHWI for CONV_2D,
    [1, k_h, k_w, channels] for DEPTHWISE_CONV_2D (one kernel per channel:
    out_c = channels, in_c = 1)."""
    nz = np.asarray(filt) != 0
    if op_kind == OP_DEPTHWISE_CONV_2D:
        nz = nz[0].transpose(2, 0, 1)[:, None]  # [C, 1, k_h, k_w]
    else:
        nz = nz.transpose(0, 3, 1, 2)  # [O, I, k_h, k_w]
    taps = nz.shape[2] * nz.shape[3]
    return (nz.reshape(nz.shape[0], nz.shape[1], taps).astype(np.int64) << np.arange(taps)).sum(-1)


def codes_from_weights(masks: np.ndarray, patterns) -> np.ndarray | None:
    """Each kernel's code derived as a v2 reader derives it (0 = all zero,
    p + 1 = the pattern equal to its mask), or None if some non-zero kernel's
    mask is no pattern of the library."""
    code_of = {int(m): i + 1 for i, m in enumerate(patterns)}
    flat = masks.ravel()
    values, inverse = np.unique(flat, return_inverse=True)
    if any(int(v) != 0 and int(v) not in code_of for v in values):
        return None
    lut = np.array([code_of.get(int(v), 0) for v in values], np.uint8)
    return lut[inverse].reshape(masks.shape)


def encode(records: list[dict]) -> bytes:
    """records: dicts with subgraph, op_index, filter_tensor, out_c, in_c, k_h,
    k_w, group, filter_crc32, patterns (list of int masks), and optionally
    op_kind (OP_CONV_2D), codes (uint8 [out_c * in_c]; left out when
    codes_from_weights is true), reorder (list of out_c ints; None: the
    reader's own order), tuning (bytes)."""
    body = bytearray()
    for r in records:
        patterns = [int(p) for p in r["patterns"]]
        op_kind = int(r.get("op_kind", OP_CONV_2D))
        derived = bool(r.get("codes_from_weights", False))
        reorder = r.get("reorder")
        tuning = bytes(r.get("tuning", b""))
        if len(patterns) > MAX_PATTERNS:
            raise MetadataError(f"{len(patterns)} patterns: at most {MAX_PATTERNS} fit the format")
        if op_kind not in OP_KINDS:
            raise MetadataError(f"unknown op kind {op_kind}")
        flags = (CODES_FROM_WEIGHTS if derived else 0) | (OWN_ORDER if reorder is None else 0)
        payload = struct.pack(f"<{len(patterns)}I", *patterns)
        if not derived:
            codes = np.asarray(r["codes"], np.uint8).ravel()
            if codes.size != r["out_c"] * r["in_c"]:
                raise MetadataError("codes size does not match the filter")
            payload += codes.tobytes()
        if reorder is not None:
            reorder = np.asarray(reorder, "<u4").ravel()
            if reorder.size != r["out_c"]:
                raise MetadataError("reorder size does not match the filter")
            payload += reorder.tobytes()
        payload += struct.pack("<I", len(tuning)) + tuning
        size = _RECORD_V2.size + len(payload)
        body += _RECORD_V2.pack(size, r["subgraph"], r["op_index"], r["filter_tensor"], r["out_c"],
                                r["in_c"], r["k_h"], r["k_w"], len(patterns), r.get("group", 1),
                                r["filter_crc32"], op_kind, flags) + payload
    return _HEADER.pack(MAGIC, VERSION, 0, len(records), zlib.crc32(body) & 0xFFFFFFFF) + bytes(body)


def decode(data: bytes) -> dict:
    """Parses and validates a payload; raises MetadataError on any problem.
    Records whose codes were left out have ``codes`` None (derive them with
    :func:`codes_from_weights`); ``reorder`` None means the reader's own."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MetadataError(f"truncated: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, version, _flags, count, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MetadataError(f"bad magic {magic!r}")
    if version not in (1, 2):
        raise MetadataError(f"unsupported version {version} (this reader knows 1 and 2)")
    if zlib.crc32(data[_HEADER.size:]) & 0xFFFFFFFF != crc:
        raise MetadataError("checksum mismatch: the record is corrupt")
    head = _RECORD_V1 if version == 1 else _RECORD_V2
    records, pos = [], _HEADER.size
    for i in range(count):
        if pos + head.size > len(data):
            raise MetadataError(f"record {i}: truncated header")
        fields = head.unpack_from(data, pos)
        (size, subgraph, op, tensor, out_c, in_c, k_h, k_w, n_pat, group, fcrc) = fields[:11]
        op_kind, flags = fields[11:] if version == 2 else (OP_CONV_2D, 0)
        if k_h * k_w == 0 or k_h * k_w > 32 or out_c == 0 or in_c == 0 or group == 0:
            raise MetadataError(f"record {i}: bad geometry {out_c}x{k_h}x{k_w}x{in_c}")
        if op_kind not in OP_KINDS:
            raise MetadataError(f"record {i}: unknown op kind {op_kind}")
        if flags & ~(CODES_FROM_WEIGHTS | OWN_ORDER):
            raise MetadataError(f"record {i}: unknown flags {flags:#x}")
        if op_kind == OP_DEPTHWISE_CONV_2D and in_c != 1:
            raise MetadataError(f"record {i}: a depthwise record has in_c 1, not {in_c}")
        n_codes = 0 if flags & CODES_FROM_WEIGHTS else out_c * in_c
        n_order = 0 if flags & OWN_ORDER else out_c
        need = head.size + 4 * n_pat + n_codes + 4 * n_order + 4
        if size < need or pos + size > len(data):
            raise MetadataError(f"record {i}: size {size} inconsistent with its contents")
        p = pos + head.size
        patterns = list(struct.unpack_from(f"<{n_pat}I", data, p))
        p += 4 * n_pat
        codes = reorder = None
        if n_codes:
            codes = np.frombuffer(data, np.uint8, n_codes, p)
            p += n_codes
            if int(codes.max()) > n_pat:
                raise MetadataError(f"record {i}: kernel code {int(codes.max())} > {n_pat} patterns")
            codes = codes.reshape(out_c, in_c).copy()
        if n_order:
            reorder = np.frombuffer(data, "<u4", out_c, p).astype(np.int64)
            p += 4 * out_c
            if sorted(reorder.tolist()) != list(range(out_c)):
                raise MetadataError(f"record {i}: reorder is not a permutation of the filters")
        (n_tune,) = struct.unpack_from("<I", data, p)
        p += 4
        if p + n_tune != pos + size:
            raise MetadataError(f"record {i}: tuning block overruns the record")
        if any(m == 0 or m >> (k_h * k_w) for m in patterns):
            raise MetadataError(f"record {i}: a pattern mask is empty or outside the kernel")
        records.append(dict(subgraph=subgraph, op_index=op, filter_tensor=tensor, out_c=out_c,
                            in_c=in_c, k_h=k_h, k_w=k_w, group=group, filter_crc32=fcrc,
                            op_kind=op_kind, codes_from_weights=codes is None,
                            patterns=patterns, codes=codes, reorder=reorder,
                            tuning=data[p:p + n_tune]))
        pos += size
    if pos != len(data):
        raise MetadataError(f"{len(data) - pos} trailing bytes after the last record")
    return {"version": version, "records": records}
