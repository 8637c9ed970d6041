"""
The experiments behind RESULTS.md, on the embedded synthetic data at quick-start scale: tiny
space, FLOPs window 2M-4M, data seed 0 (the same images and held-out split for every training),
effective batch 64, lr 2e-3, one process per training.

  reference  The committed reference every recipe is judged against. "window": 48 archs of the
             window, stratified by (patch size, depth) cell (6 from each of its 8 cells), each
             trained alone for 20 epochs with training seeds 0, 1, 2 and 3: the reference is the mean
             of the seeds every arch has, and their agreement measures its reliability. "space":
             12 archs spread over the whole FLOPs range of the space, 2 seeds: a sanity check,
             where FLOPs alone ranks.
  grid       Super-transformers per recipe and seed (every recipe the same number of sub-network
             passes), each scored on the reference archs with its inherited weights (held-out
             top-1) and searched (evolution and random search, 200 evaluations each). fair-split
             (beyond the paper) is fair split by patch size as few-shot NAS splits a space: one
             super-transformer per patch size on half the passes each, each arch scored on its own.
  rescore    Fitness variants (beyond the paper): a grid record's super-transformer scores the window
             archs by held-out top-1, loss and true-class probability, on its held-out split and with
             --holdout-extra generated images more; with --fitness, searched again by that measure
             on the larger split (its pick: RECIPE/FITNESS@HELD-OUT for outcome).
  outcome    The search's pick against hand design and chance: each supernet record's searched arch
             (evolution) of the given recipes, the two hand-designed networks nearest the window's
             top and 8 random window archs, each trained alone as the reference archs are (20
             epochs; picks on seeds 0-3, designs on 0-15, random archs on 0 and 1). A searched arch
             wins when its mean top-1 is above both hand-designed networks' and the random archs' median.
  table      Every figure from results/, without training anything: the records are read here; their
             statistics and text (RESULTS.md, the README's summary, --check) are report.py's.

Each training is a job; jobs run in parallel worker processes (--workers, default one per core,
one thread each). A finished job writes a small JSON record (no checkpoint) to --results (default
results/, tracked in git); a command re-run skips the jobs whose record is there, so a run stopped
partway continues, on a fresh machine too after `git pull`. Scratch (checkpoints, logs) goes to
--scratch (default runs/exp). A job's record is the same whichever worker runs it (a test checks
it against a serial run).

    python experiment.py reference                            # ~540 CPU-minutes, half that on 2 cores
    python experiment.py grid --recipes v2 fair --seeds 0 1 2 3
    python experiment.py outcome --recipes v2 fair            # after the grid: its searched archs
    python experiment.py rescore --seeds 0 1 2 3 4 5 6 7 --fitness prob
    python experiment.py table --markdown --write RESULTS.md   # and the README's summary
"""
import argparse
import contextlib
import functools
import glob
import json
import os
import time

import numpy as np

import cli
import rankcheck
import record
import report
import runs
import search
import train
import vitas

TINY = vitas.SearchSpace.preset("tiny")
WINDOW = ["--flops-min", "2M", "--flops-max", "4M"]
SEARCH = ["--population", "20", "--generations", "10"]      # every search of a grid record or a rescore
LO, HI = 2_000_000, 4_000_000
DATA_SEED = 0
BASE = ["--batch-size", "64", "--lr", "2e-3", "--log-every", "1000", "--device", "cpu", "--data-seed", str(DATA_SEED),
        *WINDOW]
# --synthetic-size of every training (None: the quick start's data); a job carries it to its worker
SIZE = None


@contextlib.contextmanager
def data_size(size):
    """SIZE inside the block: the figures of another setting's records (table)."""
    global SIZE
    kept, SIZE = SIZE, size
    try:
        yield
    finally:
        SIZE = kept


# other settings the table shows beside the quick start's: results/NAME, trained with these experiment.py
# flags (--synthetic-size: its own reference there; --passes alone: the quick start's reference)
SETTINGS = {"n1300": {"synthetic_size": 1300}, "half": {"passes": 30}}


def base():
    """train.py flags every training shares: BASE and, with --synthetic-size, the data's size."""
    return BASE + ([] if SIZE is None else ["--synthetic-size", str(SIZE)])


