# Fine-tune a model from a checkpoint: Figure 2 (Macondo v2) and Figure 3 (chat turns).
from knnlm_limits import model, train
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    lm = model.load_lm(snakemake.input.init)
    settings = train.TrainSettings(**p.train, seed=p.seed)
    # the outputs are one folder per checkpoint, in the order of the config's list (ckpt_dirs)
    out_dirs = dict(zip(settings.checkpoints, snakemake.output, strict=True))
    train.train(lm, Examples.load(snakemake.input.examples), settings, out_dirs, p.work_dir, log=log)
