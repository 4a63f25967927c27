"""The page (app.py): generate, compare samplers, complete a drawn digit, SDEdit a sketch, interpolate — the
shipped models on a CPU. The actions are plain functions (tested without a browser) that take the page's values
and return images and a caption, or raise UserError; `build_page` lays them out in Gradio, where a UserError
becomes a message in the page, never a trace."""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ddpm_mnist.api import Model, load_model, sample
from ddpm_mnist.model.conditional import GuidedUnet
from ddpm_mnist.sampling import editing
from ddpm_mnist.sampling.images import MASKS, named_mask, open_image, to_model_input
from ddpm_mnist.sampling.loop import initial_noise
from ddpm_mnist.sampling.registry import DIFFUSION_SAMPLERS, SAMPLERS, SamplerSettings, label
from ddpm_mnist.utils import UserError

MODELS = {'unconditional': False, 'conditional': True}  # the page's model choice -> load_model(conditional=...)
REGIONS = (*MASKS, 'painted')
MAX_IMAGES, MAX_STEPS, MAX_FRAMES = 64, 1000, 16
SHOWN = 112  # pixels each digit is shown at in the page


@functools.lru_cache(maxsize=len(MODELS))
def model(name: str) -> Model:
    """A shipped model, opened once per process."""
    if name not in MODELS:
        raise UserError(f'unknown model {name!r}; choose one of: {", ".join(MODELS)}')
    return load_model(conditional=MODELS[name])


