"""The page (app.py): its actions on the shipped models, every endpoint through gradio_client (bad input
included), and a real browser (Debian's Chromium, driven by Playwright) clicking Generate and completing a
drawn digit. Skipped, with the reason, where Gradio, Playwright or Chromium is missing."""
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_mnist.utils import UserError

gr = pytest.importorskip('gradio', reason="the page's extra is not installed: pip install '.[app]'")
app = pytest.importorskip('ddpm_mnist.cli.app')
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# where the browser test saves its screenshot: docs/app.png when asked (DDPM_MNIST_SCREENSHOT=docs/app.png)
SCREENSHOT = os.environ.get('DDPM_MNIST_SCREENSHOT')
SHOWN = app.SHOWN


def cells(picture, count):
    """The `count` digits of a one-row strip, as uint8 arrays."""
    pixels = np.asarray(picture.convert('L'))
    return [pixels[:, i * SHOWN:(i + 1) * SHOWN] for i in range(count)]


def drawn_canvas(rows=slice(60, 220), columns=slice(130, 150)):
    """What the page's Sketchpad sends: an RGBA composite, transparent but for the strokes (a vertical bar)."""
    canvas = np.zeros((280, 280, 4), dtype=np.uint8)
    canvas[rows, columns] = (20, 20, 20, 255)  # a dark brush: the strokes count, whatever their colour
    return {'background': None, 'layers': [canvas], 'composite': canvas}


def test_generate_gives_a_grid_and_its_cost():
    picture, caption = app.generate('unconditional', 'ddim', 5, 0.0, 3, 4)
    assert picture.size == (2 * SHOWN, 2 * SHOWN) and np.asarray(picture).max() > 128
    assert 'NFE 5 per image' in caption and 's per image' in caption
    picture, caption = app.generate('conditional', 'ddim', 5, 0.0, 3, 4, '7', 1.25)
    assert picture.size == (2 * SHOWN, 2 * SHOWN)


@pytest.mark.parametrize('args, message', [
    (('unconditional', 'foo'), "unknown sampler 'foo'"),
    (('unconditional', 'ddim', 0), 'steps must be a whole number from 1 to 1000'),
    (('unconditional', 'ddim', 5, 2.0), 'eta must be a number from 0.0 to 1.0'),
    (('unconditional', 'ddim', 5, 0.0, -1), 'seed must be a whole number'),
    (('unconditional', 'ddim', 5, 0.0, 0, 1000), 'how many must be a whole number from 1 to 64'),
    (('unconditional', 'ddim', 5, 0.0, 0, float('nan')), 'how many must be a whole number'),
    (('conditional', 'ddim', 5, 0.0, 0, 4, '12'), 'digit must be a whole number from 0 to 9'),
    (('big', 'ddim'), "unknown model 'big'"),
])
def test_bad_values_are_messages(args, message):
    with pytest.raises(UserError, match=message):
        app.generate(*args)


