# One shard of the corpus datastore: its windows' keys, values and positions, and shard.json.
from knnlm_limits import datastore, model, shards
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream, windows

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, out = snakemake.params, snakemake.output
    examples = windows(load_stream(snakemake.input.examples), p.block_size, p.stride)
    part, offset, window_range = shards.shard_examples(examples, p.batch_tokens, p.shard, p.shards)
    lm = model.load_lm(snakemake.input.model)
    n = datastore.build(lm, part, out.key_file, out.value_file, out.position_file, key=p.key,
                        batch_tokens=p.batch_tokens, log=log)
    shards.write_manifest(out.manifest, p.shard, p.shards, offset, n, window_range)
    print(f"shard {p.shard} of {p.shards}: {n} entries from id {offset}, windows {window_range}", file=log)
