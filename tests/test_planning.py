"""Planning is cheap: reading the workflow (Snakefile, rules, config validation, the cost
model) and `make plan` import neither torch nor transformers. Every dry run, every plan and,
on SLURM, every submitted job re-reads the workflow."""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

HEAVY = ("torch", "transformers")

# snakemake run in-process; at exit, the top-level packages it had imported
SNAKEMAKE_LISTING = """
import atexit, json, runpy, sys
listing = sys.argv[1]
atexit.register(lambda: open(listing, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
sys.argv = ["snakemake", *sys.argv[2:]]
runpy.run_module("snakemake", run_name="__main__")
"""


@pytest.mark.parametrize("configs", [[], ["config/paper.yaml"], ["config/rehearsal.yaml"]])
def test_reading_the_workflow_imports_neither_torch_nor_transformers(configs, tmp_path):
    listing = tmp_path / "modules.json"
    args = ["-n", "--configfile", *configs, "--config", f"results={tmp_path}/r"] if configs else \
        ["-n", "--config", f"results={tmp_path}/r"]
    proc = subprocess.run([sys.executable, "-c", SNAKEMAKE_LISTING, str(listing), *args], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    loaded = set(json.loads(listing.read_text()))
    assert "knnlm_limits" in loaded and "snakemake" in loaded  # the listing saw the workflow being read
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_plan_and_the_cost_model_import_neither_torch_nor_transformers():
    code = "import sys, knnlm_limits.plan, knnlm_limits.costs, knnlm_limits.config; " \
           f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"
