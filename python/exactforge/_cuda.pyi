"""
exactforge CUDA kernels (private; use exactforge.reduce with CUDA arrays)
"""
from __future__ import annotations
import collections.abc
import typing
__all__: list[str] = ['architectures', 'device_info', 'elementwise', 'matmul', 'sum_rows']
def device_info() -> dict:
    ...
def elementwise(dtype: str, fn: str, x: typing.SupportsInt | typing.SupportsIndex, out: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, stream: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
def matmul(dtype: str, mode: str, a: typing.SupportsInt | typing.SupportsIndex, b: typing.SupportsInt | typing.SupportsIndex, out: typing.SupportsInt | typing.SupportsIndex, m: typing.SupportsInt | typing.SupportsIndex, k: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, order: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, stream: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
def sum_rows(dtype: str, mode: str, x: typing.SupportsInt | typing.SupportsIndex, out: typing.SupportsInt | typing.SupportsIndex, k: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, order: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] | None = None, stream: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
architectures: str = '75-real,80-real,90-real,90-virtual'
