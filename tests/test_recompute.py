"""What a change recomputes: one row per common change, each a dry run of that change on a
finished tiny DAG whose planned jobs are asserted by rule; the README's table "What a change
recomputes" is these rows, word for word (tested)."""

import pytest
import yaml

from tests.support import ONE_POINT, ROOT, planned_jobs, snakemake

TINY = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())


def _with(section: str, **values) -> dict:
    return {section: {**TINY.get(section, {}), **values}}


def _train(section: str, **values) -> dict:
    return {section: {**TINY[section], "train": {**TINY[section]["train"], **values}}}


FIGURE_2_AND_3 = {"train_overspecification": 1, "children_eval": 1, "figure2": 1, "train_chat": 1, "figure3": 1}
SCALING = {"datastore_scaling": 1}
# (the change as the README names it, the config change, the jobs a dry run plans by rule)
CHANGES = [
    ("`knn.lambda`", _with("knn", **{"lambda": 0.5}),
     {"projection": 1, "table1": 1, "knn_gains": 1, "knn_neighbours": 1, "search_fidelity": 1, **SCALING,
      "memory_table": 1, "figure1": 1, "figure2": 1, "findings": 1}),
    ("`knn.temperature`", _with("knn", temperature=2.0),
     {"projection": 1, "table1": 1, "knn_gains": 1, "knn_neighbours": 1, "search_fidelity": 1, **SCALING,
      "memory_targets": 1, "train_memory": 1, "memory_table": 1, "children_eval": 1, "figure1": 1, "figure2": 1,
      "findings": 1}),
    ("`knn.k`", _with("knn", k=32),
     {"knn_shard_search": 2, "knn_merge": 1, "knn_merge_first_shards": 1, **SCALING, "knnlm_grid": 1, "projection": 1,
      "table1": 1, "knn_gains": 1, "knn_neighbours": 1, "search_fidelity": 1, "memory_target_shard": 2,
      "memory_targets": 1, "train_memory": 2, "more_training": 1, "frontier_shard": 4, "frontier_pq": 2,
      "memory_table": 1, "children_eval": 2, "figure1": 1, "figure2": 1, "findings": 1}),
    ("a key added to `knn.keys`", _with("knn", keys=["mlp_input", "enc"]), {**ONE_POINT, "findings": 1}),
    ("a seed added to `memorization.seeds`", _with("memorization", seeds=[0, 1]),
     {"train_memorization": 2, "children_eval": 2, "figure1": 1, "findings": 1}),
    ("a shape added to `corpus_lm.shapes`",
     _with("corpus_lm", shapes=[*TINY["corpus_lm"]["shapes"], {"name": "wider", "n_layer": 2, "n_embd": 64, "n_head": 2}]),
     {"train_corpus_lm": 1, "more_training": 1, **ONE_POINT, "findings": 1}),
    ("a checkpoint appended to `corpus_lm.train.checkpoints`", _train("corpus_lm", checkpoints=[20, 40]),
     {"train_corpus_lm": 1, "more_training": 1, **ONE_POINT, **FIGURE_2_AND_3, "findings": 1}),
    ("a checkpoint inserted before the last", _train("corpus_lm", checkpoints=[10, 20]),
     {"train_corpus_lm": 2, "more_training": 2, **{rule: 2 * n for rule, n in ONE_POINT.items()}, **FIGURE_2_AND_3,
      "findings": 1}),
    ("a checkpoint appended to `chat.train.checkpoints`", _train("chat", checkpoints=[10, 20]),
     {"train_chat": 1, "figure3": 1, "findings": 1}),
    ("a checkpoint appended to `memorization.train.checkpoints`", _train("memorization", checkpoints=[0, 4, 10, 20]),
     {"train_memorization": 2, "children_eval": 2, "figure1": 1, "findings": 1}),
    ("a memory size added to `memory.sizes`", _with("memory", sizes=[2]),
     {"train_memory": 1, "memory_table": 1, "findings": 1}),
    ("a PQ code size added to `memory.frontier_pq`", _with("memory", frontier_pq=[4, 8, 2]),
     {"frontier_trained": 1, "frontier_shard": 2, "frontier_pq": 1, "memory_table": 1, "findings": 1}),
    ("`memory.alpha`", _with("memory", alpha=0.7),
     {"train_memory": 1, "memory_table": 1, "children_eval": 1, "figure2": 1, "findings": 1}),
    ("`findings.bootstrap_resamples`", _with("findings", bootstrap_resamples=300),
     {"table1": 1, "knn_gains": 1, "search_fidelity": 1, **SCALING, "memory_table": 1, "findings": 1}),
    ("`inspect.tokens` (the neighbours page)", _with("inspect", tokens=20), {"knn_neighbours": 1}),
    ("`knn.shards` 2 → 3", _with("knn", shards=3),
     {"datastore": 3, "knn_shard_search": 3, "knn_merge": 1, "knn_merge_first_shards": 2, **SCALING, "knnlm_grid": 1,
      "projection": 1, "table1": 1, "knn_gains": 1, "knn_neighbours": 1, "search_fidelity": 1,
      "memory_target_queries": 1, "memory_target_shard": 3, "memory_targets": 1, "train_memory": 2,
      "more_training": 1, "frontier_trained": 2, "frontier_shard": 6, "frontier_pq": 2, "memory_table": 1,
      "findings": 1}),
    ("a size dropped from `knn.datastore_sizes` (1, 2 → 2)", _with("knn", datastore_sizes=[2]),
     {**SCALING, "findings": 1}),
]


def plan(results, tmp_path, change: dict) -> dict[str, int]:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config.update(yaml.safe_load(yaml.safe_dump(change)))
    config["results"] = str(results)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    proc = snakemake("-n", "--configfile", str(path))
    return {} if "Nothing to be done" in proc.stdout + proc.stderr else planned_jobs(proc.stdout)


@pytest.mark.parametrize("label, change, expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_plans_exactly_what_it_recomputes(tiny_runs, tmp_path, label, change, expected):
    assert plan(tiny_runs[0], tmp_path, change) == {**expected, "all": 1}


def render(expected: dict) -> str:
    return ", ".join(rule if n == 1 else f"{rule} ×{n}" for rule, n in expected.items())


def test_the_readme_table_is_these_rows():
    """The README's "What a change recomputes" table lists exactly these changes, each with the
    jobs its test asserts (a test moved without its row, or a row without its test, fails)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### What a change recomputes", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| change")]
    table = {cells[0]: cells[1] for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows)}
    assert table == {label: render(expected) for label, _, expected in CHANGES}
