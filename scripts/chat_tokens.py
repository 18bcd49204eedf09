import pandas as pd

from knnlm_limits import macondo, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    tok = tokenizer.load(snakemake.input.tokenizer)
    chat, prompts = pd.read_csv(snakemake.input.chat), pd.read_csv(snakemake.input.prompts)
    macondo.chat_examples(tok, chat.question, chat.answer).save(snakemake.output.train)
    macondo.chat_prompt_examples(tok, prompts.chat_question, prompts.child).save(snakemake.output.prompts)
    form = "the model's chat template" if getattr(tok, "chat_template", None) else "the literal 'User: ... Assistant: ...' form"
    print(f"{len(chat)} chat turns and {len(prompts)} prompts in {form}", file=log)
