"""Forward time per token of SmolLM2 and its width-pruned models (issue 19), for BENCHMARKS.md.

The full model and, at each fraction, the ``magnitude`` and ``fold-cost`` models (calibration:
the first 16 UD-EWT train sentences; the shapes, not the choice, set the time) are timed in
one process, in interleaved rounds over the first 32 held-out test sentences (batch 8, one
torch thread); per model the fastest round is kept, so a loaded machine costs rounds, not
the result. Also prints the scored tokens of the study's 300 held-out sentences.

Usage (repository root): ``RAYDUND_DATA_MIRROR=... python benchmarks/prune_width_timing.py [ROUNDS]``;
prints one line per round (load average, fastest so far) and a JSON summary.
"""

import json
import sys

import torch

from raydund.config import Settings
from raydund.prune import evaluate, models, width
from raydund.prune.width_study import WidthConfig, study_data


def main(rounds: int = 8) -> None:
    torch.set_num_threads(1)
    settings = Settings.from_env().prepare()
    data = study_data(WidthConfig(model="smollm2", calibration_sentences=64, eval_sentences=32), settings)
    model, tok = models.load("smollm2")
    stats = width.collect(model, tok, data.calibration[:16], 8)
    shapes = {"full": model}
    for f in (0.1, 0.25, 0.4):
        for method in ("magnitude", "fold-cost"):
            shapes[f"{method} {f}"] = width.prune(model, width.plan(model, stats, method, f))
    best = {k: float("inf") for k in shapes}
    for rnd in range(rounds):
        for k, m in shapes.items():
            best[k] = min(best[k], 1e3 * width.seconds_per_token(m, tok, data.timing, 8, repeats=1))
        load = open("/proc/loadavg").read().split()[0]
        print(rnd, load, {k: round(v, 3) for k, v in best.items()}, flush=True)
    held_out = study_data(WidthConfig(model="smollm2", eval_sentences=300), settings).evaluation
    scored = sum(len(x) - len(evaluate.prefix_ids(tok)) for x in evaluate.encode(tok, held_out))
    print(json.dumps({"scored_tokens_300": scored,
                      **{k: {"ms_per_token": v, "parameters": width.parameters(shapes[k])} for k, v in best.items()}}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
