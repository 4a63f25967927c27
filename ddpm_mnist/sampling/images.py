"""Images in and out. Handed in to be edited: read safely (size limits from the header, before any pixel is decoded),
converted to the digit a person sees (transparency over black, 16-bit scaled, palettes expanded, the first
frame), resized as the training images were; the masks of inpainting. Written out: grids carrying their record."""
from __future__ import annotations

import json
import math
from collections import namedtuple
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddpm_mnist.utils import BadValue, MissingFile, PathLike, UserError, atomic_path, strict

GRID_CELL = 56  # pixels: the least an image in a written grid is shown at (an MNIST digit twice its size)
MODES = {1: 'L', 3: 'RGB'}  # a model's channels -> the PIL mode its images are read in
MASKS = ('top', 'bottom', 'left', 'right', 'centre')
Converted = namedtuple('Converted', 'images notes size')  # size: the inputs' own (width, height)


MAX_SIDE = 4096            # pixels along either side of an input image, checked before decoding
MAX_PIXELS = 4096 * 4096   # and in all (a 1 x 20,000,000 strip is refused too)
MAX_ASPECT = 16            # longer side / shorter side: beyond this the centre crop keeps almost nothing


def as_seen(image: Image.Image, mode: str = 'L') -> tuple[Image.Image, str]:
    """The image a person sees, as 8-bit grayscale ('L') or colour ('RGB'), and how it was converted: transparency
    composited over black (MNIST's background: a white digit on a transparent background stays a white digit),
    16-bit and 32-bit values scaled to 0-255, palettes expanded, the first frame of an animation."""
    how = image.mode
    if image.info.get('frames', 1) > 1:
        how += f', the first of {image.info["frames"]} frames'
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith('I;16') or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255, 0, 255).round().astype(np.uint8), mode='L')
        how += ' scaled to 8 bits'
    elif image.mode == 'F':
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values * (255 if values.max() <= 1 else 1), 0, 255).astype(np.uint8), 'L')
    if image.mode == 'P':
        image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
    if image.mode in ('LA', 'RGBA', 'PA', 'La', 'RGBa'):
        background = Image.new('RGBA', image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert('RGBA'))
        how += ' (transparency over black)'
    return image.convert(mode), how


def to_model_input(image: Image.Image, size: int, channels: int = 1) -> torch.Tensor:
    """A PIL image as the training images were made: grayscale (or RGB for a 3-channel model), resized to the
    model's size (the library's Dataset: Resize then CenterCrop), in [0, 1], shape (channels, size, size)."""
    image, _ = as_seen(image, MODES[channels])
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
    left, top = (resized.size[0] - size) // 2, (resized.size[1] - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255)
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)


def open_image(path: PathLike, what: str = 'input') -> Image.Image:
    """An image file read completely, or a one-line error: missing, not an image, or too large. The size is read
    from the header and checked before any pixel is decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
                raise BadValue(f'{what} {path} is {width}x{height} pixels; images of at most {MAX_SIDE}x{MAX_SIDE} '
                               'are read (a digit needs far fewer): shrink it first')
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise BadValue(f'{what} {path} is {width}x{height} pixels, too narrow to hold a digit; crop it to '
                               'roughly square')
            image.load()  # the first frame of an animation
            first = image.copy()
            first.info['frames'] = getattr(image, 'n_frames', 1)
            return first
    except FileNotFoundError:
        raise MissingFile(f'{what} {path} does not exist') from None
    except Image.DecompressionBombError:  # PIL's own limit, met in the header before ours
        raise BadValue(f'{what} {path} is too large to read safely; images of at most {MAX_SIDE}x{MAX_SIDE} are read '
                       '(a digit needs far fewer): shrink it first') from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise BadValue(f'{what} {path} is not an image file ({str(err).splitlines()[0] if str(err) else err})'
                       ) from None


def load_inputs(paths: Sequence[PathLike], size: int, channels: int = 1) -> Converted:
    """Converted(images (N, channels, size, size), one note per input saying how it was converted). All inputs must
    have one size, so that a mask or a pairing means the same pixels in each."""
    opened = [open_image(path) for path in paths]
    sizes = {image.size for image in opened}
    if len(sizes) > 1:
        raise UserError(f'the inputs have different sizes ({", ".join(f"{w}x{h}" for w, h in sorted(sizes))}); give '
                        'images of one size')
    kind = 'grayscale' if channels == 1 else 'RGB'
    notes = [f'{path}: {image.size[0]}x{image.size[1]} {as_seen(image)[1]} -> {size}x{size} {kind}'
             for path, image in zip(paths, opened)]
    return Converted(torch.stack([to_model_input(image, size, channels) for image in opened]), notes, sizes.pop())


def named_mask(name: str, size: int) -> torch.Tensor:
    """1 where the model generates, 0 where the input is kept: the named half (or the centre square) generated."""
    mask = torch.zeros(1, 1, size, size)
    half, quarter = size // 2, size // 4
    region = {'top': (slice(0, half), slice(None)), 'bottom': (slice(half, None), slice(None)),
              'left': (slice(None), slice(0, half)), 'right': (slice(None), slice(half, None)),
              'centre': (slice(quarter, size - quarter), slice(quarter, size - quarter))}[name]
    mask[..., region[0], region[1]] = 1
    return mask


def load_mask(spec: str, *, input_size: tuple[int, int], size: int) -> torch.Tensor:
    """A named mask, or MASK.png (white: generated, black: kept) of the inputs' own size, at the model's size."""
    if spec in MASKS:
        return named_mask(spec, size)
    if not Path(spec).exists():
        raise MissingFile(f'mask {spec} is neither a named mask ({", ".join(MASKS)}) nor an image file that exists')
    image = open_image(spec, 'mask')
    if image.size != input_size:
        raise UserError(f'mask {spec} is {image.size[0]}x{image.size[1]} but the inputs are '
                        f'{input_size[0]}x{input_size[1]}; give a mask of the inputs\' size')
    mask = (to_model_input(image, size)[None] >= 0.5).float()
    generated = float(mask.mean())
    if generated == 0:
        raise UserError(f'mask {spec} keeps every pixel (no white pixel to generate); nothing to inpaint')
    if generated == 1:
        raise UserError(f'mask {spec} keeps no pixel (all white); that is plain sampling, not inpainting')
    return mask


def save_grid(images: torch.Tensor, path: PathLike, record: dict[str, Any] | None = None, *,
              nrow: int | None = None) -> None:
    """A square grid PNG (or `nrow` images a row), written atomically, each image enlarged by a whole factor to at
    least GRID_CELL pixels (nearest neighbour: every pixel stays a visible square); `record` (the run's settings)
    goes inside it as a PNG text chunk, so a grid always carries its own description, even if the JSON copy
    beside it was never written."""
    from PIL.PngImagePlugin import PngInfo
    from torchvision.utils import make_grid
    scale = math.ceil(GRID_CELL / images.shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode='nearest')
    grid = make_grid(images, nrow=nrow or math.ceil(math.sqrt(len(images))))
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # as save_image
    info = PngInfo()
    if record is not None:
        info.add_text('ddpm_mnist', json.dumps(strict(record), allow_nan=False))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format='png', pnginfo=info)
