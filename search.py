"""
ViTAS evolutionary search (arXiv 2106.13700, section 3: evolutionary search under a FLOPs budget) over
the archs of a trained super-transformer.

    python search.py --ckpt runs/super/checkpoint.pt --flops-min 2M --flops-max 4M --out runs/search
    torchrun --standalone --nproc_per_node=2 search.py ... --compare --retrain-epochs 5
    python search.py --out runs/search --rank-check 8      # does the super-transformer rank archs well?

The space, data and held-out split come from the checkpoint. Fitness is the held-out top-1 of the
inherited weights (mean of left and right with bilateral sharing), evaluated sharded across ranks (on
the synthetic data with 5,400 generated images more by default: --holdout-extra, beyond the paper);
every rank runs the same deterministic evolution, rank 0 writes candidates.jsonl, best_arch.json,
pareto.json, search.json and state.json (re-running the same command resumes).

The rank check draws K archs of the window evenly over its (patch size, depth) cells (apart from the
fitness under test), trains each alone and reports Kendall tau-b and Spearman rho between their
fitness and their val top-1 trained alone, corrected for the noise of that reference: how far the
super-transformer's judgement can be trusted (NAS-Bench studies call 0.6-0.8 usable; near 0 the
search is random).

The engine is pure Python + numpy: it proposes candidates inside a FLOPs window, and the caller
evaluates them and records the fitness.

    evo = Evolution(space, parse_count("0.9G"), parse_count("1.1G"), identity_prob=p, seed=0)
    for _ in range(generations):
        archs = evo.propose()
        evo.record(archs, [fitness(a) for a in archs])
    print(evo.best, pareto_front(evo.history))
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import cli
import data
import record
import rankcheck
import runs
import train
import vitas
from cli import UserError, parse_count
from runs import write_json

# -----------------------------------------------------------------------------
# Genetic operators


def pick(rng, choices):
    return choices[rng.integers(len(choices))]


def random_block(space, rng):
    heads = pick(rng, space.heads)
    return vitas.Block(heads, pick(rng, space.attn_for[heads]), pick(rng, space.mlp_dims))


def mutate(arch, space, rng, prob):
    """Re-draw each gene with probability prob: patch size, embed dim, and per block position
    its identity (toggled; a block that appears gets random widths), heads, attention and MLP width."""
    def redraw():
        return rng.random() < prob

    patch = pick(rng, space.patch_sizes) if redraw() else arch.patch_size
    embed = pick(rng, space.embed_dims) if redraw() else arch.embed_dim
    blocks = []
    for b in arch.blocks:
        if redraw():
            b = random_block(space, rng) if b is None else None
        elif b is not None:
            heads = pick(rng, space.heads) if redraw() else b.heads
            attn = b.attn_dim
            if redraw() or attn % heads:           # a width the new head count does not divide is redrawn too
                attn = pick(rng, space.attn_for[heads])
            b = vitas.Block(heads, attn, pick(rng, space.mlp_dims) if redraw() else b.mlp_dim)
        blocks.append(b)
    return vitas.Arch(patch, embed, tuple(blocks))


def crossover(a, b, space, rng):
    """Each gene from either parent with probability 1/2; a block position moves whole, so its
    heads and attention width stay a valid pair."""
    from_b = rng.random(2 + space.depth) < 0.5
    return vitas.Arch(b.patch_size if from_b[0] else a.patch_size, b.embed_dim if from_b[1] else a.embed_dim,
                      tuple(y if t else x for x, y, t in zip(a.blocks, b.blocks, from_b[2:])))


# -----------------------------------------------------------------------------
# Search: evolution, or random search as its baseline

ALGOS = ("evolution", "random")


def window_identity_prob(space, lo, hi):
    """vitas.solve_identity_prob for the search's FLOPs window; an empty or unreachable window is
    the user's mistake (a UserError: one line, no traceback)."""
    with cli.users_to_fix():
        return vitas.solve_identity_prob(space, lo, hi)


