from knnlm_limits import corpus, tokenizer
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import save_stream

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    tok = tokenizer.load(snakemake.input.tokenizer)
    stream = corpus.tokenize_split(tok, snakemake.input.text, snakemake.params.block_size, snakemake.params.max_tokens)
    save_stream(snakemake.output[0], stream)
    print(f"{len(stream)} tokens", file=log)
