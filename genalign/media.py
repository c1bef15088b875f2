"""Writers per modality: what a generator's samples become on disk.

* images (N, 3, H, W) in [0, 1]: a PNG per sample and a labelled grid (rows = prompts, columns = seeds, padding
  between cells, each row captioned with its prompt, each column with its seed; small images are upscaled with
  nearest neighbour so that the toy world's 32x32 digits are visible).
* audio (N, C, L) in [-1, 1]: a 16-bit PCM WAV per sample, a grid of log-magnitude spectrograms labelled the same
  way, and an ``index.html`` page with one ``<audio controls>`` player per prompt x seed.

:func:`write_media` dispatches on the modality. Every file is written atomically (:mod:`genalign.io`).
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .errors import GenalignError
from .io import atomic_write_bytes, atomic_write_text

MODALITIES = ("image", "audio")
PAD = 8  # pixels between cells and around the grid
LABEL_WIDTH = 168  # pixels of the prompt column
MIN_CELL = 128  # images smaller than this are upscaled (nearest neighbour) to at least this size


@dataclass(frozen=True)
class OutputSpec:
    """What one sample of a generator is: an image (``height`` x ``width`` pixels) or an audio clip (``seconds``
    long at ``sample_rate`` Hz with ``channels`` channels)."""

    modality: str
    height: int = 0
    width: int = 0
    seconds: float = 0.0
    sample_rate: int = 0
    channels: int = 0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise GenalignError(f"unknown modality '{self.modality}'; valid choices: {', '.join(MODALITIES)}")


# ------------------------------------------------------------------------------------------------- shared pieces
def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def wrap_text(draw, text: str, font, width: int, max_lines: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels; at most ``max_lines`` lines, the last one ending in '…' when cut."""
    words, lines, cur = text.split(), [], ""
    for w in words:
        while _text_width(draw, w, font) > width and len(w) > 1:  # a word wider than the column: hard split
            k = len(w)
            while k > 1 and _text_width(draw, w[:k], font) > width:
                k -= 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(w[:k])
            w = w[k:]
        trial = f"{cur} {w}".strip()
        if _text_width(draw, trial, font) <= width:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(draw, last + "…", font) > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines or [""]


