"""Workflow hygiene: lint, formatting, pinned environments, and the HTML report."""

import re
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import ROOT, needs_wikitext, snakemake


def _pins(lines):
    return dict(re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==(\S+)\s*", line).groups() for line in lines if "==" in line)


def test_envs_pin_the_same_versions_as_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {k.lower(): v for k, v in _pins(project).items() if not k.startswith("snakemake")}
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        pinned = {k.lower(): v for k, v in _pins(pip).items()}
        assert pinned == wanted, env.name


def test_snakemake_lint_is_clean(tmp_path):
    proc = snakemake("--lint", "--config", f"results={tmp_path}/results", check=False)
    out = proc.stdout + proc.stderr
    assert "Lints for" not in out, out
    assert proc.returncode == 0


def test_snakefmt_check():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_wikitext
def test_report_holds_every_figure_and_table_with_caption(tiny_runs, tmp_path):
    report = tmp_path / "report.html"
    snakemake("--report", str(report), "--configfile", ".tests/config.yaml", "--config", f"results={tiny_runs[0]}")
    html = report.read_text(errors="replace")
    for name in ("figure1.png", "figure2.png", "figure3.png", "figure1.csv", "table1.csv", "grid.png",
                 "projection_traces.png"):
        assert name in html, name
    for caption in ("Macondo v1", "over-specified Macondo v2", "chat model fine-tuned", "MLP hurdle",
                    "validation perplexity"):
        assert caption.lower() in html.lower(), caption
