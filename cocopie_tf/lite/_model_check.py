"""Cheap sanity checks on .tflite bytes, so bad files fail with a clear error."""

from __future__ import annotations

_IDENTIFIER = b"TFL3"


def verify_model_bytes(content) -> None:
    """Raises ValueError unless ``content`` looks like a TFLite flatbuffer."""
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise TypeError(f"model_content must be bytes, got {type(content).__name__}")
    data = bytes(content)
    if len(data) < 8:
        raise ValueError(f"not a TFLite model: only {len(data)} bytes")
    if data[4:8] != _IDENTIFIER:
        raise ValueError(
            f"not a TFLite model: file identifier is {data[4:8]!r}, expected {_IDENTIFIER!r}"
        )
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root + 4 > len(data):
        raise ValueError(
            f"truncated or corrupt TFLite model: root table offset {root} is outside "
            f"the {len(data)}-byte buffer"
        )


_CONV_2D, _DEPTHWISE_CONV_2D = 3, 4  # schema BuiltinOperator


def check_operators(content: bytes) -> None:
    """Raises ValueError for nodes stock LiteRT cannot prepare safely: a
    CONV_2D or DEPTHWISE_CONV_2D without its bias input (stock refuses the
    first and crashes on the second).  Unreadable tables are left to the
    runtime's own verifier."""
    from ai_edge_litert import schema_py_generated as schema

    limit = len(content) // 4  # a vector of N offsets needs 4N bytes: more is damage
    try:
        model = schema.Model.GetRootAs(content, 0)
        if max(model.OperatorCodesLength(), model.SubgraphsLength()) > limit:
            return
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
        found = []
        for g in range(model.SubgraphsLength()):
            sub = model.Subgraphs(g)
            if sub.OperatorsLength() > limit:
                return
            for n in range(sub.OperatorsLength()):
                op = sub.Operators(n)
                idx = op.OpcodeIndex()
                if idx < len(codes) and codes[idx] in (_CONV_2D, _DEPTHWISE_CONV_2D):
                    if op.InputsLength() < 3 or op.Inputs(2) < 0:
                        found.append((g, n, codes[idx]))
    except Exception:  # noqa: BLE001 - damaged tables: the runtime verifies them
        return
    if found:
        g, n, code = found[0]
        name = "CONV_2D" if code == _CONV_2D else "DEPTHWISE_CONV_2D"
        raise ValueError(f"invalid TFLite model: subgraph {g} node {n} ({name}) has no bias "
                         "input, which TFLite's kernels require"
                         + (f" ({len(found) - 1} more such nodes)" if len(found) > 1 else ""))