def labelled_grid(cells: Sequence, rows: int, cols: int, row_labels: Sequence[str], col_labels: Sequence[str]):
    """Paste equally sized PIL cells into a rows x cols grid with ``PAD`` pixels between them, a prompt column
    on the left (wrapped, truncated to the cell height) and a seed row on top. Returns a PIL image."""
    from PIL import Image, ImageDraw

    if len(cells) != rows * cols:
        raise GenalignError(f"a {rows}x{cols} grid needs {rows * cols} samples, got {len(cells)}")
    font = _font(12)
    line_h = 15
    cw, ch = cells[0].size
    head = line_h + PAD
    W = LABEL_WIDTH + PAD + cols * (cw + PAD)
    H = head + PAD + rows * (ch + PAD)
    grid = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(grid)
    for c in range(cols):
        x0 = LABEL_WIDTH + PAD + c * (cw + PAD)
        label = str(col_labels[c])
        draw.text((x0 + max(0, (cw - _text_width(draw, label, font)) // 2), PAD // 2), label, fill="black", font=font)
    for r in range(rows):
        y0 = head + PAD + r * (ch + PAD)
        lines = wrap_text(draw, str(row_labels[r]), font, LABEL_WIDTH - PAD, max(1, ch // line_h))
        for i, line in enumerate(lines):
            draw.text((PAD, y0 + i * line_h), line, fill="black", font=font)
        for c in range(cols):
            grid.paste(cells[r * cols + c], (LABEL_WIDTH + PAD + c * (cw + PAD), y0))
    return grid


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _check(samples: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], rows: int, cols: int) -> None:
    n = samples.shape[0]
    if len(prompts) != n or len(seeds) != n:
        raise GenalignError(f"write_media: {n} samples but {len(prompts)} prompts and {len(seeds)} seeds")
    if rows * cols != n:
        raise GenalignError(f"write_media: {n} samples do not fill a {rows}x{cols} grid (rows = prompts, cols = seeds)")


# ------------------------------------------------------------------------------------------------------- images
def to_pil(img: torch.Tensor):
    """(3, H, W) in [0, 1] -> an 8-bit PIL image."""
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def upscale_factor(height: int, width: int) -> int:
    return max(1, MIN_CELL // max(1, min(height, width)))


def image_grid(samples: torch.Tensor, rows: int, cols: int, prompts: Sequence[str], seeds: Sequence[int]):
    """The labelled grid of images (row r is prompts[r*cols], column c is seeds[c]); a PIL image."""
    images = [to_pil(s) for s in samples]
    f = upscale_factor(images[0].height, images[0].width)
    if f > 1:
        from PIL import Image

        images = [im.resize((im.width * f, im.height * f), Image.NEAREST) for im in images]
    return labelled_grid(images, rows, cols, [prompts[r * cols] for r in range(rows)],
                         [f"seed {s}" for s in seeds[:cols]])


def write_images(samples, out_dir, tag, prompts, seeds, rows, cols, files_dir, per_sample=True) -> Dict:
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise GenalignError(f"image samples must be (N, 3, H, W), got {tuple(samples.shape)}")
    if samples.shape[1] == 1:
        samples = samples.expand(-1, 3, -1, -1)
    files = []
    if per_sample:
        for k, s in enumerate(seeds):
            path = os.path.join(files_dir, f"{k:04d}_seed{s}.png")
            atomic_write_bytes(path, _png_bytes(to_pil(samples[k])))
            files.append(path)
    grid = os.path.join(out_dir, f"{tag}.png")
    atomic_write_bytes(grid, _png_bytes(image_grid(samples, rows, cols, prompts, seeds)))
    return {"grid": grid, "files": files}


# -------------------------------------------------------------------------------------------------------- audio
def wav_bytes(wave: torch.Tensor, sample_rate: int) -> bytes:
    """(C, L) in [-1, 1] -> 16-bit PCM WAV bytes (stdlib ``wave``)."""
    from .rewards.encoders import encode_wav

    return encode_wav(wave, sample_rate)


def spectrogram(wave: torch.Tensor, n_fft: int = 512, hop: Optional[int] = None, floor_db: float = -80.0):
    """Log-magnitude STFT of a (C, L) or (L,) waveform, channels mixed to mono: (n_fft // 2 + 1, frames) in dB
    relative to the clip's own peak, floored at ``floor_db``. ``n_fft`` shrinks (to a power of two) for short clips."""
    x = wave.detach().float().cpu()
    x = x.mean(0) if x.ndim == 2 else x
    while n_fft > 4 and n_fft > x.shape[-1]:  # (4: toy test clips of 8 samples)
        n_fft //= 2
    hop = hop or n_fft // 4
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft), center=True,
                      return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-8)
    return (db - db.max()).clamp(min=floor_db)


def spectrogram_image(wave: torch.Tensor, height: int = 128, width: int = 192, floor_db: float = -80.0):
    """A coloured (magma) spectrogram picture, low frequencies at the bottom; a PIL image of ``width`` x ``height``."""
    import matplotlib

    from PIL import Image

    db = spectrogram(wave, floor_db=floor_db)
    unit = ((db - floor_db) / -floor_db).flip(0).numpy()  # 0 = floor, 1 = peak
    rgb = (matplotlib.colormaps["magma"](unit)[..., :3] * 255).round().astype("uint8")
    return Image.fromarray(rgb).resize((width, height), Image.BILINEAR)


def audio_page(entries: List[Dict], rows: int, cols: int, title: str, grid_rel: Optional[str]) -> str:
    """An HTML table: one row per prompt, one cell per seed with an ``<audio controls>`` player and its scores."""
    e = html.escape
    out = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif}td,th{padding:6px;border:1px solid #ccc;vertical-align:top}"
           "table{border-collapse:collapse}.s{font-size:12px;color:#444}</style></head><body>",
           f"<h1>{e(title)}</h1>"]
    if grid_rel:
        out.append(f'<p><img src="{e(grid_rel)}" alt="spectrograms (rows = prompts, columns = seeds)"></p>')
    out.append("<table><tr><th>prompt</th>" + "".join(f"<th>seed {e(str(entries[c]['seed']))}</th>"
                                                       for c in range(cols)) + "</tr>")
    for r in range(rows):
        row = [f"<tr><th>{e(entries[r * cols]['prompt'])}</th>"]
        for c in range(cols):
            it = entries[r * cols + c]
            sc = "".join(f"<div class='s'>{e(n)}: {v:.4f}</div>" for n, v in it["scores"].items())
            row.append(f"<td><div class='s'>seed {e(str(it['seed']))}</div>"
                       f'<audio controls preload="none" src="{e(it["file"])}"></audio>{sc}</td>')
        out.append("".join(row) + "</tr>")
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def write_audio(samples, out_dir, tag, prompts, seeds, rows, cols, files_dir, scores, sample_rate) -> Dict:
    if samples.ndim != 3:
        raise GenalignError(f"audio samples must be (N, C, L) waveforms, got {tuple(samples.shape)}")
    if not sample_rate or int(sample_rate) <= 0:
        raise GenalignError("audio samples need a positive sample_rate (Hz) to be written")
    files, entries = [], []
    for k, s in enumerate(seeds):
        path = os.path.join(files_dir, f"{k:04d}_seed{s}.wav")
        atomic_write_bytes(path, wav_bytes(samples[k], int(sample_rate)))
        files.append(path)
        entries.append({"prompt": prompts[k], "seed": s, "file": os.path.basename(path),
                        "scores": {n: float(v[k]) for n, v in (scores or {}).items()}})
    cells = [spectrogram_image(w) for w in samples]
    grid = os.path.join(out_dir, f"{tag}.png")
    img = labelled_grid(cells, rows, cols, [prompts[r * cols] for r in range(rows)],
                        [f"seed {s}" for s in seeds[:cols]])
    atomic_write_bytes(grid, _png_bytes(img))
    page = os.path.join(files_dir, "index.html")
    atomic_write_text(page, audio_page(entries, rows, cols, f"genalign samples: {tag}",
                                       os.path.relpath(grid, files_dir)))
    return {"grid": grid, "files": files, "html": page}


# ----------------------------------------------------------------------------------------------------- dispatch
def write_media(samples: torch.Tensor, modality: str, out_dir: str, tag: str, prompts: Sequence[str],
                seeds: Sequence[int], rows: int, cols: int, scores: Optional[Dict[str, torch.Tensor]] = None,
                sample_rate: Optional[int] = None, subdir: Optional[str] = None, per_sample: bool = True) -> Dict:
    """Write N = rows x cols samples (prompt-major: item k is prompt row k // cols, seed column k % cols).

    ``prompts`` and ``seeds`` are per item (length N). The grid goes to ``out_dir/<tag>.png``; per-sample files
    (``0000_seed0.png`` / ``.wav``, and the audio ``index.html``) to ``out_dir/<subdir>`` (default ``<tag>``;
    ``""`` = ``out_dir`` itself). ``per_sample=False`` skips per-image PNGs (audio always writes its WAVs, which
    the page plays). Returns ``{"grid": path, "files": [paths], "html": path (audio only)}``.
    """
    if modality not in MODALITIES:
        raise GenalignError(f"unknown modality '{modality}'; valid choices: {', '.join(MODALITIES)}")
    samples = samples.detach().float().cpu()
    _check(samples, prompts, seeds, rows, cols)
    files_dir = os.path.join(out_dir, tag if subdir is None else subdir)
    os.makedirs(files_dir, exist_ok=True)
    if modality == "image":
        return write_images(samples, out_dir, tag, prompts, seeds, rows, cols, files_dir, per_sample)
    return write_audio(samples, out_dir, tag, prompts, seeds, rows, cols, files_dir, scores, sample_rate)
