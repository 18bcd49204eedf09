from knnlm_limits import io, model, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake):
    name, key = snakemake.params.name, snakemake.params.config_key
    lm = model.load_lm(name, config_key=key)
    tok = tokenizer.load_pretrained(name, config_key=key)
    with io.atomic_path(snakemake.output[0]) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
