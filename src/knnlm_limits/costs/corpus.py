"""Costs of the corpus and tokenizer stages (rules/corpus.smk, rules/tokenizer.smk)."""

from .base import Estimate, MB, Job, cost, measured, unknown


@cost("corpus", "tokenizer")
def text(job: Job) -> Estimate:
    # the split's text and its lines in RAM (hub datasets: an Arrow table besides)
    m, n = measured(), job.train
    if n is None:
        return Estimate(None, None, disk_mb=0)
    return Estimate(m["light_process_mb"] + n * m["text_bytes_per_token"] / MB,
                    1 + n * m["tokenizer_seconds_per_token"] / 60, disk_mb=n * 5 / MB)


@cost("corpus_tokens")
def corpus_tokens(job: Job) -> Estimate:
    m = measured()
    n = {"train": job.train, "valid": job.valid, "test": job.test}[job.wildcards["split"]]
    if n is None:
        return unknown("split size unknown: set corpus.expected_tokens")
    return Estimate(m["light_process_mb"] + n * m["corpus_tokens_bytes_per_token"] / MB,
                    1 + n * m["tokenizer_seconds_per_token"] / 60, disk_mb=n * 4 / MB)
