"""
Benchmarks, printed as ratios measured side by side in one run (these machines are noisy):

  (a) the analytical FLOPs counter's archs/s on vitas-1g archs;
  (b) one forward+backward step of the super-transformer at an arch (one side) over the same step
      of its exported plain ViT, and the bilateral (left + right) step over the plain step, side
      by side for each arch:
        time: fp32, after warm-up, the kinds taking turns in rounds in a random order, each ratio
          the median over rounds and its quartiles (step_ratios; needs an otherwise idle machine);
          beside them "no slicing", the one-side step given its sliced parameters as ready leaves
          (without_slicing): what is left above it is the cost of taking the slices (their copies
          forward, and backward the full-size gradients each slice writes into);
        kernels launched: fp32 and bf16 autocast, counted by torch.profiler (see kernel_count).
        Launches, not FLOPs, are what a small step on a GPU pays for; the counts are
        deterministic and do not depend on the batch;
  (c) with --throughput N: how well FLOPs order N random archs of each preset by measured
      images/s (Spearman rho), beside a latency model fitted to half of them (record.LatencyModel).

    python bench.py                 # CPU: time and kernels (CPU aten ops; CUDA kernels with --device cuda)
    python bench.py --kernels       # kernels only: deterministic, any time, beside other work
    python bench.py --device cuda   # add --repeats 100 for steadier GPU figures
    python bench.py --throughput 100                 # (c) FLOPs as a proxy for measured images/s
    python bench.py --record results/bench/cpu-step.json   # as RESULTS.md shows it (experiment.py table)
"""
import argparse
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import cli
import runs
import record
import vitas
from rankcheck import spearman_rho


TINY_MID = vitas.Arch(8, 48, (vitas.Block(2, 48, 128), None, vitas.Block(4, 32, 128), None, vitas.Block(2, 48, 64),
                               None))
VITAS_C = vitas.Arch(16, 230, (vitas.Block(3, 144, 720),) * 12 + (None,) * 4)


def counter_speed(n=20000, seed=0):
    space = vitas.SearchSpace.preset("vitas-1g")
    g = torch.Generator().manual_seed(seed)
    archs = [space.sample(g) for _ in range(n)]
    t = time.perf_counter()
    for a in archs:
        vitas.flops(a, space)
    return n / (time.perf_counter() - t)


def step_time(fn):
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def steps(space, arch, batch, device, amp=False):
    """The training steps compared, as functions of no arguments: plain (the exported ViT),
    one_side (the super-transformer's left slice), bilateral (left and right, each its own
    forward, loss and backward; gradients summed) and no_slicing (one side without_slicing). amp:
    under bf16 autocast."""
    torch.manual_seed(0)
    net = vitas.SuperTransformer(space).to(device)
    vit = vitas.export(net, arch, "left")
    kept = without_slicing(vitas.SuperTransformer(space).to(device))
    x = torch.randn(batch, space.in_chans, space.image_size, space.image_size, device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)

    def step(model, *sides):
        model.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            for side in sides:
                F.cross_entropy(model(x, arch, side) if side else model(x), y).backward()

    def plain():
        step(vit, None)

    def one_side():
        step(net, "left")

    def bilateral():
        step(net, *vitas.SIDES)

    def no_slicing():
        step(kept, "left")

    return plain, one_side, bilateral, no_slicing


def without_slicing(net):
    """`net` with each module's sliced() taken once per choice and kept as leaf tensors, so that its
    step is the super-transformer's computation without taking the slices: the floor any slicing
    can reach (a diagnostic: the leaves are copies, the parameters learn nothing)."""
    def kept(sliced_of):
        slices = {}

        def sliced(*choice):
            key = repr(choice)
            if key not in slices:
                slices[key] = {name: t.detach().requires_grad_() for name, t in sliced_of(*choice).items()}
            for t in slices[key].values():
                t.grad = None      # as zero_grad(set_to_none=True) leaves the parameters: nothing accumulates
            return slices[key]
        return sliced

    for module in net.modules():
        if isinstance(module, (vitas.SuperTokens, vitas.SuperBlock)):
            module.sliced = kept(module.sliced)
    net.sliced_head = kept(net.sliced_head)
    return net


# aten ops that launch no work of their own: views, metadata, allocation, no-op conversions (to, contiguous
# and resolve_conj return their input where nothing needs doing, and call copy_ where it does)
NO_WORK = {"aten::" + n for n in (
    "view", "_unsafe_view", "reshape", "_reshape_alias", "slice", "select", "narrow", "transpose", "permute",
    "expand", "expand_as", "as_strided", "t", "numpy_T", "unsqueeze", "squeeze", "flatten", "unflatten", "split",
    "chunk", "unbind", "split_with_sizes", "unsafe_split", "view_as", "alias", "detach", "detach_", "lift_fresh",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "resize_as_",
    "as_strided_", "resolve_conj", "resolve_neg", "conj", "_conj", "to", "contiguous", "type_as",
    "result_type", "is_nonzero", "_has_compatible_shallow_copy_type", "item", "_local_scalar_dense")}


