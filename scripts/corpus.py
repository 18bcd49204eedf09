from pathlib import Path

from knnlm_limits import corpus
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    settings = dict(snakemake.params)
    splits = corpus.load_splits(settings, base_dir=Path(snakemake.params.base_dir))
    corpus.write_splits(splits, dict(snakemake.output))
    for split, lines in splits.items():
        print(f"{split}: {len(lines)} lines", file=log)
