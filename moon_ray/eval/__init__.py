"""Evaluation on the held-out split (MBE-style and Marqo's KAGL): metrics, degradations, reports.

- `metrics.py`   pure numpy metrics (nDCG@k, hit@k, recall@k, P@k, MRR@k, tie-aware zero-shot accuracy,
                 bootstrap 95 % intervals over queries)
- `degrade.py`   the deterministic hard degradation that makes image queries
- `data.py`      the split, its text queries (training template and held-out wordings) and the encode requests
- `embed.py`     Ray Data `map_batches` on an actor pool
- `evaluate.py`  `moon-ray eval`: the whole run, and the CLI (`--protocol mbe|kagl`)
- `kagl.py`      Marqo's KAGL protocol on our split, beside Marqo's published numbers
- `trace_quality.py` distinct-n, repetition and beyond-the-title attributes of reasoning traces
- `traces_job.py` `moon-ray traces`: one stored trace per catalog product at the model's policy version
- `report.py`    results.json / results.md / plots, `--compare`
- `arms.py`      train-or-reuse / evaluate-or-reuse of a comparison pipeline's arms (ablate, quality)

FAISS indexes live in moon_ray/infrastructure/index.py, the baseline encoders in moon_ray/models/baselines.py.
"""