def kernel_count(fn, device="cpu"):
    """Kernels one call of `fn` launches, counted by torch.profiler after one warm-up call.

    CUDA: the device kernels (memcpy and memset included) the profiler records (not yet run on a
    GPU here). CPU: the aten ops that do work (not in NO_WORK: views, metadata, allocations) and
    call no other op that does, so an op counts as what it runs: linear as its addmm, zeros as
    its fill, slice_backward as a zero fill and a copy; views and allocations count nothing. An
    op that runs a helper before its own loop counts as the helper alone (addmm copies the bias
    first, native_layer_norm_backward zero-fills), about one launch either way, alike for the
    plain ViT and the super-transformer. Deterministic for a given torch build and batch-free."""
    fn()
    cuda = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda:
        return sum(e.device_type == DeviceType.CUDA for e in events)

    def works(e):
        return e.name.startswith("aten::") and e.name not in NO_WORK

    def inner_work(e):   # e or an op below it does work
        return works(e) or any(inner_work(c) for c in e.cpu_children)

    return sum(works(e) and not any(inner_work(c) for c in e.cpu_children) for e in events)


def kernel_counts(space, arch, device="cpu", amp=False, batch=2):
    """Kernels per step: plain, one side, bilateral (bench.steps)."""
    return tuple(kernel_count(f, device) for f in steps(space, arch, batch, device, amp)[:3])


ROUND = 5    # timed steps of each kind in a round


def step_ratios(space, arch, batch, device, repeats, warmup=3, seed=0):
    """The plain step's time (the median over rounds of its medians in each round), and for one
    side, bilateral and no slicing their ratio to the plain step: (median, lower quartile, upper
    quartile) over rounds. A round times each kind
    ROUND times, the kinds taking turns in a fresh random order, and divides the kinds' medians
    by the plain step's: so drift, and which step follows which, fall alike on every kind, and the
    quartiles show how far a ratio moves from one round to the next."""
    fns = steps(space, arch, batch, device)
    for f in fns:
        for _ in range(warmup):
            step_time(f)
    rng, rounds = random.Random(seed), []
    for _ in range(-(-repeats // ROUND)):
        order, times = rng.sample(fns, len(fns)), {f.__name__: [] for f in fns}
        for _ in range(ROUND):
            for f in order:
                times[f.__name__].append(step_time(f))
        rounds.append({name: statistics.median(ts) for name, ts in times.items()})
    ratios = [np.percentile([r[name] / r["plain"] for r in rounds], (50, 25, 75))
              for name in ("one_side", "bilateral", "no_slicing")]
    return statistics.median(r["plain"] for r in rounds), *ratios


def flops_as_proxy(name, n, batch, device, amp, seed=0):
    """How well FLOPs rank n random archs of a preset by measured speed: Spearman rho between
    FLOPs and seconds per image (1 = FLOPs orders them exactly); and a LatencyModel fitted to
    half of the archs, judged on the other half."""
    space = vitas.SearchSpace.preset(name)
    g = np.random.default_rng(seed)
    archs = [space.sample(g) for _ in range(n)]
    meter = record.ThroughputMeter(space, device, batch, amp, max_seconds=1.0)
    t = time.perf_counter()
    latency = np.array([1.0 / meter(a) for a in archs])
    macs = np.array([vitas.flops(a, space) for a in archs])
    model = record.LatencyModel(space).fit(archs[::2], 1.0 / latency[::2])
    held = np.array([model(a) for a in archs[1::2]])
    return (spearman_rho(macs, latency), spearman_rho(macs[1::2], latency[1::2]), spearman_rho(held, latency[1::2]),
            1 / latency.max(), 1 / latency.min(), time.perf_counter() - t)


def get_parser():
    ap = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--repeats", type=cli.number_arg(int, 1), default=40,
                    help=f"timed steps of each kind, in rounds of {ROUND} (rounded up); a ratio is the median "
                         "over rounds, with its quartiles (default 40)")
    ap.add_argument("--tiny-batch", type=cli.number_arg(int, 1), default=64,
                    help="batch of the tiny cases (default 64)")
    ap.add_argument("--throughput", type=cli.number_arg(int, 0), default=0, metavar="N",
                    help="instead: rank agreement of FLOPs with measured images/s over N random archs of each preset")
    ap.add_argument("--amp", action="store_true", help="with --throughput on CUDA: measure under bf16 autocast")
    ap.add_argument("--kernels", action="store_true",
                    help="kernels per step only, no timing (deterministic: needs no idle machine)")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="time with glibc's default malloc thresholds, not runs.reuse_freed_memory as training runs")
    ap.add_argument("--record", metavar="FILE.json",
                    help="also write the figures to FILE.json (results/bench/ holds those RESULTS.md shows)")
    return ap


