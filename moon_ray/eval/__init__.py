"""Evaluation on the held-out split (MBE-style): metrics, degradations, FAISS, baselines, reports.

- `metrics.py`   pure numpy metrics (nDCG@k, hit@k, recall@k, tie-aware zero-shot accuracy)
- `degrade.py`   the deterministic hard degradation that makes image queries
- `index.py`     FAISS flat / HNSW inner-product indexes (GPU when FAISS sees one)
- `baselines.py` the `frozen` and `random` encoders
- `data.py`      the split, its text queries and the encode requests
- `embed.py`     Ray Data `map_batches` on an actor pool
- `evaluate.py`  `moon-ray eval`: the whole run, and the CLI
- `report.py`    results.json / results.md / plots, `--compare`
"""
