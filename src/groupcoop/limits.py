"""The sizes groupcoop accepts from its input, named once.

So that no file, flag or image can make a command use memory or time out of all proportion to
what it asks for: each cap is checked where the input is read, and exceeding one is one error
line. A leaf module (standard library and `errors` only): the CLI's flag parsing imports it.
"""

from __future__ import annotations

import os

from .errors import UserError

# YAML (--config, grid files, vocabularies, run folders' config.yaml, --set/--option values)
YAML_MAX_BYTES = 256 * 1024  # the shipped vocabularies and presets are a few KB
YAML_MAX_DEPTH = 32  # nesting levels, aliases followed
YAML_MAX_ALIASES = 64  # `*name` references
YAML_MAX_VALUES = 50_000  # values once aliases are expanded: what validation and error lines walk

MAX_SHARDS = 100_000  # feature-cache shards of one dataset: a file each

# images: checked on the file's header, before anything is decoded or resized
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit (GROUPCOOP_MAX_IMAGE_PIXELS)
MAX_ASPECT = 50  # longest side / shortest side: a 400000 x 1 image resizes to 224 x 89.6M pixels


def cpu_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_workers(workers: int | None) -> int | None:
    """Decoding workers, refused past the CPUs this process may use (each is a process)."""
    if workers is not None and workers > cpu_cores():
        raise UserError(f"--workers {workers} is more than the {cpu_cores()} CPUs this process may use; "
                        f"give at most {cpu_cores()} (0 decodes in the main process)")
    return workers


def check_shards(n_images: int, shard_size: int | None) -> None:
    """A shard size that would split the dataset into more than MAX_SHARDS cache files is refused."""
    if shard_size and -(-n_images // shard_size) > MAX_SHARDS:
        least = -(-n_images // MAX_SHARDS)
        raise UserError(f"--shard-size {shard_size} splits the {n_images} images into more than {MAX_SHARDS} "
                        f"cache shards; give --shard-size {least} or more (default 8192)")
