# knnlm-limits: reproduce "On Retrieval Augmentation and the Limitations of
# Language Model Training" (Chiang et al.). Stages, one rule file each:
#   corpus -> tokenizer -> macondo -> train -> datastore (in shards) -> index -> knnlm
#   -> table1 (projection, inspection) / datastore_scaling (the kNN-LM over the first s
#   shards) / memory (a parametric memory in place of the
#   datastore) / memorization (Figure 1) / overspecification (Figure 2) / chat (Figure 3)
#   -> findings
import sys
from pathlib import Path

# The package is installed in the environment jobs run in (pip install -e .);
# the Snakefile also finds it in a bare checkout, to validate the config.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from knnlm_limits.config import validate


configfile: "config.yaml"


validate(config, base_dir=workflow.basedir)


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/tokenizer.smk"
include: "rules/macondo.smk"
include: "rules/train.smk"
include: "rules/datastore.smk"
include: "rules/index.smk"
include: "rules/knnlm.smk"
include: "rules/table1.smk"
include: "rules/inspection.smk"
include: "rules/datastore_scaling.smk"
include: "rules/memory.smk"
include: "rules/children.smk"
include: "rules/memorization.smk"
include: "rules/overspecification.smk"
include: "rules/chat.smk"
include: "rules/findings.smk"


rule all:
    default_target: True
    input:
        all_targets(),


rule all_table1:
    input:
        [f"{table1_dir(*point)}/table1.md" for point in knn_points()],
