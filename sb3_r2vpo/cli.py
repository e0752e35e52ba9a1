"""What every command-line entry point shares: the env-id check and the PyTorch thread setting."""

from __future__ import annotations

import argparse
import os

from sb3_r2vpo.presets import check_env_id

# Where a missing optional dependency of an env comes from (gymnasium's DependencyNotInstalled names its own).
EXTRAS_HINT = 'the extras of sb3-r2vpo install them: pip install "sb3-r2vpo[mujoco]" (or [box2d], [atari])'


def check_env_ids(env_ids: list[str] | tuple[str, ...]) -> None:
    """
    Check every id before anything is built or written: one behaviour for every entry point.

    :raises ValueError: one line, for the first unknown id, with the closest registered id as a suggestion
    """
    for env_id in env_ids:
        check_env_id(env_id)


def add_torch_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--torch-threads N`` (see :func:`set_torch_threads`)."""
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="PyTorch CPU threads. Default: 1 (fastest for small policies, and runs sharing the cores do not fight), "
        "unless OMP_NUM_THREADS is set; 0: PyTorch's own default (one per core)",
    )


def resolve_torch_threads(threads: int | None) -> int:
    """
    The thread count an entry point should use: ``threads`` if given, else 1 unless the user set
    ``OMP_NUM_THREADS`` (then 0: leave PyTorch as it is).

    :raises ValueError: ``threads`` < 0
    """
    if threads is None:
        return 0 if os.environ.get("OMP_NUM_THREADS") else 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"the number of torch threads must be a whole number >= 0 (0: PyTorch's default), got {threads!r}")
    return threads


def set_torch_threads(threads: int | None) -> int:
    """
    Set PyTorch's intra-op CPU threads. For the small MLPs of RL policies one thread is fastest: with torch's
    default (one per core) the threads of one process, or of several runs on one machine, wait on each other
    (measured, ``make demo`` on a busy 2-core machine: 367 s with the default, 60 s with one thread; 955 s
    and 129 s under another load).

    :param threads: ``None``: :func:`resolve_torch_threads`'s default; 0: PyTorch's default; N: N threads
    :return: The number of threads now in use
    """
    import torch

    threads = resolve_torch_threads(threads)
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
