"""
How far a super-transformer's judgement can be trusted: its ranking of archs (inherited weights,
held-out top-1) against the same archs trained alone, with the reference's own noise measured;
and the hand-designed networks a searched arch must beat. Statistics (numpy and vitas), and the
flags and folder of an arch trained alone; the rank check that trains them is search.py's
(search.rank_check).

    python search.py --ckpt runs/super/checkpoint.pt --flops-min 2M --flops-max 4M --rank-check 16
    python search.py --out runs/search --rank-check 16       # alone, on a finished search folder

Read top to bottom: rank statistics; the reference's noise (reliability, oracle bound, corrected
tau) and the bootstrap over archs; archs chosen independently of the fitness under test; the hand
designs.

Training an arch alone is noisy too: two seeds do not give the same order. Classical test theory
gives the reference's reliability and what it costs a fitness. From the arch x seed table: one
seed's reliability r1 = sin(pi tau_ss / 2) (Greiner's relation, tau_ss the Kendall tau between two
seeds' rankings), an S-seed mean's r_S = S r1 / (1 + (S - 1) r1) (Spearman-Brown), the most any
fitness can reach against it, tau* = (2/pi) asin(sqrt(r_S)), and a fitness's tau corrected for the
reference's noise, tau_c = (2/pi) asin(sin(pi tau / 2) / sqrt(r_S)) (clipped to [-1, 1]). tau
between two seeds is not that bound: a fitness that knew each arch's true accuracy would beat it.
Intervals are percentile bootstraps over the archs, tau and r1 recomputed on every resample; two
fitnesses scored on the same archs are compared by a paired bootstrap (the same resamples for
both), and recipes trained with several supernet seeds also over the seeds (a t interval), the
other source of noise. FLOPs, parameters and depth are scored alike: a fitness that does not beat
them adds nothing.
"""
import argparse
import functools
import hashlib
import json
import math
import os

import numpy as np

import vitas
from cli import UserError, data_seed

# -----------------------------------------------------------------------------
# Rank statistics


