"""Bad input gets a clear error, and nodes the delegate cannot take stay with
TFLite and still compute the right result."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import lite


@pytest.fixture(scope="module")
def small_model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, out)
    return model, convert(model)


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unknown option 'fast_mode'") as err:
        lite.load_delegate(fast_mode=1)
    # One line, the delegate's own message (not LiteRT's "Failed to load ...").
    assert str(err.value).startswith("cocopie delegate: unknown option 'fast_mode'")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_num_threads_is_refused(value):
    with pytest.raises(ValueError, match="num_threads"):
        lite.load_delegate(num_threads=value)


def test_bad_num_threads_type_is_refused_in_python():
    with pytest.raises(ValueError, match="num_threads"):
        lite.Interpreter(model_content=b"x" * 16, num_threads="abc")


@pytest.mark.parametrize("value", ["-1", "10001", "fast", "", "1.5"])
def test_bad_spin_us_is_refused(value):
    with pytest.raises(ValueError, match="option 'spin_us': expected an integer from 0 to 10000"):
        lite.load_delegate(spin_us=value)


@pytest.mark.parametrize("value", ["2", "maybe", "", "pinned"])
def test_bad_pin_threads_is_refused(value):
    with pytest.raises(ValueError, match="option 'pin_threads': expected true/false or 1/0"):
        lite.load_delegate(pin_threads=value)


def test_spin_us_and_pinning_do_not_change_results(small_model):
    # The thread pool's wait strategy (spin, then sleep) and where its workers
    # run change timing only.
    _, tflite = small_model
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
    ref = reference_outputs(tflite, [x])[0]
    for spin, pin in (("0", True), ("100", False), ("10000", True), ("100", True)):
        interp = lite.Interpreter(model_content=tflite, claim="all", num_threads=2, spin_us=spin,
                                  pin_threads=pin)
        out = run_tflite(interp, [x])[0]
        assert len(interp.delegate_report()) == 1
        assert rel_error(out, ref) <= 1e-5, (spin, pin)


def test_bad_backend_and_kernel_are_refused():
    with pytest.raises(ValueError, match="backend"):
        lite.load_delegate(backend="tpu")
    # backend=gpu itself is accepted (tests/test_gpu_backend.py); its options
    # are not valid for the CPU backend.
    with pytest.raises(ValueError, match="'gpu_device' applies to backend=gpu only"):
        lite.load_delegate(backend="cpu", gpu_device=0)
    with pytest.raises(ValueError, match="kernel"):
        lite.load_delegate(kernel="avx9000")


def test_options_through_raw_litert_load_delegate():
    # The same checks hold for users who call LiteRT directly.
    from ai_edge_litert.interpreter import load_delegate

    with pytest.raises(ValueError, match="unknown option 'thread'"):
        load_delegate(str(lite.delegate_path()), {"thread": "2"})
    with pytest.raises(ValueError, match="num_threads"):
        load_delegate(str(lite.delegate_path()), {"num_threads": "abc"})


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        lite.Interpreter(model_path=tmp_path / "nope.tflite")


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.9, 0.999])
def test_truncated_model(small_model, tmp_path, fraction):
    _, tfl = small_model
    path = tmp_path / "cut.tflite"
    path.write_bytes(tfl[: int(len(tfl) * fraction)])
    with pytest.raises(ValueError):
        lite.Interpreter(model_path=path)


def test_not_a_model():
    with pytest.raises(ValueError, match="not a TFLite model"):
        lite.Interpreter(model_content=b"PK\x03\x04 this is a zip file, not a model")


def test_model_path_and_content_together(small_model, tmp_path):
    _, tfl = small_model
    (tmp_path / "m.tflite").write_bytes(tfl)
    with pytest.raises(ValueError, match="either"):
        lite.Interpreter(model_path=tmp_path / "m.tflite", model_content=tfl)


def test_non_constant_filter_stays_with_tflite():
    """A convolution whose filter is a graph input cannot be claimed."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 9, 7, 3]), tf.TensorSpec([3, 3, 3, 5])])
    def conv(x, w):
        return tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME"))

    tfl = tf.lite.TFLiteConverter.from_concrete_functions(
        [conv.get_concrete_function()], conv
    ).convert()
    r = np.random.default_rng(0)
    x = r.standard_normal((1, 9, 7, 3)).astype(np.float32)
    w = r.standard_normal((3, 3, 3, 5)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, claim="all")
    # Input order follows the signature; match by shape to be safe.
    order = [x if list(d["shape"]) == [1, 9, 7, 3] else w for d in interp.get_input_details()]
    out = run_tflite(interp, order)[0]
    assert interp.delegate_report() == []
    expected = np.maximum(tf.nn.conv2d(x, w, 1, "SAME").numpy(), 0)
    assert rel_error(out, expected) <= 1e-5


