# Train a model from random weights: the corpus LM (on blocks of the corpus stream; a job a
# checkpoint, each continuing the one before) or a Figure 1 run (on Macondo sentences).
from knnlm_limits import model, tokenizer, train
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples, blocks, load_stream

with logged(snakemake) as log:
    p = snakemake.params
    if p.block_size:
        examples = blocks(load_stream(snakemake.input.examples), p.block_size)
    else:
        examples = Examples.load(snakemake.input.examples)
    settings = train.TrainSettings(**p.train, checkpoints=p.checkpoints, seed=p.seed, keep_optimizer=p.keep_optimizer)
    if p.start is None:
        tok = tokenizer.load(snakemake.input.tokenizer)
        shape = {k: v for k, v in p.shape.items() if k != "name"}
        lm = model.build_model(vocab_size=len(tok), n_positions=p.n_positions, drop_last_mlp=p.drop_last_mlp,
                               eos_token_id=tok.eos_token_id, seed=p.seed, **shape).to(model.best_device())
        start = None
    else:
        lm, start = train.continued(snakemake.input.previous, p.start)
    # the outputs are one folder per checkpoint, in the order of params.checkpoints
    out_dirs = dict(zip(settings.checkpoints, snakemake.output, strict=True))
    train.train(lm, examples, settings, out_dirs, p.work_dir, log=log, start=start)