def strip(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """Images (N, C, H, W) in [0, 1] as one picture, each digit SHOWN pixels wide, `columns` a row (default:
    square)."""
    n = len(images)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    cells = torch.zeros(rows * columns, *images.shape[1:])
    cells[:n] = images
    grid = cells.reshape(rows, columns, *images.shape[1:]).permute(2, 0, 3, 1, 4).flatten(3, 4).flatten(1, 2)
    pixels = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = SHOWN // images.shape[-1]
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """A whole number in [low, high] from the page, or a message naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f'{name} must be a whole number from {low} to {high}') from None
    if not np.isfinite(number) or number != int(number) or not low <= number <= high:
        raise UserError(f'{name} must be a whole number from {low} to {high} (got {value})')
    return int(number)


def check_float(name: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f'{name} must be a number from {low} to {high}') from None
    if not np.isfinite(number) or not low <= number <= high:
        raise UserError(f'{name} must be a number from {low} to {high} (got {value})')
    return number


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise UserError(f'unknown sampler {name!r}; choose one of: {", ".join(SAMPLERS)}')
    return name


# ---------------------------------------------------------------- generate and compare

def generate(model_name: str = 'unconditional', sampler: str = 'ddim', steps: Any = 25, eta: Any = 0.0,
             seed: Any = 0, count: Any = 16, digit: Any = None, guidance: Any = 1.0) -> tuple[Image.Image, str]:
    """A grid of `count` digits and a caption with NFE and seconds per image; the conditional model draws `digit`
    (None: all ten in turn) at guidance scale `guidance`."""
    chosen, sampler = model(model_name), check_sampler(sampler)
    steps = chosen.timesteps if SAMPLERS[sampler].all_steps else check_int('steps', steps, 1, chosen.timesteps)
    eta, seed = check_float('eta', eta, 0.0, 1.0), check_int('seed', seed, 0, 2 ** 32 - 1)
    count, guidance = check_int('how many', count, 1, MAX_IMAGES), check_float('guidance scale', guidance, 0.0, 20.0)
    conditional = isinstance(chosen.diffusion.model, GuidedUnet)
    digits = None
    if conditional and digit not in (None, '', 'all'):
        digits = [check_int('digit', digit, 0, 9)]
    started = time.perf_counter()
    images = sample(chosen, strategy=sampler, steps=steps, eta=eta, n=count, seed=seed,
                    **(dict(digits=digits, guidance_scale=guidance) if conditional else {}))
    seconds = time.perf_counter() - started
    caption = (f'{label(sampler, steps, eta if SAMPLERS[sampler].uses_eta else None)}: NFE {steps} per image, '
               f'{seconds / count:.3f} s per image ({count} images in {seconds:.2f} s, seed {seed})')
    return strip(images), caption


def compare(samplers: Sequence[str] = ('ddim', 'unipc'), steps: Any = 10, seed: Any = 0,
            count: Any = 9) -> tuple[list[tuple[Image.Image, str]], str]:
    """The same x_T (seed) through two or three samplers, each grid captioned with its time."""
    samplers = list(samplers or [])
    if not 2 <= len(samplers) <= 3:
        raise UserError(f'pick two or three samplers to compare (got {len(samplers)})')
    grids = []
    for name in samplers:
        grid, caption = generate('unconditional', name, steps, 0.0, seed, count)
        grids.append((grid, caption))
    return grids, f'the same {check_int("how many", count, 1, MAX_IMAGES)} starting noises (seed {seed}) in each'


# ---------------------------------------------------------------- a drawn or uploaded digit

def drawn_digit(canvas: Any, size: int) -> torch.Tensor:
    """The digit drawn on the canvas (its strokes, whatever their colour, as white on black, as MNIST's), at the
    model's size: (1, 1, size, size) in [0, 1]."""
    composite = canvas.get('composite') if isinstance(canvas, dict) else canvas
    if composite is None:
        raise UserError('the canvas is blank: draw a digit (or upload one) first')
    pixels = np.asarray(composite)
    if pixels.ndim == 3 and pixels.shape[-1] == 4 and pixels[..., 3].min() < 255:
        strokes = pixels[..., 3]  # a transparent canvas: where the brush went
    else:  # an opaque one (or an image): the strokes are what differs from the background
        grey = pixels if pixels.ndim == 2 else pixels[..., :3].mean(-1)
        strokes = grey if grey.mean() < 128 else 255 - grey  # light strokes on dark, or dark on light
    if strokes.max() < 16:
        raise UserError('the canvas is blank: draw a digit (or upload one) first')
    return to_model_input(Image.fromarray(strokes.astype(np.uint8), 'L'), size)[None]


def input_digit(canvas: Any, upload: str | None, size: int) -> torch.Tensor:
    """The uploaded image (read safely, converted as every input is) or else the drawn digit."""
    if upload:
        return to_model_input(open_image(upload, 'upload'), size)[None]
    return drawn_digit(canvas, size)


def painted_mask(mask_canvas: Any, size: int) -> torch.Tensor:
    """1 where the mask canvas was painted (regenerated), 0 elsewhere."""
    try:
        mask = drawn_digit(mask_canvas, size)
    except UserError:
        raise UserError('paint the part to regenerate on the mask canvas first (or pick top, bottom, left, right '
                        'or centre)') from None
    mask = (mask >= 0.5).float()
    if mask.mean() in (0.0, 1.0):
        raise UserError('the painted mask must leave some of the digit to keep and some to regenerate')
    return mask


def complete(canvas: Any = None, upload: str | None = None, region: str = 'bottom', mask_canvas: Any = None,
             steps: Any = 25, resamples: Any = 5, seed: Any = 0) -> tuple[Image.Image, str]:
    """RePaint on DDIM steps (`steps`; 0: the full DDPM chain): the region regenerated, the rest of the digit
    kept. Returns input | mask | result side by side, and a caption."""
    unconditional = model('unconditional')
    size = unconditional.image_size
    if region not in REGIONS:
        raise UserError(f'unknown region {region!r}; choose one of: {", ".join(REGIONS)}')
    steps, seed = check_int('steps', steps, 0, MAX_STEPS), check_int('seed', seed, 0, 2 ** 32 - 1)
    resamples = check_int('resamples', resamples, 1, 20)
    digit = input_digit(canvas, upload, size)
    mask = painted_mask(mask_canvas, size) if region == 'painted' else named_mask(region, size)
    started = time.perf_counter()
    result, nfe = editing.inpaint(unconditional.diffusion, digit, mask, steps=steps or None,
                                  eta=1.0 if not steps else 0.0, jump_length=min(10, max(1, (steps or 1000) // 10)),
                                  resamples=resamples, seed=seed, batch_size=1)
    seconds = time.perf_counter() - started
    shown = digit * (1 - mask) + 0.5 * mask
    chain = 'the DDPM chain' if not steps else f'{steps} DDIM steps'
    return strip(torch.cat([digit, shown, result]), columns=3), (
        f'RePaint on {chain}, {resamples} resamples: NFE {nfe}, {seconds:.2f} s (input | kept part | result)')


def sdedit(canvas: Any = None, upload: str | None = None, strength: Any = 0.6, steps: Any = 25,
           seed: Any = 0) -> tuple[Image.Image, str]:
    """SDEdit: the sketch noised to `strength` of the chain and denoised by DDIM."""
    unconditional = model('unconditional')
    strength = check_float('strength', strength, 0.01, 1.0)
    steps, seed = check_int('steps', steps, 1, MAX_STEPS), check_int('seed', seed, 0, 2 ** 32 - 1)
    digit = input_digit(canvas, upload, unconditional.image_size)
    started = time.perf_counter()
    ddim = SamplerSettings.resolve('ddim', steps, total_timesteps=unconditional.timesteps)
    result, nfe = editing.sdedit(unconditional.diffusion, digit, strength=strength, settings=ddim, seed=seed,
                                 batch_size=1)
    seconds = time.perf_counter() - started
    return strip(torch.cat([digit, result]), columns=2), (
        f'SDEdit at strength {strength:g}, DDIM {steps}: NFE {nfe}, {seconds:.2f} s (sketch | result)')


def interpolate(seed_a: Any = 1, seed_b: Any = 2, frames: Any = 8, steps: Any = 25,
                animate: bool = False) -> tuple[Image.Image | str, str]:
    """Frames along the spherical path between the x_T of two seeds, as a strip, or as an animated GIF (its path,
    in a temporary folder)."""
    unconditional = model('unconditional')
    seeds = [check_int('first seed', seed_a, 0, 2 ** 32 - 1), check_int('second seed', seed_b, 0, 2 ** 32 - 1)]
    frames, steps = check_int('frames', frames, 2, MAX_FRAMES), check_int('steps', steps, 1, MAX_STEPS)
    diffusion = unconditional.diffusion
    ends = [initial_noise(1, diffusion.channels, unconditional.image_size, s).to(diffusion.device) for s in seeds]
    started = time.perf_counter()
    images = editing.interpolate(diffusion, ends[0], ends[1], frames=frames, steps=steps)
    seconds = time.perf_counter() - started
    caption = f'seed {seeds[0]} to seed {seeds[1]}, {frames} frames of DDIM {steps}: {seconds:.2f} s'
    if not animate:
        return strip(images, columns=frames), caption
    pictures = [strip(image[None]) for image in images]
    path = Path(tempfile.mkdtemp(prefix='ddpm_mnist_app_')) / 'interpolation.gif'
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=150, loop=0)
    return str(path), caption


# ---------------------------------------------------------------- the page

def shown_errors(action: Any) -> Any:
    """The action as the page calls it: its progress bars (tqdm) shown in the page, a UserError turned into the
    page's message (gr.Error), never a trace. (No functools.wraps: Gradio reads this signature, not the action's.)"""
    import gradio as gr

    def run(*args: Any, progress: Any = gr.Progress(track_tqdm=True)) -> Any:
        try:
            return action(*args)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
    run.__name__, run.__doc__ = action.__name__, action.__doc__
    return run


def build_page() -> Any:
    """The Gradio Blocks of the page; each button's endpoint is named after its action (gradio_client's api_name)."""
    import gradio as gr
    samplers = list(DIFFUSION_SAMPLERS)  # the page samples the shipped diffusion models
    with gr.Blocks(title='DDPM and DDIM on MNIST', analytics_enabled=False) as page:
        gr.Markdown('# DDPM and DDIM on MNIST\nThe shipped models, sampled on this machine. Every action on its '
                    'defaults answers in about a second on a 2-core CPU; longer ones show their progress here.')
        with gr.Tab('Generate'):
            with gr.Row():
                g_model = gr.Radio(list(MODELS), value='unconditional', label='model')
                g_sampler = gr.Dropdown(samplers, value='ddim', label='sampler')
                g_steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label='steps (DDPM: all 1000)')
                g_eta = gr.Slider(0, 1, value=0, step=0.1, label='eta (DDIM)')
            with gr.Row():
                g_seed = gr.Number(0, label='seed', precision=0)
                g_count = gr.Slider(1, MAX_IMAGES, value=16, step=1, label='how many')
                g_digit = gr.Dropdown(['all', *map(str, range(10))], value='all', label='digit (conditional)')
                g_guidance = gr.Slider(0, 5, value=1.25, step=0.05, label='guidance scale (conditional)')
            g_button = gr.Button('Generate', variant='primary', elem_id='generate')
            g_image = gr.Image(label='samples', elem_id='generated', format='png')
            g_caption = gr.Markdown(elem_id='generated_caption')
            g_button.click(shown_errors(generate), [g_model, g_sampler, g_steps, g_eta, g_seed, g_count, g_digit,
                                                    g_guidance], [g_image, g_caption], api_name='generate')
        with gr.Tab('Compare'):
            c_samplers = gr.CheckboxGroup(samplers, value=['ddim', 'unipc', 'dpmpp_2m'], label='two or three samplers')
            with gr.Row():
                c_steps = gr.Slider(1, 100, value=10, step=1, label='steps')
                c_seed = gr.Number(0, label='seed', precision=0)
                c_count = gr.Slider(1, 36, value=9, step=1, label='how many')
            c_button = gr.Button('Compare', variant='primary', elem_id='compare')
            c_gallery, c_caption = gr.Gallery(label='the same noise, each sampler', columns=3), gr.Markdown()
            c_button.click(shown_errors(compare), [c_samplers, c_steps, c_seed, c_count], [c_gallery, c_caption],
                           api_name='compare')
        with gr.Tab('Complete a digit'):
            with gr.Row():
                canvas = gr.Sketchpad(label='draw a digit', type='numpy', image_mode='RGBA', canvas_size=(280, 280),
                                      elem_id='canvas')
                upload = gr.Image(label='or upload one', type='filepath', sources=['upload'])
                mask_canvas = gr.Sketchpad(label='paint the part to regenerate (region: painted)', type='numpy',
                                           image_mode='RGBA', canvas_size=(280, 280))
            with gr.Row():
                region = gr.Radio(list(REGIONS), value='bottom', label='region to regenerate')
                k_steps = gr.Slider(0, 100, value=25, step=1, label='DDIM steps (0: RePaint on all 1000, minutes)')
                k_resamples = gr.Slider(1, 10, value=5, step=1, label='resamples')
                k_seed = gr.Number(0, label='seed', precision=0)
            with gr.Row():
                k_button = gr.Button('Complete (RePaint)', variant='primary', elem_id='complete')
                strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label='SDEdit strength')
                s_button = gr.Button('SDEdit the drawing', elem_id='sdedit')
            k_image, k_caption = gr.Image(label='result', elem_id='completed', format='png'), gr.Markdown(elem_id='completed_caption')
            k_button.click(shown_errors(complete), [canvas, upload, region, mask_canvas, k_steps, k_resamples,
                                                    k_seed], [k_image, k_caption], api_name='complete')
            s_button.click(shown_errors(sdedit), [canvas, upload, strength, k_steps, k_seed], [k_image, k_caption],
                           api_name='sdedit')
        with gr.Tab('Interpolate'):
            with gr.Row():
                i_a, i_b = gr.Number(1, label='first seed', precision=0), gr.Number(2, label='second seed', precision=0)
                i_frames = gr.Slider(2, MAX_FRAMES, value=8, step=1, label='frames')
                i_steps = gr.Slider(1, 100, value=25, step=1, label='DDIM steps')
                i_gif = gr.Checkbox(False, label='as an animation')
            i_button = gr.Button('Interpolate', variant='primary', elem_id='interpolate')
            i_image, i_caption = gr.Image(label='path'), gr.Markdown()
            i_button.click(shown_errors(interpolate), [i_a, i_b, i_frames, i_steps, i_gif], [i_image, i_caption],
                           api_name='interpolate')
    # one request runs at a time (the models are shared), the rest wait their turn in the queue
    return page.queue(default_concurrency_limit=1, max_size=64)