def test_quantized_weights_stay_with_tflite():
    """Dynamic-range quantisation makes the filter int8: not claimed, still right."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 10, 16), batch_size=1)
    x = keras.layers.Conv2D(32, 3, padding="same")(inp)  # 4608 weights: gets quantised
    x = keras.layers.Conv2D(4, 1)(x)  # 64 weights: stays float, claimed
    model = keras.Model(inp, x)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    tfl = conv.convert()
    xs = np.random.default_rng(2).standard_normal((1, 10, 10, 16)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, claim="all")
    out = run_tflite(interp, [xs])[0]
    ref = reference_outputs(tfl, [xs])[0]
    assert rel_error(out, ref) <= 1e-5
    claimed = interp.delegate_report()
    assert len(claimed) == 1 and claimed[0]["dense_macs"] == 10 * 10 * 32 * 4


def test_delegate_path_is_installed_library():
    path = lite.delegate_path()
    assert path.is_file() and path.name.startswith("libcocopie_delegate")


def _edited(tfl: bytes, edit) -> bytes:
    """The .tflite file `tfl` after edit(model) changed its unpacked form (a
    hand-made version of a damaged file the fuzzer found)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(tfl), 0)
    edit(m)
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _run_child(script: str, data: bytes, tmp_path, stderr=False, args=()):
    """Runs `script` on the file `data` (and `args`) in a child process (a
    crash there fails the test instead of ending the run); returns its stdout
    (and its stderr, with stderr=True)."""
    import subprocess
    import sys

    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    p = subprocess.run([sys.executable, "-c", script, str(path), *args], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return (p.stdout, p.stderr) if stderr else p.stdout


def _without_bias(tfl: bytes, how: str) -> bytes:
    def edit(m):
        op = m.subgraphs[0].operators[0]
        op.inputs = list(op.inputs[:2]) + ([-1] if how == "optional" else [])

    return _edited(tfl, edit)


@pytest.mark.parametrize("how", ["dropped", "optional"])
@pytest.mark.parametrize("layer", ["conv", "depthwise"])
def test_conv_without_bias_is_refused_as_stock_does(how, layer):
    """Issue 12 (minor): stock LiteRT refuses CONV_2D without a bias (and
    crashes on DEPTHWISE_CONV_2D without one); the delegate ran them."""
    import keras
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4), batch_size=1)
    op = keras.layers.Conv2D(8, 3) if layer == "conv" else keras.layers.DepthwiseConv2D(3)
    tfl = _without_bias(convert(keras.Model(inp, op(inp))), how)
    with pytest.raises(ValueError, match=r"node 0 \((DEPTHWISE_)?CONV_2D\) has no bias input"):
        lite.Interpreter(model_content=tfl, claim="all")
    if layer == "conv":  # through raw LiteRT the delegate leaves the node to stock, which refuses
        it = Interpreter(model_content=tfl, experimental_delegates=[
            load_delegate(str(lite.delegate_path()), {"claim": "all"})])
        with pytest.raises(RuntimeError, match="(has_bias|optional)"):
            it.allocate_tensors()


