# Fine-tune a model from a checkpoint: Figure 2 (Macondo v2) and Figure 3 (chat turns).
from knnlm_limits import model, train
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    lm = model.load_lm(snakemake.input.init)
    settings = train.TrainSettings(**p.train, seed=p.seed)
    out_dirs = {int(d.rsplit("step-", 1)[1]): d for d in snakemake.output}
    train.train(lm, Examples.load(snakemake.input.examples), settings, out_dirs, p.work_dir, log=log)
