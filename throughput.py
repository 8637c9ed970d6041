"""
Measured throughput, beyond the paper (which budgets by FLOPs): images/s of an arch on a device, a
cache of those measurements, and a latency model that adds up over blocks as FLOPs do, so that the
learned identity probability (vitas.solve_identity_prob) can aim at a throughput window.

    meter = ThroughputMeter(space, "cuda", batch=64, amp=True)
    images_per_s = meter(arch)
    model = LatencyModel(space).fit(archs, [meter(a) for a in archs])   # seconds per image of any arch
"""
import statistics
import time

import numpy as np
import torch

from vitas import Arch, ViT, flops

def measure_throughput(arch, space, device="cpu", batch=16, amp=False, warmup=2, repeats=10, max_seconds=2.0):
    """Images/s of the plain ViT of `arch` (what a found arch is deployed as): eval mode, no grad,
    a fixed random input; warm-up calls, then the median of timed calls (at least 3, at most
    `repeats`, stopping after max_seconds), CUDA synchronised; bf16 autocast with amp (CUDA)."""
    device = torch.device(device)
    model = ViT(arch, space).to(device).eval()
    x = torch.randn(batch, space.in_chans, space.image_size, space.image_size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(warmup):
            model(x)
        sync()
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < max_seconds):
            t = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


class ThroughputMeter:
    """measure_throughput with a cache keyed by (arch, device, batch, amp): no arch is measured
    twice. `measured` counts the real measurements; state_dict() keeps the cache for a resume."""

    def __init__(self, space, device="cpu", batch=16, amp=False, **measure_kw):
        self.space, self.device, self.batch, self.amp, self.measure_kw = space, str(device), batch, amp, measure_kw
        self.cache, self.measured = {}, 0

    def key(self, arch):
        return (arch, self.device, self.batch, self.amp)

    def __call__(self, arch):
        if self.key(arch) not in self.cache:
            self.cache[self.key(arch)] = measure_throughput(arch, self.space, self.device, self.batch, self.amp,
                                                            **self.measure_kw)
            self.measured += 1
        return self.cache[self.key(arch)]

    def state_dict(self):
        return [[a.to_dict(), dev, b, amp, v] for (a, dev, b, amp), v in self.cache.items()]

    def load_state_dict(self, state):
        self.cache.update({(Arch.from_dict(a), dev, b, amp): v for a, dev, b, amp, v in state})


class LatencyModel:
    """Seconds per image of an arch on one device, fitted to measurements, as a sum over blocks
    (so that solve_identity_prob can aim the identity probability at a throughput window):
    t = c0 + c1 T + sum over real blocks (c2 + c3 T + c4 MACs_block + c5 T^2 h) + c6 MACs_rest,
    T = tokens, h = heads. Measuring every sampled arch during training would be too slow."""

    def __init__(self, space, coef=None):
        self.space, self.coef = space, None if coef is None else np.asarray(coef, dtype=float)

    def features(self, arch):
        t = (self.space.image_size // arch.patch_size) ** 2 + 1
        rest = flops(self.space.empty_arch(arch.patch_size, arch.embed_dim), self.space)
        f = np.array([1.0, t, 0.0, 0.0, 0.0, 0.0, rest])
        for b in arch.blocks:
            if b is not None:
                # as in flops()
                macs = (4 * t * arch.embed_dim + 2 * t * t) * b.attn_dim + 2 * t * arch.embed_dim * b.mlp_dim
                f += [0.0, 0.0, 1.0, t, macs, t * t * b.heads, 0.0]
        return f

    def fit(self, archs, images_per_s):
        """Least squares on seconds per image, each measurement weighted by 1/t (relative error)."""
        x = np.stack([self.features(a) for a in archs])
        y = 1.0 / np.asarray(images_per_s, dtype=float)
        w = 1.0 / y
        self.coef = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
        return self

    def __call__(self, arch):
        """Predicted seconds per image (never below a microsecond)."""
        return max(float(self.features(arch) @ self.coef), 1e-6)

