# Fine-tune a model: Figure 2 (Macondo v2, a job a run) and Figure 3 (chat turns, a job a
# checkpoint, each continuing the one before).
from knnlm_limits import model, train
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    if p.start is None:
        lm, start = model.load_lm(snakemake.input.init), None
    else:
        lm, start = train.continued(snakemake.input.previous, p.start)
    settings = train.TrainSettings(**p.train, checkpoints=p.checkpoints, seed=p.seed, keep_optimizer=p.keep_optimizer)
    # the outputs are one folder per checkpoint, in the order of params.checkpoints
    out_dirs = dict(zip(settings.checkpoints, snakemake.output, strict=True))
    train.train(lm, Examples.load(snakemake.input.examples), settings, out_dirs, p.work_dir, log=log, start=start)
