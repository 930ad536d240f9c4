"""The example notebook (examples/quickstart.ipynb): well formed and using the API it teaches (fast), and run
end to end on the demo, its code cells in order in one namespace, as a kernel would (integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def _code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_notebook_is_clean_and_uses_the_api_it_teaches():
    nb = json.loads(NOTEBOOK.read_text())
    code = _code_cells()
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "commit it without outputs"
    for source in code:
        compile(source, "cell", "exec")
    text = "\n".join(code)
    for call in ("leukviz.train(", "leukviz.runs(", "leukviz.compare(", "leukviz.predict(", "leukviz.load(",
                 ".report(", ".history", ".figures"):
        assert call in text, call


RUNNER = """
import json, sys
cells = [''.join(c['source']) for c in json.load(open(sys.argv[1]))['cells'] if c['cell_type'] == 'code']
namespace = {'__name__': '__main__'}
for i, source in enumerate(cells):
    exec(compile(source, f'cell {i}', 'exec'), namespace)
r = namespace['result']; p = namespace['predictions']
print(json.dumps({'answer': r.answer, 'rows': len(p), 'runs': [x.id for x in namespace['runs']],
                  'states': [x.state for x in namespace['runs']]}))
"""


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_notebook_runs_end_to_end_on_the_demo(tmp_path):
    """In a child process (a kernel of its own) in an empty folder, with the session's LEUKVIZ_HOME and this
    checkout's leukviz (tests/test_packaging.py runs the API from an installed wheel)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(NOTEBOOK)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=880, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["states"] == ["finished", "finished"] and out["rows"] == 8
    assert "best on validation weighted F1" in out["answer"]
    assert (tmp_path / "quickstart-report.html").stat().st_size > 10_000