PASSES = 60                      # the quick start: 30 epochs x 2 passes (bilateral) a step
# The grid's recipes, name: train.py flags (train.RECIPES holds train.py's own recipes, name: settings).
# Everything but "v1" and "v1-code" goes beyond the paper's first version.
GRID = {
    "v2": ["--recipe", "v2"],
    "v1": ["--recipe", "v1"],
    "v1-code": ["--recipe", "v1-code"],
    "v1+depth": ["--recipe", "v1", "--sampling", "depth-balanced"],
    "v2+depth": ["--recipe", "v2", "--sampling", "depth-balanced"],
    "fair": ["--recipe", "fair"],
    "fair-split": ["--recipe", "fair"],
    "v2+strat": ["--recipe", "v2", "--sampling", "stratified"],
    # v2's cyclic sharing (one pass a step where bilateral sharing makes two, so twice the epochs at equal passes)
    "v2+strat+cyclic": ["--recipe", "v2", "--sampling", "stratified", "--sharing", "cyclic"],
    # one side only (the first channels, as AutoFormer shares them): one pass a step, as cyclic
    "v2+strat+left": ["--recipe", "v2", "--sampling", "stratified", "--sharing", "left"],
}
# Recipes trained as one super-transformer per patch size, each on an equal share of the passes: the
# space split as few-shot NAS splits it (no block weights shared between patch sizes; beyond the
# paper); each arch is scored on, and each search runs in, its patch size's super-transformer.
SPLIT = ("fair-split",)
REFERENCE_EPOCHS = 20
PER_CELL = 6
# training seeds: the window reference's (4: tau* 0.82, 3 left it at 0.795), the whole-range set's, the outcome's
# picks' (4: their margin counts the trainings' noise), its hand designs' (16: one arch each, its SD over training
# seeds ~1.4 points, the largest part of the margin's interval at 4) and random archs' (their median is a bar)
REFERENCE_SEEDS, SPACE_SEEDS, OUTCOME_SEEDS = (0, 1, 2, 3), (0, 1), (0, 1, 2, 3)
DESIGN_SEEDS, RANDOM_SEEDS = tuple(range(16)), (0, 1)
SPACE_ARCHS = 12

# -----------------------------------------------------------------------------
# Jobs and what runs them (runs.run_jobs runs them in parallel)


def records(results, kind):
    """The records of one kind (a folder of results/), by file name."""
    return [runs.read_record(p) for p in sorted(glob.glob(os.path.join(results, kind, "*.json")))]


def alone_job(arch, argv, results, scratch):
    """A job that trains `arch` alone with train.py flags `argv`; its record: results/alone/KEY.json."""
    key = rankcheck.alone_key(arch, argv)
    return {"kind": "alone", "name": f"alone {key} {arch}", "path": runs.record_path(results, "alone", key),
            "arch": arch.to_dict(), "argv": argv, "scratch": os.path.join(scratch, "alone", key), "size": SIZE}


def run_alone(job):
    arch = vitas.Arch.from_dict(job["arch"])
    val = train.train_alone(arch, job["scratch"], job["argv"], runs.Dist())
    return {"arch": job["arch"], "argv": job["argv"], "flops": vitas.flops(arch, TINY),
            "params": vitas.params(arch, TINY), "val": val}


def execute(job):
    """runs.execute of the job's runner, with SIZE the job's (a worker process starts without it)."""
    with data_size(job.get("size")):
        return runs.execute(job, RUNNERS[job["kind"]])


# -----------------------------------------------------------------------------
# The reference


def data_checkpoint():
    """What rankcheck.alone_argv needs of a checkpoint, for the quick-start data (DATA_SEED, SIZE)."""
    return checkpoint_of(tuple(base()))


@functools.lru_cache(maxsize=None)
def checkpoint_of(flags):
    return {"args": vars(train.resolve_recipe(train.parse_args(["--seed", str(DATA_SEED), *flags]))), "world": 1}


@functools.lru_cache(maxsize=None)
def reference_sets():
    """{set: (archs, {arch: the training seeds it is trained alone with})}."""
    window, space = rankcheck.window_archs(TINY, LO, HI, PER_CELL), rankcheck.range_archs(TINY, SPACE_ARCHS)
    return {"window": (window, {a: REFERENCE_SEEDS for a in window}),
            "space": (space, {a: SPACE_SEEDS for a in space})}


def reported_reference():
    """The archs train.py reports with the window (largest, smallest, middle), trained alone as the
    window's are: what their val top-1 at the end of super-transformer training is measured against."""
    return list(record.reported_archs(TINY, (LO, HI)).values())