def main(argv=None):
    args = get_parser().parse_args(argv)
    kept = not args.glibc_defaults and runs.reuse_freed_memory()
    tiny, big = vitas.SearchSpace.preset("tiny"), vitas.SearchSpace.preset("vitas-1g")
    cases = [("tiny largest", tiny, tiny.max_arch(), args.tiny_batch), ("tiny mid", tiny, TINY_MID, args.tiny_batch),
             ("vitas-1g ViTAS-C", big, VITAS_C, 4)]
    if args.throughput:
        cuda = args.device.startswith("cuda")
        device = device_name(args.device)
        print(f"FLOPs as a proxy for speed on {device}{' (bf16)' if args.amp else ''}: "
              "Spearman rho with seconds per image")
        print(f"{'preset':9s} {'batch':>5s} {'archs':>5s} {'rho FLOPs':>9s} {'rho FLOPs, half':>15s} "
              f"{'rho latency model, half':>23s} {'images/s':>17s}")
        rows = []
        for name, batch in (("tiny", 128 if cuda else 16), ("vitas-1g", 64 if cuda else 4)):
            rho, rho_half, rho_model, slow, fast, secs = flops_as_proxy(name, args.throughput, batch, args.device,
                                                                        args.amp)
            print(f"{name:9s} {batch:5d} {args.throughput:5d} {rho:9.3f} {rho_half:15.3f} {rho_model:23.3f} "
                  f"{slow:7,.0f}-{fast:<9,.0f} ({secs:.0f} s)", flush=True)
            rows.append({"preset": name, "batch": batch, "archs": args.throughput, "rho_flops": rho,
                         "rho_flops_half": rho_half, "rho_latency_model_half": rho_model, "images_per_s": [slow, fast]})
        write_record(args.record, {"kind": "throughput", "device": device, "precision": "bf16" if args.amp else "fp32",
                             "rows": rows})
        return

    speed = None if args.kernels else counter_speed()
    if speed:
        print(f"FLOPs counter: {speed:,.0f} archs/s (vitas-1g, one core)")
    what = "CUDA kernels" if args.device.startswith("cuda") else "CPU aten ops that do work"
    print("one forward+backward step: plain ViT, and the super-transformer's one side, bilateral and one side "
          "without slicing over it;\n"
          + ("time not measured (--kernels), " if args.kernels else
             f"time fp32 ({args.repeats} of each in rounds of {ROUND}, taking turns in a random order: the median "
             f"ratio over rounds (quartiles); freed memory "
             f"{'kept, as training runs' if kept else 'handed back to the OS (glibc defaults)'}), ")
          + f"kernels launched ({what}) fp32 and bf16 autocast")
    print(f"{'':32s} {'time':^68s}   {'kernels, fp32':^25s}   {'kernels, bf16 autocast':^25s}")
    print(f"{'arch':18s} {'batch':>5s} {'MFLOPs':>7s} {'plain':>8s} {'one side':>19s} {'bilateral':>19s} "
          f"{'no slicing':>19s}   " + "   ".join(f"{'plain':>8s} {'one side':>8s} {'bilateral':>9s}" for _ in range(2)))
    rows = []
    for name, space, arch, batch in cases:
        kernels = [kernel_counts(space, arch, args.device, amp) for amp in (False, True)]
        row = {"arch": name, "batch": batch, "mflops": vitas.flops(arch, space) / 1e6,
               "kernels": {"fp32": kernels[0], "bf16": kernels[1]}}
        if args.kernels:
            timed = f"{'-':>8s} {'-':>19s} {'-':>19s} {'-':>19s}"
        else:
            plain, *ratios = step_ratios(space, arch, batch, args.device, args.repeats)
            timed = f"{plain * 1e3:6.1f}ms " + " ".join(f"{m:6.3f}x ({lo:.2f}-{hi:.2f})" for m, lo, hi in ratios)
            row.update({"plain_ms": plain * 1e3, **{k: [float(v) for v in r] for k, r in
                                                    zip(("one_side", "bilateral", "no_slicing"), ratios)}})
        print(f"{name:18s} {batch:5d} {row['mflops']:7.1f} {timed}   " +
              "   ".join(f"{p:8d} {o / p:7.2f}x {b / p:8.2f}x" for p, o, b in kernels), flush=True)
        rows.append(row)
    write_record(args.record, {"kind": "step", "device": device_name(args.device), "repeats": args.repeats,
                         "freed_memory_kept": bool(kept), "counter_archs_per_s": speed, "rows": rows})


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu, {torch.get_num_threads()} threads"


def write_record(path, figures):
    """--record: the figures as JSON (python experiment.py table --markdown renders them), with when
    and what measured them."""
    if path:
        runs.write_json(path, {**figures, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                                "command": "python bench.py " + " ".join(sys.argv[1:]),
                                "provenance": runs.provenance()})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
