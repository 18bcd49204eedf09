import pandas as pd

from knnlm_limits import children, io, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    prompts = pd.read_csv(snakemake.input.prompts)
    lm = model.load_lm(snakemake.input.model)
    table = children.lm_table(lm, Examples.load(snakemake.input.examples), prompts, log=log)
    io.write_csv(snakemake.output[0], table)