def test_report_for_a_delegate_loaded_into_a_plain_interpreter(small_model):
    """Issue 13 item 6: the claim report for any interpreter, with names."""
    from ai_edge_litert.interpreter import Interpreter

    _, tfl = small_model
    d = lite.load_delegate(claim="all")
    it = Interpreter(model_content=tfl, experimental_delegates=[d])
    it.allocate_tensors()
    report = lite.delegate_report(d, it)
    assert len(report) == 1 and report[0]["op"] == "CONV_2D"
    assert report[0]["op_name"] == "CONV_2D"
    out_name = it.get_tensor_details()[it.get_output_details()[0]["index"]]["name"]
    assert report[0]["output_name"] == out_name
    assert "op_name" not in lite.delegate_report(d)[0]  # names need the interpreter


def test_report_refuses_what_is_not_a_live_cocopie_delegate():
    import ctypes

    class Foreign:  # another runtime's delegate: its pointer is not ours
        buf = ctypes.create_string_buffer(256)

        def _get_native_delegate_pointer(self):
            return ctypes.addressof(self.buf)

    with pytest.raises(ValueError, match="not a cocopie delegate"):
        lite.delegate_report(Foreign())
    with pytest.raises(TypeError, match="load_delegate"):
        lite.delegate_report(object())


HUGE_CHILD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from cocopie_tf import lite
data = open(sys.argv[1], "rb").read()
try:
    it = lite.Interpreter(model_content=data, claim="all", jit=sys.argv[2])
    shape = [int(v) for v in it.get_input_details()[0]["shape"]]
    shape[2] = 1_862_270_986
    it.resize_tensor_input(it.get_input_details()[0]["index"], shape)
    it.allocate_tensors()
    print("ALLOCATED")
except RuntimeError as e:
    print("REFUSED", e)
"""


@pytest.mark.parametrize("which,message", [("dense", "GiB"), ("pattern", "out of memory")])
def test_tensor_too_large_for_memory_is_an_error_not_a_crash(small_model, tmp_path, which,
                                                             message):
    """Found by tests/fuzz_delegate.py: an input width mutated to 1.8e9 made
    the pattern kernels' Prepare throw std::bad_alloc through the runtime
    (a Python MemoryError), and LiteRT's own arena fail without a message.
    (The file's declared shapes now have to agree with each other for the
    delegate to claim anything, so the width comes by resizing the input.)"""
    from test_nonfinite import _chain_model

    tfl = small_model[1] if which == "dense" else _chain_model()[0]
    # Without a code generator the small model's 3-channel conv stays dense.
    out = _run_child(HUGE_CHILD, tfl, tmp_path, args=["static" if which == "dense" else "auto"])
    assert "REFUSED" in out and message in out, out


# What the child scripts below share: the damaged file, and one run of an
# interpreter on input x.
_CHILD_RUN = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from cocopie_tf import lite
bad = open(sys.argv[1], "rb").read()
def run(it, x):
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
"""

CONTRADICTED_CHILD = _CHILD_RUN + r"""
stock = Interpreter(model_content=bad)
x = np.random.default_rng(0).uniform(
    -1, 1, stock.get_input_details()[0]["shape"]).astype(np.float32)
ref = run(stock, x)
for claim in ("auto", "all"):
    it = lite.Interpreter(model_content=bad, claim=claim, num_threads=2, verbose=True)
    out = run(it, x)
    print(json.dumps(dict(claim=claim, shape=list(out.shape), ref_shape=list(ref.shape),
                          claimed=len(it.delegate_report()),
                          err=float(np.abs(out - ref).max()))))
"""


def _residual_pool_model():
    """1x1 conv, 3x3 conv, ADD of both, max-pool: the fuzzer's `residual`."""
    import keras

    from cocopie_tf import convert
    from cocopie_tf.patterns import prune_kernel

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 32), batch_size=1)
    a = keras.layers.Conv2D(32, 1, name="p")(inp)
    b = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="q")(a)
    model = keras.Model(inp, keras.layers.MaxPooling2D()(keras.layers.Add()([a, b])))
    p, q = model.get_layer("p"), model.get_layer("q")
    w = p.get_weights()
    p.set_weights([w[0] * (np.random.default_rng(1).random(w[0].shape) < 0.5), w[1]])
    w = q.get_weights()
    q.set_weights([prune_kernel(w[0], connectivity=2.0), w[1]])
    return convert(model)


