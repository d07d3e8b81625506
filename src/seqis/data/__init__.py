"""Sequence datasets: every training sequence has a stable integer index.

Use :func:`seqis.data.registry.load_data` to build one from a spec string such as
``"stdlib"``, ``"text:notes.txt"`` or ``"ucr:JapaneseVowels"``.
"""
