"""
ViTAS core (Su et al., "Vision Transformer Architecture Search", arXiv 2106.13700), in one file.

Read top to bottom: the architecture records and the search space (sampling, identity shifting),
the analytical FLOPs/params counter and the learned identity probability that aims at a FLOPs
budget, the plain ViT a found architecture becomes, the sliceable super-transformer that shares
weights between all of them, export of a slice to a plain ViT and load() of a ViT shipped by
`train.py --export` (measured throughput, beyond the paper: record.py). Depends on torch and
numpy only: copy it alone into another project.

    space = SearchSpace.preset("tiny")
    arch = space.sample(torch.Generator().manual_seed(0))
    net = SuperTransformer(space)
    logits = net(images, arch, side="left")     # or "right" (bilateral sharing), "cyclic" (cyclic sharing)
    vit = export(net, arch, side="left")        # a plain nn.Module with the inherited weights
    print(flops(arch, space), params(arch, space))
"""
import itertools
import json
import os
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIDES = ("left", "right")              # bilateral sharing trains both
SHARINGS = {"left": ("left",), "bilateral": SIDES, "cyclic": ("cyclic",)}   # sharing -> the sides a step trains

# -----------------------------------------------------------------------------
# Architecture records


@dataclass(frozen=True)
class Block:
    """One non-identity transformer block. attn_dim is the width of each of Q, K and V."""
    heads: int
    attn_dim: int
    mlp_dim: int


@dataclass(frozen=True)
class Arch:
    """A sub-network of the super-transformer: one patch size, one embed dim (the residual
    stream), and per block position either a Block or None (identity, the block is skipped)."""
    patch_size: int
    embed_dim: int
    blocks: tuple

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))

    @property
    def depth(self):
        """Number of non-identity blocks."""
        return sum(b is not None for b in self.blocks)

    def to_dict(self):
        return {"patch_size": self.patch_size, "embed_dim": self.embed_dim,
                "blocks": [None if b is None else {"heads": b.heads, "attn_dim": b.attn_dim, "mlp_dim": b.mlp_dim}
                           for b in self.blocks]}

    @classmethod
    def from_dict(cls, d):
        """Inverse of to_dict; malformed input raises ValueError naming the field."""
        def integer(v, where):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"arch {where}: expected an integer, got {v!r}")
            return v

        if not isinstance(d, dict):
            raise ValueError(f"arch: expected a JSON object with patch_size, embed_dim, blocks; got {type(d).__name__}")
        missing = {"patch_size", "embed_dim", "blocks"} - d.keys()
        if missing:
            raise ValueError(f"arch: missing field(s) {sorted(missing)}; expected patch_size, embed_dim, blocks")
        if not isinstance(d["blocks"], (list, tuple)):
            raise ValueError(f"arch blocks: expected a list of null (identity) or block objects, got {d['blocks']!r}")
        blocks = []
        for i, b in enumerate(d["blocks"]):
            if b is None:
                blocks.append(None)
                continue
            if not isinstance(b, dict) or set(b) != {"heads", "attn_dim", "mlp_dim"}:
                raise ValueError(f"arch blocks[{i}]: expected null or "
                                 f"{{\"heads\", \"attn_dim\", \"mlp_dim\"}}, got {b!r}")
            blocks.append(Block(**{k: integer(b[k], f"blocks[{i}].{k}") for k in ("heads", "attn_dim", "mlp_dim")}))
        return cls(integer(d["patch_size"], "patch_size"), integer(d["embed_dim"], "embed_dim"), tuple(blocks))

    def __str__(self):
        body = " ".join("-" if b is None else f"{b.heads}/{b.attn_dim}/{b.mlp_dim}" for b in self.blocks)
        return f"p{self.patch_size} C{self.embed_dim} [{body}]"


# -----------------------------------------------------------------------------
# Search space