def _conv_add_conv_model():
    import keras

    from cocopie_tf import convert

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 16), batch_size=1)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inp)
    out = keras.layers.Conv2D(16, 3, padding="same", name="after")(keras.layers.Add()([inp, h]))
    return convert(keras.Model(inp, out))


def _stride_8(m):
    op = m.subgraphs[0].operators[0]  # the first conv
    op.builtinOptions.strideH = op.builtinOptions.strideW = 8


def _add_output_wide(m):
    sub = m.subgraphs[0]
    add = [op for op in sub.operators if op.builtinOptions is not None and
           type(op.builtinOptions).__name__ == "AddOptionsT"][0]
    sub.tensors[add.outputs[0]].shape = [1, 8, 1_900_671_690, 32]


@pytest.mark.parametrize("build,edit,message", [
    # Stock recomputes the conv's output (1x1) and broadcasts the ADD after
    # it; the delegate had claimed the ADD from the declared 8x8 and refused
    # at Prepare.
    (_conv_add_conv_model, _stride_8,
     "node 0 declares output shape [1,8,8,16] where its input and parameters give [1,1,1,16]"),
    # The ADD's output declared 1.9e9 wide: the delegate had claimed the two
    # convs, and XNNPACK's partition of the ADD and pool beside them failed
    # to reshape ("XNNPack delegate failed to reshape runtime") where its
    # whole-graph one runs (fuzz run F, case 5078).
    (_residual_pool_model, _add_output_wide,
     "node 2 declares output shape [1,8,1900671690,32] where its input and parameters give "
     "[1,8,8,32]"),
])
def test_a_shape_the_file_contradicts_is_left_to_stock(tmp_path, build, edit, message):
    """Found by tests/fuzz_delegate.py: files whose declared shapes contradict
    what their ops compute (a damaged file) run on stock, which recomputes
    the shapes.  The delegate now claims nothing from such a file, so it runs
    as it does on stock; the verbose log says why."""
    import json

    tfl = build()
    stdout, stderr = _run_child(CONTRADICTED_CHILD, _edited(tfl, edit), tmp_path, stderr=True)
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["claim"] for r in rows] == ["auto", "all"], stdout + stderr[-3000:]
    for r in rows:
        assert r["shape"] == r["ref_shape"] and r["err"] == 0.0 and r["claimed"] == 0, r
    assert message in stderr and "a damaged file is left to TFLite" in stderr, stderr[-3000:]
    # The unedited file: claim=all takes the convs (and the ADD).
    it = lite.Interpreter(model_content=tfl, claim="all")
    it.allocate_tensors()
    assert len(it.delegate_report()) >= 2



ZERO_WIDTH_CHILD = _CHILD_RUN + r"""
x = np.random.default_rng(0).uniform(-1, 1, (1, 14, 14, 16)).astype(np.float32)
try:
    ref = run(Interpreter(model_content=bad), x)
except ValueError:
    ref = None
for claim in ("auto", "all"):
    try:
        it = lite.Interpreter(model_content=bad, claim=claim, num_threads=2)
        out = run(it, x)
    except ValueError as e:
        print(claim, "refused", str(e).splitlines()[0] if ref is None else "UNEXPECTED")
        continue
    err = float(np.abs(out - ref).max() / np.abs(ref).max()) if ref is not None else -1.0
    print(claim, len(it.delegate_report()), err)
"""


