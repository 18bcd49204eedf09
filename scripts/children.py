# Evaluate one Macondo run (Figure 1 or 2) at every checkpoint: the LM's log-probs of
# the children and, for runs with a kNN-LM, each prompt's neighbours in the run's data.
from knnlm_limits import children, io
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p, inp = snakemake.params, snakemake.input
    sentences = Examples.load(inp.sentences) if p.knn else None
    run = children.evaluate_run(inp.checkpoints, Examples.load(inp.prompts), sentences, p.knn, log=log)
    io.save_npz(snakemake.output[0], steps=p.steps, **run)
    print(f"{len(p.steps)} checkpoints, {len(run['targets'])} scored tokens, kNN: {bool(p.knn)}", file=log)
