"""
The experiments behind README "Results", on the embedded synthetic data at quick-start scale (tiny
space, FLOPs window 2M-4M, effective batch 64, lr 2e-3, one process). Three commands:

  ceiling  How well can archs be ranked at all? Two reference sets per data seed, each arch trained
           alone with several training seeds (same data, same held-out split) for each of
           --epochs: "window" (REFERENCE archs of the search window: what the search needs) and
           "space" (REFERENCE archs spread over the whole FLOPs range of the space: what ranking
           studies report). The ceiling is Kendall tau-b between two seeds' rankings of the same
           archs, with a bootstrap 90% interval over the archs. Pick the rank epochs where it is high.
  grid     Which super-transformer recipe ranks best, judged against that reference: per recipe and
           seed, train the super-transformer (every recipe gets the same number of sub-network
           passes), score both reference sets with the inherited weights (held-out top-1) and take
           tau against the seed mean of the archs trained alone, its interval and tau over the
           ceiling; then the search (evolution and random, 200 evaluations each), its own rank check,
           and the searched arch against both hand-designed baselines and RANDOM random archs of the
           window, each retrained with every training seed.
  table    What is done so far, as text or markdown.

Every arch trained alone goes into OUT/retrain (a folder per arch and settings), so what two
recipes or studies share is trained once, and re-running a command resumes where it stopped.

    python experiment.py ceiling --out runs/exp --data-seeds 0 --epochs 5 10 20
    python experiment.py grid --out runs/exp --seeds 0 1 2 --recipes v2 v1 v1-code --rank-epochs 10
    python experiment.py table --out runs/exp --markdown
"""
import argparse
import json
import os
import resource
import time

import numpy as np

import infra
import search
import train
import vitas

WINDOW = ["--flops-min", "2M", "--flops-max", "4M"]
LO, HI = 2_000_000, 4_000_000
BASE = ["--batch-size", "64", "--lr", "2e-3", "--log-every", "1000", "--device", "cpu", *WINDOW]
PASSES = 60                      # the quick start: 30 epochs x 2 passes (bilateral) a step
# name: train.py flags. Everything but "v1" and "v1-code" goes beyond the paper's first version.
RECIPES = {
    "v1": ["--recipe", "v1"],
    "v1-code": ["--recipe", "v1-code"],
    "v2": ["--recipe", "v2"],
    "v1+cyclic": ["--recipe", "v1", "--sharing", "cyclic"],
    "v2+cyclic": ["--recipe", "v2", "--sharing", "cyclic"],
    "v2+depth": ["--recipe", "v2", "--depth-balanced"],
}
REFERENCE = 12                   # archs in each reference set
RANDOM = 8                       # random in-window archs the searched arch is compared with
SETS = ("window", "space")


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


def data_checkpoint(seed):
    """What search.retrain_argv needs of a checkpoint, for the quick-start data of `seed`."""
    return {"args": vars(train.resolve_recipe(train.parse_args(["--seed", str(seed), *BASE]))), "world": 1}


def window_archs(k, seed):
    """k distinct random archs of the window, drawn as a random search's first generation from
    `seed`, identities moved to the end (one network each, whatever the recipe)."""
    return search.Evolution(vitas.SearchSpace.preset("tiny"), LO, HI, population=k, parents=2, identity_shift=True,
                            seed=seed).propose()


def reference_set(which, seed, k=REFERENCE):
    """k distinct networks (identities moved to the end), fixed per seed. "window": drawn as a random
    search's first generation inside the window. "space": spread over the whole FLOPs range, one from
    each of k equally populated FLOPs bins of 4,000 draws at identity probabilities from 0 to 0.9."""
    space = vitas.SearchSpace.preset("tiny")
    if which == "window":
        return window_archs(k, 1000 + seed)
    rng = np.random.default_rng([2000, seed])
    pool = sorted({vitas.shift_identities(space.sample(rng, rng.uniform(0, 0.9))) for _ in range(4000)},
                  key=lambda a: (vitas.flops(a, space), str(a)))
    return [pool[int((i + 0.5) * len(pool) / k)] for i in range(k)]


def alone(arch, ck, epochs, train_seed, out):
    """Val top-1 of `arch` trained alone (search.py's retrain settings for the checkpoint), cached."""
    argv = search.retrain_argv(ck, epochs, "cpu", 1, train_seed)
    args = argparse.Namespace(retrain_dir=os.path.join(out, "retrain"), out=out)
    return search.retrain(arch, search.retrain_folder(args, arch, argv), argv, infra.Dist(), print)["top1"]


def reference(which, seed, epochs, train_seeds, out):
    """A reference set trained alone: its archs and, per arch, top-1 under each training seed."""
    archs, ck = reference_set(which, seed), data_checkpoint(seed)
    return archs, [[alone(a, ck, epochs, s, out) for s in range(train_seeds)] for a in archs]


