"""lm-evaluation-harness tasks for the suite's evaluation sets (see README.md in this folder).

``PATH`` is the folder to give lm-eval's ``--include_path``; tasks ``dwakd_dolly``, ``dwakd_selfinst``,
``dwakd_vicuna``, ``dwakd_sni``, ``dwakd_unni``; groups ``dwakd`` (the four shipped sets) and ``dwakd_all``.
"""

from __future__ import annotations

from pathlib import Path

PATH = str(Path(__file__).resolve().parent)
TASKS = ["dwakd_dolly", "dwakd_selfinst", "dwakd_vicuna", "dwakd_sni", "dwakd_unni"]
