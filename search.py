"""
ViTAS evolutionary search (METHOD.md section 6) over the archs of a trained super-transformer.

    python search.py --ckpt runs/super/checkpoint.pt --flops-min 2M --flops-max 4M --out runs/search
    torchrun --standalone --nproc_per_node=2 search.py ... --compare --retrain-epochs 5

The space, data and held-out split come from the checkpoint. Fitness is the held-out top-1 of the
inherited weights (mean of left and right with bilateral sharing), evaluated sharded across ranks;
every rank runs the same deterministic evolution, rank 0 writes candidates.jsonl, best_arch.json,
pareto.json, search.json and state.json (re-running the same command resumes).

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
import torch.distributed as dist

import train
import vitas
from train import parse_count

# -----------------------------------------------------------------------------
# Genetic operators


def pick(rng, choices):
    return choices[rng.integers(len(choices))]


def random_block(space, rng):
    heads = pick(rng, space.heads)
    return vitas.Block(heads, pick(rng, space._attn_for[heads]), pick(rng, space.mlp_dims))


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
                attn = pick(rng, space._attn_for[heads])
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


class Evolution:
    """Proposes a generation at a time; the caller evaluates it and records the fitness.

    Generation 0 is `population` archs sampled at identity_prob. Then (algo="evolution") the top
    `parents` of everything evaluated so far breed half the population by mutation and half by
    crossover; algo="random" keeps sampling instead, with the same number of evaluations.
    Candidates are unique, never evaluated before, and inside the FLOPs window (and params_max):
    the rest are rejected before evaluation. Everything random comes from default_rng(seed)."""

    def __init__(self, space, flops_min, flops_max, *, params_max=None, population=50, parents=10,
                 mutate_prob=0.1, identity_prob=None, algo="evolution", seed=0, max_tries=10000):
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
        self.population, self.parents, self.mutate_prob = population, parents, float(mutate_prob)
        self.flops_min, self.flops_max = parse_count(flops_min), parse_count(flops_max)
        self.params_max = None if params_max is None else parse_count(params_max)
        self.rng = np.random.default_rng(seed)
        # raises at once where the window is empty or out of the space's reach
        solved = vitas.solve_identity_prob(space, self.flops_min, self.flops_max, self.rng)
        self.identity_prob = solved if identity_prob is None else float(identity_prob)
        if self.params_max is not None:
            fewest = min(vitas.params(vitas.Arch(p, space.embed_dims[0], (None,) * space.depth), space)
                         for p in space.patch_sizes)
            if self.params_max < fewest:
                raise ValueError(f"params_max {self.params_max:,} is unreachable: the smallest network of this "
                                 f"space has {fewest:,} parameters")
        self.history, self.generation, self.evaluated = [], 0, set()

    @property
    def settings(self):
        """Everything that decides the proposals; a resumed search must match it. The identity
        probability comes last: where it was solved for, it follows from the window and the seed."""
        return {"space": self.space.to_dict(), "flops_min": self.flops_min, "flops_max": self.flops_max,
                "params_max": self.params_max, "population": self.population, "parents": self.parents,
                "mutate_prob": self.mutate_prob, "algo": self.algo, "seed": self.seed,
                "identity_prob": self.identity_prob}

    def feasible(self, arch):
        return (self.flops_min <= vitas.flops(arch, self.space) <= self.flops_max
                and (self.params_max is None or vitas.params(arch, self.space) <= self.params_max))

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
                if arch not in seen and self.feasible(arch):
                    seen.add(arch)
                    fresh.append(arch)
        if len(fresh) < self.population:
            budget = "" if self.params_max is None else f" with at most {self.params_max:,} params"
            raise ValueError(
                f"generation {self.generation}: only {len(fresh)} of {self.population} new candidates inside the "
                f"FLOPs window [{self.flops_min:,}, {self.flops_max:,}]{budget} in {self.max_tries} tries; the "
                f"window is too narrow (or its networks are used up): widen it, lower the population or raise max_tries")
        return fresh

    def record(self, archs, fitnesses):
        """Store one generation's evaluated candidates in history and move on to the next generation."""
        archs, fitnesses = list(archs), [float(f) for f in fitnesses]
        if len(archs) != len(fitnesses):
            raise ValueError(f"record: {len(archs)} archs but {len(fitnesses)} fitnesses")
        if not all(map(math.isfinite, fitnesses)):
            raise ValueError(f"record: fitness must be finite, got {fitnesses}")
        if len(set(archs)) != len(archs) or not self.evaluated.isdisjoint(archs):
            raise ValueError("record: an arch is evaluated twice; record each candidate of propose() once")
        for arch, fit in zip(archs, fitnesses):
            self.history.append({"arch": arch.to_dict(), "flops": vitas.flops(arch, self.space),
                                 "params": vitas.params(arch, self.space), "fitness": fit,
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


def pareto_front(records):
    """Records no other beats (fitness up, FLOPs down), by FLOPs ascending. A record is dominated
    if another has FLOPs <= and fitness >= with one of them strict, so exact ties both stay."""
    def point(r):
        return r["flops"], r["fitness"]

    front = []
    for r in sorted(records, key=lambda r: (r["flops"], -r["fitness"])):
        # all before r have FLOPs <=: r stays if it beats the best fitness so far (the last kept) or copies it
        if not front or r["fitness"] > front[-1]["fitness"] or point(r) == point(front[-1]):
            front.append(r)
    return front


# -----------------------------------------------------------------------------
# Fitness: accuracy of the inherited weights on the held-out split


def fitness_fn(supernet, loader, d, sides, amp=False):
    """Top-1 (%) of an arch's slice of the trained super-transformer on the held-out subset; with
    bilateral sharing, the mean of its left and right accuracy (METHOD.md section 3)."""
    def fitness(arch):
        return sum(train.evaluate(supernet, loader, d, arch, side, amp)["top1"] for side in sides) / len(sides)
    return fitness


def baseline_arch(space, target_flops, flops_min, flops_max):
    """A hand-designed network to compare with: every block present and alike (DeiT style),
    heads = attention width / 16 where possible, the FLOPs nearest the target inside the window."""
    best = None
    for p in space.patch_sizes:
        for c in space.embed_dims:
            for a in space.attn_dims:
                heads = [h for h in space.heads if a % h == 0]
                if not heads:
                    continue
                h = min(heads, key=lambda h: abs(a / h - 16))
                for m in space.mlp_dims:
                    arch = vitas.Arch(p, c, (vitas.Block(h, a, m),) * space.depth)
                    f = vitas.flops(arch, space)
                    if flops_min <= f <= flops_max and (best is None or abs(f - target_flops) < best[0]):
                        best = (abs(f - target_flops), arch)
    return None if best is None else best[1]


# -----------------------------------------------------------------------------
# Files


def write_json(path, obj, lines=False):
    """Atomic: a crash mid-write leaves the previous file whole."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        if lines:
            f.writelines(json.dumps(r) + "\n" for r in obj)
        else:
            json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_search(args, space, fitness, identity_prob, algo, out, log, write):
    """One resumable search into `out` (files written where `write`, i.e. on rank 0): state.json
    after every generation, candidates.jsonl, pareto.json and best_arch.json. Returns the Evolution,
    or None where --stop-after interrupted it."""
    evo = Evolution(space, args.flops_min, args.flops_max, params_max=args.params_max, population=args.population,
                    parents=args.parents, mutate_prob=args.mutate_prob, identity_prob=identity_prob, algo=algo,
                    seed=args.seed)
    state_path = os.path.join(out, "state.json")
    if os.path.exists(state_path):
        try:
            with open(state_path) as f:
                evo.load_state_dict(json.load(f))
        except (json.JSONDecodeError, ValueError) as e:
            raise train.UserError(f"cannot resume from {state_path}: {e}; use another --out or delete it") from None
        log(f"[{algo}] resumed at generation {evo.generation}/{args.generations}")
    t0, g0 = time.time(), evo.generation
    while evo.generation < args.generations:
        archs = evo.propose()
        fits = [fitness(a) for a in archs]
        evo.record(archs, fits)
        if write:
            write_json(os.path.join(out, "candidates.jsonl"), evo.history, lines=True)
            write_json(state_path, evo.state_dict())
        best = evo.best
        eta = (time.time() - t0) / (evo.generation - g0) * (args.generations - evo.generation)
        log(f"[{algo}] generation {evo.generation}/{args.generations}: best {best['fitness']:.2f}% "
            f"({best['flops'] / 1e6:.2f} MFLOPs), generation mean {np.mean(fits):.2f}%, "
            f"{len(evo.history)} evaluated, ETA {train.fmt_time(eta)}")
        if args.stop_after and evo.generation >= args.stop_after:   # for tests: simulate an interruption
            return None
    if write:
        write_json(os.path.join(out, "pareto.json"), pareto_front(evo.history))
        write_json(os.path.join(out, "best_arch.json"), evo.best["arch"])
    return evo


def retrain(arch_path, out, args, ck_args, log):
    """Retrain an arch briefly with train.py's retrain mode on the checkpoint's data; final val top-1."""
    argv = ["--arch", arch_path, "--out", out, "--epochs", str(args.retrain_epochs), "--space", ck_args["space"],
            "--data", ck_args["data"], "--data-root", ck_args["data_root"], "--seed", str(ck_args["seed"]),
            "--synthetic-size", str(ck_args["synthetic_size"]), "--synthetic-classes", str(ck_args["synthetic_classes"]),
            "--holdout", str(ck_args["holdout"]), "--batch-size", str(ck_args["batch_size"]), "--lr", str(ck_args["lr"]),
            "--device", args.device, "--log-every", "1000"]
    log(f"retraining {arch_path} for {args.retrain_epochs} epochs into {out}")
    return train.train(train.get_parser().parse_args(argv))["val"]["model"]


def search(args):
    d = train.setup_distributed(args.device)
    log = d.log
    ck = train.load_checkpoint(args.ckpt)
    if ck.get("mode") != "super":
        raise train.UserError(f"{args.ckpt} is a retrain checkpoint; search needs a super-transformer checkpoint")
    space = vitas.SearchSpace(**ck["space"])
    ck_args = ck["args"]
    lo, hi = vitas.flops(space.min_arch(), space), vitas.flops(space.max_arch(), space)
    log(f"search space: {lo / 1e6:.2f}-{hi / 1e6:.2f} MFLOPs with every block present; window "
        f"[{args.flops_min / 1e6:.2f}M, {args.flops_max / 1e6:.2f}M]")

    supernet = vitas.SuperTransformer(space)
    supernet.load_state_dict(ck["model"])
    supernet.to(d.device).eval()
    data = train.build_datasets(argparse.Namespace(**{**ck_args, "download": False}), space.image_size)
    loader = train.eval_loader(data.holdout, args.batch_size, d, ck_args.get("workers", 0), limit=args.eval_size)
    sides = vitas.SIDES if ck_args["sharing"] == "bilateral" else ("left",)
    n_eval = min(len(data.holdout), args.eval_size or len(data.holdout))
    log(f"fitness: top-1 on {n_eval} held-out images ({' + '.join(sides)}), {d.world} process(es)")
    fitness = fitness_fn(supernet, loader, d, sides, ck_args.get("amp", False))

    os.makedirs(args.out, exist_ok=True)
    # written now so an interrupted search is still described; completed below
    summary = {"settings": {k: v for k, v in vars(args).items() if k != "stop_after"},
               "checkpoint": os.path.abspath(args.ckpt), "checkpoint_step": ck["step"], "identity_prob": ck["identity_prob"]}
    if d.main:
        write_json(os.path.join(args.out, "search.json"), summary)
    runs = {args.algo: run_search(args, space, fitness, ck["identity_prob"], args.algo, args.out, log, d.main)}
    if args.compare:
        other = "random" if args.algo == "evolution" else "evolution"
        os.makedirs(os.path.join(args.out, other), exist_ok=True)
        runs[other] = run_search(args, space, fitness, ck["identity_prob"], other, os.path.join(args.out, other), log, d.main)
    if any(evo is None for evo in runs.values()):
        return None
    summary.update(evaluations=len(runs[args.algo].history), best=runs[args.algo].best)
    for algo, evo in runs.items():
        b = evo.best
        log(f"{algo:9s} best: {b['fitness']:.2f}% held-out top-1, {b['flops'] / 1e6:.2f} MFLOPs, "
            f"{b['params'] / 1e6:.3f} M params: {vitas.Arch.from_dict(b['arch'])}")
    if args.compare:
        summary["compare"] = {algo: evo.best for algo, evo in runs.items()}

    if args.retrain_epochs:
        best = runs[args.algo].best
        base = baseline_arch(space, best["flops"], args.flops_min, args.flops_max)
        if base is None:
            raise train.UserError(f"no hand-designed network (every block alike) lies in the FLOPs window; the search "
                                  f"results are in {args.out}: widen the window or leave out --retrain-epochs")
        base_path = os.path.join(args.out, "baseline_arch.json")
        if d.main:
            write_json(base_path, base.to_dict())
        if d.world > 1:
            dist.barrier()
        results = {}
        for name, path in (("searched", os.path.join(args.out, "best_arch.json")), ("baseline", base_path)):
            res = retrain(path, os.path.join(args.out, f"retrain-{name}"), args, ck_args, log)
            with open(path) as f:
                arch = vitas.Arch.from_dict(json.load(f))
            results[name] = {"arch": arch.to_dict(), "flops": vitas.flops(arch, space), "params": vitas.params(arch, space), **res}
        summary["retrain"] = results
        log(f"\nretrained {args.retrain_epochs} epochs, val accuracy:")
        for name, r in results.items():
            log(f"  {name:9s} top-1 {r['top1']:5.1f}%  top-5 {r['top5']:5.1f}%  {r['flops'] / 1e6:6.2f} MFLOPs  "
                f"{r['params'] / 1e6:.3f} M params  {vitas.Arch.from_dict(r['arch'])}")
    if d.main:
        write_json(os.path.join(args.out, "search.json"), summary)
        log(f"wrote {args.out}/best_arch.json, candidates.jsonl, pareto.json, search.json")
    return summary


def get_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="super-transformer checkpoint.pt from train.py (space, data and holdout come from it)")
    ap.add_argument("--flops-min", type=train.count_arg, required=True, help="e.g. 0.9G, 900M or a plain number (MACs)")
    ap.add_argument("--flops-max", type=train.count_arg, required=True, help="e.g. 1.1G")
    ap.add_argument("--params-max", type=train.count_arg, default=None, help="optional parameter budget, e.g. 6M")
    ap.add_argument("--algo", default="evolution", choices=ALGOS)
    ap.add_argument("--compare", action="store_true", help="also run the other algorithm with the same number of evaluations")
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--parents", type=int, default=10, help="top-k of all evaluated archs that breed")
    ap.add_argument("--mutate-prob", type=float, default=0.1, help="probability each gene is re-drawn in a mutation")
    ap.add_argument("--eval-size", type=int, default=None, help="score on the first N held-out images (default: all)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/search", help="output folder; re-running the same command resumes")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--retrain-epochs", type=int, default=0, help="then retrain the best arch and a hand-designed baseline of similar FLOPs this long and compare")
    ap.add_argument("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    train.run_cli(search, get_parser().parse_args(argv))


if __name__ == "__main__":
    main()
