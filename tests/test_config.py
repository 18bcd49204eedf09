"""Config validation before any job: types, defaults, command-line values, cross-key rules,
and the local models a config names."""

import yaml
import pytest
from snakemake.utils import update_config

from knnlm_limits.config import ConfigError, coerce, validate
from tests.support import ROOT, planned_jobs, snakemake


def test_defaults_are_filled():
    cfg = validate({})
    assert cfg["knn"]["k"] == 1024 and cfg["knn"]["lambda"] == 0.25 and cfg["knn"]["temperature"] == 1.0
    assert cfg["knn"]["exact_index"] == "exact" and cfg["knn"]["rerank"] is False
    assert cfg["macondo"]["n_villagers"] == 500 and cfg["macondo"]["n_parents"] == 100
    assert cfg["memorization"]["train"]["batch_size"] == 16
    assert cfg["corpus_lm"]["shapes"][0]["architecture"] == "gpt2"


def test_config_yaml_states_exactly_the_schema_defaults():
    """The schema is where a default lives; config.yaml shows the default run with comments
    and must not say otherwise (every other config is merged over it)."""
    assert validate(yaml.safe_load((ROOT / "config.yaml").read_text())) == validate({})


def test_partial_section_keeps_given_values():
    cfg = validate({"memorization": {"train": {"checkpoints": [0, 5]}, "shapes": [{"name": "s", "n_layer": 2}]}})
    assert cfg["memorization"]["train"]["checkpoints"] == [0, 5]
    assert cfg["memorization"]["shapes"][0]["n_layer"] == 2
    assert cfg["memorization"]["shapes"][0]["n_embd"] == 256  # filled inside list items too


@pytest.mark.parametrize(
    "config, key",
    [
        ({"knn": {"lamda": 0.3}}, "knn.lamda"),
        ({"bogus": 1}, "bogus"),
        ({"knn": {"k": "many"}}, "knn.k"),
        ({"memorization": {"shapes": [{"name": "s", "n_layer": 2.5}]}}, "memorization.shapes.0.n_layer"),
        ({"memorization": {"shapes": [{"name": "s", "architecture": "gpt_neox"}]}}, "memorization.shapes.0.architecture"),
        ({"table1": {"projection": {"direction": "sideways"}}}, "table1.projection.direction"),
        ({"memorization": {"seeds": [0, -1]}}, "memorization.seeds.1"),
        ({"overspecification": {"seeds": [-3]}}, "overspecification.seeds.0"),
        ({"chat": {"seed": -1}}, "chat.seed"),
        ({"macondo": {"n_parents": 11}}, "macondo.n_parents"),
        ({"macondo": {"n_villagers": 100}}, "macondo.n_villagers"),
        ({"corpus": {"local_files": {"train": "a.txt", "valid": "b.txt[0.1.2:]", "test": "c.txt"}}}, "corpus.local_files.valid"),
        ({"knn": {"approximate_index": "IVFx,PQ8"}}, "knn.approximate_index"),
        ({"knn": {"approximate_index": "IVF64,PQ48"}, "corpus": {"max_train_tokens": None}}, "knn.approximate_index"),
        ({"corpus_lm": {"shapes": [{"name": "a"}, {"name": "a"}]}}, "corpus_lm.shapes"),
        ({"corpus_lm": {"shapes": [], "pretrained": []}}, "corpus_lm"),
        ({"corpus": {"block_size": 64, "stride": 65}}, "corpus.stride"),
        ({"memory": {"frontier_index": "IVF16,PQ8"}}, "memory.frontier_index"),
        ({"memory": {"frontier_pq": [48]}}, "memory.frontier_pq"),
        ({"memory": {"head": "shared"}}, "memory.head"),
        ({"memory": {"alpha": 1.5}}, "memory.alpha"),
        ({"knn": {"shards": 0}}, "knn.shards"),
        ({"knn": {"shards": 2, "datastore_sizes": [1, 3]}}, "knn.datastore_sizes"),
        # the index is chosen while planning: the datastore's size must be bounded
        ({"corpus": {"max_train_tokens": None}}, "corpus.expected_tokens.train"),
    ],
)
def test_bad_config_names_the_key(config, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(config)


def test_a_factory_that_cannot_fit_a_small_corpus_lm_is_fine_when_its_datastore_is_searched_exactly():
    # PQ64 does not divide 32-d keys, but max_train_tokens keeps the datastore exact
    validate({"corpus": {"max_train_tokens": 1000}, "corpus_lm": {"shapes": [{"name": "s", "n_embd": 32}]},
              "knn": {"approximate_index": "IVF64,PQ64"}})


def _schema():
    root = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    return root


def test_command_line_strings_are_coerced_to_the_schemas_types():
    """Snakemake parses nested --config values with YAML's BaseLoader: every scalar a string."""
    root = _schema()
    given = yaml.load("{knn: {k: '8', lambda: '0.3', rerank: 'true'}, memorization: {seeds: ['0', '1', '2']},"
                      " corpus: {stride: 'null', hub_config: '103'}, results: out}", Loader=yaml.BaseLoader)
    got = coerce(given, root, root)
    assert got["knn"] == {"k": 8, "lambda": 0.3, "rerank": True}
    assert got["memorization"]["seeds"] == [0, 1, 2]
    assert got["corpus"] == {"stride": None, "hub_config": "103"}  # a string key stays a string
    assert validate(got)["knn"]["lambda"] == 0.3


def test_nested_config_on_the_command_line_plans(tmp_path):
    proc = snakemake("-n", "--config", "knn={lambda: 0.3, k: 8, rerank: true}", "memorization={seeds: [0, 1, 2]}",
                     f"results={tmp_path}/r")
    assert planned_jobs(proc.stdout)["train_memorization"] == 2 * 3


def test_planning_fails_before_any_job_on_a_bad_config(tmp_path):
    proc = snakemake("-n", "--config", "macondo={n_parents: 12}", f"results={tmp_path}/r", check=False)
    assert proc.returncode != 0
    assert "'macondo.n_parents': 12 is not a multiple" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout


def _local_model(path, arch, tok):
    from knnlm_limits import model

    lm = model.build_model(len(tok), 1, 64, 2, 32, architecture=arch) if arch != "gpt_neox" else _neox(len(tok))
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _neox(vocab):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32))


