import pandas as pd

from knnlm_limits import macondo, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake):
    tok = tokenizer.load(snakemake.input.tokenizer)
    for key in ("v1", "v2"):
        macondo.sentence_examples(tok, macondo.read_sentences(snakemake.input[key])).save(snakemake.output[key])
    prompts = pd.read_csv(snakemake.input.prompts)
    macondo.prompt_examples(tok, prompts.prompt, prompts.child).save(snakemake.output.prompts)
