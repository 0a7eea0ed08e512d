"""Diagnosis of tests/test_rnn.py::test_three_way_against_cudnn[relu-fp16] (H200, 2026-12-04):
over seeds, ours' and cuDNN's error against float64 per tensor, and how many output units'
relu masks differ from float64's. Systematic (every seed) or a kink (some seeds)?"""
import json
import sys

import torch

sys.path.insert(0, "tests")
from test_rnn import I, pair, run  # noqa: E402

from fusedrnn.kernels import planner  # noqa: E402
from fusedrnn.testing import error_stats  # noqa: E402

out = []
kwargs = dict(num_layers=2, bidirectional=True)
for variant in ("relu", "tanh"):
    for dtype in (torch.float16, torch.bfloat16):
        for strategy in ("auto", "persistent"):
            _, exact = pair(variant, **kwargs)
            cudnn, ours = pair(variant, backend="triton", dtype=dtype, device="cuda", **kwargs)
            for seed in range(8):
                torch.manual_seed(1000 + seed)
                x = torch.randn(6, 8, I, dtype=torch.float64)
                want = run(exact, x, None)
                with planner.launch_strategy(strategy):
                    got = {k: v.double().cpu() for k, v in run(ours, x.to("cuda", dtype), None).items()}
                theirs = {k: v.double().cpu() for k, v in run(cudnn, x.to("cuda", dtype), None).items()}
                row = dict(variant=variant, dtype=str(dtype), strategy=strategy, seed=seed,
                           min_abs_output=want["output"].abs().min().item(),
                           mask_diff_ours=int(((got["output"] > 0) != (want["output"] > 0)).sum()),
                           mask_diff_cudnn=int(((theirs["output"] > 0) != (want["output"] > 0)).sum()),
                           ours={k: error_stats(got[k], want[k]).rel for k in want},
                           cudnn={k: error_stats(theirs[k], want[k]).rel for k in want})
                out.append(row)
                worst = max(row["ours"], key=lambda k: row["ours"][k] / max(row["cudnn"][k], 1e-12))
                print(variant, dtype, strategy, seed, "mask", row["mask_diff_ours"], row["mask_diff_cudnn"],
                      "worst", worst, "%.2e / %.2e" % (row["ours"][worst], row["cudnn"][worst]),
                      "gin %.2e / %.2e" % (row["ours"]["grad input"], row["cudnn"]["grad input"]), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
