"""knnlm-limits: the logic behind the Snakemake workflow.

One module per stage of the paper: corpus, tokenizer, macondo, model, train,
datastore, index, knnlm, children, projection, figures. The Snakemake scripts in
``scripts/`` only read their arguments and call into these modules.
"""

__version__ = "0.1.0"
