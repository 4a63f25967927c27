"""Every image handed in is read safely: size limits checked from the header before any pixel is decoded, and every
mode converted to the digit a person sees (or refused in one line), the conversion stated."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ddpm_mnist.sampling import images
from ddpm_mnist.utils import UserError


def png_claiming(path, width, height):
    """A tiny valid PNG whose header claims width x height: opening it must not decode (or allocate) that much."""
    Image.new('L', (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b'IHDR')
    data[ihdr + 4:ihdr + 12] = struct.pack('>II', width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack('>I', zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def digit(value=255):
    """A 28x28 stroke of `value` on 0."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = value
    return pixels


@pytest.mark.parametrize('width, height, fragment', [
    (14000, 14000, 'at most 4096x4096'), (1, 20_000_000, 'at most 4096x4096'), (4000, 100, 'too narrow')])
def test_oversized_images_are_refused_from_the_header(tmp_path, width, height, fragment):
    path = png_claiming(tmp_path / 'big.png', width, height)
    with pytest.raises(ValueError) as caught:
        images.load_inputs([path], 28)
    assert isinstance(caught.value, UserError) and fragment in str(caught.value) and '\n' not in str(caught.value)


def test_not_an_image_and_missing_files_are_one_line(tmp_path):
    text = tmp_path / 'notes.png'
    text.write_text('not a picture')
    with pytest.raises(ValueError, match='is not an image file'):
        images.load_inputs([text], 28)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        images.load_inputs([tmp_path / 'missing.png'], 28)


def converted(image, tmp_path, name='in.png', **save):
    path = tmp_path / name
    image.save(path, **save)
    result = images.load_inputs([path], 28)
    return result.images[0, 0].numpy(), result.notes[0]


def test_a_white_digit_on_a_transparent_background_stays_a_digit(tmp_path):
    alpha = digit()
    la = Image.fromarray(np.stack([np.full((28, 28), 255, np.uint8), alpha], -1), mode='LA')
    pixels, note = converted(la, tmp_path)
    assert pixels[10, 13] == pytest.approx(1.0) and pixels[0, 0] == pytest.approx(0.0)  # not all white
    assert 'transparency over black' in note
    rgba = Image.fromarray(np.stack([np.full((28, 28), 255, np.uint8)] * 3 + [alpha], -1), mode='RGBA')
    assert np.allclose(converted(rgba, tmp_path, 'rgba.png')[0], pixels)


def test_sixteen_bit_and_palette_images_keep_their_digit(tmp_path):
    wide = Image.fromarray(digit().astype(np.uint16) * 257)  # mode I;16
    pixels, note = converted(wide, tmp_path, 'wide.png')
    assert pixels.max() == pytest.approx(1.0) and pixels[0, 0] == 0 and 'scaled to 8 bits' in note
    palette = Image.fromarray(digit()).convert('P')
    assert np.allclose(converted(palette, tmp_path, 'p.png')[0], pixels, atol=1 / 255)


def test_an_animation_gives_its_first_frame_and_says_so(tmp_path):
    frames = [Image.fromarray(digit()), Image.fromarray(255 - digit())]
    path = tmp_path / 'anim.gif'
    frames[0].save(path, save_all=True, append_images=frames[1:])
    result = images.load_inputs([path], 28)
    assert result.images[0, 0, 0, 0] == 0 and 'first of 2 frames' in result.notes[0]