def ceiling(out, data_seeds, epochs_list, train_seeds, sets=SETS):
    """The noise ceiling of each reference set at each number of epochs: OUT/ceiling.json, one row
    per (set, data seed, epochs), earlier commands' rows kept."""
    path, rows = os.path.join(out, "ceiling.json"), []
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)
    for seed in data_seeds:
        for which in sets:
            for epochs in epochs_list:
                t = time.time()
                archs, by_seed = reference(which, seed, epochs, train_seeds, out)
                runs = np.asarray(by_seed).T
                rows = [r for r in rows if (r["set"], r["data_seed"], r["epochs"]) != (which, seed, epochs)]
                rows.append({"set": which, "data_seed": seed, "epochs": epochs, "train_seeds": train_seeds,
                             "ceiling_tau": search.ceiling_tau(by_seed),
                             "interval": search.bootstrap_interval(runs[0], runs[1]),
                             "top1_range": [float(np.min(by_seed)), float(np.max(by_seed))],
                             "archs": [a.to_dict() for a in archs], "top1_seeds": by_seed})
                infra.write_json(path, rows)
                print(f"=== ceiling {which} seed {seed} {epochs} epochs: tau {rows[-1]['ceiling_tau']:.2f} "
                      f"{rows[-1]['interval']} ({infra.fmt_time(time.time() - t)})", flush=True)
    ceiling_table(rows)
    return rows


def ceiling_table(rows):
    print(f"{'set':7s} {'seed':>4s} {'epochs':>6s} {'ceiling tau':>11s} {'90% interval':>15s} {'top-1 range':>13s}")
    for r in rows:
        lo, hi = r["interval"] or (float("nan"),) * 2
        print(f"{r['set']:7s} {r['data_seed']:4d} {r['epochs']:6d} {r['ceiling_tau']:11.2f} {lo:7.2f} to {hi:5.2f} "
              f"{r['top1_range'][0]:5.1f}-{r['top1_range'][1]:5.1f}")


def score(ck_path, archs):
    """Held-out top-1 of `archs` with the checkpoint's inherited weights (the search's fitness)."""
    args = search.parse_args(["--ckpt", ck_path, *WINDOW, "--device", "cpu", "--out", os.devnull])
    ck, space, fitness, _ = search.load_supernet(args, infra.Dist(), lambda *a: None)
    shift = ck["args"].get("identity_shift", False)
    return [fitness(vitas.shift_identities(a) if shift else a)["top1"] for a in archs]


