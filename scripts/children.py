# Evaluate one Macondo run (Figure 1 or 2) at every checkpoint: the LM's log-probs of
# the children and, for runs with a kNN-LM, each prompt's neighbours in the run's data.
from knnlm_limits import children
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p, inp = snakemake.params, snakemake.input
    sentences = Examples.load(inp.sentences) if p.knn else None
    run = children.evaluate_run(inp.checkpoints, Examples.load(inp.prompts), sentences, p.knn, log=log)
    children.save_run(snakemake.output[0], p.steps, run)
    print(f"{len(p.steps)} checkpoints, {len(run)} scored tokens, kNN: {bool(p.knn)}", file=log)
