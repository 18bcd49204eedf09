from knnlm_limits import io, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    tok = tokenizer.build(dict(snakemake.params), snakemake.input.train)
    with io.atomic_path(snakemake.output[0]) as tmp:
        tok.save_pretrained(tmp)
    print(f"vocabulary: {len(tok)} tokens", file=log)