def unit(name, seed, out, rank_epochs, train_seeds):
    """One recipe and seed, resumable: OUT/NAME/sSEED/result.json."""
    folder = os.path.join(out, name, f"s{seed}")
    path = os.path.join(folder, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    argv = train_argv(name, seed, os.path.join(folder, "super"))
    print(f"\n=== {name} seed {seed}: python train.py {' '.join(argv)}", flush=True)
    t = cpu_seconds()
    train.train(train.parse_args(argv))
    train_cpu = cpu_seconds() - t
    ck_path = os.path.join(folder, "super", "checkpoint.pt")
    ck = infra.load_checkpoint(ck_path)
    sets = {}
    for which in SETS:
        archs, by_seed = reference(which, seed, rank_epochs, train_seeds, out)
        sets[which] = {"inherited": score(ck_path, archs), "top1_seeds": by_seed}
        sets[which].update(search.rank_agreement(sets[which]["inherited"], by_seed))
    sargv = ["--ckpt", ck_path, *WINDOW, "--population", "20", "--generations", "10", "--compare", "--seed", str(seed),
             "--rank-check", "8", "--rank-epochs", str(rank_epochs), "--rank-seeds", str(train_seeds), "--device", "cpu",
             "--out", os.path.join(folder, "search"), "--retrain-dir", os.path.join(out, "retrain")]
    print(f"=== python search.py {' '.join(sargv)}", flush=True)
    summary = search.search(search.parse_args(sargv))
    best = summary["best"]
    compared = {"searched": vitas.Arch.from_dict(best["arch"]),
                **{k: design(vitas.SearchSpace.preset("tiny"), best["flops"], LO, HI) for k, design in search.BASELINES.items()}}
    compared.update({f"random{i}": a for i, a in enumerate(window_archs(RANDOM, 3000 + seed))})  # not the reference's
    retrained = {k: [alone(a, ck, rank_epochs, s, out) for s in range(train_seeds)] for k, a in compared.items()}
    result = {"recipe": name, "seed": seed, "train_argv": argv, "search_argv": sargv, "steps": ck["step"],
              "train_cpu_minutes": train_cpu / 60, "rank_epochs": rank_epochs, "train_seeds": train_seeds,
              "sets": sets, "rank_check": summary["rank_check"],
              "search": {algo: {k: summary["compare"][algo][k] for k in ("top1", "loss", "flops")} for algo in search.ALGOS},
              "retrained": retrained, "archs": {k: a.to_dict() for k, a in compared.items()}}
    infra.write_json(path, result)
    return result


def mean_sd(values):
    """Mean ± sample standard deviation (ddof=1) over seeds; one seed's value alone; for yes/no
    figures, how many seeds say yes."""
    v = [x for x in values if x is not None]
    if v and all(isinstance(x, bool) for x in v):
        return f"{sum(v)}/{len(v)}"
    if len(v) > 1:
        return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"
    return f"{v[0]:.2f}" if v else "n/a"


def searched_wins(r):
    """The searched arch's mean retrained top-1 beats both baselines' means and the random archs'
    median by more than the larger standard deviation among them (over training seeds)."""
    m = {k: np.mean(v) for k, v in r["retrained"].items()}
    sd = max(np.std(v, ddof=1) for v in r["retrained"].values())
    others = [m["uniform"], m["deit"], np.median([v for k, v in m.items() if k.startswith("random")])]
    return bool(all(m["searched"] - o > sd for o in others))


def table(out, markdown=False):
    """The grid so far: mean ± SD over the seeds done."""
    rows = {}
    for name in RECIPES:
        folder = os.path.join(out, name)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name) if os.path.isdir(folder) else []:
            path = os.path.join(entry.path, "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    rows.setdefault(name, []).append(json.load(f))
    cols = [("tau window", lambda r: r["sets"]["window"]["kendall_tau"]),
            ("ceiling window", lambda r: r["sets"]["window"]["ceiling_tau"]),
            ("tau/ceiling window", lambda r: r["sets"]["window"]["tau_over_ceiling"]),
            ("tau space", lambda r: r["sets"]["space"]["kendall_tau"]),
            ("ceiling space", lambda r: r["sets"]["space"]["ceiling_tau"]),
            ("tau rank-check", lambda r: r["rank_check"]["kendall_tau"]),
            ("searched wins", searched_wins),
            ("evo-random", lambda r: r["search"]["evolution"]["top1"] - r["search"]["random"]["top1"]),
            ("train CPU-min", lambda r: r["train_cpu_minutes"])]
    cells = {name: [",".join(str(r["seed"]) for r in rs)] + [mean_sd([f(r) for r in rs]) for _, f in cols] for name, rs in rows.items()}
    if markdown:
        print("| recipe | seeds | " + " | ".join(c for c, _ in cols) + " |")
        print("|---" * (len(cols) + 2) + "|")
        for name, row in cells.items():
            print(f"| {name} | " + " | ".join(row) + " |")
    else:
        print(f"{'recipe':12s} {'seeds':6s} " + " ".join(f"{c:>18s}" for c, _ in cols))
        for name, (seeds, *row) in cells.items():
            print(f"{name:12s} {seeds:6s} " + " ".join(f"{c:>18s}" for c in row))
    ceiling_path = os.path.join(out, "ceiling.json")
    if os.path.exists(ceiling_path):
        with open(ceiling_path) as f:
            ceiling_table(json.load(f))
    return rows


def main():
    ap = infra.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["ceiling", "grid", "table"])
    ap.add_argument("--out", default="runs/exp")
    ap.add_argument("--seeds", type=infra.number_arg(int, 0), nargs="+", default=[0, 1, 2], help="grid: data and recipe seeds")
    ap.add_argument("--data-seeds", type=infra.number_arg(int, 0), nargs="+", default=[0], help="ceiling: data seeds")
    ap.add_argument("--epochs", type=infra.number_arg(int, 1), nargs="+", default=[5, 10, 20], help="ceiling: epochs trained alone")
    ap.add_argument("--train-seeds", type=infra.number_arg(int, 2), default=2, help="training seeds per arch trained alone")
    ap.add_argument("--rank-epochs", type=infra.number_arg(int, 1), default=10, help="grid: epochs each reference arch is trained alone")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="ceiling: reference sets")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--markdown", action="store_true", help="table: as markdown")
    args = ap.parse_args()
    if args.command == "ceiling":
        ceiling(args.out, args.data_seeds, args.epochs, args.train_seeds, args.sets)
    elif args.command == "grid":
        for seed in args.seeds:
            for name in args.recipes:
                t = time.time()
                unit(name, seed, args.out, args.rank_epochs, args.train_seeds)
                print(f"=== {name} seed {seed} done in {infra.fmt_time(time.time() - t)}", flush=True)
    table(args.out, args.markdown)


if __name__ == "__main__":
    main()
