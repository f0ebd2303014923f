"""The README shows: every image it links is a committed PNG, small (docs/make_images.py writes them)."""

import re

from helpers import ROOT

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
MAX_BYTES = 400 * 1024  # committed images stay small: the repo carries every version of them


def linked_images() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [a or b for a, b in IMAGE.findall(text)]


def test_every_image_the_readme_links_exists_and_is_a_small_png():
    images = linked_images()
    assert len(images) >= 6, images
    for image in images:
        assert not image.startswith(("http:", "https:")), f"{image}: the README's images come from the project's files"
        path = ROOT / image
        assert path.is_file(), f"the README links {image}, which does not exist: make docs-images"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{image} is not a PNG"
        assert len(data) <= MAX_BYTES, f"{image} is {len(data) // 1024} KiB, more than {MAX_BYTES // 1024}"


def test_every_committed_docs_image_is_linked_from_the_readme():
    linked = {(ROOT / image).resolve() for image in linked_images()}
    unused = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs" / "images").glob("*.png"))
              if p.resolve() not in linked]
    assert not unused, f"docs/images/ holds images the README does not show: {unused}"
