"""SciFact (train): the Ray pipeline of ``nvembed prepare`` vs the single-process curation, row for row.

The mining settings are the recipe's (jobs/configs/minilm_recipe.yaml: packaged MiniLM teacher, exact search,
k 3, depth 50, 128 tokens). Prints, for 1 and 2 workers, how many rows are identical to the single-process rows
and, for the others, how many negatives differ and the teacher-score gap at the first difference (a near-tie
reordered by float rounding has a gap of ~1e-6).

    NVEMBED_DATA=/path/to/data .venv/bin/python benchmarks/curation_equivalence.py     # needs $NVEMBED_DATA/scifact
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    data = os.environ.get("NVEMBED_DATA")
    if not data or not (Path(data) / "scifact").is_dir():
        sys.exit("set NVEMBED_DATA to a folder holding scifact/ (BEIR layout)")
    import ray

    from nvembed.config import DataConfig, DatasetConfig, MiningConfig, TrainConfig
    from nvembed.data.build import build_training_rows, load_targets
    from nvembed.embedder import Embedder
    from nvembed.launch.prepare import prepare_stage_data
    from nvembed.training.job import make_teacher

    def cfg_for(cache: Path, workers: int) -> TrainConfig:
        cfg = TrainConfig()
        ds = DatasetConfig(name="scifact", format="beir", path=str(Path(data) / "scifact"), mine_negatives=True)
        cfg.data = DataConfig(datasets=[ds], cache_dir=str(cache), mining=MiningConfig(k=3, depth=50, max_length=128))
        cfg.data.curation.workers = workers
        cfg.data.curation.part_bytes = 1 << 20  # several corpus parts (SciFact's corpus is 7.5 MB)
        cfg.data.curation.pairs_per_part = 256
        cfg.run.num_negatives, cfg.run.seed, cfg.run.output_dir = 3, 42, str(cache / "run")
        return cfg

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = cfg_for(Path(tmp) / "local", 1)
        ref = build_training_rows(cfg.data, 3, cfg.data.cache_dir, None, make_teacher(cfg), 42, lambda s: None)
        ref = ref["scifact"]
        print(f"single process: {len(ref)} rows in {time.perf_counter() - t0:.1f} s")
        teacher = Embedder.from_pretrained("packaged:all-MiniLM-L6-v2", pooling="mean")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(
            "\n| workers | rows | identical rows | rows differing | negatives differing | max score gap at the "
            "first difference | wall s |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for workers in (1, 2):
            t0 = time.perf_counter()
            cfg = cfg_for(Path(tmp) / f"ray{workers}", workers)
            got = load_targets(prepare_stage_data(cfg, lambda s: None), set(), lambda s: None)["scifact"]
            seconds = time.perf_counter() - t0
            assert [r.query for r in got] == [r.query for r in ref] and len(got) == len(ref)
            differing = [(a, b) for a, b in zip(got, ref, strict=True) if a.negatives != b.negatives]
            negs = sum(len(set(a.negatives) ^ set(b.negatives)) // 2 for a, b in differing)
            gaps = []
            for a, b in differing:
                i = next(j for j, (x, y) in enumerate(zip(a.negatives, b.negatives, strict=False)) if x != y)
                q = teacher.encode([a.query], show_progress=False, max_length=128)
                d = teacher.encode([a.negatives[i], b.negatives[i]], show_progress=False, max_length=128)
                s = d @ q[0]
                gaps.append(float(abs(s[0] - s[1])))
            gap = f"{max(gaps):.2e}" if gaps else "-"
            print(
                f"| {workers} | {len(got)} | {len(got) - len(differing)} | {len(differing)} | {negs} | {gap} "
                f"| {seconds:.1f} |"
            )
        ray.shutdown()


if __name__ == "__main__":
    main()