def alone_argv(seed):
    return rankcheck.alone_argv(data_checkpoint(), REFERENCE_EPOCHS, "cpu", 1, seed)


def reference_jobs(results, scratch):
    """Every training of the reference, seed by seed (each seed's table complete before the next
    begins), the window set before the whole-range set and the reported archs."""
    reported = reported_reference()
    sets = {**reference_sets(), "reported": (reported, {a: REFERENCE_SEEDS for a in reported})}
    jobs = [((s, name != "window"), alone_job(a, alone_argv(s), results, scratch))
            for name, (archs, seeds) in sets.items() for a in archs for s in seeds[a]]
    return [job for _, job in sorted(jobs, key=lambda j: j[0])]


def alone_top1(results, arch, seeds):
    """{seed: val top-1} of `arch` trained alone (alone_argv), for the seeds that have a record."""
    paths = {s: runs.record_path(results, "alone", rankcheck.alone_key(arch, alone_argv(s))) for s in seeds}
    return {s: runs.read_record(p)["val"]["top1"] for s, p in paths.items() if os.path.exists(p)}


def reference_table(results):
    """{set: (archs, per arch its top-1 under each of its seeds)} from the records there are; archs
    without a record of their first seed are left out."""
    out = {}
    for name, (archs, seeds) in reference_sets().items():
        found = {a: alone_top1(results, a, seeds[a]) for a in archs}
        out[name] = [(a, list(found[a].values())) for a in archs if seeds[a][0] in found[a]]
    return out


def reported_alone(results):
    """{arch as JSON: its val top-1 trained alone, the mean over the seeds it has} of the reported
    archs that have a record."""
    found = {a: alone_top1(results, a, REFERENCE_SEEDS) for a in reported_reference()}
    return {json.dumps(a.to_dict()): float(np.mean(list(top1.values()))) for a, top1 in found.items() if top1}


# -----------------------------------------------------------------------------
# Super-transformers: train, score the reference archs, search


def passes_of(flags):
    """Sub-network passes a step of a recipe: sides x (1, or 2 + N with the sandwich)."""
    args = train.resolve_recipe(train.parse_args(flags))
    return len(vitas.SHARINGS[args.sharing]) * (1 if args.sandwich is None else 2 + args.sandwich)


def supernet_job(name, seed, results, scratch, passes=PASSES):
    return {"kind": "supernet", "name": f"{name} seed {seed}",
            "path": runs.record_path(results, "supernets", f"{name}-s{seed}"),
            "recipe": name, "seed": seed, "scratch": os.path.join(scratch, "supernets", f"{name}-s{seed}"),
            "size": SIZE, "passes": passes}