def average_ranks(values):
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _paired(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two equally long lists of at least 2 values, got {len(x)} and {len(y)}")
    return x, y


def kendall_tau(x, y):
    """Kendall's tau-b (tie-aware): (concordant - discordant) pairs over the geometric mean of the
    pairs not tied in x and not tied in y. None where x or y is constant."""
    return kendall_taus(*(v[None] for v in _paired(x, y)))[0]


def kendall_taus(x, y, missing=False, pairs_at_once=2_000_000):
    """kendall_tau of each row of x against the same row of y ((R, n) arrays), all rows at once, as a
    list (None where undefined); with `missing`, NaN marks an entry a row lacks and a pair with a
    NaN in either row counts in neither. Rows go through together, so that the thousands of
    resamples of a bootstrap cost a few array operations, not a Python loop each."""
    i, j = np.triu_indices(x.shape[1], 1)
    rows, out = max(1, pairs_at_once // max(1, len(i))), []
    for r in range(0, len(x), rows):
        xs, ys = x[r:r + rows], y[r:r + rows]
        sx, sy = np.sign(xs[:, i] - xs[:, j]), np.sign(ys[:, i] - ys[:, j])
        if missing:
            known = ~(np.isnan(sx) | np.isnan(sy))
            sx, sy = np.where(known, sx, 0.0), np.where(known, sy, 0.0)
        denom = np.sqrt(np.count_nonzero(sx, axis=1) * np.count_nonzero(sy, axis=1))
        out += [float(t / d) if d else None for t, d in zip((sx * sy).sum(axis=1), denom)]
    return out


def spearman_rho(x, y):
    """Spearman's rho: Pearson correlation of the average ranks. None where x or y is constant."""
    rx, ry = (r - r.mean() for r in map(average_ranks, _paired(x, y)))
    denom = math.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom else None


# -----------------------------------------------------------------------------
# The reference's noise


def seed_agreement(top1_by_seed, idx=None):
    """tau_ss: Kendall tau-b between two training seeds' rankings of the same archs, the mean over
    every pair of seeds; each pair on the archs trained with both (an arch may have fewer seeds than
    another). top1_by_seed: per arch, its top-1 under each seed. None where no pair ranks. With
    idx (rows of arch numbers: resamples), a list: tau_ss of each row's archs."""
    seeds = max(len(s) for s in top1_by_seed)
    table = np.array([list(s) + [np.nan] * (seeds - len(s)) for s in top1_by_seed], dtype=float)  # NaN: not trained
    rows = np.arange(len(table))[None] if idx is None else np.asarray(idx)
    taus = [kendall_taus(table[rows, i], table[rows, j], missing=True)
            for i in range(seeds) for j in range(i + 1, seeds)]
    means = [float(np.mean(ts)) if (ts := [t for t in row if t is not None]) else None
             for row in zip(*taus)] if taus else [None] * len(rows)
    return means[0] if idx is None else means


def spearman_brown(r1, seeds):
    """Reliability of the mean of `seeds` repeats, each of reliability r1."""
    return seeds * r1 / (1 + (seeds - 1) * r1)


def reliability(top1_by_seed):
    """The reference's reliability: (r1, S, r_S): one seed's r1 = sin(pi tau_ss / 2), the seeds S
    every arch has (the reference is their mean), r_S by Spearman-Brown. r1 and r_S are None where
    tau_ss is undefined or not positive (seeds that do not agree leave nothing to correct by)."""
    return reliability_of(seed_agreement(top1_by_seed), min(len(s) for s in top1_by_seed))


def reliability_of(tau_ss, seeds):
    """reliability() from the seed agreement tau_ss and the seeds S of the reference's mean."""
    if tau_ss is None or tau_ss <= 0:
        return None, seeds, None
    r1 = math.sin(math.pi * tau_ss / 2)
    return r1, seeds, spearman_brown(r1, seeds)


def oracle_tau(r):
    """tau* = (2/pi) asin(sqrt(r)): the Kendall tau that a fitness knowing every arch's true accuracy
    reaches, in expectation, against a reference of reliability r."""
    return 2 / math.pi * math.asin(math.sqrt(r))


def corrected_tau(tau, r):
    """tau_c = (2/pi) asin(sin(pi tau / 2) / sqrt(r)), clipped to [-1, 1]: tau as it would be
    against a noiseless reference (r = 1 leaves it as it is)."""
    return 2 / math.pi * math.asin(max(-1.0, min(1.0, math.sin(math.pi * tau / 2) / math.sqrt(r))))


def seed_sd(top1_by_seed):
    """One training's top-1 SD between training seeds, pooled over the archs with two or more (each
    arch's sample variance, ddof=1, weighted by its degrees of freedom): the noise every comparison
    of archs trained alone carries."""
    rows = [np.asarray(t, dtype=float) for t in top1_by_seed if len(t) > 1]
    if not rows:
        return None
    return float(np.sqrt(sum(((t - t.mean()) ** 2).sum() for t in rows) / sum(len(t) - 1 for t in rows)))


def reference_mean(top1_by_seed, seeds=None):
    """Each arch's reference accuracy: the mean of its first S seeds, S the seeds every arch has
    (or `seeds`: NaN for an arch with fewer)."""
    seeds = min(len(s) for s in top1_by_seed) if seeds is None else seeds
    return np.array([np.mean(s[:seeds]) if len(s) >= seeds else np.nan for s in top1_by_seed])


# -----------------------------------------------------------------------------
# Agreement with a bootstrap over the archs


LEVEL, RESAMPLES = 0.9, 2000


def percentile_interval(values, level):
    """The central `level` percentile interval of `values`, or None where there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.quantile(values, (1 - level) / 2)), float(np.quantile(values, (1 + level) / 2))


def resamples(n, count=RESAMPLES, seed=0):
    """`count` resamples of n archs with replacement: the same for every statistic of one call."""
    return np.random.default_rng(seed).integers(0, n, (count, n))


def scores(fitness, top1_by_seed, r_s=None):
    """{"kendall_tau", "tau_c"} of one fitness against the reference (tau_c where r_S is known)."""
    return scored(kendall_tau(fitness, reference_mean(top1_by_seed)), r_s)


MIN_TAU_STAR = 0.3   # a reference whose tau* is lower cannot rank: tau_c would mostly be its noise, amplified


def scored(tau, r_s):
    """scores() of a tau already computed; tau_c undefined (None) where the reference cannot rank."""
    ranks = r_s is not None and oracle_tau(r_s) >= MIN_TAU_STAR
    return {"kendall_tau": tau, "tau_c": corrected_tau(tau, r_s) if tau is not None and ranks else None}


def resampled_seeds(top1_by_seed, idx):
    """Per resample (rows of idx), the seeds every arch in it has: those its reference averages."""
    return np.array([len(s) for s in top1_by_seed])[idx].min(axis=1).tolist()


def resampled_reliability(top1_by_seed, idx):
    """r_S recomputed on each resample of the archs (rows of idx; None where undefined)."""
    return [reliability_of(t, s)[2] for t, s in zip(seed_agreement(top1_by_seed, idx),
                                                    resampled_seeds(top1_by_seed, idx))]


def bootstrap(fitness, top1_by_seed, idx, r_s):
    """Per resample (rows of idx, r_S of each): scores() on the resampled archs, each resample's
    reference the mean of the seeds all of its archs have."""
    seeds = resampled_seeds(top1_by_seed, idx)
    means = {S: reference_mean(top1_by_seed, S) for S in set(seeds)}
    reference = np.stack([means[S][rows] for S, rows in zip(seeds, idx)])
    taus = kendall_taus(np.asarray(fitness, dtype=float)[idx], reference)
    return [scored(t, r) for t, r in zip(taus, r_s)]


def reference_summary(top1_by_seed, level=LEVEL, count=RESAMPLES, seed=0, resampled=None):
    """The reference's noise: seed agreement tau_ss, r1, the seeds S of its mean, r_S, the oracle
    bound tau* and a bootstrap interval of tau* over the archs (`resampled`: each resample's r_S,
    where the caller has them already)."""
    r1, seeds, r_s = reliability(top1_by_seed)
    if resampled is None:
        resampled = resampled_reliability(top1_by_seed, resamples(len(top1_by_seed), count, seed))
    # a resample whose seeds do not agree (tau_ss <= 0) is a reference that cannot rank: tau* 0 (and
    # tau_c undefined: the share of such resamples, left out of tau_c's interval, is reported)
    stars = [0.0 if r is None else oracle_tau(r) for r in resampled]
    return {"seed_tau": seed_agreement(top1_by_seed), "r1": r1, "seeds": seeds, "reliability": r_s,
            "tau_star": 0.0 if r_s is None else oracle_tau(r_s),
            "tau_star_interval": percentile_interval(stars, level),
            "disagreeing_resamples": sum(r is None for r in resampled) / len(resampled)}


def agreement(fitness, top1_by_seed, level=LEVEL, count=RESAMPLES, seed=0):
    """A fitness (higher: better) against the archs trained alone: Kendall tau-b and Spearman rho
    against the reference mean, the corrected tau_c, percentile bootstrap intervals over the archs
    for both (jointly: one set of resamples, the reliability recomputed on each), and the
    reference's own noise (reference_summary, on the same resamples)."""
    mean = reference_mean(top1_by_seed)
    idx = resamples(len(mean), count, seed)
    resampled = resampled_reliability(top1_by_seed, idx)   # once, for tau* and for tau_c
    ref = reference_summary(top1_by_seed, level, count, seed, resampled)
    boot = bootstrap(fitness, top1_by_seed, idx, resampled)
    return {**scores(fitness, top1_by_seed, ref["reliability"]), "spearman_rho": spearman_rho(fitness, mean),
            "tau_interval": percentile_interval([b["kendall_tau"] for b in boot], level),
            "tau_c_interval": percentile_interval([b["tau_c"] for b in boot], level),
            **ref, "interval_level": level, "resamples": count, "archs": len(mean)}


def paired_difference(fitness_a, fitness_b, top1_by_seed, level=LEVEL, count=RESAMPLES, seed=0):
    """tau(a) - tau(b) on the same archs and reference, with a paired bootstrap interval (the same
    resampled archs for both): a difference whose interval holds 0 is no difference. A fitness may
    be several (a list of them, one per supernet seed): its tau is then their mean tau, each
    resample the same archs for all of them."""
    mean = reference_mean(top1_by_seed)
    as_rows = lambda f: np.asarray(f, dtype=float).reshape(-1, len(mean))      # (fitnesses, archs)
    fa, fb = as_rows(fitness_a), as_rows(fitness_b)

    def taus(f, rows):      # per row of rows, the mean tau of the fitnesses f (NaN: undefined)
        per = np.array([[np.nan if t is None else t for t in kendall_taus(one[rows], mean[rows])] for one in f])
        return np.ascontiguousarray(per.T).mean(axis=1)     # each row's taus summed as np.mean sums a list

    def known(v):
        return None if np.isnan(v) else float(v)

    idx = resamples(len(mean), count, seed)
    diffs = [known(d) for d in taus(fa, idx) - taus(fb, idx)]
    (a,), (b,) = (taus(f, np.arange(len(mean))[None]) for f in (fa, fb))
    return {"difference": known(a - b), "interval": percentile_interval(diffs, level),
            "interval_level": level}


@functools.lru_cache(maxsize=64)
def t_quantile(p, df):
    """The p-quantile of Student's t with df degrees of freedom (p > 0.5): its density integrated
    numerically from 0 on a fine grid and the CDF inverted by interpolation (numpy has no t
    distribution, and scipy is no dependency of this project)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, 1000.0, 2_000_001) ** 2 / 1000.0            # dense near 0, up to t = 1000
    dens = np.exp(log_c - (df + 1) / 2 * np.log1p(grid ** 2 / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    return float(np.interp(p, cdf, grid))


def seed_difference(a, b=None, level=LEVEL):
    """The mean of a - b over supernet seeds (a, b: one value per seed, a tau or a top-1, paired by
    seed; b None or a number: a fixed reference) with a t interval over the seeds: where a
    difference is steady over archs but not over seeds, the seeds decide. None interval with
    fewer than 2 seeds."""
    b = np.zeros(len(a)) if b is None else np.broadcast_to(np.asarray(b, dtype=float), (len(a),))
    d = np.asarray(a, dtype=float) - b
    if len(d) < 2:
        return {"difference": float(d.mean()), "sd": None, "interval": None, "interval_level": level}
    sd = float(d.std(ddof=1))
    half = t_quantile((1 + level) / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return {"difference": float(d.mean()), "sd": sd, "interval": (float(d.mean() - half), float(d.mean() + half)),
            "interval_level": level}


def margin_interval(picks, designs, level=LEVEL, count=RESAMPLES, seed=0):
    """The searched archs' mean top-1 minus the better hand design's, with a percentile interval
    that counts both kinds of noise: the picks' supernet seeds (the rows of `picks`) and training
    seeds (its columns), and the designs' training seeds (the columns of `designs`, one row a design,
    as many as they were trained on: a design is one arch, its training noise no supernet seed
    averages), resampled apart, the better design chosen again in each resample."""
    picks, designs = np.asarray(picks, dtype=float), np.asarray(designs, dtype=float)

    def margin(rows, cols, design_cols):
        return picks[np.ix_(rows, cols)].mean() - designs[:, design_cols].mean(axis=1).max()

    g = np.random.default_rng(seed)
    (n, t), u = picks.shape, designs.shape[1]
    spread = [margin(g.integers(n, size=n), g.integers(t, size=t), g.integers(u, size=u)) for _ in range(count)]
    return {"difference": float(margin(np.arange(n), np.arange(t), np.arange(u))),
            "interval": percentile_interval(spread, level), "interval_level": level}


def outcome_margins(outcome):
    """Per recipe over its supernet seeds: how often the searched arch wins, its top-1, and its
    margin over the better hand-designed network, the interval over supernet and training seeds
    (margin_interval)."""
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in outcome):
        rs = [r for r in outcome if r["recipe"] == recipe]
        designs = [rs[0]["designs"][name] for name in BASELINES]
        out.append({"recipe": recipe, "seeds": len(rs), "wins": sum(r["wins"] for r in rs),
                    "searched": [r["top1"] for r in rs],
                    "margin": margin_interval([r["top1_seeds"] for r in rs], designs)})
    return out


def design_standing(outcome, window):
    """Where the better hand design stands in the window: its mean top-1 over its training seeds,
    and how many of the window reference archs (mean over their seeds) it is above."""
    designs = outcome[0]["designs"]
    name = max(designs, key=lambda n: np.mean(designs[n]))
    means = [float(np.mean(t)) for _, t in window]
    top1 = float(np.mean(designs[name]))
    return {"design": name, "top1": top1, "seeds": len(designs[name]), "above": sum(m < top1 for m in means),
            "archs": len(means), "range": (min(means), max(means))}


def top_regret(fitness, top1_by_seed, k=3):
    """Points of reference top-1 lost by keeping the best of the k archs the fitness ranks highest
    instead of the best arch of all: 0 when the best arch is among the fitness's top k. Archs the
    fitness ties at the cut are taken in their order in the list (a stable sort)."""
    mean = reference_mean(top1_by_seed)
    top = np.argsort(-np.asarray(fitness, dtype=float), kind="stable")[:k]
    return float(mean.max() - mean[top].max())


def floor_predictors(archs, space):
    """What ranks archs without any training, as fitnesses (higher: better): FLOPs, parameters, depth."""
    return {"flops": [vitas.flops(a, space) for a in archs], "params": [vitas.params(a, space) for a in archs],
            "depth": [a.depth for a in archs]}


def within_subset(fitness, top1_by_seed):
    """tau of a fitness on a subset of the archs (one patch size), beside the subset's own reference
    reliability, its tau* and the tau_c it gives: archs that differ little are ranked noisily by the
    reference too, and a low tau there may be the reference's as much as the fitness's."""
    r_s = reliability(top1_by_seed)[2]
    return {"archs": len(fitness), **scores(fitness, top1_by_seed, r_s), "seed_tau": seed_agreement(top1_by_seed),
            "reliability": r_s, "tau_star": 0.0 if r_s is None else oracle_tau(r_s)}


def rank_statistics(fitness, top1_by_seed, archs, space, level=LEVEL, count=RESAMPLES, seed=0):
    """Everything a rank check reports: agreement() of the fitness; its top-3 regret; within_subset()
    of each patch size; and each floor predictor's agreement with the paired difference fitness - predictor."""
    result = {**agreement(fitness, top1_by_seed, level, count, seed), "top3_regret": top_regret(fitness, top1_by_seed)}
    result["by_patch"] = {}
    for p in sorted({a.patch_size for a in archs}):
        rows = [i for i, a in enumerate(archs) if a.patch_size == p]
        if len(rows) >= 2:
            result["by_patch"][str(p)] = within_subset([fitness[i] for i in rows], [top1_by_seed[i] for i in rows])
    result["floors"] = {}
    for name, values in floor_predictors(archs, space).items():
        result["floors"][name] = {**scores(values, top1_by_seed, result["reliability"]),
                                  "fitness_minus_floor": paired_difference(fitness, values, top1_by_seed, level,
                                                                           count, seed)}
    return result


def describe(r):
    """One paragraph on a rank check's figures and how to read them."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    span = lambda i: "" if i is None else f" [{i[0]:.2f}, {i[1]:.2f}]"
    level = f"{100 * r['interval_level']:.0f}%"
    line = (f"Kendall tau-b {fmt(r['kendall_tau'])}{span(r['tau_interval'])}, Spearman rho {fmt(r['spearman_rho'])} "
            f"over {r['archs']} archs ({level} bootstrap intervals over the archs)")
    if r["reliability"] is None:
        line += ("; the reference's reliability is unknown (it needs archs trained with 2 or more seeds that agree), "
                 "so tau is not corrected")
    else:
        line += (f"; reference: seeds agree at tau {fmt(r['seed_tau'])}, "
                 f"reliability r{r['seeds']} {fmt(r['reliability'])}, "
                 f"so no fitness can expect more than tau* {fmt(r['tau_star'])}{span(r['tau_star_interval'])}; "
                 f"corrected tau_c {fmt(r['tau_c'])}{span(r['tau_c_interval'])}")
        if r["tau_star"] < MIN_TAU_STAR:
            line += f" (undefined: under tau* {MIN_TAU_STAR} the reference cannot rank)"
        if r.get("disagreeing_resamples"):
            line += (f" ({100 * r['disagreeing_resamples']:.0f}% of the resamples' seeds disagree: tau* 0 there, "
                     f"tau_c undefined and left out of its interval)")
    floors = r.get("floors", {})
    if floors:
        line += "; floors: " + ", ".join(
            f"{name} tau {fmt(f['kendall_tau'])} (fitness - {name} {fmt(f['fitness_minus_floor']['difference'])}"
            f"{span(f['fitness_minus_floor']['interval'])})" for name, f in floors.items())
    return line + "; a difference whose interval holds 0 is no difference"


# -----------------------------------------------------------------------------
# Archs chosen independently of the fitness under test


def stratified_archs(space, lo, hi, per_cell, seed, cost=None, tries=20000, give_up=2000):
    """Up to `per_cell` distinct archs of the window [lo, hi] in every (patch size, depth) cell
    (vitas.all_cells; a cell with none in `give_up` draws is left out): {cell: [archs]}. Widths
    uniform, identities moved behind the real blocks (one network each). Chosen by a seeded
    generator alone, never by a fitness: a rank check must not test a predictor on archs that the
    predictor picked."""
    cost = cost or (lambda a: vitas.flops(a, space))
    cells = {}
    for i, cell in enumerate(vitas.all_cells(space, by_patch=True)):
        rng = np.random.default_rng([4000, seed, i])   # a generator per cell: its first archs whatever per_cell is
        found = []
        for t in range(tries):
            arch = vitas.shift_identities(vitas.draw_in_cell(space, rng, cell))
            if lo <= cost(arch) <= hi and arch not in found:
                found.append(arch)
            if len(found) == per_cell or (t >= give_up and not found):
                break
        if found:
            cells[cell] = found
    return cells


def window_archs(space, lo, hi, per_cell):
    """A window reference: per_cell archs of each (patch, depth) cell that holds that many
    (stratified_archs, seed 0)."""
    cells = stratified_archs(space, lo, hi, per_cell, seed=0)
    return [a for found in cells.values() if len(found) == per_cell for a in found]


def range_archs(space, k):
    """A whole-range reference: one arch from each of k equally populated FLOPs bins of 4,000 draws
    at identity probabilities from 0 to 0.9 (identities moved behind the real blocks)."""
    rng = np.random.default_rng([2000, 0])
    pool = sorted({vitas.shift_identities(space.sample(rng, rng.uniform(0, 0.9))) for _ in range(4000)},
                  key=lambda a: (vitas.flops(a, space), str(a)))
    return [pool[int((i + 0.5) * len(pool) / k)] for i in range(k)]


def spread_archs(space, lo, hi, k, seed, cost=None):
    """k archs for a rank check, spread evenly over the window's (patch, depth) cells: the first of
    every cell (stratified_archs), then the second, and so on."""
    cells = list(stratified_archs(space, lo, hi, k, seed, cost).values())
    order = [c[i] for i in range(k) for c in cells if i < len(c)]
    if len(order) < k:
        raise UserError(f"the window [{lo:,}, {hi:,}] holds only {len(order)} distinct archs; lower --rank-check to at "
                        f"most {len(order)} or widen the window")
    return order[:k]


# -----------------------------------------------------------------------------
# Hand-designed networks: what a searched arch must beat


def designed_arch(space, target_flops, flops_min, flops_max, designed, tie=lambda arch: 0):
    """Of the uniform archs (SearchSpace.uniform_archs) inside the window that `designed` accepts,
    the one whose FLOPs are nearest the target (ties: the least `tie`, then the first); None if none."""
    best = None
    for arch in space.uniform_archs():
        if designed(arch) and flops_min <= (f := vitas.flops(arch, space)) <= flops_max:
            key = (abs(f - target_flops), tie(arch))
            if best is None or key < best[0]:
                best = (key, arch)
    return None if best is None else best[1]


def baseline_arch(space, target_flops, flops_min, flops_max):
    """A hand-designed network to compare with: every block present and alike, heads = attention
    width / 16 where possible, the FLOPs nearest the target inside the window."""
    def designed(arch):
        b = arch.blocks[0]
        return arch.depth == space.depth and b.heads == min((h for h in space.heads if b.attn_dim % h == 0),
                                                            key=lambda h: abs(b.attn_dim / h - 16))
    return designed_arch(space, target_flops, flops_min, flops_max, designed)


def deit_arch(space, target_flops, flops_min, flops_max):
    """The network a person would design, in DeiT's proportions: attention width nearest the embed
    dim, MLP nearest 4x the embed dim, head dim nearest DeiT's 64, the first d blocks present;
    of those inside the window, the FLOPs nearest the target (ties: the deeper)."""
    def nearest(choices, x):
        return min(choices, key=lambda v: (abs(v - x), v))

    def designed(arch):
        b, c = arch.blocks[0], arch.embed_dim
        return (b.attn_dim == nearest(space.attn_dims, c) and b.mlp_dim == nearest(space.mlp_dims, 4 * c)
                and b.heads == min((h for h in space.heads if b.attn_dim % h == 0),
                                   key=lambda h: (abs(b.attn_dim / h - 64), h)))
    return designed_arch(space, target_flops, flops_min, flops_max, designed, tie=lambda arch: -arch.depth)


BASELINES = {"uniform": baseline_arch, "deit": deit_arch}


def comparison_archs(space, lo, hi, randoms, seed=5000):
    """What a searched arch in the FLOPs window [lo, hi] is compared with: the two hand-designed
    networks (BASELINES) nearest the window's top (a designer given the budget spends it), and
    `randoms` distinct archs of the window drawn as random search draws them (the window's identity
    probability, identities behind the real blocks)."""
    archs = {name: design(space, hi, lo, hi) for name, design in BASELINES.items()}
    rng, p = np.random.default_rng([seed, 0]), vitas.solve_identity_prob(space, lo, hi)
    found = []
    while len(found) < randoms:
        arch = vitas.shift_identities(space.sample(rng, p))
        if lo <= vitas.flops(arch, space) <= hi and arch not in found:
            found.append(arch)
    return {**archs, **{f"random {i}": a for i, a in enumerate(found)}}


# -----------------------------------------------------------------------------
# Training an arch alone: the flags, and the folder they key


def alone_argv(ck, epochs, device, world, seed=0, flags=()):
    """train.py flags that train an arch alone on the checkpoint's data, held-out split, optimiser
    and effective batch (split over this job's `world` processes, so the result does not depend on
    how many there are); augmentation and regularisation are retrain mode's defaults unless `flags`
    (--retrain-flags) set them. `seed` j > 0 changes only the training (initialisation, data
    order): --seed is the checkpoint's plus j, --data-seed stays the checkpoint's."""
    ck_args = ck["args"]
    batch = ck_args["batch_size"] * ck.get("world", 1) * ck_args.get("accum_steps", 1)
    if batch % world:
        raise UserError(f"the checkpoint's effective batch {batch} does not split over {world} processes; "
                        f"run with a process count that divides it")
    keep = {"space": "--space", "data": "--data", "data_root": "--data-root",
            "synthetic_size": "--synthetic-size", "synthetic_classes": "--synthetic-classes", "holdout": "--holdout",
            "lr": "--lr", "min_lr": "--min-lr", "weight_decay": "--weight-decay",
            "warmup_epochs": "--warmup-epochs", "clip_grad": "--clip-grad", "workers": "--workers",
            "eval_batch_size": "--eval-batch-size", "eval_limit": "--eval-limit"}
    argv = ["--epochs", str(epochs), "--batch-size", str(batch // world), "--device", device, "--log-every", "1000",
            "--seed", str(ck_args["seed"] + seed), "--data-seed", str(data_seed(argparse.Namespace(**ck_args)))]
    for key, flag in keep.items():
        if ck_args.get(key) is not None:
            argv += [flag, str(ck_args[key])]
    return argv + (["--amp"] if ck_args.get("amp") else []) + list(flags)


def alone_key(arch, argv):
    """`arch` trained alone with `argv`, as a short key (it names a folder, and experiment.py's record)."""
    return hashlib.sha1(json.dumps([arch.to_dict(), argv]).encode()).hexdigest()[:12]


def alone_folder(root, arch, argv):
    """Where `arch` trained alone with `argv` goes under `root`: one folder per arch and settings,
    so a folder shared between searches never trains the same thing twice."""
    return os.path.join(root, alone_key(arch, argv))
