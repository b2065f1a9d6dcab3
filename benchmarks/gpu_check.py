"""GPU check: on a CUDA machine, a short bf16 training run of the main recipe and the reranking
benchmark, ours and sentence-transformers', printed as JSON lines.

Run by hand where CUDA is present: `python benchmarks/gpu_check.py [--steps 100]`. It refuses
to run without CUDA (the CPU figures come from `vs_sentence_transformers.py`).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import vs_sentence_transformers as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs CUDA; on a CPU run benchmarks/vs_sentence_transformers.py")
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))

    # The same measurements as the CPU benchmark, in this process (the GPU is the limit).
    for system in ("workbench", "sentence-transformers"):
        row = bench.measure_train(system, "bf16", bench.MODEL, args.steps, 300)
        print(json.dumps(row), flush=True)
    for dataset in ("scifact", "dl19"):
        for system, precision in (
            ("workbench", "fp32"),
            ("workbench", "bf16"),
            ("sentence-transformers", "fp32"),
        ):
            row = bench.measure_rerank(system, precision, dataset, None)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
