"""Plain helpers shared by the reward tests (a uniquely named module, importable by dotted path)."""

import torch

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.1, 0.9)}


def color_images(names, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in names:
        base = torch.tensor(COLORS[n]).view(3, 1, 1).expand(3, size, size)
        out.append((base + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(out)


def caption(name):
    return f"a photo of a {name} square"


def train_contrastive(image_fn, text_fn, params, logit_scale, steps=60, lr=3e-3, seed=0):
    """Briefly train a two-tower model so that matching colour captions score higher (CLIP loss)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    names = list(COLORS)
    caps = [caption(n) for n in names]
    target = torch.arange(len(names))
    for step in range(steps):
        ie = torch.nn.functional.normalize(image_fn(color_images(names, seed=step)), dim=-1)
        te = torch.nn.functional.normalize(text_fn(caps), dim=-1)
        logits = logit_scale().exp() * ie @ te.T
        loss = torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def trainable(model):
    """Parameters to train: all but the temperature and the (large, random, already distinct) token embeddings."""
    skip = ("logit_scale", "token_embedding", "word_embeddings")
    return [p for n, p in model.named_parameters() if not any(k in n for k in skip)]


def mean_rgb(x):
    """Toy feature encoder: the mean colour of each image, (N, 3)."""
    return x.mean(dim=(2, 3))
