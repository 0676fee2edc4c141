"""The README's Python examples run as written (in a scratch folder, on the test cache)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2 and "uk.register" in blocks[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    from unlearnkit.methods import REGISTRY
    scope = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), scope)
    finally:
        REGISTRY.pop("retain-and-ascend", None)
    assert (tmp_path / "runs" / "y" / "results.json").is_file()
    assert [r["method"] for r in scope["results"]["rows"]] == ["none", "finetune"]
    none, mine = scope["mine"]["rows"]
    assert not mine["diverged"] and mine["hparams"]["weight"] == 0.5
    assert mine["klom_p95"]["forget"] < none["klom_p95"]["forget"] - 0.5  # nearer the oracles than doing nothing


def test_every_public_name_is_what_it_says_whatever_was_imported_first():
    """A package attribute of a submodule's name becomes that submodule once it is imported: no public
    name may be one (checked in a fresh interpreter, after importing every submodule)."""
    import subprocess
    import sys
    code = ("import importlib, pkgutil, unlearnkit as uk\n"
            "for m in pkgutil.iter_modules(uk.__path__):\n"
            "    if m.name != '__main__': importlib.import_module('unlearnkit.' + m.name)\n"
            "bad = [n for n in uk.__all__[1:] if type(getattr(uk, n)).__name__ == 'module']\n"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
