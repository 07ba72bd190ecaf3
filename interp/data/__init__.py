"""Prompt and text sources: prompt sets and jailbreak wrapping (``prompts``), the text corpus
(``corpus``), entity tables and prompt templates (``entities``), coreference texts (``binding``),
the IOI patching task (``ioi``), steering contrast pairs (``pairs``) and the loop every JSON-lines
reader in interp shares (``jsonl.iter_jsonl``).

Every source reads files shipped in the repo's ``data/`` folder or fetched from PyPI with a pinned hash.
"""
