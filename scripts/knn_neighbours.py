# The retrieved neighbours of a seeded sample of test positions: CSV and an HTML page.
import numpy as np

from knnlm_limits import figures, inspection, io, knnlm, tokenizer
from knnlm_limits.shards import ShardedRows
from knnlm_limits.snake import logged
from knnlm_limits.tokens import load_stream, windows

with logged(snakemake) as log:
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    tok = tokenizer.load(inp.tokenizer)
    table = inspection.neighbours(
        knnlm.SearchResults.load(inp.found), np.load(inp.ids, mmap_mode="r"), ShardedRows(inp.positions),
        load_stream(inp.train), windows(load_stream(inp.test), p.block_size, p.stride),
        lambda ids: tok.decode([int(i) for i in ids]), p.lam, p.temperature, p.settings,
    )
    io.write_csv(out.csv, table)
    io.write_text(out.html, figures.neighbours_html(table, f"({p.title})"))
    print(f"{table['rank'].nunique()} positions, {int((table.neighbour > 0).sum())} neighbours listed", file=log)
