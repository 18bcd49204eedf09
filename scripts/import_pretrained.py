from knnlm_limits import io, model, tokenizer
from knnlm_limits.families import family_of
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p = snakemake.params
    lm = model.load_lm(p.source, config_key=p.config_key)
    if p.reads_workflow_tokens:  # the decomposition must be defined for it
        family_of(lm.config.model_type, f"config key {p.config_key!r} ({p.source})")
    tok = tokenizer.load_pretrained(p.source, config_key=p.config_key)
    with io.atomic_path(snakemake.output[0]) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if p.reads_workflow_tokens:
            tokenizer.check_same_vocabulary(snakemake.input.tokenizer, tmp, p.config_key)
    print(f"{p.source}: {type(lm).__name__}, {lm.num_parameters()} parameters, {len(tok)} tokens", file=log)
