"""The multipart splitter of STOW-RS and WADO-RS: the same parts whatever the chunking, nothing of a cut body's last part."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.dicom.multipart import PartSplitter, boundary_param


def body(parts: list[bytes], boundary: str = "xyz-123") -> bytes:
    out = b"preamble, ignored\r\n"
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue".encode()


def split(data: bytes, cuts: list[int], max_part: int = 1 << 20) -> tuple[list[bytes | None], bool]:
    s = PartSplitter("xyz-123", max_part)
    out: list[bytes | None] = []
    at = 0
    for c in sorted(set(cuts)) + [len(data)]:
        for p in s.feed(data[at:c]):
            out.append(None if p is None else p.content)
        at = max(at, c)
    return out, s.done


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.lists(st.integers(0, 2000), max_size=30))
def test_the_parts_do_not_depend_on_the_chunking(parts: list[bytes], cuts: list[int]) -> None:
    parts = [p.replace(b"--xyz-123", b"--xyz-12") for p in parts]  # a part cannot hold its own boundary
    data = body(parts)
    got, done = split(data, [c for c in cuts if c <= len(data)])
    assert got == parts and done


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=2, max_size=4), st.integers(1, 199))
def test_a_cut_body_never_hands_back_its_unfinished_part(parts: list[bytes], keep: int) -> None:
    parts = [p.replace(b"--xyz-123", b"--xyz-12") for p in parts]
    data = body(parts)
    end_of_last = data.rindex(b"\r\n--xyz-123--")
    cut = data[: end_of_last - min(keep, len(parts[-1]))]  # inside the last part's content
    got, done = split(cut, [len(cut) // 3, len(cut) // 2])
    assert got == parts[:-1] and not done


def test_an_oversized_part_is_skipped_not_held() -> None:
    got, done = split(body([b"small", b"x" * 5000, b"tiny"]), [100, 2000, 4000], max_part=1000)
    assert got == [b"small", None, b"tiny"] and done


def test_the_content_type_parameters() -> None:
    assert boundary_param('Multipart/Related; type="application/dicom"; boundary=abc') == (
        "multipart/related", {"type": "application/dicom", "boundary": "abc"})