class Evolution:
    """Proposes a generation at a time; the caller evaluates it and records the fitness.

    Generation 0 is `population` archs sampled at identity_prob. Then (algo="evolution") the top
    `parents` of everything evaluated so far breed half the population by mutation and half by
    crossover; algo="random" keeps sampling instead, with the same number of evaluations.
    Candidates are unique, never evaluated before, and inside the FLOPs window (and params_max):
    the rest are rejected before evaluation. With identity_shift (a super-transformer trained with
    it) every candidate has its identity blocks moved to the end first, so archs that are one
    network are one candidate. Everything random comes from default_rng(seed)."""

    def __init__(self, space, flops_min, flops_max, *, params_max=None, population=50, parents=10,
                 mutate_prob=0.1, identity_prob=None, algo="evolution", seed=0, max_tries=10000, identity_shift=False,
                 throughput=None, throughput_min=None):
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
        for name, value, lo, hi in (("population", population, 2, math.inf), ("parents", parents, 2, population),
                                    ("max_tries", max_tries, 1, math.inf), ("seed", seed, 0, math.inf)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        for name, value in (("mutate_prob", mutate_prob), ("identity_prob", identity_prob)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        self.space, self.algo, self.seed, self.max_tries = space, algo, seed, max_tries
        self.identity_shift = bool(identity_shift)
        # images/s of an arch (a record.ThroughputMeter, cached) and the least a candidate may have
        self.throughput, self.throughput_min = throughput, throughput_min
        self.population, self.parents, self.mutate_prob = population, parents, float(mutate_prob)
        self.flops_min, self.flops_max = parse_count(flops_min), parse_count(flops_max)
        self.params_max = None if params_max is None else parse_count(params_max)
        self.rng = np.random.default_rng(seed)
        solved = window_identity_prob(space, self.flops_min, self.flops_max)   # at once: an unreachable window
        self.identity_prob = solved if identity_prob is None else float(identity_prob)
        if self.params_max is not None:
            fewest = min(vitas.params(space.empty_arch(p, space.embed_dims[0]), space)
                         for p in space.patch_sizes)
            if self.params_max < fewest:
                raise UserError(f"params_max {self.params_max:,} is unreachable: the smallest network of this "
                                 f"space has {fewest:,} parameters")
        self.history, self.generation, self.evaluated = [], 0, set()

    @property
    def settings(self):
        """Everything that decides the proposals; a resumed search must match it. The identity
        probability comes last: where it was solved for, it follows from the window and the seed."""
        return {"space": self.space.to_dict(), "flops_min": self.flops_min, "flops_max": self.flops_max,
                "params_max": self.params_max, "population": self.population, "parents": self.parents,
                "mutate_prob": self.mutate_prob, "algo": self.algo, "seed": self.seed,
                "identity_shift": self.identity_shift, "throughput_min": self.throughput_min,
                "identity_prob": self.identity_prob}

    def feasible(self, arch):
        """Inside the FLOPs window and params_max, and (measured last, the dearest) fast enough."""
        return (self.flops_min <= vitas.flops(arch, self.space) <= self.flops_max
                and (self.params_max is None or vitas.params(arch, self.space) <= self.params_max)
                and (self.throughput_min is None or self.throughput(arch) >= self.throughput_min))

    def propose(self):
        """The next generation's candidates. Call once per generation, then record() their fitness."""
        rng, space = self.rng, self.space

        def sample():
            return space.sample(rng, self.identity_prob)

        stages = [(self.population, sample, self.max_tries)]      # (quota, maker, tries it may use)
        if self.algo == "evolution" and self.history:
            ranked = sorted(self.history, key=lambda r: -r["fitness"])     # stable: earliest first among ties
            top = [vitas.Arch.from_dict(r["arch"]) for r in ranked[:self.parents]]

            def mutant():
                return mutate(top[rng.integers(len(top))], space, rng, self.mutate_prob)

            def child():
                i, j = rng.choice(len(top), 2, replace=False)
                return crossover(top[i], top[j], space, rng)

            # a converged population breeds mostly repeats: after 10 tries per place, samples fill in
            half, rest = self.population // 2, self.population - self.population // 2
            stages = [(half, mutant, 10 * half), (rest, child, 10 * rest)] + stages
        fresh, seen, tries = [], set(self.evaluated), 0
        for quota, make, patience in stages:
            target, stop = min(len(fresh) + quota, self.population), min(tries + patience, self.max_tries)
            while len(fresh) < target and tries < stop:
                tries += 1
                arch = make()
                if self.identity_shift:   # one network, one candidate: the path the super-transformer trained
                    arch = vitas.shift_identities(arch)
                if arch not in seen and self.feasible(arch):
                    seen.add(arch)
                    fresh.append(arch)
        if len(fresh) < self.population:
            budget = "" if self.params_max is None else f" with at most {self.params_max:,} params"
            raise UserError(
                f"generation {self.generation}: only {len(fresh)} of {self.population} new candidates inside the "
                f"FLOPs window [{self.flops_min:,}, {self.flops_max:,}]{budget} in {self.max_tries} tries; the "
                f"window is too narrow (or its networks are used up): widen it, lower the population or "
                f"raise max_tries")
        return fresh

    def record(self, archs, fitnesses, extras=None):
        """Store one generation's evaluated candidates in history and move on to the next generation;
        extras: an optional dict of further fields per arch (e.g. both fitness measures)."""
        archs, fitnesses = list(archs), [float(f) for f in fitnesses]
        extras = [{}] * len(archs) if extras is None else list(extras)
        if len(archs) != len(fitnesses):
            raise ValueError(f"record: {len(archs)} archs but {len(fitnesses)} fitnesses")
        if not all(map(math.isfinite, fitnesses)):
            raise ValueError(f"record: fitness must be finite, got {fitnesses}")
        if len(set(archs)) != len(archs) or not self.evaluated.isdisjoint(archs):
            raise ValueError("record: an arch is evaluated twice; record each candidate of propose() once")
        for arch, fit, extra in zip(archs, fitnesses, extras):
            self.history.append({"arch": arch.to_dict(), "flops": vitas.flops(arch, self.space),
                                 "params": vitas.params(arch, self.space), "fitness": fit, **extra,
                                 **({} if self.throughput_min is None else {"throughput": self.throughput(arch)}),
                                 "generation": self.generation})
        self.evaluated.update(archs)
        self.generation += 1

    @property
    def best(self):
        """The highest-fitness record (the earliest among ties); None before any record."""
        return max(self.history, key=lambda r: r["fitness"], default=None)

    def state_dict(self):
        """JSON-safe: settings, history, generation and the generator's state."""
        return {"settings": self.settings, "generation": self.generation, "history": list(self.history),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        """Resume where state_dict left off; the continuation equals an uninterrupted run."""
        missing = {"settings", "generation", "history", "rng"} - state.keys()
        if missing:
            raise ValueError(f"search state: missing field(s) {sorted(missing)}")
        for key, ours in self.settings.items():
            saved = state["settings"].get(key)
            if saved != ours:
                raise ValueError(f"search state was saved with {key} = {saved!r}, this search has {key} = {ours!r}; "
                                 f"resume with the same settings")
        self.history = [dict(r) for r in state["history"]]
        self.evaluated = {vitas.Arch.from_dict(r["arch"]) for r in self.history}
        self.generation = state["generation"]
        self.rng.bit_generator.state = state["rng"]


# -----------------------------------------------------------------------------
# Pareto front


def pareto_front(records, cost=lambda r: r["flops"]):
    """Records no other beats (fitness up, cost down: FLOPs, or e.g. minus throughput), by cost
    ascending. A record is dominated if another has cost <= and fitness >= with one of them strict,
    so exact ties both stay."""
    def point(r):
        return cost(r), r["fitness"]

    front = []
    for r in sorted(records, key=lambda r: (cost(r), -r["fitness"])):
        # all before r have FLOPs <=: r stays if it beats the best fitness so far (the last kept) or copies it
        if not front or r["fitness"] > front[-1]["fitness"] or point(r) == point(front[-1]):
            front.append(r)
    return front


# -----------------------------------------------------------------------------
# Fitness: accuracy of the inherited weights on the held-out split


FITNESS = ("top1", "loss", "prob")


def fitness_value(scores, measure):
    """Higher is better: held-out top-1, minus the held-out loss, or the mean true-class probability."""
    return -scores["loss"] if measure == "loss" else scores[measure]


def fitness_fn(supernet, loader, d, sides, amp=False):
    """An arch's slice of the trained super-transformer scored on the held-out subset: {"top1": %,
    "loss": mean cross-entropy, "prob": mean true-class probability}; with bilateral sharing, the
    mean over its left and right slices (arXiv 2106.13700 section 3). --fitness picks the measure."""
    def fitness(arch):
        res = [data.evaluate(supernet, loader, d, arch, side, amp) for side in sides]
        return {k: sum(r[k] for r in res) / len(res) for k in FITNESS}
    return fitness


# -----------------------------------------------------------------------------
# Running a search, and training archs alone


def run_search(args, space, fitness, identity_prob, identity_shift, algo, out, log, write, meter=None):
    """One resumable search into `out` (files written where `write`, i.e. on rank 0): state.json
    after every generation, candidates.jsonl, pareto.json (and pareto_throughput.json) and
    best_arch.json. `meter`: a throughput budget's SharedMeter. Returns the Evolution."""
    evo = Evolution(space, args.flops_min, args.flops_max, params_max=args.params_max, population=args.population,
                    parents=args.parents, mutate_prob=args.mutate_prob, identity_prob=identity_prob, algo=algo,
                    seed=args.seed, identity_shift=identity_shift, throughput=meter, throughput_min=args.throughput_min)
    state_path = os.path.join(out, "state.json")
    if os.path.exists(state_path):
        try:
            with open(state_path) as f:
                state = json.load(f)
            for flag, was, now in (("--fitness", state.get("fitness", "top1"), args.fitness),
                                   ("--holdout-extra", state.get("holdout_extra", 0), args.holdout_extra)):
                if was != now:
                    raise ValueError(f"it was searched with {flag} {was}, this run has {now}")
            evo.load_state_dict(state)
            if meter is not None:   # the figures the interrupted run measured: the same decisions again
                meter.load_state_dict(state.get("throughput", []))
        except (json.JSONDecodeError, ValueError) as e:
            raise UserError(f"cannot resume from {state_path}: {e}; use another --out or delete it") from None
        if write:   # a crash between the two files left candidates of a generation the state does not hold
            write_json(os.path.join(out, "candidates.jsonl"), evo.history, lines=True)
        log(f"[{algo}] resumed at generation {evo.generation}/{args.generations}")
    elif write and (aside := runs.set_aside(os.path.join(out, "candidates.jsonl"))):
        log(f"[{algo}] candidates.jsonl was an earlier search's (no state.json beside it): moved to {aside}")
    t0, g0 = time.time(), evo.generation
    while evo.generation < args.generations:
        archs = evo.propose()
        scores = [fitness(a) for a in archs]
        fits = [fitness_value(sc, args.fitness) for sc in scores]
        evo.record(archs, fits, scores)
        if write:
            write_json(os.path.join(out, "candidates.jsonl"), evo.history, lines=True)
            write_json(state_path, {"fitness": args.fitness, "holdout_extra": args.holdout_extra, **evo.state_dict(),
                                    **({} if meter is None else {"throughput": meter.state_dict()})})
        best = evo.best
        eta = (time.time() - t0) / (evo.generation - g0) * (args.generations - evo.generation)
        log(f"[{algo}] generation {evo.generation}/{args.generations}: best top-1 {best['top1']:.2f}% "
            f"loss {best['loss']:.3f} ({best['flops'] / 1e6:.2f} MFLOPs), "
            f"generation mean top-1 {np.mean([sc['top1'] for sc in scores]):.2f}%, "
            f"{len(evo.history)} evaluated, ETA {cli.fmt_time(eta)}")
    if write:
        write_json(os.path.join(out, "pareto.json"), pareto_front(evo.history))
        if meter is not None:
            write_json(os.path.join(out, "pareto_throughput.json"),
                       pareto_front(evo.history, cost=lambda r: -r["throughput"]))
        write_json(os.path.join(out, "best_arch.json"), {**evo.best["arch"], "space": evo.space.to_dict()})
    return evo


class SharedMeter(record.ThroughputMeter):
    """A ThroughputMeter whose figures rank 0 measures and broadcasts: every rank of a distributed
    search sees the same images/s, so every rank takes the same decisions."""

    def __init__(self, space, d, **kw):
        super().__init__(space, **kw)
        self.d = d

    def __call__(self, arch):
        if self.d.world == 1 or self.key(arch) in self.cache:
            return super().__call__(arch)
        value = [super().__call__(arch) if self.d.main else None]
        dist.broadcast_object_list(value, src=0)
        self.cache[self.key(arch)] = value[0]
        return value[0]


def throughput_meter(args, space, identity_prob, d):
    """The search's SharedMeter, after checking that --throughput-min is within reach: it measures
    the window's uniform archs (record.reported_archs) and 16 sampled ones first."""
    device = d.device
    batch = record.throughput_batch(args, device)
    meter = SharedMeter(space, d, device=device, batch=batch, amp=args.throughput_amp)
    rng = np.random.default_rng([args.seed, 3])
    with cli.users_to_fix():   # no uniform arch in the window: the user's to widen
        probe = list(record.reported_archs(space, (args.flops_min, args.flops_max)).values())
    while len(probe) < 19:
        a = space.sample(rng, identity_prob)
        if args.flops_min <= vitas.flops(a, space) <= args.flops_max:
            probe.append(a)
    speeds = sorted((meter(a), str(a)) for a in probe)
    d.log(f"throughput on {device} (batch {batch}{', bf16' if args.throughput_amp else ''}) of {len(probe)} archs "
        f"in the window: {speeds[0][0]:,.0f} to {speeds[-1][0]:,.0f} images/s")
    if args.throughput_min > speeds[-1][0]:
        raise UserError(f"--throughput-min {args.throughput_min:g} images/s is out of reach in the FLOPs window: "
                              f"the fastest measured arch does {speeds[-1][0]:,.0f} ({speeds[-1][1]}), "
                              f"the slowest {speeds[0][0]:,.0f} ({speeds[0][1]}); lower it or move the window")
    return meter


def compare_retrained(args, space, best, ck, d):
    """Retrain the searched arch and the hand-designed baselines of the nearest FLOPs in the window."""
    searched = vitas.Arch.from_dict(best["arch"])
    archs = {"searched": searched}
    for name, design in rankcheck.BASELINES.items():
        base = design(space, best["flops"], args.flops_min, args.flops_max)
        if base is None:
            raise UserError(f"no hand-designed network ({name}) lies in the FLOPs window; the search results are "
                                  f"in {args.out}: widen the window or leave out --retrain-epochs")
        archs[name] = base
    argv = rankcheck.alone_argv(ck, args.retrain_epochs, args.device, d.world, flags=args.retrain_flags)
    results = {}
    for name, arch in archs.items():
        res = train.train_alone(arch, rankcheck.alone_folder(alone_root(args), arch, argv), argv, d)
        results[name] = {"arch": arch.to_dict(), "flops": vitas.flops(arch, space),
                         "params": vitas.params(arch, space), **res}
    d.log(f"\nretrained {args.retrain_epochs} epochs, val accuracy:")
    for name, r in results.items():
        d.log(f"  {name:9s} top-1 {r['top1']:5.1f}%  top-5 {r['top5']:5.1f}%  {r['flops'] / 1e6:6.2f} MFLOPs  "
            f"{r['params'] / 1e6:.3f} M params  {vitas.Arch.from_dict(r['arch'])}")
    return results


def alone_root(args):
    """Where a search's archs trained alone go: --retrain-dir, or OUT/retrain."""
    return args.retrain_dir or os.path.join(args.out, "retrain")


def rank_check(args, space, ck, score, holdout_images, d):
    """How far the search's judgement can be trusted: --rank-check K archs of the window spread over
    its (patch, depth) cells by a seeded draw (spread_archs: not chosen by the fitness), scored by
    `score` (the inherited weights: {"top1", "loss", "prob"}) and trained alone for --rank-epochs with
    --rank-seeds training seeds (train.py's retrain mode on the checkpoint's data, --retrain-flags
    passed through). rank_check.json holds every arch's figures and rank_statistics(); resumable,
    a finished training is never redone."""
    archs = rankcheck.spread_archs(space, args.flops_min, args.flops_max, args.rank_check, args.seed)
    argvs = [rankcheck.alone_argv(ck, args.rank_epochs, args.device, d.world, seed, args.retrain_flags)
             for seed in range(args.rank_seeds)]
    out_path = os.path.join(args.out, "rank_check.json")
    root = alone_root(args)
    result = {"settings": {"k": args.rank_check, "epochs": args.rank_epochs, "seeds": args.rank_seeds,
                           "seed": args.seed, "flops_min": args.flops_min, "flops_max": args.flops_max,
                           "fitness": args.fitness, "holdout_images": holdout_images,
                           "retrain_flags": args.retrain_flags, "retrain_argv": argvs, "processes": d.world,
                           "picked": "spread over the window's (patch, depth) cells by a seeded draw",
                           "provenance": runs.provenance() if d.main else None},
              "archs": []}
    d.log(f"rank check: {len(archs)} archs spread over the window's (patch, depth) cells, each trained alone for "
        f"{args.rank_epochs} epochs with {args.rank_seeds} seed(s)")
    for i, arch in enumerate(archs):
        inherited = score(arch)
        vals = [train.train_alone(arch, rankcheck.alone_folder(root, arch, argv), argv, d) for argv in argvs]
        seeds = [v["top1"] for v in vals]
        result["archs"].append({"arch": arch.to_dict(), "flops": vitas.flops(arch, space),
                                "params": vitas.params(arch, space),
                                "fitness": fitness_value(inherited, args.fitness), "inherited": inherited,
                                "top1": float(np.mean(seeds)), "top1_seeds": seeds, "val_images": vals[0].get("n")})
        if d.main:
            write_json(out_path, result)
        d.log(f"rank check {i + 1}/{len(archs)}: fitness {result['archs'][-1]['fitness']:.3f}, alone "
            f"{' '.join(f'{t:.1f}' for t in seeds)}%  {arch}")
    rows = result["archs"]
    fitness, by_seed = [a["fitness"] for a in rows], [a["top1_seeds"] for a in rows]
    result["statistics"] = rankcheck.rank_statistics(fitness, by_seed, archs, space)
    others = result["statistics"]["other_measures"] = {}    # which measure ranks better is a question in itself
    for other in (m for m in FITNESS if m != args.fitness):
        values = [fitness_value(a["inherited"], other) for a in rows]
        others[other] = {**rankcheck.scores(values, by_seed, result["statistics"]["reliability"]),
                         "fitness_minus_other": rankcheck.paired_difference(fitness, values, by_seed)}
    if d.main:
        write_json(out_path, result)
    d.log(f"\nrank check ({args.fitness} of the inherited weights vs val top-1 trained alone, {len(rows)} archs):")
    for a in sorted(rows, key=lambda a: a["fitness"]):
        d.log(f"  fitness {a['fitness']:8.3f}  alone {a['top1']:5.1f}% "
            f"({' '.join(f'{t:.1f}' for t in a['top1_seeds'])})  "
            f"{a['flops'] / 1e6:5.2f} MFLOPs  {vitas.Arch.from_dict(a['arch'])}")
    d.log("  " + rankcheck.describe(result["statistics"]) + f"; wrote {out_path}")
    return result


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def resolve_from_folder(args):
    """--rank-check alone on a finished search folder: the checkpoint, window and fitness (and the
    held-out images scored, unless --eval-size or --holdout-extra is given) come from its search.json."""
    path = os.path.join(args.out, "search.json")
    if not args.rank_check or not os.path.exists(path):
        missing = [f for f, v in (("--ckpt", args.ckpt), ("--flops-min", args.flops_min),
                                  ("--flops-max", args.flops_max)) if v is None]
        raise UserError(f"{', '.join(missing)} required "
                              f"(or --rank-check K with --out a search folder holding search.json)")
    with open(path) as f:
        summary = json.load(f)
    settings = summary["settings"]
    args.ckpt, args.flops_min, args.flops_max = settings["ckpt"], settings["flops_min"], settings["flops_max"]
    args.fitness = settings.get("fitness", "top1")
    args.eval_size = args.eval_size or settings.get("eval_size")
    if args.holdout_extra is None:
        args.holdout_extra = settings.get("holdout_extra", 0)     # the images it scored on
    return summary


def load_supernet(args, d):
    """The checkpoint's space and args, and a fitness function on its held-out split."""
    ck = runs.load_checkpoint(args.ckpt, "--ckpt")
    if ck.get("mode") != "super":
        raise UserError(f"{args.ckpt} is a retrain checkpoint; search needs a super-transformer checkpoint")
    space, ck_args = vitas.SearchSpace(**ck["space"]), ck["args"]
    supernet, sides = runs.supernet_of(ck)
    supernet.to(d.device).eval()
    cli.resolve_holdout_extra(args, ck_args)
    datasets = data.build_datasets(argparse.Namespace(**{**ck_args, "download": False,
                                                         "holdout_extra": args.holdout_extra}), space.image_size)
    if len(datasets.holdout) == 0:
        raise UserError(f"{args.ckpt} was trained with --holdout 0: "
                              f"there are no held-out images to score archs on")
    loader = data.eval_loader(datasets.holdout, args.batch_size, d, ck_args.get("workers", 0), limit=args.eval_size)
    n_eval = min(len(datasets.holdout), args.eval_size or len(datasets.holdout))
    d.log(f"fitness: {args.fitness} on {n_eval} held-out images (one image = {100 / n_eval:.2f} points of top-1; "
        f"{' + '.join(sides)}), {d.world} process(es)")
    return ck, space, fitness_fn(supernet, loader, d, sides, ck_args.get("amp", False)), n_eval


def search(args):
    """The paper's search over a trained super-transformer (and, where asked, the retrain of its best
    arch beside hand-designed ones, and the rank check); or, with no --ckpt, the rank check alone on
    a finished search folder."""
    d = runs.setup_distributed(args.device, args.timeout)
    with runs.run_folder(args.out, d), runs.collectives_named(d, "the search"):    # one live run per folder
        return search_in_folder(args, d)


def search_in_folder(args, d):
    log = d.log
    alone = args.ckpt is None
    summary = resolve_from_folder(args) if alone else None
    ck, space, fitness, n_eval = load_supernet(args, d)
    lo, hi = vitas.flops(space.min_arch(), space), vitas.flops(space.max_arch(), space)
    log(f"search space: {lo / 1e6:.2f}-{hi / 1e6:.2f} MFLOPs with every block present; window "
        f"[{args.flops_min / 1e6:.2f}M, {args.flops_max / 1e6:.2f}M]")
    if not alone:
        os.makedirs(args.out, exist_ok=True)
        # written now so an interrupted search is still described; completed below
        summary = {"settings": vars(args), "checkpoint": os.path.abspath(args.ckpt), "checkpoint_step": ck["step"],
                   "identity_prob": ck["identity_prob"], "holdout_images": n_eval, "space": ck["space"],
                   "provenance": runs.provenance() if d.main else None}
        if d.main:
            write_json(os.path.join(args.out, "search.json"), summary)
        searches = search_algorithms(args, space, ck, fitness, summary, d)
        if args.retrain_epochs:
            summary["retrain"] = compare_retrained(args, space, searches[args.algo].best, ck, d)
    if args.rank_check:
        summary["rank_check"] = rank_check(args, space, ck, fitness, n_eval, d)["statistics"]
    if d.main:
        write_json(os.path.join(args.out, "search.json"), summary)
        if not alone:
            history = searches[args.algo].history
            other = [evo.history for algo, evo in searches.items() if algo != args.algo]
            record.plot_search(history, pareto_front(history), os.path.join(args.out, "pareto.png"),
                              best=summary["best"], retrained=summary.get("retrain"),
                              baseline_records=other[0] if other else None,
                              title=f"{args.algo} search, fitness {args.fitness}, "
                                    f"{summary['holdout_images']} held-out images")
        log(f"wrote {args.out}/search.json"
            + ("" if alone else ", best_arch.json, candidates.jsonl, pareto.json, pareto.png"))
    return summary


def search_algorithms(args, space, ck, fitness, summary, d):
    """--algo's search (and with --compare the other algorithm's, the same number of evaluations);
    each network scored on the path it trained (identity-shifted where the checkpoint says so).
    Completes `summary`; returns {algo: Evolution}."""
    log = d.log
    shift = runs.scores_shifted(ck["args"])
    p = (ck["identity_prob"] if ck["identity_prob"] is not None
         else window_identity_prob(space, args.flops_min, args.flops_max))
    meter = None if args.throughput_min is None else throughput_meter(args, space, p, d)
    if meter is not None:
        summary["throughput"] = {"device": device_name(d.device), "batch": meter.batch,
                                 "dtype": "bfloat16" if meter.amp else "float32", "min": args.throughput_min}
    p_trained = ck["identity_prob"]
    searches = {args.algo: run_search(args, space, fitness, p_trained, shift, args.algo, args.out, log, d.main, meter)}
    if args.compare:
        other = "random" if args.algo == "evolution" else "evolution"
        os.makedirs(os.path.join(args.out, other), exist_ok=True)
        searches[other] = run_search(args, space, fitness, p_trained, shift, other, os.path.join(args.out, other),
                                     log, d.main, meter)
        summary["compare"] = {algo: evo.best for algo, evo in searches.items()}
    summary.update(evaluations=len(searches[args.algo].history), best=searches[args.algo].best)
    for algo, evo in searches.items():
        b = evo.best
        log(f"{algo:9s} best: {b['top1']:.2f}% held-out top-1, loss {b['loss']:.3f}, {b['flops'] / 1e6:.2f} MFLOPs, "
            f"{b['params'] / 1e6:.3f} M params: {vitas.Arch.from_dict(b['arch'])}")
    return searches


def get_parser():
    return cli.search_parser(__doc__, ALGOS, FITNESS)


def parse_args(argv=None):
    return cli.parse_search_args(get_parser(), argv)


def main(argv=None):
    runs.run_command(search, parse_args(argv))


if __name__ == "__main__":
    main()