def test_local_model_of_an_unsupported_architecture_is_refused_at_planning(small_tokenizer, tmp_path):
    neox = _local_model(tmp_path / "neox", "gpt_neox", small_tokenizer)
    with pytest.raises(ConfigError, match=r"corpus_lm\.pretrained\[0\].*'gpt_neox' is not supported.*GPT-2.*Llama"):
        validate({"corpus_lm": {"pretrained": [neox]}})
    with pytest.raises(ConfigError, match=r"overspecification\.base_model.*'gpt_neox'"):
        validate({"overspecification": {"base_model": neox}})
    validate({"chat": {"model": neox}})  # Figure 3 scores with logits alone: any architecture


def test_local_model_with_another_tokenizer_is_refused_at_planning(small_tokenizer, tmp_path):
    from knnlm_limits.corpus import synthetic_lines
    from knnlm_limits.tokenizer import train_bpe

    small_tokenizer.save_pretrained(tmp_path / "workflow-tokenizer")
    other = train_bpe(synthetic_lines(300, seed=[5, 5]), 900)
    foreign = _local_model(tmp_path / "foreign", "llama", other)
    ours = _local_model(tmp_path / "ours", "qwen2", small_tokenizer)
    base = {"tokenizer": {"pretrained": str(tmp_path / "workflow-tokenizer")}}
    with pytest.raises(ConfigError, match=r"'overspecification\.base_model'.*not the workflow's.*tokenizer\.pretrained"):
        validate({**base, "overspecification": {"base_model": foreign}})
    validate({**base, "overspecification": {"base_model": ours}, "corpus_lm": {"pretrained": [ours]}})


SHIPPED = ["config.yaml", "config/paper.yaml", "config/paper-sweep.yaml", "config/pretrained.yaml",
           "config/rehearsal.yaml", "config/sweep.yaml", "config/wikitext2-local.yaml", ".tests/config.yaml",
           ".tests/wikitext2.yaml", "config/plan-1b.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    under = {".tests/wikitext2.yaml": ".tests/config.yaml", "config/paper-sweep.yaml": "config/paper.yaml",
             "config/sweep.yaml": "config/wikitext2-local.yaml"}
    layers = [under[name], name] if name in under else [name]
    for layer in layers:
        if layer != "config.yaml":
            update_config(base, yaml.safe_load((ROOT / layer).read_text()))  # as snakemake --configfile merges
    validate(base, base_dir=ROOT)


def test_every_shipped_config_is_listed_here():
    shipped = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("config/*.yaml"), *ROOT.glob(".tests/*.yaml")]}
    assert shipped | {"config.yaml"} == set(SHIPPED)


