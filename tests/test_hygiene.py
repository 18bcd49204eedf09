"""Workflow hygiene: lint, formatting, pinned environments, and the HTML report."""

import re
import os
import subprocess
import sys
import tomllib

import yaml

from tests.support import ROOT, snakemake


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


def test_report_holds_every_figure_and_table_with_caption(tiny_runs, tmp_path):
    report = tmp_path / "report.html"
    snakemake("--report", str(report), "--configfile", ".tests/config.yaml", "--config", f"results={tiny_runs[0]}")
    html = report.read_text(errors="replace")
    for name in ("figure1.png", "figure2.png", "figure3.png", "figure1.csv", "table1.csv", "grid.png",
                 "projection_traces.png", "findings.csv", "findings_by_scale.png", "gain_by_frequency.png"):
        assert name in html, name
    for caption in ("Macondo v1", "over-specified Macondo v2", "chat model", "MLP hurdle",
                    "validation perplexity", "95% interval"):
        assert caption.lower() in html.lower(), caption


def test_every_rule_declares_log_benchmark_threads_resources_conda():
    rules = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        # a rule's body is its indented lines: it ends at the file's next top-level line
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(), flags=re.M):
            rules[name] = body
    assert len(rules) >= 18
    for name, body in rules.items():
        for directive in ("log:", "benchmark:", "threads:", "resources:", "conda:"):
            assert directive in body, f"rule {name} has no {directive}"
        assert "params:\n        config=" not in body and "config)" not in body, f"rule {name} passes the whole config"


def test_import_error_names_the_config_key_and_model(tmp_path):
    """A model the config names that cannot be had (offline, no local copy): its
    import job fails with the config key and the model id."""
    results = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"overspecification": {"base_model": "no-such-org/no-such-model"},
                                   "corpus": {"synthetic": {"train_lines": 200, "eval_lines": 20, "seed": 0}},
                                   "tokenizer": {"vocab_size": 512}}))
    target = f"{results}/models/pretrained/no-such-org--no-such-model/step-0"
    proc = snakemake(target, "--cores", "1", "--configfile", str(cfg), "--config", f"results={results}", check=False)
    assert proc.returncode != 0
    log = (results / "logs/import/no-such-org--no-such-model.log").read_text()
    assert "'overspecification.base_model'" in log and "'no-such-org/no-such-model'" in log


def test_a_job_that_imports_torch_and_faiss_late_keeps_to_its_threads(tmp_path):
    # torch and FAISS default to one thread per core; a job declaring 1 thread that
    # imports them lazily must still use 1, or it fights the job Snakemake runs beside it.
    code = """
import sys
from types import SimpleNamespace
from knnlm_limits.snake import logged
assert "torch" not in sys.modules and "faiss" not in sys.modules
with logged(SimpleNamespace(threads=1, log=[sys.argv[1]])):
    import faiss, torch
    print(torch.get_num_threads(), faiss.omp_get_max_threads(), file=sys.__stdout__)
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job.log")], env=env,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["1", "1"]
