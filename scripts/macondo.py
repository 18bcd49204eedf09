from knnlm_limits import macondo, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    settings, out = snakemake.params.settings, snakemake.output
    tok = tokenizer.load(snakemake.input.tokenizer)
    village = macondo.generate(settings, tok, seed=settings["seed"])
    macondo.write(village, dict(out))
    macondo.sentence_examples(tok, village.v1).save(out.v1_tokens)
    macondo.sentence_examples(tok, village.v2).save(out.v2_tokens)
    macondo.prompt_examples(tok, village.prompts.prompt, village.prompts.child).save(out.prompt_tokens)
    print(f"{len(village.villagers)} villagers, {len(village.facts)} facts, {len(village.v1)} sentences", file=log)
