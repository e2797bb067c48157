"""MTEB evaluation of nvembed models (mteb 2.x tasks, evaluators and result format)."""
