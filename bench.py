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
      images/s (Spearman rho), beside a latency model fitted to half of them (record.LatencyModel);
  (d), (e) with --scaling: where a multi-GPU step goes (the loader, the gradient all-reduce), and
      estimates for 8 and 2 x 8 GPUs from stated assumptions (the constants before scaling()).

    python bench.py                 # CPU: time and kernels (CPU aten ops; CUDA kernels with --device cuda)
    python bench.py --kernels       # kernels only: deterministic, any time, beside other work
    python bench.py --device cuda   # add --repeats 100 for steadier GPU figures
    python bench.py --throughput 100                 # (c) FLOPs as a proxy for measured images/s
    python bench.py --scaling                        # (d), (e) loader and all-reduce
    python bench.py --record results/bench/cpu-step.json   # as RESULTS.md shows it (experiment.py table)
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import cli
import data
import record
import runs
import train
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


# -----------------------------------------------------------------------------
# (d) and (e), --scaling: where a multi-GPU step goes. The loader (images/s per worker count on a
# generated JPEG folder at 224 px) beside the model step, and the gradient all-reduce (bytes a step
# reduces against the slice's own parameters, timed under 2-process gloo), then estimates for GPUs

# Assumptions of the estimates, not measured here: ViTAS-C (1.3 GFLOPs, as DeiT-Tiny) trains at about
# 2,000 images/s per A100 one-side in bf16 (a third of DeiT-Tiny's published inference rate scaled
# from V100 to A100); a ring all-reduce moves 2 (n - 1) / n of the buffer at the bus bandwidth: ~230
# GB/s inside an NVLink node (NCCL all-reduce bus bandwidth of 8 A100s), 25 GB/s between nodes with
# one 200 Gb/s InfiniBand link per node (8 links: 8x that)
GPU_IMAGES_PER_S, NVLINK_GBPS, IB_GBPS = 2000, 230, 25


def jpeg_folder(root, n, classes=8, size=256, seed=0):
    """An ImageFolder of n generated JPEGs (data.synthetic_images at `size` px) in train/, a few in val/."""
    from PIL import Image
    images, labels = data.synthetic_images(n, classes, size, seed)
    for i, (img, y) in enumerate(zip(images, labels.tolist())):
        for split in ("train", "val") if i < 2 * classes else ("train",):
            os.makedirs(os.path.join(root, split, str(y)), exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(root, split, str(y), f"{i}.jpg"),
                                                                quality=90)
    return root


def loader_speed(root, workers, batch):
    """Images/s of train.py's training loader over the folder `root` (the super-transformer's
    augmentation at 224 px) with `workers`: an epoch's batches, from the workers' start (they
    prefetch, so timing after the first batch would count work done before it)."""
    args = train.resolve_recipe(train.parse_args(["--data", root, "--space", "vitas-1g", "--batch-size", str(batch),
                                                  "--workers", str(workers), "--device", "cpu", "--holdout", "0"]))
    datasets = data.build_datasets(args, 224)
    loader, _ = data.train_loader(datasets.train, args, runs.Dist())
    t = time.perf_counter()
    n = sum(len(y) for _, y in data.epoch_loader(loader, 0, 0))
    return n / (time.perf_counter() - t)


def reduce_worker(rank, port, numel, repeats, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf, times = torch.ones(numel), []
    for i in range(repeats + 2):                          # two warm-up rounds
        t = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t)
    if rank == 0:
        out.put(statistics.median(times[2:]))
    dist.destroy_process_group()


def gloo_reduce_seconds(numel, repeats=5):
    """The median seconds of an fp32 all-reduce of `numel` values between 2 processes on this
    machine (gloo over loopback TCP)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    torch.multiprocessing.start_processes(reduce_worker, (port, numel, repeats, out), nprocs=2, start_method="spawn")
    return out.get()


def ring_seconds(nbytes, n, gbps):
    return 2 * (n - 1) / n * nbytes / (gbps * 1e9)


def scaling(args):
    big = vitas.SearchSpace.preset("vitas-1g")
    plain = steps(big, VITAS_C, 8, "cpu")[0]
    for _ in range(2):
        step_time(plain)
    model = 8 / statistics.median(step_time(plain) for _ in range(5))
    print(f"(d) loader: train.py's training loader, the super-transformer's augmentation (224 px) on "
          f"{args.images} generated JPEGs, batch 64; beside it ViTAS-C's plain fp32 step on this CPU: "
          f"{model:.1f} images/s (bilateral: about half)")
    rows = {"model_images_per_s": model, "loader": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = jpeg_folder(tmp, args.images)
        for w in [w for w in (0, 1, 2, 4, 8, 16) if w <= (os.cpu_count() or 1)]:
            rows["loader"][w] = loader_speed(root, w, 64)
            print(f"  {w} worker(s): {rows['loader'][w]:7.1f} images/s", flush=True)
    net = vitas.SuperTransformer(big)
    full, own = sum(p.numel() for p in net.parameters()), vitas.params(VITAS_C, big)
    secs = gloo_reduce_seconds(full)
    rows.update(reduced_bytes=4 * full, slice_bytes=4 * own, gloo_seconds=secs)
    print(f"(e) all-reduce: DDP reduces every parameter's gradient, {4 * full / 1e6:.0f} MB a step (the "
          f"super-transformer's {full / 1e6:.1f} M parameters), where ViTAS-C's slice holds {own / 1e6:.1f} M "
          f"({4 * own / 1e6:.0f} MB); 2-process gloo on this machine: {secs:.2f} s")
    step = 2 * 128 / GPU_IMAGES_PER_S                     # a bilateral step of batch 128 per GPU
    for name, reduce in (("8 GPUs, one node", ring_seconds(4 * full, 8, NVLINK_GBPS)),
                            ("2 x 8 GPUs, 1 IB link", ring_seconds(4 * full, 16, IB_GBPS)),
                            ("2 x 8 GPUs, 8 IB links", ring_seconds(4 * full, 16, 8 * IB_GBPS))):
        print(f"  estimate, {name}: all-reduce {reduce * 1e3:5.1f} ms against a {step * 1e3:.0f} ms bilateral step "
              f"of 128 images per GPU ({100 * reduce / (step + reduce):.0f}% if none of it overlapped backward)")
    write_record(args.record, {"kind": "scaling", **rows})


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
    ap.add_argument("--scaling", action="store_true",
                    help="instead: the training loader's images/s per worker count on generated 224 px JPEGs beside "
                         "the model step, the gradient all-reduce's bytes and 2-process time, and GPU estimates")
    ap.add_argument("--images", type=cli.number_arg(int, 128), default=512,
                    help="with --scaling: generated JPEGs the loader reads (default 512)")
    ap.add_argument("--record", metavar="FILE.json",
                    help="also write the figures to FILE.json (results/bench/ holds those RESULTS.md shows)")
    return ap


def main(argv=None):
    args = get_parser().parse_args(argv)
    kept = not args.glibc_defaults and runs.reuse_freed_memory()
    tiny, big = vitas.SearchSpace.preset("tiny"), vitas.SearchSpace.preset("vitas-1g")
    cases = [("tiny largest", tiny, tiny.max_arch(), args.tiny_batch), ("tiny mid", tiny, TINY_MID, args.tiny_batch),
             ("vitas-1g ViTAS-C", big, VITAS_C, 4)]
    if args.scaling:
        return scaling(args)
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
