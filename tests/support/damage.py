"""Damage stored files the way a disk or a careless hand does: flipped bits, cut or lost files."""
import tarfile
from pathlib import Path

import torch


def flip_byte(path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of a file in place (its size stays the same)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def flip_in_member(tar_path, ext: str = ".jpg", nth: int = 0, at: int = 100) -> str:
    """Flip a byte `at` bytes into the nth member ending in `ext`; returns the member's name."""
    with tarfile.open(tar_path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(ext)][nth]
    flip_byte(tar_path, member.offset_data + min(at, member.size - 1))
    return member.name


def cut(path, keep_fraction: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])


def largest_weight(state: dict) -> torch.Tensor:
    return max(state.values(), key=lambda t: t.numel())


def flip_low_bit_of_weight(pt_path, weight: torch.Tensor) -> None:
    """Flip the lowest mantissa bit of `weight`'s first float where the .pt stores it."""
    needle = weight.detach().cpu().contiguous().reshape(-1)[:16].numpy().tobytes()
    data = Path(pt_path).read_bytes()
    where = data.find(needle)
    assert where >= 0 and data.find(needle, where + 1) < 0, "weight bytes not found once"
    flip_byte(pt_path, where)  # little-endian: byte 0 holds the lowest mantissa bits


def first_chunk(store_path, array: str) -> Path:
    """The file of chunk 0 of a zarr v3 array (`c/0` or `c/0/0`)."""
    chunk = Path(store_path) / array / "c" / "0"
    return chunk / "0" if chunk.is_dir() else chunk
