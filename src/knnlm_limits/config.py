"""Config validation: the JSON schema fills defaults; errors name the offending key."""

from __future__ import annotations

from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def _key_path(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path = ".".join([path, *extra] if path else extra)
    return path or "<top level>"


def validate(config: dict, schema=SCHEMA) -> dict:
    """Validate `config` in place (defaults filled); ConfigError names the bad key."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    try:
        snakemake_validate(config, str(schema), set_default=True)
    except WorkflowError as err:
        cause = err.__cause__ or err.__context__  # snakemake raises inside its except block
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        raise ConfigError(f"invalid config key {_key_path(cause)!r}: {cause.message}") from None
    return config
