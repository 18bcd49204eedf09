import pandas as pd

from knnlm_limits import macondo, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake):
    tok = tokenizer.load(snakemake.input.tokenizer)
    macondo.sentence_examples(tok, macondo.read_sentences(snakemake.input.chat)).save(snakemake.output.train)
    prompts = pd.read_csv(snakemake.input.prompts)
    macondo.prompt_examples(tok, prompts.chat_prompt, prompts.child).save(snakemake.output.prompts)