PRESETS = {
    # the paper's ImageNet space for the "1G" budget (arXiv 2106.13700, section 4; k = 1..10, integer arithmetic)
    "vitas-1g": dict(image_size=224, in_chans=3, num_classes=1000, patch_sizes=(14, 16, 32), depth=16,
                     embed_dims=tuple(k * 384 // 10 for k in range(1, 11)), heads=(3, 6, 12, 16),
                     attn_dims=tuple(48 * k for k in range(1, 11)),
                     mlp_dims=tuple(k * 1440 // 10 for k in range(1, 11))),
    # the same shape scaled to a 2-core CPU: quick start and tests
    "tiny": dict(image_size=32, in_chans=3, num_classes=10, patch_sizes=(4, 8), depth=6,
                 embed_dims=(32, 48, 64), heads=(2, 4), attn_dims=(32, 48, 64), mlp_dims=(64, 128, 192)),
}


def _int_tuple(values, name):
    try:
        out = tuple(sorted(int(v) for v in values))
    except (TypeError, ValueError):
        raise ValueError(f"search space {name}: expected a list of integers, got {values!r}") from None
    if not out or out[0] <= 0 or len(set(out)) != len(out):
        raise ValueError(f"search space {name}: expected distinct positive integers, got {values!r}")
    return out


@dataclass(frozen=True)
class SearchSpace:
    image_size: int
    in_chans: int
    num_classes: int
    patch_sizes: tuple
    depth: int
    embed_dims: tuple
    heads: tuple
    attn_dims: tuple     # width of each of Q, K and V
    mlp_dims: tuple

    def __post_init__(self):
        for name in ("patch_sizes", "embed_dims", "heads", "attn_dims", "mlp_dims"):
            object.__setattr__(self, name, _int_tuple(getattr(self, name), name))
        for name in ("image_size", "in_chans", "num_classes", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"search space {name}: expected a positive integer, got {value!r}")
        bad = [p for p in self.patch_sizes if self.image_size % p]
        if bad:
            raise ValueError(f"search space: image_size {self.image_size} is not divisible by patch size(s) {bad}")
        # attention widths each head count can take (a/h must be an integer); derived, not a field
        attn_for = {h: tuple(a for a in self.attn_dims if a % h == 0) for h in self.heads}
        empty = [h for h, a in attn_for.items() if not a]
        if empty:
            raise ValueError(f"search space: no attention width in {self.attn_dims} is divisible by heads {empty}")
        unused = [a for a in self.attn_dims if all(a % h for h in self.heads)]
        if unused:
            raise ValueError(f"search space attn_dims: no head count in {self.heads} divides {unused}")
        object.__setattr__(self, "attn_for", attn_for)

    @classmethod
    def preset(cls, name):
        if name not in PRESETS:
            raise ValueError(f"unknown search space preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    def to_dict(self):
        """Plain JSON-safe dict (what a --space JSON file holds); SearchSpace(**d) rebuilds the space."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def num_patches(self, patch_size):
        return (self.image_size // patch_size) ** 2

    def validate(self, arch):
        """Raise ValueError naming the offending field, its value and the allowed values."""
        def check(value, allowed, where):
            if value not in allowed:
                raise ValueError(f"arch {where} = {value!r} is not in the search space; allowed: {list(allowed)}")

        if not isinstance(arch, Arch):
            raise ValueError(f"expected an Arch, got {type(arch).__name__}")
        check(arch.patch_size, self.patch_sizes, "patch_size")
        check(arch.embed_dim, self.embed_dims, "embed_dim")
        if len(arch.blocks) != self.depth:
            raise ValueError(f"arch has {len(arch.blocks)} block positions; this search space has exactly "
                             f"{self.depth} (use null for an identity block)")
        for i, b in enumerate(arch.blocks):
            if b is None:
                continue
            if not isinstance(b, Block):
                raise ValueError(f"arch blocks[{i}] = {b!r}: expected a Block or None (identity)")
            check(b.heads, self.heads, f"blocks[{i}].heads")
            check(b.attn_dim, self.attn_dims, f"blocks[{i}].attn_dim")
            check(b.mlp_dim, self.mlp_dims, f"blocks[{i}].mlp_dim")
            if b.attn_dim % b.heads:
                raise ValueError(f"arch blocks[{i}].attn_dim = {b.attn_dim} is not divisible by heads = {b.heads}; "
                                 f"allowed with {b.heads} heads: {list(self.attn_for[b.heads])}")
        return arch

    def max_arch(self):
        """Most FLOPs: smallest patch, every block present at the widest choices, most heads that divide."""
        a = max(a for h in self.heads for a in self.attn_for[h])
        h = max(h for h in self.heads if a % h == 0)
        return Arch(self.patch_sizes[0], self.embed_dims[-1], (Block(h, a, self.mlp_dims[-1]),) * self.depth)

    def min_arch(self):
        """Fewest FLOPs with every block present: largest patch, narrowest choices, fewest heads."""
        a = min(a for h in self.heads for a in self.attn_for[h])
        h = min(h for h in self.heads if a % h == 0)
        return Arch(self.patch_sizes[-1], self.embed_dims[0], (Block(h, a, self.mlp_dims[0]),) * self.depth)

    def empty_arch(self, patch_size=None, embed_dim=None):
        """The arch with every block an identity: tokens and classifier only; by default the
        cheapest network of the space (largest patch, narrowest embedding)."""
        return Arch(self.patch_sizes[-1] if patch_size is None else patch_size,
                    self.embed_dims[0] if embed_dim is None else embed_dim, (None,) * self.depth)

    def uniform_archs(self):
        """Every arch whose present blocks are all alike and are the first d positions (d = 1..depth):
        the hand-designed kind of network, few enough to enumerate (192,000 for vitas-1g)."""
        blocks = [Block(h, a, m) for h in self.heads for a in self.attn_for[h] for m in self.mlp_dims]
        for p, c, b, d in itertools.product(self.patch_sizes, self.embed_dims, blocks, range(1, self.depth + 1)):
            yield Arch(p, c, (b,) * d + (None,) * (self.depth - d))

    def sample(self, generator, identity_prob=None):
        """Draw an arch: every choice uniform, each block identity with probability identity_prob
        (None = the uniform phase, 1/2). generator: torch.Generator or numpy.random.Generator."""
        p = 0.5 if identity_prob is None else float(identity_prob)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"identity_prob must lie in [0, 1], got {identity_prob}")
        n = 2 + 4 * self.depth   # one uniform number per decision, drawn in one call
        if isinstance(generator, torch.Generator):
            u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        elif isinstance(generator, np.random.Generator):
            u = generator.random(n).tolist()
        else:
            raise TypeError("generator must be a torch.Generator or numpy.random.Generator, "
                            f"got {type(generator).__name__}")

        def pick(choices, x):
            return choices[min(int(x * len(choices)), len(choices) - 1)]

        blocks = []
        for i in range(self.depth):
            ident, uh, ua, um = u[2 + 4 * i: 6 + 4 * i]
            if ident < p:
                blocks.append(None)
                continue
            h = pick(self.heads, uh)
            blocks.append(Block(h, pick(self.attn_for[h], ua), pick(self.mlp_dims, um)))
        return Arch(pick(self.patch_sizes, u[0]), pick(self.embed_dims, u[1]), tuple(blocks))


def shift_identities(arch):
    """Identity shifting: the arch with its identity blocks moved behind its real ones.

    An arch retrains as its real blocks in order, wherever its identities sit, so archs that differ
    only in identity placement are one network ("many-to-one", arXiv 2106.13700 v2); left alone
    they would train and be scored on different weights. Shifting maps each network to one path of
    the super-transformer: its d real blocks on the first d block positions. The v2 text at hand
    names the remedy but not its definition; this is our reading of it."""
    real = tuple(b for b in arch.blocks if b is not None)
    return Arch(arch.patch_size, arch.embed_dim, real + (None,) * (len(arch.blocks) - len(real)))


# -----------------------------------------------------------------------------
# Analytical FLOPs (multiply-accumulates, the ViT literature's convention) and parameter count


def flops(arch, space):
    """MACs of the matrix products and the patch conv; norms, softmax, activations, biases and
    residual adds are not counted. T = N patches + 1 class token; classifier on the class token."""
    p, c = arch.patch_size, arch.embed_dim
    n = (space.image_size // p) ** 2
    t = n + 1
    sum_a = sum_m = 0
    for b in arch.blocks:
        if b is not None:
            sum_a += b.attn_dim
            sum_m += b.mlp_dim
    # per block: QKV t*c*3a + scores t*t*a + attn@V t*t*a + proj t*a*c + MLP 2*t*c*m
    return n * space.in_chans * p * p * c + (4 * t * c + 2 * t * t) * sum_a + 2 * t * c * sum_m + c * space.num_classes


def params(arch, space):
    """Parameters of the standalone ViT of this arch (== numel of ViT(arch, space))."""
    p, c = arch.patch_size, arch.embed_dim
    t = (space.image_size // p) ** 2 + 1
    total = space.in_chans * p * p * c + c + c + t * c          # patch conv (+bias), class token, pos embed
    for b in arch.blocks:
        if b is not None:                                        # 2 norms, qkv, proj, fc1, fc2 with biases
            a, m = b.attn_dim, b.mlp_dim
            total += 4 * c + 3 * a * c + 3 * a + a * c + c + m * c + m + m * c + c
    return total + 2 * c + c * space.num_classes + space.num_classes


# -----------------------------------------------------------------------------
# Learned identity probability (arXiv 2106.13700, section 3)


def block_costs(space, cost=None):
    """{(patch size, embed dim): (the cost of its arch with every block an identity, {block: what the
    block adds to it}, the least and the most a block adds)}, for FLOPs or `cost`, any cost that adds
    up over blocks the same way."""
    cost = cost or (lambda a: flops(a, space))
    table = {}
    for p, c in itertools.product(space.patch_sizes, space.embed_dims):
        empty = cost(space.empty_arch(p, c))
        one = {b: cost(Arch(p, c, (b,) + (None,) * (space.depth - 1))) - empty
               for h in space.heads for a in space.attn_for[h] for m in space.mlp_dims for b in [Block(h, a, m)]}
        table[p, c] = empty, one, min(one.values()), max(one.values())
    return table


def solve_identity_prob(space, lo, hi, cost=None, what="FLOPs"):
    """Identity probability p that centres sampled networks' cost in the window [lo, hi]: FLOPs,
    or `cost`, any cost that adds up over blocks the same way (a LatencyModel's seconds per image,
    for a throughput window).

    Blocks are skipped independently, so E[cost] = base + (1 - p) * depth * E[a block's cost]: both
    terms follow exactly from every patch size, embed dim and block choice as sample() draws them,
    and p in closed form (the reference steps p by 0.01 and estimates by sampling). Clipped to
    [0, 1]; raises ValueError where the window lies outside what the space can reach."""
    cost = cost or (lambda a: flops(a, space))
    if lo > hi:
        raise ValueError(f"{what} window is empty: {lo:,} > {hi:,}")
    least, most = cost(space.empty_arch()), cost(space.max_arch())
    if hi < least or lo > most:
        raise ValueError(f"{what} window [{lo:,}, {hi:,}] is unreachable: networks of this space "
                         f"have between {least:,} and {most:,}; widen or move the window")
    table = block_costs(space, cost)
    base = [empty for empty, *_ in table.values()]
    blocks = [np.mean([np.mean([one[Block(h, a, m)] for a in space.attn_for[h] for m in space.mlp_dims])
                       for h in space.heads]) for _, one, *_ in table.values()]
    keep = ((lo + hi) / 2 - np.mean(base)) / (space.depth * np.mean(blocks))
    return float(np.clip(1.0 - keep, 0.0, 1.0))


# -----------------------------------------------------------------------------
# Cells: (patch size, depth) classes of archs, which stratified sampling (beyond the paper) draws alike


def draw_in_cell(space, rng, cell):
    """An arch of `cell` = (patch size, or None for a uniform one; depth): every width uniform,
    `depth` real blocks at random positions, so every block position is trained alike."""
    patch, depth = cell
    arch = space.sample(rng, 0.0)
    keep = set(rng.choice(space.depth, depth, replace=False).tolist())
    blocks = tuple(b if i in keep else None for i, b in enumerate(arch.blocks))
    return Arch(arch.patch_size if patch is None else patch, arch.embed_dim, blocks)


def all_cells(space, by_patch):
    """Every (patch, depth) cell of the space; by_patch False: (None, depth), patch drawn uniformly."""
    return [(p, d) for p in (space.patch_sizes if by_patch else (None,)) for d in range(1, space.depth + 1)]


def draw_in_window(space, rng, cell, lo, hi, table):
    """An arch of `cell` whose cost lies in [lo, hi], without redrawing: the patch size, the embed
    dim, then each real block, each choice uniform among those that leave the window reachable by
    the cheapest and the dearest rest (`table`: block_costs, so any cost that adds up over blocks);
    the blocks in random order at random positions. Every arch of the cell in the window can come;
    None where none is in it (or, with few widths, the last block finds a gap it cannot fill)."""
    patch, depth = cell

    def reachable(pc, spent, left):
        return spent + left * table[pc][2] <= hi and spent + left * table[pc][3] >= lo

    def pick(choices):
        choices = sorted(set(choices))
        return choices[rng.integers(len(choices))] if choices else None

    p = pick(pc[0] for pc in table if pc[0] in (space.patch_sizes if patch is None else (patch,))
             and reachable(pc, table[pc][0], depth))
    if p is None:
        return None
    c = pick(pc[1] for pc in table if pc[0] == p and reachable(pc, table[pc][0], depth))
    spent, one, blocks = table[p, c][0], table[p, c][1], []
    for left in range(depth - 1, -1, -1):
        fits = [b for b in one if reachable((p, c), spent + one[b], left)]
        h = pick(b.heads for b in fits)
        a = pick(b.attn_dim for b in fits if b.heads == h)
        m = pick(b.mlp_dim for b in fits if b.heads == h and b.attn_dim == a)
        if m is None:
            return None
        blocks.append(Block(h, a, m))
        spent += one[blocks[-1]]
    where = dict(zip(rng.choice(space.depth, depth, replace=False).tolist(), rng.permutation(depth).tolist()))
    return Arch(p, c, tuple(blocks[where[i]] if i in where else None for i in range(space.depth)))


def window_cells(space, inside, window, table, by_patch, seed=0, n=200, min_share=0.02):
    """The cells of all_cells that hold archs inside the window (draw_in_window finds one), and of
    those the rare ones: fewer than `min_share` of their draws (draw_in_cell) land inside, so they
    are drawn inside the window straight away rather than by redrawing until one does."""
    rng = np.random.default_rng([seed, 6])
    cells = [c for c in all_cells(space, by_patch)
             if any(draw_in_window(space, rng, c, *window, table) is not None for _ in range(10))]
    rare = {c for c in cells if np.mean([inside(draw_in_cell(space, rng, c)) for _ in range(n)]) < min_share}
    return cells, rare


# -----------------------------------------------------------------------------
# Building blocks shared by the plain ViT and the super-transformer. Each computation is written once,
# from parameters p under the plain ViT's names: a plain module passes its own, a slice its sliced().


def drop_path(x, rate, training):
    """Stochastic depth: drop a residual branch per sample."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def attention(q, k, v, fused=True):
    """(B, h, T, d) -> (B, h, T, d). fused=False spells out the matmuls so that
    torch.utils.flop_counter counts them (on CPU it reports 0 for the fused kernel)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)    # (B, h, T, T); scale = head_dim^-0.5
    return scores.softmax(dim=-1) @ v


def use_fused_attention(model, fused):
    """Switch every attention of a ViT or SuperTransformer between the fused and explicit path."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return model


def check_images(x, space):
    if x.ndim != 4 or x.shape[1] != space.in_chans or x.shape[2] != space.image_size or x.shape[3] != space.image_size:
        raise ValueError(f"expected images of shape (B, {space.in_chans}, {space.image_size}, {space.image_size}) "
                         f"for this search space, got {tuple(x.shape)}; resize them in the data transforms")


def init_weights(module):
    """timm-style: trunc-normal(0.02) weights and tokens, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, Tokens):
            nn.init.trunc_normal_(m.cls_token, std=0.02)
            nn.init.trunc_normal_(m.pos_embed, std=0.02)


def drop_path_rates(rate, depth):
    """Stochastic depth rising linearly over block positions (identity positions included)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def embed_tokens(x, p, stride):
    """The Tokens computation: x (B, in_chans, S, S) -> (B, N + 1, C)."""
    x = F.conv2d(x, p["proj.weight"], p["proj.bias"], stride=stride).flatten(2).transpose(1, 2)   # (B, N, C)
    return torch.cat([p["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + p["pos_embed"]


def multi_head_attention(x, p, heads, fused=True):
    """The Attention computation (qkv, proj): x (B, T, C) -> (B, T, C)."""
    B, T, _ = x.shape
    qkv = F.linear(x, p["qkv.weight"], p["qkv.bias"])                                # (B, T, 3A)
    q, k, v = qkv.view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)                   # 3 x (B, heads, T, A / heads)
    x = attention(q, k, v, fused).transpose(1, 2).reshape(B, T, -1)                 # (B, T, A)
    return F.linear(x, p["proj.weight"], p["proj.bias"])


def transformer_block(x, p, attn, rate, training):
    """The ViTBlock computation (timm's pre-norm block): x (B, T, C) -> (B, T, C), attn(x) its attention."""
    C = x.shape[-1]
    x = x + drop_path(attn(F.layer_norm(x, (C,), p["norm1.weight"], p["norm1.bias"])), rate, training)
    h = F.layer_norm(x, (C,), p["norm2.weight"], p["norm2.bias"])
    h = F.linear(F.gelu(F.linear(h, p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"])
    return x + drop_path(h, rate, training)


def classify(x, p):
    """The class token's logits: final norm and classifier (norm, head). x (B, T, C) -> (B, classes)."""
    x = F.layer_norm(x[:, 0], (x.shape[-1],), p["norm.weight"], p["norm.bias"])     # (B, C)
    return F.linear(x, p["head.weight"], p["head.bias"])


class Tokens(nn.Module):
    """Patch embedding, class token and position embedding of one patch size."""

    def __init__(self, in_chans, embed_dim, patch_size, num_patches):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))

    def forward(self, x):
        return embed_tokens(x, dict(self.named_parameters()), self.proj.stride)    # (B, N + 1, C)


# -----------------------------------------------------------------------------
# Plain ViT: what a found architecture is retrained as


class Attention(nn.Module):
    def __init__(self, dim, heads, attn_dim):
        super().__init__()
        self.heads, self.fused_attn = heads, True
        self.qkv = nn.Linear(dim, 3 * attn_dim)
        self.proj = nn.Linear(attn_dim, dim)

    def forward(self, x):
        return multi_head_attention(x, dict(self.named_parameters()), self.heads, self.fused_attn)


class ViTBlock(nn.Module):
    def __init__(self, dim, block, drop_path_rate=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, block.heads, block.attn_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, block.mlp_dim)
        self.fc2 = nn.Linear(block.mlp_dim, dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x):
        return transformer_block(x, dict(self.named_parameters()), self.attn, self.drop_path_rate, self.training)


class ViT(nn.Module):
    """A standalone vision transformer of one arch: ordinary Conv2d/Linear/LayerNorm, no slicing.
    Identity positions hold nn.Identity, so block indices match the arch and the super-transformer."""

    def __init__(self, arch, space, drop_path_rate=0.0):
        super().__init__()
        space.validate(arch)
        self.arch, self.space = arch, space
        c = arch.embed_dim
        self.tokens = Tokens(space.in_chans, c, arch.patch_size, space.num_patches(arch.patch_size))
        rates = drop_path_rates(drop_path_rate, space.depth)
        self.blocks = nn.Sequential(*[nn.Identity() if b is None else ViTBlock(c, b, r)
                                      for b, r in zip(arch.blocks, rates)])
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, space.num_classes)
        init_weights(self)

    def forward(self, x):
        check_images(x, self.space)
        x = self.blocks(self.tokens(x))               # (B, T, C)
        return classify(x, dict(self.named_parameters()))       # class token -> (B, classes)


# -----------------------------------------------------------------------------
# Super-transformer: every arch of the space is a slice of it (arXiv 2106.13700, section 3)
#
# Each sub-layer holds its parameters once at the space's largest size (the tokens once per patch
# size, Q and K once per head count), named as the plain ViT names them; a sub-network computes with
# some channels of each, taken by indexing where used. Which channels a width takes is the sharing
# scheme (channels()): the first (left), the last (right; bilateral sharing trains both) or a ring
# window (cyclic, embedding channels only). e, a, m: the embedding, attention and MLP channels a
# slice takes (c, a, m in shape comments: how many). A step's gradient is zero on the channels not
# taken, so AdamW still decays them (and its momentum moves them); a head count's Q and K that a step
# did not draw get no gradient and are skipped. sliced() returns a choice's parameters under the plain
# ViT's names (qkv assembled from qk[h] and v): forward runs the plain computations on them, export copies them.


def cyclic_start(width, widths):
    """Where `width` starts on the ring of max(widths) embedding channels under cyclic sharing.

    The windows of the narrower widths are laid end to end around the ring in ascending order (the
    first at channel 0, each next one where the last ended, wrapping), and the widest is the whole
    ring; so every channel lies in the same number of windows, give or take one."""
    widths = sorted(widths)
    return sum(widths[:widths.index(width)]) % widths[-1]


def check_side(side, widths):
    """'left' or 'right', or 'cyclic' with the embedding widths its windows lie on; not a sharing."""
    if side not in SIDES and (side != "cyclic" or widths is None):
        raise ValueError("side must be 'left' or 'right' (left and bilateral sharing) or 'cyclic' "
                         f"(with the embedding widths), got {side!r}")


def channels(width, full, side, widths=None):
    """The channels of `full` that a sub-network of `width` uses: the first (left) or the last
    (right) ones, bilateral sharing training both so every channel is trained about equally; or
    (side "cyclic", embedding channels only, `widths` the choices) the ring window of
    cyclic_start, a slice or, where it wraps, an index tensor in ring order."""
    check_side(side, widths)                  # at every width, the full one too
    if width == full:
        return slice(None)
    if side == "left":
        return slice(0, width)
    if side == "right":
        return slice(full - width, full)
    start = cyclic_start(width, widths)
    if start + width <= full:
        return slice(start, start + width)
    return torch.from_numpy((start + np.arange(width)) % full)


class SuperTokens(Tokens):
    """Private class token: the patch conv, class token and position embedding of one patch size,
    at the largest embedding width (the plain ViT's Tokens); a slice uses embedding channels e."""

    def sliced(self, e):
        return {"proj.weight": self.proj.weight[e], "proj.bias": self.proj.bias[e],
                "cls_token": self.cls_token[:, :, e], "pos_embed": self.pos_embed[:, :, e]}

    def forward(self, x, e):
        return embed_tokens(x, self.sliced(e), self.proj.stride)          # (B, N + 1, c), c = the channels in e


class SuperAttention(nn.Module):
    """The attention's parameters at their largest size. Private self-attention maps: Q and K are
    private to each head count (qk[h], an nn.Linear(C, 2A): Q's rows, then K's), since what an
    attention map means depends on how channels are grouped into heads; V and the output projection
    are shared by all head counts. A step that does not draw head count h gives qk[h] no gradient
    at all, so AdamW neither decays nor moves it."""

    def __init__(self, dim, heads, attn_dim):
        super().__init__()
        self.fused_attn = True
        self.qk = nn.ModuleDict({str(h): nn.Linear(dim, 2 * attn_dim) for h in heads})
        self.v = nn.Linear(dim, attn_dim)
        self.proj = nn.Linear(attn_dim, dim)

    def sliced(self, e, a, heads):
        """The plain Attention's parameters at embedding channels e and attention channels a."""
        qk = self.qk[str(heads)]
        q_and_k = qk.weight.unflatten(0, (2, -1))[:, a, e]                          # (2, a, c): Q's rows, K's
        return {"qkv.weight": torch.cat([q_and_k, self.v.weight[None, a, e]]).flatten(0, 1),     # (3a, c)
                "qkv.bias": torch.cat([qk.bias.unflatten(0, (2, -1))[:, a], self.v.bias[None, a]]).flatten(),
                "proj.weight": self.proj.weight[e, a], "proj.bias": self.proj.bias[e]}

    def forward(self, x, p, heads):
        """x (B, T, c) -> (B, T, c): the plain Attention's computation on p = sliced(e, a, heads)."""
        return multi_head_attention(x, p, heads, self.fused_attn)


class SuperBlock(nn.Module):
    """One block position: pre-norm attention and MLP at the space's largest widths, the plain
    ViTBlock's parameters and names (attention: SuperAttention)."""

    def __init__(self, space, drop_path_rate=0.0):
        super().__init__()
        dim, attn_dim, mlp_dim = space.embed_dims[-1], space.attn_dims[-1], space.mlp_dims[-1]
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SuperAttention(dim, space.heads, attn_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop_path_rate = drop_path_rate

    def sliced(self, e, block, side):
        """The plain ViTBlock's parameters of one block choice at embedding channels e. Cyclic
        sharing rings the embedding channels only; its attention and MLP widths are left slices."""
        inner = "left" if side == "cyclic" else side
        a = channels(block.attn_dim, self.attn.v.out_features, inner)
        m = channels(block.mlp_dim, self.fc1.out_features, inner)
        return {"norm1.weight": self.norm1.weight[e], "norm1.bias": self.norm1.bias[e],
                **{f"attn.{k}": v for k, v in self.attn.sliced(e, a, block.heads).items()},
                "norm2.weight": self.norm2.weight[e], "norm2.bias": self.norm2.bias[e],
                "fc1.weight": self.fc1.weight[m, e], "fc1.bias": self.fc1.bias[m],
                "fc2.weight": self.fc2.weight[e, m], "fc2.bias": self.fc2.bias[e]}

    def forward(self, x, e, block, side):
        """x (B, T, c) -> (B, T, c): the plain ViTBlock's computation on the slice of `block`."""
        p = self.sliced(e, block, side)
        attn = {k.removeprefix("attn."): v for k, v in p.items() if k.startswith("attn.")}
        return transformer_block(x, p, lambda h: self.attn(h, attn, block.heads), self.drop_path_rate, self.training)


class SuperTransformer(nn.Module):
    """The over-sized ViT whose slices are all the archs of `space`: private tokens per patch size
    (SuperTokens), a SuperBlock per block position, and the final norm and classifier, every
    parameter named as in the plain ViT (tokens.p<P>. for tokens., attn.qk.<h>. and attn.v. for
    attn.qkv.). forward(x, arch, side) runs the slice of one arch; an identity block is skipped."""

    def __init__(self, space, drop_path_rate=0.0):
        super().__init__()
        self.space, c = space, space.embed_dims[-1]
        self.tokens = nn.ModuleDict({f"p{p}": SuperTokens(space.in_chans, c, p, space.num_patches(p))
                                     for p in space.patch_sizes})
        self.blocks = nn.ModuleList(SuperBlock(space, r) for r in drop_path_rates(drop_path_rate, space.depth))
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, space.num_classes)
        init_weights(self)

    def embed_channels(self, arch, side, device):
        """The residual stream's channels: the same embedding channels at every layer of the arch."""
        e = channels(arch.embed_dim, self.space.embed_dims[-1], side, self.space.embed_dims)
        return e.to(device) if torch.is_tensor(e) else e

    def sliced_head(self, e):
        return {"norm.weight": self.norm.weight[e], "norm.bias": self.norm.bias[e],
                "head.weight": self.head.weight[:, e], "head.bias": self.head.bias}

    def forward(self, x, arch, side="left"):
        check_side(side, self.space.embed_dims)
        self.space.validate(arch)
        check_images(x, self.space)
        e = self.embed_channels(arch, side, x.device)
        x = self.tokens[f"p{arch.patch_size}"](x, e)                    # (B, T, c)
        for blk, b in zip(self.blocks, arch.blocks):
            if b is not None:
                x = blk(x, e, b, side)
        return classify(x, self.sliced_head(e))


# -----------------------------------------------------------------------------
# Export


@torch.no_grad()
def export(supernet, arch, side="left", drop_path_rate=0.0):
    """A plain ViT of `arch` carrying the super-transformer's weights for that slice and side: the
    parameters its forward computes with (sliced()), so its output equals supernet(x, arch, side),
    up to float rounding, in eval mode or without stochastic depth."""
    space = supernet.space
    check_side(side, space.embed_dims)
    vit = ViT(arch, space, drop_path_rate).to(supernet.head.weight.device, supernet.head.weight.dtype)
    e = supernet.embed_channels(arch, side, supernet.head.weight.device)
    state = {f"tokens.{k}": v for k, v in supernet.tokens[f"p{arch.patch_size}"].sliced(e).items()}
    for i, (blk, b) in enumerate(zip(supernet.blocks, arch.blocks)):
        if b is not None:
            state.update({f"blocks.{i}.{k}": v for k, v in blk.sliced(e, b, side).items()})
    vit.load_state_dict({**state, **supernet.sliced_head(e)})      # strict: every parameter of the ViT
    use_fused_attention(vit, all(getattr(m, "fused_attn", True) for m in supernet.modules()))
    return vit.train(supernet.training)


def load(folder, device="cpu"):
    """The ViT that `python train.py --export CKPT` wrote to `folder`, in eval mode, and what travels
    with it (info: arch, space, class names, the evaluation transform's resize, crop, mean and std)."""
    with open(os.path.join(folder, "vit.json")) as f:
        info = json.load(f)
    vit = ViT(Arch.from_dict(info["arch"]), SearchSpace(**info["space"]))
    vit.load_state_dict(torch.load(os.path.join(folder, "weights.pt"), map_location=device, weights_only=True))
    return vit.to(device).eval(), info