@pytest.mark.parametrize("shape", [(1, 14, 0, 32), (1, 0, 14, 32), (1, 14, -3, 32)])
def test_a_declared_output_without_positions_is_not_a_crash(shape, tmp_path):
    """Fuzzer case (2026-12-05): a pruned 1x1 conv whose file declares an
    output of width 0 divided by zero in the claim cost model (SIGFPE) before
    any shape was checked.  Stock LiteRT recomputes the shape and runs; so
    must the delegate, with stock's outputs (it now leaves a node whose
    declared shape the graph contradicts to TFLite)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((14, 14, 16), batch_size=1)
    model = keras.Model(inp, keras.layers.Conv2D(16, 1, name="q")(
        keras.layers.Conv2D(32, 1, name="p")(inp)))
    for name in "pq":  # 1x1 convs at 3.6x connectivity: the pattern engine's
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0] = w[0] * (np.random.default_rng(2).random(w[0].shape) < 10 / 36)
        layer.set_weights(w)
    def edit(m):
        sub = m.subgraphs[0]
        sub.tensors[sub.operators[0].outputs[0]].shape = list(shape)

    out = _run_child(ZERO_WIDTH_CHILD, _edited(convert(model), edit), tmp_path)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert set(lines) == {"auto", "all"}, out
    if min(shape) < 0:  # stock refuses the file at load: so does the delegate
        assert all(v.startswith("refused") and "UNEXPECTED" not in v for v in lines.values()), lines
        return
    # The declared output contradicts the conv's input and parameters: both
    # convs (the second reads it) stay with TFLite, which recomputes it.
    for claim in ("auto", "all"):
        claimed, err = lines[claim].split()
        assert int(claimed) == 0 and 0 <= float(err) <= 1e-5, lines


def test_a_dilation_beyond_the_kernels_span_is_left_to_stock():
    """Fuzzer case (2026-12-05): a dilation factor overwritten to 1.9e9 made
    the delegate's Prepare ask for padded planes beyond any allocation (an
    error naming std::vector's max_size) where stock runs the file: such a
    conv is now left to TFLite."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf.patterns import prune_kernel

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 8), batch_size=1)
    conv = keras.layers.Conv2D(16, 3, dilation_rate=2, padding="same", name="d")
    model = keras.Model(inp, keras.layers.Conv2D(8, 3, padding="same", name="e")(conv(inp)))
    for name in "de":
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0] = prune_kernel(w[0], connectivity=2.0)
        layer.set_weights(w)
    def edit(m):
        dilated = [op for op in m.subgraphs[0].operators if op.builtinOptions is not None
                   and getattr(op.builtinOptions, "dilationWFactor", 1) == 2]
        assert len(dilated) == 1
        dilated[0].builtinOptions.dilationWFactor = 1_936_020_015

    bad = _edited(convert(model), edit)
    x = np.random.default_rng(0).standard_normal((1, 12, 12, 8)).astype(np.float32)
    ref = run_tflite(Interpreter(model_content=bad), [x])[0]
    for claim in ("auto", "all"):
        it = lite.Interpreter(model_content=bad, claim=claim)
        out = run_tflite(it, [x])[0]
        assert rel_error(out, ref) <= 1e-5
        claimed = {e["node_index"] for e in it.delegate_report()}
        assert 0 not in claimed  # node 0 is the dilated conv
        if claim == "all":
            assert claimed == {1}


def test_out_of_memory_while_allocating_names_the_sizes(small_model, monkeypatch):
    """LiteRT's allocator throws std::bad_alloc (a MemoryError in Python)
    for a damaged shape larger than the process may map (the fuzz harness
    met it under its 6 GB limit): the error names the cause and the size of
    the model's tensors.  (The arena's own failure, a RuntimeError without a
    message, is named the same way.)"""
    from ai_edge_litert import interpreter as litert

    _, tfl = small_model
    it = lite.Interpreter(model_content=tfl, claim="all")

    def bad_alloc(self):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(litert.Interpreter, "allocate_tensors", bad_alloc)
    with pytest.raises(MemoryError, match=r"ran out of memory allocating the model's tensors "
                                          r"\(std::bad_alloc\); their sizes add up to [0-9.]+ GiB"):
        it.allocate_tensors()
