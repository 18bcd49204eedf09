"""Config validation, before any job runs. Every error names the offending key.

1. Values given on the command line are coerced to the schema's types: Snakemake
   hands nested ``--config knn='{lambda: 0.3}'`` values over as strings.
2. The JSON schema checks types and fills every default.
3. What a schema cannot say: Macondo sizes that cannot be met, duplicate shape
   names, FAISS factory strings FAISS cannot build, model settings written as a
   path that names no folder, and models a config names as local folders whose
   architecture the decomposition does not support or whose tokenizer is not the
   workflow's.

Nothing here imports torch or transformers: the workflow is read (every dry run,
every `make plan`, every job a cluster starts) in a second or two.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
_JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None),
               "array": list, "object": dict, "string": str}


PARSE_DIM = 2**7 * 3 * 5 * 7  # a key size most FAISS factories divide: checks the string parses


class ConfigError(ValueError):
    pass


def _key_path(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path = ".".join([path, *extra] if path else extra)
    return path or "<top level>"


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            ref = ref[part]
        schema = {**ref, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fits(value, types) -> bool:
    return any(isinstance(value, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
               for t in types)


def coerce(value, schema: dict, root: dict):
    """`value` with command-line strings turned into the types the schema asks for there."""
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce(v, props.get(k, extra if isinstance(extra, dict) else {}), root) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v, schema.get("items", {}), root) for v in value]
    if not isinstance(value, str):
        return value
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "enum" in schema and not types:
        types = sorted({next(t for t, py in _JSON_TYPES.items() if _fits(v, [t])) for v in schema["enum"]})
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if "string" in types:
        return None if parsed is None and "null" in types else value
    return coerce(parsed, schema, root) if _fits(parsed, types) else value


# Sections and values renamed, still read for one release: old name -> new name.
RENAMED = {"scale": "chat"}
RENAMED_VALUES = {("knn", "keys"): {"residual": "enc"}}
RENAMED_KEYS = {("table1", "projection", "setting"): "interpolation"}
_warned: set[tuple[str, str]] = set()


def _warn_once(what: str, old: str, new: str) -> None:
    if (what, old) not in _warned:
        _warned.add((what, old))
        # stderr, not warnings.warn: Snakemake filters Python warnings out of its output
        print(f"Warning: {what} {old!r} is now {new!r}: read as {new!r} for this release; rename it", file=sys.stderr)


def read_renamed(config: dict) -> None:
    """Move a renamed section to its new name (merged over it, as a later config file would
    be), warning once per process with the new name."""
    from snakemake.utils import update_config

    for old, new in RENAMED.items():
        if old not in config:
            continue
        _warn_once("config key", old, new)
        merged = config.get(new) or {}
        update_config(merged, config.pop(old) or {})
        config[new] = merged
    for (*where, old), new in RENAMED_KEYS.items():
        inner = config
        for part in where:
            inner = inner.get(part) if isinstance(inner, dict) else None
        if isinstance(inner, dict) and old in inner:
            _warn_once("config key", ".".join([*where, old]), ".".join([*where, new]))
            inner[new] = inner.pop(old)
    knn = config.get("knn")
    # one key, before keys was a list; it wins over a `keys` beside it, which is config.yaml's
    # default whenever an old config file is merged over it
    if isinstance(knn, dict) and "key" in knn:
        _warn_once("config key", "knn.key", "knn.keys")
        old = knn.pop("key")
        knn["keys"] = [old] if isinstance(old, str) else old
    for (section, key), names in RENAMED_VALUES.items():
        value = (config.get(section) or {}).get(key)
        for i, item in enumerate(value if isinstance(value, list) else []):
            if isinstance(item, str) and item in names:
                _warn_once(f"{section}.{key}", item, names[item])
                value[i] = names[item]


def validate(config: dict, schema=SCHEMA, base_dir=None) -> dict:
    """Validate `config` in place (defaults filled); ConfigError names the bad key."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    read_renamed(config)
    root = yaml.safe_load(Path(schema).read_text())
    config.update(coerce(config, root, root))
    try:
        snakemake_validate(config, str(schema), set_default=True)
    except WorkflowError as err:
        cause = err.__cause__ or err.__context__  # snakemake raises inside its except block
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        raise ConfigError(f"invalid config key {_key_path(cause)!r}: {cause.message}") from None
    check_semantics(config)
    expand_home(config)
    base_dir = Path(base_dir) if base_dir else Path.cwd()
    check_model_paths(config, base_dir)
    check_local_models(config, base_dir)
    check_index_bound(config)
    return config


def check_index_bound(config: dict) -> None:
    """The corpus datastore's index is chosen while planning (index.planned_kind): the config
    must bound the datastore's size."""
    from .index import IndexConfigError, planned_kind

    try:
        planned_kind(config)
    except IndexConfigError as err:
        raise ConfigError(f"invalid config key 'corpus.expected_tokens.train': {err}") from None