def train_and_search(job, flags, epochs, scratch):
    """One super-transformer of train.py `flags`, trained `epochs` in `scratch`, then searched
    (evolution and random search) and its reference archs scored (those of its patch sizes)."""
    super_dir = os.path.join(scratch, "super")
    argv = ["--out", super_dir, "--seed", str(job["seed"]), "--epochs", str(epochs),
            "--uniform-epochs", str(epochs // 3), *base(), *flags]
    cpu = time.process_time()
    train.train(train.parse_args(argv))
    train_cpu = (time.process_time() - cpu) / 60
    ck_path = os.path.join(super_dir, "checkpoint.pt")
    # on the held-out split alone, as every grid record was scored (the larger split: rescore)
    sargv = ["--ckpt", ck_path, *WINDOW, *SEARCH, "--compare", "--holdout-extra", "0",
             "--seed", str(job["seed"]), "--device", "cpu", "--out", os.path.join(scratch, "search")]
    args = search.parse_args(sargv)
    os.makedirs(args.out, exist_ok=True)
    ck, space, fitness, n_eval = search.load_supernet(args, runs.Dist())   # loaded once: search and reference
    searches = search.search_algorithms(args, space, ck, fitness, {}, runs.Dist())
    with open(os.path.join(super_dir, "log.jsonl")) as f:
        last = json.loads(f.read().splitlines()[-1])        # the reported archs at the end of training
    reported = {k: {"arch": v["arch"], "val_top1": last["val"][k]["top1"]} for k, v in last["reported"].items()}
    return {"reported": reported,
            "patch_sizes": list(space.patch_sizes), "train_argv": argv, "search_argv": sargv, "steps": ck["step"],
            "train_cpu_minutes": train_cpu, "holdout_images": n_eval, "identity_prob": ck["identity_prob"],
            "sampled": record.learned_phase_statistics(os.path.join(super_dir, "log.jsonl"), epochs // 3),
            "inherited": {name: {a: fitness(a) for a in archs if a.patch_size in space.patch_sizes}
                          for name, (archs, _) in reference_sets().items()},
            "search": {algo: {k: evo.best[k] for k in ("arch", "top1", "loss", "flops")}
                       for algo, evo in searches.items()}}


def merge_split(parts):
    """One record of the super-transformers of a split recipe (train_and_search's, one per patch
    size, equal steps each): each reference arch scored by its patch size's, each search's pick
    the one of higher held-out top-1, the sampler statistics and costs over all steps; each
    part's own figures under "parts"."""
    n = len(parts)
    patches = [str(p) for part in parts for p in part["patch_sizes"]]
    own = {p: part for part in parts for p in part["patch_sizes"]}
    return {"steps": sum(p["steps"] for p in parts), "train_cpu_minutes": sum(p["train_cpu_minutes"] for p in parts),
            "holdout_images": parts[0]["holdout_images"],
            "sampled": {"block_share": np.mean([p["sampled"]["block_share"] for p in parts], axis=0).tolist(),
                        "patch_share": {q: sum(p["sampled"]["patch_share"].get(q, 0.0) for p in parts) / n
                                        for q in patches},
                        "depth_share": np.mean([p["sampled"]["depth_share"] for p in parts], axis=0).tolist()},
            "inherited": {name: {a: own[a.patch_size]["inherited"][name][a] for a in archs}
                          for name, (archs, _) in reference_sets().items()},
            "search": {algo: max((p["search"][algo] for p in parts), key=lambda best: best["top1"])
                       for algo in parts[0]["search"]},
            "parts": [{k: v for k, v in p.items() if k not in ("inherited", "search")} for p in parts]}


def run_supernet(job):
    flags = GRID[job["recipe"]]
    if job["recipe"] in SPLIT:                             # a super-transformer per patch size, in scratch/pP
        split = [(["--patch-sizes", str(p)], os.path.join(job["scratch"], f"p{p}")) for p in TINY.patch_sizes]
    else:
        split = [([], job["scratch"])]
    epochs = job.get("passes", PASSES) // passes_of(flags) // len(split)   # equal passes, however many models
    parts = [train_and_search(job, [*flags, *extra], epochs, scratch) for extra, scratch in split]
    record = merge_split(parts) if len(parts) > 1 else {k: v for k, v in parts[0].items() if k != "patch_sizes"}
    record["inherited"] = {name: [{"arch": a.to_dict(), **record["inherited"][name][a]} for a in archs]
                           for name, (archs, _) in reference_sets().items()}
    return {"recipe": job["recipe"], "seed": job["seed"], "passes_per_step": passes_of(flags), **record}


# -----------------------------------------------------------------------------
# Fitness variants on the grid's super-transformers (beyond the paper): every measure on the
# held-out split the search used and on a larger one, and the search again under one of them

EXTRA = cli.HOLDOUT_EXTRA     # generated held-out images beside the quick start's 600: 6,000


def rescore_job(recipe, seed, extra, fitness, results, scratch):
    name = f"{recipe}-s{seed}-h{extra}" + (f"-{fitness}" if fitness else "")
    return {"kind": "rescore", "name": f"rescore {name}", "path": runs.record_path(results, "rescore", name),
            "recipe": recipe, "seed": seed, "extra": extra, "fitness": fitness, "size": SIZE,
            "stored": runs.record_path(results, "supernets", f"{recipe}-s{seed}"),
            "scratch": os.path.join(scratch, "supernets", f"{recipe}-s{seed}")}


def run_rescore(job):
    """A grid record's super-transformer (trained from the record's flags where its checkpoint is
    gone or unfinished) scores the window reference with every fitness measure (search.FITNESS) on
    its held-out split, where it must give the record's top-1 again, and with job["extra"] more
    generated images; the CPU-seconds an arch takes on each. With a fitness, the evolutionary search
    again (the grid's settings) on the larger split."""
    stored, super_dir = runs.read_record(job["stored"]), os.path.join(job["scratch"], "super")
    ck_path, argv = os.path.join(super_dir, "checkpoint.pt"), list(stored["train_argv"])
    argv[argv.index("--out") + 1] = super_dir
    train.train(train.parse_args(argv))             # a finished checkpoint: kept as it is
    want = {json.dumps(x["arch"]): x["top1"] for x in stored["inherited"]["window"]}
    archs = [a for a in reference_sets()["window"][0] if json.dumps(a.to_dict()) in want]
    out = {"recipe": job["recipe"], "seed": job["seed"], "fitness": job["fitness"]}
    for split, extra in (("stored", 0), ("larger", job["extra"])):      # the search below runs on the last
        sargv = ["--ckpt", ck_path, *WINDOW, *SEARCH, "--seed", str(job["seed"]),
                 "--device", "cpu", "--fitness", job["fitness"] or "top1", "--holdout-extra", str(extra),
                 "--out", os.path.join(job["scratch"], f"search-{job['fitness'] or 'scores'}-h{extra}")]
        args = search.parse_args(sargv)
        ck, space, fitness, n = search.load_supernet(args, runs.Dist())
        cpu = time.process_time()
        scores = [fitness(a) for a in archs]
        out[split] = {"holdout_images": n, "cpu_seconds_per_arch": (time.process_time() - cpu) / len(archs),
                      "inherited": [{"arch": a.to_dict(), **sc} for a, sc in zip(archs, scores)]}
        if split == "stored" and [sc["top1"] for sc in scores] != [want[json.dumps(a.to_dict())] for a in archs]:
            raise cli.UserError(f"{ck_path} does not give the held-out top-1 of {job['stored']} again: another "
                                f"run's checkpoint? give its own --scratch")
    if job["fitness"]:      # its pick goes by recipe/fitness@held-out images beside the grid's
        out["variant"] = f"{job['recipe']}/{job['fitness']}@{out['larger']['holdout_images']}"
        os.makedirs(args.out, exist_ok=True)
        cpu = time.process_time()
        evo = search.search_algorithms(args, space, ck, fitness, {}, runs.Dist())["evolution"]
        out["search"] = {"argv": sargv, "cpu_minutes": (time.process_time() - cpu) / 60, "evolution": evo.best}
    return out


RUNNERS = {"alone": run_alone, "supernet": run_supernet, "rescore": run_rescore}


# -----------------------------------------------------------------------------
# The outcome: does the searched arch beat hand design and chance?

RANDOM_ARCHS = 8


@functools.lru_cache(maxsize=None)
def comparison_archs():
    """What every searched arch is compared with (rankcheck.comparison_archs), in the window."""
    return rankcheck.comparison_archs(TINY, LO, HI, RANDOM_ARCHS)


def searched_archs(results, recipes):
    """{(recipe, supernet seed): the arch its evolutionary search picked}, from the supernet records
    there are and the rescored searches (their recipe: the record's variant)."""
    out = {}
    for folder in ("supernets", "rescore"):
        for r in records(results, folder):
            name = r["recipe"] if folder == "supernets" else r.get("variant")
            if name is not None and name in recipes:
                out[name, r["seed"]] = vitas.Arch.from_dict(r["search"]["evolution"]["arch"])
    return out


def outcome_jobs(results, scratch, recipes):
    """Every arch of the outcome trained alone as the reference is: the hand designs on DESIGN_SEEDS,
    then each searched arch (recipes in the order given) on OUTCOME_SEEDS, the random archs on
    RANDOM_SEEDS; an arch already trained (in the reference, or picked twice) is trained once."""
    compared = comparison_archs()
    designs = [compared[name] for name in rankcheck.BASELINES]
    picks = [a for (recipe, _), a in sorted(searched_archs(results, recipes).items(),
                                            key=lambda item: (recipes.index(item[0][0]), item[0][1]))]
    randoms = [a for name, a in compared.items() if name.startswith("random")]
    todo = ([(a, s) for a in designs for s in DESIGN_SEEDS] + [(a, s) for a in picks for s in OUTCOME_SEEDS]
            + [(a, s) for a in randoms for s in RANDOM_SEEDS])
    return [alone_job(a, alone_argv(s), results, scratch) for a, s in dict.fromkeys(todo)]


def alone_seeds(results, arch, seeds):
    """An arch's top-1 trained alone under each of `seeds`; None until every seed has a record."""
    top1 = alone_top1(results, arch, seeds)
    return [top1[s] for s in seeds] if len(top1) == len(seeds) else None


def outcome_rows(results, recipes):
    """Per recipe and supernet seed: the searched arch's top-1 trained alone (mean over OUTCOME_SEEDS)
    beside each hand design's (over DESIGN_SEEDS; each training seed's kept for the margin's interval) and
    the random archs' median (means over RANDOM_SEEDS), and whether it wins: above both designs
    and the random median."""
    compared = comparison_archs()
    designs = {name: alone_seeds(results, compared[name], DESIGN_SEEDS) for name in rankcheck.BASELINES}
    randoms = [alone_seeds(results, a, RANDOM_SEEDS) for name, a in compared.items() if name.startswith("random")]
    if None in designs.values() or None in randoms:
        return []
    median = float(np.median([np.mean(r) for r in randoms]))
    rows, best = [], max(np.mean(d) for d in designs.values())
    for (recipe, seed), arch in sorted(searched_archs(results, recipes).items()):
        top1 = alone_seeds(results, arch, OUTCOME_SEEDS)
        if top1 is not None:
            mean = float(np.mean(top1))
            rows.append({"recipe": recipe, "seed": seed, "arch": arch.to_dict(), "flops": vitas.flops(arch, TINY),
                         "top1": mean, "top1_seeds": top1, "designs": designs,
                         **{name: float(np.mean(d)) for name, d in designs.items()}, "random_median": median,
                         "wins": mean > max(best, median)})
    return rows


# -----------------------------------------------------------------------------
# The table: every figure from results/ (report.py writes their text, RESULTS.md and the README's summary)


def supernet_rows(results, refs):
    """Per super-transformer record, by recipe and seed: its rank statistics against each complete
    reference set (reference_table)."""
    rows = []
    for r in records(results, "supernets"):
        row = {"recipe": r["recipe"], "seed": r["seed"], "cpu_minutes": r["train_cpu_minutes"], "sampled": r["sampled"],
               "search": r["search"], **({"reported": r["reported"]} if "reported" in r else {})}
        for name, table in refs.items():
            if len(table) < 2:   # not trained yet
                continue
            inherited = {json.dumps(x["arch"]): x for x in r["inherited"][name]}
            archs = [a for a, _ in table]
            found = [inherited[json.dumps(a.to_dict())] for a in archs]
            scores = [x["top1"] for x in found]
            row[name] = {**rankcheck.rank_statistics(scores, [t for _, t in table], archs, TINY), "fitness": scores,
                         # the other fitness the same held-out pass gives: minus the held-out loss
                         "loss_fitness": [-x["loss"] for x in found]}
        rows.append(row)
    order = list(GRID)                              # the recipes in GRID's order, then any other
    return sorted(rows, key=lambda r: (order.index(r["recipe"]) if r["recipe"] in order else len(order), r["recipe"],
                                       r["seed"]))


def rescored(rescores, window):
    """{(recipe, measure, held-out images): {supernet seed: (fitness of each window arch, CPU-seconds
    per arch)}} of the rescore records."""
    archs, out = [json.dumps(a.to_dict()) for a, _ in window], {}
    for r in rescores:
        for split in (r["stored"], r["larger"]):
            by = {json.dumps(x["arch"]): x for x in split["inherited"]}
            for m in search.FITNESS:
                out.setdefault((r["recipe"], m, split["holdout_images"]), {})[r["seed"]] = (
                    [search.fitness_value(by[a], m) for a in archs], split["cpu_seconds_per_arch"])
    return out


def table(results, markdown=False):
    """The reference, every super-transformer's ranking and learning, the outcome and the benchmarks,
    from results/ without training anything: printed (report.render; markdown: RESULTS.md's text);
    returns the figures and, under "text", the text."""
    tables = reference_table(results)                   # read once: every section scores against it
    refs, supers = report.reference_rows(tables), supernet_rows(results, tables)
    default = train.DEFAULT_RECIPE                      # a remedy must beat the default, not only v2
    scored = supers and len(tables["window"]) >= 2      # the window reference trained: supernets can be scored
    per_recipe = report.recipe_rows(supers, tables["window"], TINY, ("v2", default)) if scored else []
    versus = [{"recipe": r["recipe"], **r["minus"][default]} for r in per_recipe if r["minus"][default] is not None]
    learning = report.learning_rows(supers, tables["window"], reported_alone(results)) if scored else ([], [])
    fitness = report.fitness_rows(supers, tables["window"]) if scored else []
    rescores = records(results, "rescore")
    variants = report.variant_rows(rescored(rescores, tables["window"]), tables["window"]) if scored else []
    outcome = outcome_rows(results, list(dict.fromkeys([r["recipe"] for r in supers] + [   # every recipe's records
        r["variant"] for r in rescores if "variant" in r])))
    window_ref = next((r for r in refs if r["set"] == "window"), None)
    settings = [setting_rows(results, name, tables, window_ref, per_recipe, learning[1]) for name in SETTINGS
                if os.path.isdir(os.path.join(results, name, "supernets"))]
    figures = {"setup": {"lo": LO, "hi": HI, "data_seed": DATA_SEED, "per_cell": PER_CELL, "epochs": REFERENCE_EPOCHS,
                         "outcome_seeds": OUTCOME_SEEDS, "design_seeds": DESIGN_SEEDS, "random_seeds": RANDOM_SEEDS,
                         "random_archs": RANDOM_ARCHS},
               "reference": refs, "supernets": supers, "default": default, "recipes": per_recipe,
               "versus_default": versus, "learning_per_seed": learning[0], "learning": learning[1], "fitness": fitness,
               "variants": variants, "outcome": outcome,
               "margins": rankcheck.outcome_margins(outcome), "default_search": default_search(rescores, default),
               "design_standing": rankcheck.design_standing(outcome, tables["window"]) if outcome and scored else None,
               "settings": settings, "bench": records(results, "bench"),
               "provenance": report.provenance_rows(results)}
    figures["text"] = report.render(figures, markdown)
    print(figures["text"], end="")
    return figures


def default_search(rescores, recipe):
    """The rescore record of `recipe` that searched as search.py does by default (top-1 on EXTRA
    generated images beside the grid's held-out split), or None."""
    return next((r for r in rescores if r["recipe"] == recipe and r.get("fitness") == "top1"
                 and r["larger"]["holdout_images"] - r["stored"]["holdout_images"] == EXTRA), None)


def setting_rows(results, name, tables, window_ref, full_recipes, full_learning):
    """Per recipe of another setting's records (results/NAME, SETTINGS), beside the quick start's
    (its reference `tables`, window row `window_ref`, recipe and learning rows): tau_c on that
    setting's window reference, inherited / alone, and the best reported arch's val top-1 at the
    end of training (mean over supernet seeds)."""
    folder, size = os.path.join(results, name), SETTINGS[name].get("synthetic_size")
    with data_size(size):
        if size:                                        # its own reference; --passes alone keeps the quick start's
            tables = reference_table(folder)
            window_ref = next((r for r in report.reference_rows({"window": tables["window"]})
                               if r["set"] == "window"), None)
        supers = supernet_rows(folder, tables)
        archs = len(tables["window"])
        per_recipe = report.recipe_rows(supers, tables["window"], TINY, baselines=()) if archs >= 2 else []
        alone = reported_alone(folder if size else results)
        learning = ({r["recipe"]: r for r in report.learning_rows(supers, tables["window"], alone)[1]}
                    if archs >= 2 else {})
    full = {r["recipe"]: r for r in full_recipes}
    full_learn = {r["recipe"]: r for r in full_learning}
    rows = []
    for r in per_recipe:
        reported = [max(v["val_top1"] for v in s["reported"].values()) for s in supers   # records since 2026-12-02
                    if s["recipe"] == r["recipe"] and "reported" in s]
        rows.append({"recipe": r["recipe"], "seeds": r["seeds"], "tau_c": r["tau_c"],
                     "learning": learning[r["recipe"]], "best_reported": reported,
                     "full_tau_c": full.get(r["recipe"], {}).get("tau_c"),
                     "full_learning": full_learn.get(r["recipe"])})
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SETTINGS[name].items())
    return {"folder": folder, "flags": flags, "archs": archs, "rows": rows, "reference": window_ref}


# -----------------------------------------------------------------------------
# The command line


def recipe_arg(text):
    """A grid recipe, or a rescored search's variant: RECIPE/FITNESS@HELD-OUT."""
    recipe, _, rest = text.partition("/")
    if recipe in GRID and (not rest or rest.partition("@")[0] in search.FITNESS and rest.partition("@")[2].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither a recipe ({', '.join(GRID)}) nor RECIPE/FITNESS@N")


def get_parser():
    ap = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["reference", "grid", "rescore", "outcome", "table"])
    ap.add_argument("--results", default="results",
                    help="where each finished job's record goes (tracked in git; default results)")
    ap.add_argument("--scratch", default="runs/exp", help="checkpoints and logs of the jobs (default runs/exp)")
    ap.add_argument("--workers", type=cli.number_arg(int, 0), default=os.cpu_count() or 1,
                    help="worker processes, one thread each (default: one per core; 0: in this process)")
    ap.add_argument("--seeds", type=cli.number_arg(int, 0), nargs="+", default=[0, 1, 2, 3],
                    help="grid and rescore: supernet seeds")
    ap.add_argument("--recipes", nargs="+", type=recipe_arg, metavar="RECIPE",
                    help=f"grid: the recipes (default all: {', '.join(GRID)}); rescore: theirs to rescore (default "
                         f"{train.DEFAULT_RECIPE}); outcome: the recipes whose searched archs are retrained (default "
                         f"v2 fair), a rescored search's as RECIPE/FITNESS@HELD-OUT (e.g. v2+strat/prob@6000)")
    ap.add_argument("--holdout-extra", type=cli.number_arg(int, 1), default=EXTRA, metavar="N",
                    help=f"rescore: generated held-out images beside the search's (default {EXTRA})")
    ap.add_argument("--fitness", choices=search.FITNESS,
                    help="rescore: also search again under this measure on the larger split (default: score only)")
    ap.add_argument("--synthetic-size", type=cli.number_arg(int, 10), default=None, metavar="N",
                    help="every training on N synthetic training images instead of the quick start's (use another "
                         "--results for it, e.g. results/n1300: the table reads one setting)")
    ap.add_argument("--passes", type=cli.number_arg(int, 1), default=PASSES,
                    help=f"grid: sub-network passes per training step times epochs, the same for every recipe "
                         f"(default {PASSES}, the quick start's 30 bilateral epochs; use another --results, e.g. "
                         f"results/half for {PASSES // 2})")
    ap.add_argument("--markdown", action="store_true", help="table: as markdown (RESULTS.md's text)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="RESULTS.md",
                   help="table --markdown: write the file, and the README's summary beside it")
    g.add_argument("--check", metavar="RESULTS.md",
                   help="table --markdown: exit 2 if the file or the README's summary differ from what results/ gives")
    return ap


def main(argv=None):
    args = (ap := get_parser()).parse_args(argv)
    if (args.write or args.check) and not (args.command == "table" and args.markdown):
        ap.error("--write and --check go with table --markdown")
    if args.command in ("grid", "rescore") and any("/" in r for r in args.recipes or []):
        ap.error(f"{args.command} takes the grid's recipes ({', '.join(GRID)}); RECIPE/FITNESS@N names an outcome's")
    if args.command == "rescore" and set(args.recipes or []) & set(SPLIT):
        ap.error(f"rescore takes recipes of one super-transformer; {', '.join(SPLIT)} trains one per patch size")
    runs.run_command(run, args)


def run(args):
    global SIZE
    SIZE = args.synthetic_size
    runs.reuse_freed_memory()      # the table's bootstrap arrays too: a third of its time went to page faults
    if args.command == "reference":
        runs.run_jobs(reference_jobs(args.results, args.scratch), args.workers, execute)
    elif args.command == "grid":
        runs.run_jobs([supernet_job(name, seed, args.results, args.scratch, args.passes) for seed in args.seeds
                       for name in args.recipes or GRID], args.workers, execute)
    elif args.command == "rescore":
        jobs = [rescore_job(name, seed, args.holdout_extra, args.fitness, args.results, args.scratch)
                for seed in args.seeds for name in args.recipes or [train.DEFAULT_RECIPE]]
        if missing := [j["stored"] for j in jobs if not os.path.exists(j["stored"])]:
            raise cli.UserError(f"no grid record {', '.join(missing)}: run python experiment.py grid first")
        runs.run_jobs(jobs, args.workers, execute)
    elif args.command == "outcome":
        runs.run_jobs(outcome_jobs(args.results, args.scratch, args.recipes or ["v2", "fair"]), args.workers, execute)
    figures = table(args.results, args.markdown)
    if path := args.write or args.check:
        readme = os.path.join(os.path.dirname(os.path.abspath(path)), "README.md")
        report.write_docs(figures, path, readme, bool(args.check))


if __name__ == "__main__":
    main()
