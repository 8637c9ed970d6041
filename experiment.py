"""
The recipe grid behind README "Results": which way of training the super-transformer makes it judge
architectures the way training them alone does, per CPU-minute. Synthetic default data, quick-start
scale (tiny space, FLOPs window 2M-4M, effective batch 64, lr 2e-3), one process.

For each seed (data, initialisation and sampling all follow it) and recipe:
  1. train the super-transformer; every recipe gets the same number of sub-network passes (the
     quick start's 30 epochs of v1 = 2 passes a step), so a recipe with more passes a step trains
     fewer steps, and its CPU-minutes are measured;
  2. score a fixed reference set (12 random archs of the window per seed, the same for every recipe)
     with the inherited weights, by held-out top-1 and by held-out loss, and take Kendall tau-b and
     Spearman rho against the same archs trained alone (5 epochs, search.py's retrain settings);
  3. gap: the largest and middle reported arch against the same arch trained alone for as many steps;
  4. search: evolution and random search (200 evaluations each), the rank check on the search's own
     candidates (8 archs), and the searched arch against the hand-designed baselines, retrained.
Every arch trained alone goes into OUT/retrain (one folder per arch and settings), so what two
recipes share is trained once. Re-running the same command resumes; --table prints what is done.

    python experiment.py --out runs/grid --seeds 0 1 2                  # the whole grid (hours on 2 cores)
    python experiment.py --out runs/grid --seeds 0 --recipes v1 v1+shift   # part of it
    python experiment.py --out runs/grid --table
"""
import argparse
import json
import os
import resource
import time

import numpy as np

import search
import train
import vitas

WINDOW = ["--flops-min", "2M", "--flops-max", "4M"]
BASE = ["--batch-size", "64", "--lr", "2e-3", "--log-every", "1000", "--device", "cpu", *WINDOW]
PASSES = 60                      # the quick start: 30 epochs x 2 passes (bilateral) a step
# name: train.py flags. Everything but "v1" goes beyond the paper's first version.
V1 = ["--recipe", "v1"]
RECIPES = {
    "v1": V1,
    "v1+cyclic": [*V1, "--sharing", "cyclic"],
    "v1+shift": [*V1, "--identity-shift"],
    "v1+sandwich": [*V1, "--sandwich", "1"],
    "v1+sandwich+distill": [*V1, "--sandwich", "1", "--distill"],
    "v1+shift+cyclic": [*V1, "--identity-shift", "--sharing", "cyclic"],
    "all-bilateral": [*V1, "--sandwich", "1", "--distill", "--identity-shift"],
    "all-cyclic": [*V1, "--sharing", "cyclic", "--sandwich", "1", "--distill", "--identity-shift"],
}
REFERENCE = 12                   # archs in each seed's fixed reference set
RANK_EPOCHS = 5                  # epochs each arch of a rank comparison is trained alone
SEARCH = ["--population", "20", "--generations", "10", "--retrain-epochs", "5", "--rank-check", "8", "--rank-epochs", str(RANK_EPOCHS)]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def passes_of(flags):
    """Sub-network passes a step of a recipe: sides x (1, or 2 + N with the sandwich)."""
    args = train.resolve_recipe(train.parse_args(flags))
    return len(vitas.SHARINGS[args.sharing]) * (1 if args.sandwich is None else 2 + args.sandwich)


