from knnlm_limits import corpus, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    tok = tokenizer.load(snakemake.input.tokenizer)
    examples = corpus.tokenize_split(
        tok, snakemake.input.text, snakemake.params.block_size, snakemake.params.max_tokens
    )
    examples.save(snakemake.output[0])
    print(f"{len(examples)} blocks, {len(examples.tokens)} tokens", file=log)
