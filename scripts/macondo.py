from knnlm_limits import macondo, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    settings = snakemake.params.settings
    tok = tokenizer.load(snakemake.input.tokenizer)
    village = macondo.generate(settings, tok, seed=settings["seed"])
    macondo.write(village, dict(snakemake.output))
    print(f"{len(village.villagers)} villagers, {len(village.facts)} facts, {len(village.v1)} sentences", file=log)
