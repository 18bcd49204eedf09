from knnlm_limits import model, train
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    settings = train.TrainSettings(**p.train, seed=p.seed)
    if "init" in snakemake.input.keys():
        lm = model.load_lm(snakemake.input.init)
    else:
        from knnlm_limits import tokenizer

        tok = tokenizer.load(snakemake.input.tokenizer)
        lm = model.build_gpt2(
            vocab_size=len(tok), n_positions=p.n_positions, drop_last_mlp=p.drop_last_mlp,
            eos_token_id=tok.eos_token_id, seed=p.seed, **p.shape,
        ).to(model.best_device())
    out_dirs = {int(d.rsplit("step-", 1)[1]): d for d in snakemake.output}
    train.train(lm, Examples.load(snakemake.input.examples), settings, out_dirs, p.work_dir, log=log)
