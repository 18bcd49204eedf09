from pathlib import Path

from knnlm_limits import corpus
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p = snakemake.params
    settings = {"hub_id": p.hub_id, "hub_config": p.hub_config, "local_files": p.local_files, "synthetic": p.synthetic}
    splits = corpus.load_splits(settings, base_dir=Path(p.base_dir))
    corpus.write_splits(splits, dict(snakemake.output))
    for split, lines in splits.items():
        print(f"{split}: {len(lines)} lines", file=log)