def check_semantics(config: dict) -> None:
    """Rules across keys that a JSON schema cannot express."""
    from .macondo import MacondoError, check_sizes

    try:
        check_sizes(config["macondo"])
    except MacondoError as err:
        raise ConfigError(str(err)) from None
    for section in ("corpus_lm", "memorization"):
        names = [shape["name"] for shape in config[section]["shapes"]]
        if len(names) != len(set(names)):
            raise ConfigError(f"invalid config key '{section}.shapes': shape names must be unique, got {names}")
    if not config["corpus_lm"]["shapes"] and not config["corpus_lm"]["pretrained"]:
        raise ConfigError("invalid config key 'corpus_lm': give at least one of corpus_lm.shapes, corpus_lm.pretrained")
    if set(config["memorization"]["knn_variants"]) - set(config["memorization"]["variants"]):
        raise ConfigError("invalid config key 'memorization.knn_variants': every kNN variant must be in memorization.variants")
    if config["corpus"]["local_files"]:
        from .corpus import CorpusError, LOCAL_KEY, parse_local_spec

        for split, spec in config["corpus"]["local_files"].items():
            try:
                parse_local_spec(spec, f"{LOCAL_KEY}.{split}")
            except CorpusError as err:
                raise ConfigError(f"invalid config key '{LOCAL_KEY}.{split}': {err}") from None
    if "{code}" not in config["memory"]["frontier_index"]:
        raise ConfigError("invalid config key 'memory.frontier_index': it must hold {code}, the code size of "
                          f"each of memory.frontier_pq (got {config['memory']['frontier_index']!r})")
    sizes = config["knn"]["datastore_sizes"] or []
    if any(s > config["knn"]["shards"] for s in sizes):
        raise ConfigError(f"invalid config key 'knn.datastore_sizes': {sizes} counts shards, at most knn.shards "
                          f"({config['knn']['shards']})")
    stride = config["corpus"]["stride"]
    if stride is not None and stride > config["corpus"]["block_size"]:
        raise ConfigError(f"invalid config key 'corpus.stride': {stride} is more than corpus.block_size "
                          f"({config['corpus']['block_size']}); windows would skip tokens")


def datastore_sizes(knn: dict) -> list[int]:
    """The shard counts of the datastore-size curve: knn.datastore_sizes, else the powers of
    two below knn.shards, and knn.shards."""
    if knn["datastore_sizes"]:
        return sorted(knn["datastore_sizes"])
    n = knn["shards"]
    return [2**i for i in range(n.bit_length()) if 2**i < n] + [n]


def previous_checkpoint(checkpoints, step: int, key: str) -> int | None:
    """The checkpoint a training job of `step` continues from: the one before it in the
    config's list `key` (None: the first, which starts from the initial weights). The steps
    a run takes do not depend on where it stops (train.lr_at), so each checkpoint is a job
    of its own and appending one plans only the new steps."""
    step = int(step)
    if step not in checkpoints:
        raise ValueError(f"step {step} is not one of {key} ({sorted(checkpoints)})")
    earlier = [c for c in checkpoints if c < step]
    return max(earlier) if earlier else None


def _local(name: str, base_dir: Path) -> Path | None:
    """The folder a model name points at, if it is a local folder."""
    path = _as_path(name, base_dir)
    return path if path.is_dir() else None


