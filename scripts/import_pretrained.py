from knnlm_limits import io, model, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake):
    name = snakemake.params.name
    lm = model.load_lm(name, config_key="corpus_lm.pretrained / overspecification.base_model / scale.model")
    tok = tokenizer.load_pretrained(name, config_key="corpus_lm.pretrained / overspecification.base_model / scale.model")
    with io.atomic_path(snakemake.output[0]) as tmp:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