def test_old_scale_section_is_read_as_chat_with_one_warning(tmp_path):
    """Figure 3's section was `scale`; a config that still says so plans the same chat jobs
    and is warned once, with the new name."""
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"scale": {"train": {"checkpoints": [7]}}}))
    proc = snakemake("-n", "--configfile", ".tests/config.yaml", str(old), "--config", f"results={tmp_path}/r")
    out = proc.stdout + proc.stderr
    assert out.count("config key 'scale' is now 'chat'") == 1
    assert planned_jobs(proc.stdout)["train_chat"] == 1 and f"{tmp_path}/r/models/chat/step-7" in out


def test_key_kinds_are_stated_once():
    """families.KEY_KINDS is the list; the schema's enum and the README's config table follow it."""
    from knnlm_limits.families import KEY_KINDS

    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["knn"]["properties"]["keys"]["items"]["enum"]) == KEY_KINDS
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `knn.keys` |"))
    assert [kind for kind in KEY_KINDS if f"`{kind}`" in row.split("|")[3]] == list(KEY_KINDS)
    # the old names, read for one release: knn.key (one key) and `residual`
    assert validate({"knn": {"key": "residual"}})["knn"]["keys"] == ["enc"]
    assert validate({"knn": {"keys": ["mlp_input", "residual"]}})["knn"]["keys"] == ["mlp_input", "enc"]
    # an old config merged over config.yaml has both: its knn.key is what it asked for
    assert validate({"knn": {"keys": ["mlp_input"], "key": "final_hidden"}})["knn"]["keys"] == ["final_hidden"]


def test_old_projection_setting_key_is_read_as_interpolation():
    cfg = validate({"table1": {"projection": {"setting": "tuned"}}})
    assert cfg["table1"]["projection"]["interpolation"] == "tuned" and "setting" not in cfg["table1"]["projection"]


@pytest.mark.parametrize("key, section", [
    ("tokenizer.pretrained", {"tokenizer": {"pretrained": "{path}"}}),
    ("corpus_lm.pretrained[0]", {"corpus_lm": {"pretrained": ["{path}"]}}),
    ("overspecification.base_model", {"overspecification": {"base_model": "{path}"}}),
    ("chat.model", {"chat": {"model": "{path}"}}),
])
@pytest.mark.parametrize("path", ["/no/such/model", "./no-such-model", "../no-such-model", "~/no-such-model",
                                  "models/no/such"])
def test_a_model_setting_that_is_a_missing_path_fails_while_planning(key, section, path):
    """Written as a path by its form (absolute, ./, ../, ~/, or more than one /), a model
    setting must name a folder; the error names the config key and the path."""
    config = yaml.safe_load(yaml.safe_dump(section).replace("'{path}'", f"'{path}'"))
    with pytest.raises(ConfigError) as err:
        validate(config, base_dir=ROOT)
    assert f"'{key}'" in str(err.value) and path.lstrip("~./") in str(err.value)


def test_hub_ids_stay_hub_ids_and_existing_paths_are_local(tmp_path, monkeypatch):
    from knnlm_limits.config import is_path_by_form

    assert not any(map(is_path_by_form, ["gpt2", "openai-community/gpt2", "Qwen/Qwen2.5-1.5B-Instruct", "corpus_lm"]))
    assert all(map(is_path_by_form, ["/m", "./m", "../m", "~/m", "a/b/c", ".", ".."]))
    # a hub id passes planning (the import job meets the hub); an existing folder passes too,
    # ~ expanded so that from_pretrained sees a folder, not a hub id
    validate({"chat": {"model": "no-such-org/no-such-model"}}, base_dir=ROOT)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "chat-model").mkdir()
    config = validate({"chat": {"model": "~/chat-model"}}, base_dir=ROOT)
    assert config["chat"]["model"] == str(tmp_path / "chat-model")


def test_each_imported_model_is_named_by_its_first_setting():
    """One model named by several settings is imported once, under its first setting (corpus LM,
    then Figure 2's base model, then the chat model); only the chat model reads its own tokens,
    and the tokenizer setting imports no model."""
    from knnlm_limits.config import imported_models

    config = validate({"tokenizer": {"pretrained": "gpt2"}, "corpus_lm": {"pretrained": ["gpt2", "m2"]},
                       "overspecification": {"base_model": "m2"}, "chat": {"model": "chat-org/chat"}},
                      base_dir=ROOT)
    named = {name: (s.key, s.reads_workflow_tokens) for name, s in imported_models(config).items()}
    assert named == {"gpt2": ("corpus_lm.pretrained[0]", True), "m2": ("corpus_lm.pretrained[1]", True),
                     "chat-org/chat": ("chat.model", False)}
    config["chat"]["model"] = "m2"  # the chat model is a corpus LM: it reads the workflow's tokens
    assert imported_models(config)["m2"].reads_workflow_tokens
