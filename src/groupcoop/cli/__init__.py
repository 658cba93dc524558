"""The command line: `main` is the `groupcoop` entry point."""

from .main import main

__all__ = ["main"]