def train_argv(name, seed, out):
    flags = RECIPES[name]
    epochs = PASSES // passes_of(flags)
    return ["--out", out, "--seed", str(seed), "--epochs", str(epochs), "--uniform-epochs", str(epochs // 3), *BASE, *flags]


def reference_set(seed):
    """REFERENCE distinct archs of the window, drawn as a random search's first generation, identities
    moved to the end (one network each, whatever the recipe)."""
    space = vitas.SearchSpace.preset("tiny")
    evo = search.Evolution(space, "2M", "4M", population=REFERENCE, parents=2, identity_shift=True, seed=1000 + seed)
    return evo.propose()


def score(ck_path, archs):
    """{"top1": [...], "loss": [...]} of `archs` with the checkpoint's inherited weights on its held-out split."""
    args = search.parse_args(["--ckpt", ck_path, *WINDOW, "--device", "cpu", "--out", os.devnull])
    ck, space, fitness, _ = search.load_supernet(args, train.Dist(), lambda *a: None)
    shift = ck["args"].get("identity_shift", False)
    scores = [fitness(vitas.shift_identities(a) if shift else a) for a in archs]
    return {m: [s[m] for s in scores] for m in search.FITNESS}


def alone(arch, ck, epochs, out):
    """Val top-1 of `arch` trained alone with search.py's retrain settings for the checkpoint."""
    argv = search.retrain_argv(ck, epochs, "cpu", 1)
    args = argparse.Namespace(retrain_dir=os.path.join(out, "retrain"), out=out)
    return search.retrain(arch, search.retrain_folder(args, arch, argv), argv, train.Dist(), print)["top1"]


def agreement(fitness, truth):
    return {"kendall_tau": search.kendall_tau(fitness, truth), "spearman_rho": search.spearman_rho(fitness, truth)}


def unit(name, seed, out, with_gaps=True):
    """One recipe and seed, resumable: the figures of the module docstring in OUT/NAME/sSEED/result.json."""
    folder = os.path.join(out, name, f"s{seed}")
    path = os.path.join(folder, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    argv = train_argv(name, seed, os.path.join(folder, "super"))
    print(f"\n=== {name} seed {seed}: python train.py {' '.join(argv)}", flush=True)
    t = cpu_seconds()
    record = train.train(train.parse_args(argv))
    train_cpu = cpu_seconds() - t
    ck_path = os.path.join(folder, "super", "checkpoint.pt")
    ck = train.load_checkpoint(ck_path)
    steps = ck["step"]

    refs = reference_set(seed)
    truth = [alone(a, ck, RANK_EPOCHS, out) for a in refs]
    inherited = score(ck_path, refs)
    rank = {m: agreement([search.fitness_value({"top1": t1, "loss": l}, m) for t1, l in zip(inherited["top1"], inherited["loss"])], truth)
            for m in search.FITNESS}
    gaps = {k: {"super": record["val"][k]["top1"], "alone": alone(vitas.Arch.from_dict(record["reported"][k]["arch"]), ck,
                                                                 ck["args"]["epochs"], out)}
            for k in ("largest", "middle")} if with_gaps else None

    sargv = ["--ckpt", ck_path, *WINDOW, *SEARCH, "--compare", "--seed", str(seed), "--device", "cpu",
             "--out", os.path.join(folder, "search"), "--retrain-dir", os.path.join(out, "retrain")]
    print(f"=== python search.py {' '.join(sargv)}", flush=True)
    t = cpu_seconds()
    summary = search.search(search.parse_args(sargv))
    result = {"recipe": name, "seed": seed, "train_argv": argv, "search_argv": sargv, "steps": steps,
              "train_cpu_minutes": train_cpu / 60, "search_cpu_minutes": (cpu_seconds() - t) / 60,
              "reference": {"archs": [a.to_dict() for a in refs], "alone": truth, "inherited": inherited, "rank": rank},
              "gaps": gaps, "rank_check": summary["rank_check"],
              "search": {algo: {k: summary["compare"][algo][k] for k in ("top1", "loss", "flops")} for algo in search.ALGOS},
              "retrain": {k: v["top1"] for k, v in summary["retrain"].items()}, "final": record["val"]}
    search.write_json(path, result)
    return result


def mean_sd(values):
    """Mean ± standard deviation over seeds; one seed's value alone (a spread of one seed is no spread);
    for yes/no figures, how many seeds say yes."""
    v = [x for x in values if x is not None]
    if v and all(isinstance(x, bool) for x in v):
        return f"{sum(v)}/{len(v)}"
    if len(v) > 1:
        return f"{np.mean(v):.2f} ± {np.std(v):.2f}"
    return f"{v[0]:.2f}" if v else "n/a"


def searched_margin(r):
    """Val top-1 after retraining: the searched arch minus the better hand-designed baseline."""
    return r["retrain"]["searched"] - max(r["retrain"]["uniform"], r["retrain"]["deit"])


def table(out, markdown=False):
    """The grid so far: mean ± standard deviation over the seeds done (a markdown table with markdown)."""
    rows = {}
    for name in RECIPES:
        for entry in sorted(os.scandir(os.path.join(out, name)) if os.path.isdir(os.path.join(out, name)) else [], key=lambda e: e.name):
            path = os.path.join(entry.path, "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    rows.setdefault(name, []).append(json.load(f))
    cols = [("tau top1", lambda r: r["reference"]["rank"]["top1"]["kendall_tau"]),
            ("rho top1", lambda r: r["reference"]["rank"]["top1"]["spearman_rho"]),
            ("tau loss", lambda r: r["reference"]["rank"]["loss"]["kendall_tau"]),
            ("rho loss", lambda r: r["reference"]["rank"]["loss"]["spearman_rho"]),
            ("tau rank-check", lambda r: r["rank_check"]["kendall_tau"]),
            ("gap largest", lambda r: r["gaps"] and r["gaps"]["largest"]["alone"] - r["gaps"]["largest"]["super"]),
            ("gap middle", lambda r: r["gaps"] and r["gaps"]["middle"]["alone"] - r["gaps"]["middle"]["super"]),
            ("searched-best base", searched_margin),
            ("seeds searched >= +1", lambda r: searched_margin(r) >= 1),
            ("evo-random", lambda r: r["search"]["evolution"]["top1"] - r["search"]["random"]["top1"]),
            ("train CPU-min", lambda r: r["train_cpu_minutes"])]
    cells = {name: [",".join(str(r["seed"]) for r in rs)] + [mean_sd([f(r) for r in rs]) for _, f in cols] for name, rs in rows.items()}
    if markdown:
        print("| recipe | seeds | " + " | ".join(c for c, _ in cols) + " |")
        print("|---" * (len(cols) + 2) + "|")
        for name, row in cells.items():
            print(f"| {name} | " + " | ".join(row) + " |")
        return rows
    print(f"{'recipe':22s} {'seeds':6s} " + " ".join(f"{c:>13s}" for c, _ in cols))
    for name, (seeds, *row) in cells.items():
        print(f"{name:22s} {seeds:6s} " + " ".join(f"{c:>13s}" for c in row))
    return rows


def main():
    ap = train.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/grid")
    ap.add_argument("--seeds", type=train.number_arg(int, 0), nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--gaps", nargs="*", default=None, choices=list(RECIPES),
                    help="recipes whose largest and middle archs are also trained alone for as many steps (default: all)")
    ap.add_argument("--table", action="store_true", help="only print the table of what is done")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    if not args.table:
        for seed in args.seeds:
            for name in args.recipes:
                t = time.time()
                unit(name, seed, args.out, with_gaps=args.gaps is None or name in args.gaps)
                print(f"=== {name} seed {seed} done in {train.fmt_time(time.time() - t)}", flush=True)
    table(args.out, args.markdown)


if __name__ == "__main__":
    main()
