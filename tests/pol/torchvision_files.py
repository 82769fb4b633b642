"""Tiny data folders in torchvision's formats for tests (the library's writer)."""

from exactforge.pol.write import write_cifar10_folder as write_cifar10_python

__all__ = ["write_cifar10_python"]
