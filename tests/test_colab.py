"""The Colab notebooks: committed without outputs, install the project only
when it is missing, and run top to bottom in a Jupyter kernel (nbclient) with
their small CI settings (COCOPIE_NOTEBOOK_CI=1), showing pictures and the
text each one is about."""

from __future__ import annotations

import json
import pathlib
import sys

import nbformat
import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))

# Text each notebook must print when it runs: the checks it makes and the
# tables it shows (the notebooks assert the numbers themselves).
EXPECTED_TEXT = {
    "01_delegate_quickstart.ipynb": ["relative error vs stock LiteRT", "relative error vs Keras",
                                     "f32_conv2d_pattern", "unknown option 'num_thread'"],
    "02_pattern_pruning.ipynb": ["relative error vs stock LiteRT", "cocopie metadata v2",
                                 "test accuracy of pruned.tflite with the delegate",
                                 "metadata used"],
    "03_super_resolution.ipynb": ["relative error vs stock LiteRT", "bicubic PSNR dB",
                                  "pruned, cocopie", "wrote pictures/sr_chelsea.png"],
    "04_style_and_coloring.ipynb": ["relative error vs stock LiteRT", "style loss",
                                    "grey PSNR dB", "pruned, cocopie",
                                    "wrote pictures/color_flower.png"],
    "05_cocotune.ipynb": ["tuning blocks for", "(* chosen; objective", "time saved by block reuse",
                          "chosen filter["],
    "06_kernel_benchmark.ipynb": ["claimed nodes at 1 thread(s)", "relative error vs stock LiteRT",
                                  "speed-up", "jit=static"],
}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell):
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_there_are_notebooks():
    assert NOTEBOOKS
    assert sorted(EXPECTED_TEXT) == [p.name for p in NOTEBOOKS], \
        "every notebook needs its entry in EXPECTED_TEXT"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, \
            f"code cell {i} has committed outputs: clear them before committing"
        assert not any(line.lstrip().startswith(("!", "%pip")) for line in _source(cell).splitlines()), \
            f"code cell {i}: shell lines (use the install cell's subprocess call)"
    first = _source(code[0])
    assert 'find_spec("cocopie_tf")' in first and "pip" in first, \
        "the first code cell must install the project only when it is not importable"
    assert 'os.environ.get("COCOPIE_NOTEBOOK_CI") == "1"' in _source(code[1])


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            else:
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A "python3" kernelspec that runs this interpreter (found first through
    JUPYTER_PATH), the CI settings, and a scratch working directory."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from jupyter_client import kernelspec

    assert kernelspec.KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    monkeypatch.setenv("COCOPIE_NOTEBOOK_CI", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env):
    import nbclient  # nbclient, nbformat and ipykernel come with the [test] extra

    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(kernel_env)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = _outputs_text(nb)
    assert _images(nb) >= 1, f"{path.name} showed no picture"
    missing = [t for t in EXPECTED_TEXT[path.name] if t not in text]
    assert not missing, f"{path.name} did not print {missing}; its output ends:\n{text[-3000:]}"