def _as_path(name: str, base_dir: Path) -> Path:
    """`name` read as a path: `~` expanded, relative to the workflow folder."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else base_dir / path


def is_path_by_form(name: str) -> bool:
    """Whether a model setting is written as a local path, not a hub id: absolute, `~`,
    `.`/`..` or `./`, `../` in front, or more than one `/` (a hub id is `name` or
    `owner/name`). `owner/name` itself is a local folder where one exists, else a hub id."""
    return (name.startswith(("/", "~", "./", "../")) or name in (".", "..")
            or name.rstrip("/").count("/") > 1)


# (section, key, what it names) of every setting that names a model or tokenizer ("a hub id
# or a local folder"); corpus_lm.pretrained is a list of them. What it names: the tokenizer;
# an LM that reads the workflow's token files (its architecture must be one the decomposition
# supports, its vocabulary the workflow's tokenizer's); or Figure 3's chat model, any causal
# LM with its own tokenizer.
TOKENIZER, WORKFLOW_TOKENS, OWN_TOKENS = "tokenizer", "workflow_tokens", "own_tokens"
MODEL_SETTINGS = (("tokenizer", "pretrained", TOKENIZER), ("corpus_lm", "pretrained", WORKFLOW_TOKENS),
                  ("overspecification", "base_model", WORKFLOW_TOKENS), ("chat", "model", OWN_TOKENS))


@dataclass(frozen=True)
class ModelSetting:
    key: str  # the config key, e.g. 'corpus_lm.pretrained[0]'
    name: str  # the hub id or local folder it names
    names: str  # what it names: TOKENIZER, WORKFLOW_TOKENS or OWN_TOKENS

    @property
    def reads_workflow_tokens(self) -> bool:
        return self.names == WORKFLOW_TOKENS


def model_settings(config: dict) -> list[ModelSetting]:
    """Every setting that names a model or tokenizer, in MODEL_SETTINGS' order ('corpus_lm'
    and an unset tokenizer name none)."""
    named = []
    for section, key, names in MODEL_SETTINGS:
        value = config[section][key]
        keyed = ([(f"{section}.{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list)
                 else [(f"{section}.{key}", value)])
        named += [ModelSetting(k, v, names) for k, v in keyed if v and v != "corpus_lm"]
    return named


NAME_CHARS = r"A-Za-z0-9_.=+-"  # what a name in a results path may hold (shape names, imported models' folders)


def folder_name(name: str) -> str:
    """A hub id or path as a folder name: 'openai-community/gpt2' -> 'openai-community--gpt2'."""
    import re

    return re.sub(f"[^{NAME_CHARS}]+", "--", str(name)).strip("-.") or "model"


def imported_models(config: dict) -> dict[str, ModelSetting]:
    """{hub id or local folder: the first setting naming it} of every model imported with
    from_pretrained (every model setting but the tokenizer's)."""
    named = {}
    for setting in model_settings(config):
        if setting.names != TOKENIZER:
            named.setdefault(setting.name, setting)
    return named


def expand_home(config: dict) -> None:
    """`~` in a model setting, expanded once here: from_pretrained would take `~/m` for a hub id."""
    def expand(name):
        return str(Path(name).expanduser()) if isinstance(name, str) and name.startswith("~") else name

    for section, key, _ in MODEL_SETTINGS:
        value = config[section][key]
        config[section][key] = [expand(n) for n in value] if isinstance(value, list) else expand(value)


def check_model_paths(config: dict, base_dir: Path) -> None:
    """A model setting written as a path must name a folder: planned as a hub id, it would
    fail late offline (at the model's own job) and ask the hub for a repository online."""
    for setting in model_settings(config):
        if is_path_by_form(setting.name) and not _as_path(setting.name, base_dir).is_dir():
            raise ConfigError(f"invalid config key {setting.key!r}: {setting.name!r} is a path (not a hub id), and no "
                              f"folder {str(_as_path(setting.name, base_dir))!r} exists")


def check_local_models(config: dict, base_dir: Path) -> None:
    """Architecture, tokenizer and FAISS factory checks that need local files only."""
    from .families import UnsupportedArchitecture, family_of, local_model_type
    from .index import IndexConfigError, check_factory
    from .tokenizer import TokenizerError, check_same_vocabulary

    dims = {shape["n_embd"] for shape in config["corpus_lm"]["shapes"]}  # corpus LMs' keys
    tokenizer_dir = config["tokenizer"]["pretrained"]
    tokenizer_dir = _local(tokenizer_dir, base_dir) if tokenizer_dir else base_dir / config["results"] / "data" / "tokenizer"
    for name, setting in imported_models(config).items():
        key, folder = setting.key, _local(name, base_dir)
        # Figure 3's chat model is any causal LM with its own tokenizer; a hub id's import job
        # checks it, before any job uses the model
        if not setting.reads_workflow_tokens or folder is None:
            continue
        model_type = local_model_type(folder)
        try:
            family_of(model_type or "unknown", f"config key {key!r} ({name})")
        except UnsupportedArchitecture as err:
            raise ConfigError(str(err)) from None
        if tokenizer_dir is not None and tokenizer_dir.is_dir():
            try:
                check_same_vocabulary(tokenizer_dir, folder, key)
            except TokenizerError as err:
                raise ConfigError(str(err)) from None
        hidden = _hidden_size(folder)
        if hidden:
            dims.add(hidden)
    # The approximate factory must parse; and it must fit the keys of every corpus LM whose
    # datastore can outgrow exact search (Macondo's datastores never do).
    cap = config["corpus"]["max_train_tokens"]
    may_be_approximate = cap is None or cap > config["knn"]["exact_max_keys"]
    try:
        for dim in [PARSE_DIM, *(sorted(dims) if may_be_approximate else [])]:
            check_factory(config["knn"]["approximate_index"], dim, "knn.approximate_index")
        # the frontier's product-quantised datastores: every code size must divide every key width
        for code in config["memory"]["frontier_pq"]:
            for dim in sorted(dims) or [PARSE_DIM]:
                check_factory(config["memory"]["frontier_index"].format(code=code), dim, "memory.frontier_pq")
    except IndexConfigError as err:
        raise ConfigError(str(err)) from None


def _hidden_size(folder: Path) -> int | None:
    import json

    spec = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return spec.get("hidden_size") or spec.get("n_embd")