def test_completion_keeps_the_digit_outside_the_region():
    picture, caption = app.complete(drawn_canvas(), None, 'bottom', None, 5, 2, 0)
    digit, shown, result = cells(picture, 3)
    top = slice(0, SHOWN // 2)
    assert np.array_equal(result[top], digit[top]) and not np.array_equal(result, digit)
    assert 'NFE' in caption and digit.max() > 200  # the dark strokes became a white digit on black


def test_blank_canvas_bad_masks_and_uploads_are_messages(tmp_path):
    blank = {'background': None, 'layers': [], 'composite': np.zeros((280, 280, 4), np.uint8)}
    with pytest.raises(UserError, match='the canvas is blank'):
        app.complete(blank, None, 'bottom')
    with pytest.raises(UserError, match='the canvas is blank'):
        app.sdedit(None, None)
    with pytest.raises(UserError, match='paint the part to regenerate'):
        app.complete(drawn_canvas(), None, 'painted', None)
    with pytest.raises(UserError, match="unknown region 'middle'"):
        app.complete(drawn_canvas(), None, 'middle')
    text = tmp_path / 'digit.png'
    text.write_text('not an image')
    with pytest.raises(UserError, match='is not an image file'):
        app.sdedit(None, str(text))
    huge = tmp_path / 'huge.png'
    Image.new('L', (5000, 10)).save(huge)
    with pytest.raises(UserError, match='5000x10 pixels'):
        app.complete(None, str(huge), 'bottom')


def test_painted_mask_regenerates_only_the_painted_part():
    mask = drawn_canvas(rows=slice(140, 280), columns=slice(0, 280))  # the bottom half painted
    picture, _ = app.complete(drawn_canvas(), None, 'painted', mask, 5, 2, 0)
    digit, _, result = cells(picture, 3)
    assert np.array_equal(result[:SHOWN // 2], digit[:SHOWN // 2])


def test_sdedit_and_interpolation():
    picture, caption = app.sdedit(drawn_canvas(), None, 0.5, 10, 0)
    assert picture.size == (2 * SHOWN, SHOWN) and 'SDEdit' in caption
    picture, caption = app.interpolate(1, 2, 4, 5)
    assert picture.size == (4 * SHOWN, SHOWN)
    path, _ = app.interpolate(1, 2, 3, 5, True)
    with Image.open(path) as gif:
        assert gif.n_frames == 3


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def served():
    """The page on a free local port, as `python3 app.py --port N` serves it."""
    page = app.build_page()
    port = free_port()
    page.launch(server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
    yield f'http://127.0.0.1:{port}/'
    page.close()


def test_every_endpoint_through_gradio_client(served):
    from gradio_client import Client, handle_file
    client = Client(served, verbose=False)
    picture, caption = client.predict('unconditional', 'ddim', 5, 0, 0, 4, 'all', 1.25, api_name='/generate')
    assert Path(picture).is_file() and 'NFE 5' in caption
    gallery, _ = client.predict(['ddim', 'unipc'], 3, 0, 4, api_name='/compare')
    assert len(gallery) == 2
    canvas = drawn_canvas()
    Image.fromarray(canvas['composite']).save(Path(picture).with_name('drawn.png'))
    drawn = handle_file(str(Path(picture).with_name('drawn.png')))
    value = {'background': None, 'layers': [drawn], 'composite': drawn}
    picture, caption = client.predict(value, None, 'bottom', None, 5, 2, 0, api_name='/complete')
    assert Path(picture).is_file() and 'RePaint' in caption
    _, caption = client.predict(value, None, 0.5, 5, 0, api_name='/sdedit')
    assert 'SDEdit' in caption
    _, caption = client.predict(1, 2, 3, 5, False, api_name='/interpolate')
    assert '3 frames' in caption
    with pytest.raises(Exception, match='seed must be a whole number'):  # the action's own check
        client.predict('unconditional', 'ddim', 5, 0, -1, 4, 'all', 1.25, api_name='/generate')
    with pytest.raises(Exception, match='greater than maximum value 1000'):  # Gradio's own, for a slider
        client.predict('unconditional', 'ddim', 5000, 0, 0, 4, 'all', 1.25, api_name='/generate')
    with pytest.raises(Exception, match='the canvas is blank'):
        client.predict(None, None, 'bottom', None, 5, 2, 0, api_name='/complete')


def test_five_requests_at_once_all_complete(served):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client
    client = Client(served, verbose=False)
    with ThreadPoolExecutor(5) as pool:
        jobs = [pool.submit(client.predict, 'unconditional', 'ddim', 3, 0, seed, 2, 'all', 1.0, api_name='/generate')
                for seed in range(5)]
        captions = [job.result(timeout=120)[1] for job in jobs]
    assert all('NFE 3' in caption for caption in captions)


@pytest.mark.skipif(CHROMIUM is None, reason='no Chromium: apt-get install chromium')
def test_the_page_in_a_real_browser(served, tmp_path):
    playwright = pytest.importorskip('playwright.sync_api', reason="pip install '.[browser]'")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox'])
        page = browser.new_page(viewport={'width': 1280, 'height': 1400})
        page.goto(served)
        page.click('#generate')
        page.wait_for_selector('#generated img', timeout=60_000)
        assert 'NFE' in page.inner_text('#generated_caption')
        grid = Image.open(_fetched(page, '#generated img')).convert('L')
        assert np.asarray(grid).max() > 128  # digits, not a blank picture
        page.screenshot(path=SCREENSHOT or str(tmp_path / 'app.png'))
        page.get_by_role('tab', name='Complete a digit').click()
        page.locator('#canvas button[aria-label="Brush"]').first.click()  # the canvas waits for a tool
        canvas = page.locator('#canvas canvas').first
        box = canvas.bounding_box()
        x, top, height = box['x'] + box['width'] / 2, box['y'] + box['height'] * 0.2, box['height'] * 0.6
        page.mouse.move(x, top)
        page.mouse.down()
        for i in range(1, 21):
            page.mouse.move(x, top + height * i / 20)
        page.mouse.up()
        page.click('#complete')
        page.wait_for_function("document.querySelector('#completed_caption') && "
                               "document.querySelector('#completed_caption').innerText.includes('RePaint')",
                               timeout=60_000)
        digit, _, result = cells(Image.open(_fetched(page, '#completed img')), 3)
        assert digit.max() > 128  # the stroke arrived as a white digit
        assert np.array_equal(result[:SHOWN // 2], digit[:SHOWN // 2])  # only the bottom half may change
        browser.close()


def _fetched(page, selector):
    """The picture an <img> of the page shows, fetched as the browser sees it."""
    import io
    source = page.get_attribute(selector, 'src')
    for _ in range(50):
        response = page.request.get(source)
        if response.ok:
            return io.BytesIO(response.body())
        time.sleep(0.2)
    raise AssertionError(f'{source} could not be fetched')
