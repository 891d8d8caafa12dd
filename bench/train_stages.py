"""What the stages `dihs train --report` adds cost, and what counting the dtype agreement after
every width epoch cost, on a trained bundle and its task: each stage timed once, in the order
`dihs train` runs them (at the threads given; one run on a quiet machine).

    python bench/train_stages.py BUNDLE OUT.json --plot OUT.png [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dihs_model.bundle import load_bundle
from dihs_model.data import load_split, split_calibration
from dihs_model.dtype_choice import measure_agreement
from dihs_model.evaluate import KWON_TARGETS, allocation_comparison, level_accuracies
from dihs_model.kwon import attach_kwon


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("out")
    p.add_argument("--plot", help="a bar chart of the seconds per stage")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.bundle)
    data = bundle.meta["data"]
    split = load_split(data["spec"], data["text_column"], data["label_column"])
    _, calib = split_calibration(split.train)
    stages = {
        "allocation_comparison": lambda: allocation_comparison(bundle, calib),
        "attach_kwon": lambda: attach_kwon(bundle, KWON_TARGETS),
        "held_out_level_accuracies (run twice by --report)": lambda: level_accuracies(bundle, split.test),
        "dtype_agreement (once per recalibration before)": lambda: measure_agreement(bundle, calib),
    }
    seconds = {}
    for name, stage in stages.items():
        t0 = time.perf_counter()
        stage()
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    record = {
        "bundle": a.bundle,
        "task": split.name,
        "calibration_texts": len(calib),
        "held_out_texts": len(split.test),
        "threads": a.threads,
        "seconds": seconds,
    }
    with open(a.out, "w") as fh:
        json.dump(record, fh, indent=2)
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.barh(list(seconds), list(seconds.values()))
        ax.set_xlabel(f"seconds ({a.threads} threads)")
        ax.set_title(f"train stages serving does not need: {split.name}")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=100)


if __name__ == "__main__":
    main()
