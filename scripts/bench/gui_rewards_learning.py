"""Does the Gaussian GUI-G² reward teach the toy policy faster than a sparse point-in-box reward?

    HF_HUB_OFFLINE=1 python scripts/bench/gui_rewards_learning.py --steps 300 --seeds 0 1 2 --train-screens 100

Same policy (assets/gui/tiny_vlm), same synthetic training screens, same GRPO preset (configs/gui/toy_gui_g2.yaml:
G = 8, beta 0.04, eps 0.2, temperature 1, loss grpo, group scaling), same number of steps and seeds; only the
reward differs:

* ``gaussian``      — GUI-G²: gaussian_point + gaussian_coverage, weights [1, 1];
* ``point_in_box``  — the sparse baseline: 1 if the box centre hits the target, else 0.

After N steps each policy is evaluated greedily on held-out synthetic ScreenSpot-v2 screens (a seed never used
for training); the table prints the held-out micro accuracy per seed, mean and std, the base policy's accuracy,
and the device. Numbers are what this run measures on a toy world; they are not the paper's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SETTINGS = {
    "gaussian": {"rewards": ["gaussian_point", "gaussian_coverage"], "reward_weights": [1.0, 1.0]},
    "point_in_box": {"rewards": ["point_in_box"], "reward_weights": [1.0]},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "gui", "toy_gui_g2.yaml"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--train-screens", type=int, default=100, help="Synthetic training screens per platform.")
    p.add_argument("--eval-screens", type=int, default=24, help="Held-out screens per platform (2 targets each).")
    p.add_argument("--eval-seed", type=int, default=4242)
    p.add_argument("--lr", type=float, default=None, help="Override the config's learning rate.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="Also write the results as JSON here.")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from genalign.config import load_config
    from genalign.gui.config import gui_config_from
    from genalign.gui.data import load_benchmark
    from genalign.gui.evaluate import VLMPredictor, evaluate, load_vlm
    from genalign.gui.screens import write_screenspot
    from genalign.gui.train import build_trainer

    base = load_config(args.config)
    g0 = gui_config_from(base)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({args.threads} thread(s))"
    work = tempfile.mkdtemp(prefix="gui_bench_")
    eval_dir = os.path.join(work, "heldout")
    write_screenspot(eval_dir, screens_per_platform=args.eval_screens, seed=args.eval_seed)
    heldout = load_benchmark("screenspot-v2", eval_dir)
    train_dir = os.path.join(work, "train")

    def held_out_accuracy(model, processor):
        pred = VLMPredictor(model, processor, coord_frame=g0.coord_frame, template=g0.prompt_template)
        rep = evaluate(heldout, pred, batch_size=16, progress=False, keep_records=False)
        return rep["micro_accuracy"], rep["wrong_format"]

    model, processor = load_vlm(g0.model)
    from genalign.gui.coords import set_processor_pixels

    set_processor_pixels(processor, g0.min_pixels, g0.max_pixels)
    base_acc, base_wf = held_out_accuracy(model, processor)
    print(f"base policy {g0.model}: held-out micro accuracy {base_acc:.3f} (wrong format {base_wf}/{len(heldout)})",
          flush=True)

    results = {s: {} for s in args.settings}
    for seed in args.seeds:
        train_seed_dir = f"{train_dir}_{seed}"
        write_screenspot(train_seed_dir, screens_per_platform=args.train_screens, seed=seed)
        for setting in args.settings:
            cfg = copy.deepcopy(base)
            cfg.train.seed = seed
            cfg.run.output_dir = os.path.join(work, f"{setting}_{seed}")
            cfg.run.progress = False
            gui = dict(cfg.gui)
            gui.update(SETTINGS[setting])
            gui.update({"train_data": train_seed_dir, "train_benchmark": "screenspot-v2", "synthetic_train_screens": 0,
                        "max_steps": args.steps, "save_steps": 0, "save_model": False, "logging_steps": 1})
            if args.lr is not None:
                gui["learning_rate"] = args.lr
            cfg.gui = gui
            t0 = time.time()
            trainer, proc, _ = build_trainer(cfg)
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            for cb in (PrinterCallback, ProgressCallback):  # keep the table readable
                trainer.remove_callback(cb)
            trainer.train()
            acc, wf = held_out_accuracy(trainer.model, proc)
            rew = [h["reward"] for h in trainer.state.log_history if "reward" in h]
            k = max(1, len(rew) // 5)
            first, last = statistics.fmean(rew[:k]), statistics.fmean(rew[-k:])
            results[setting][seed] = {"accuracy": acc, "wrong_format": wf, "seconds": round(time.time() - t0, 1),
                                      "train_reward_first_20pct": first, "train_reward_last_20pct": last}
            print(f"seed {seed} {setting:<13} held-out acc {acc:.3f}  wrong_format {wf}  "
                  f"train reward {first:.3f} -> {last:.3f} (first/last 20% of steps)  ({time.time() - t0:.0f}s)",
                  flush=True)

    print()
    print(f"GUI-G² toy benchmark: {args.steps} GRPO steps, seeds {args.seeds}, device {device}")
    print(f"held-out: {len(heldout)} synthetic ScreenSpot-v2 samples (seed {args.eval_seed}); "
          f"base policy accuracy {base_acc:.3f}")
    header = f"{'reward':<14}" + "".join(f"{'seed ' + str(s):>9}" for s in args.seeds) + f"{'mean':>9}{'std':>8}"
    print(header)
    summary = {}
    for setting in args.settings:
        accs = [results[setting][s]["accuracy"] for s in args.seeds]
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary[setting] = {"mean": mean, "std": std}
        print(f"{setting:<14}" + "".join(f"{a:>9.3f}" for a in accs) + f"{mean:>9.3f}{std:>8.3f}")
    if "gaussian" in summary and "point_in_box" in summary:
        d = summary["gaussian"]["mean"] - summary["point_in_box"]["mean"]
        print(f"gaussian - point_in_box: {d:+.3f} (mean held-out accuracy)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "device": device, "base_accuracy": base_acc, "results": results,
                       "summary": summary}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
