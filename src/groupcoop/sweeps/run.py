"""Running a sweep's runs (`run_sweep`): resumable, in `--jobs N` worker processes, fused.

Finished runs are skipped on a re-run, so a killed sweep resumes (`finished`; the temporary
folders it left are removed, `remove_stale_temporaries`). The learned-prompt runs of one dataset
and backbone train together in a fused pass (`runs/fusion.py`: one text-encoder call per step for
all their prompts, each run's results as alone; `--no-fuse` trains each alone). `--jobs N` runs N
worker processes on the shared feature cache: features are extracted once per dataset and
backbone, before the runs; each worker fuses its share of the runs (`work_units`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs.settings import make_settings
from .grid import RunSpec


_PREPARED: dict[tuple, Any] = {}


def _prepared(spec: RunSpec, cache_dir, workers):
    """Features for the run's dataset and backbone, kept in this process for the next run of the same data
    (with every bias label: each run's `check_run` and `run_method` drop the ones it hides)."""
    from ..runs.pipeline import check_run, prepare

    if spec.data_key not in _PREPARED:
        _PREPARED.clear()
        # the data and backbone alone: a neutral method, so no run's own grouping check (DFR refusing
        # discovery on val's unhidden true groups, say) is asked of the shared, unhidden dataset
        neutral = {**spec.settings, "method": "zeroshot", "hyperparameters": {}, "groups": {"source": "kmeans"},
                   "hide_bias_labels": [], "selection": "auto"}
        dataset, _, backbone = check_run(make_settings(neutral))
        _PREPARED[spec.data_key] = prepare(dataset, backbone, cache_dir=cache_dir, workers=workers, progress=False,
                                           feature_dtype=spec.settings.get("feature_dtype", "float32"))
    return _PREPARED[spec.data_key]


_PARENT_PID: int | None = None  # in a --jobs worker: the sweep process that started it


def _die_with_parent(parent: int) -> None:
    """Make this worker end when the sweep process does, even by SIGKILL: Linux sends it SIGTERM
    (prctl PR_SET_PDEATHSIG); elsewhere `_exit_if_orphaned` checks between runs."""
    global _PARENT_PID
    _PARENT_PID = parent
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the check between runs remains
            pass
    _exit_if_orphaned()  # the parent may have died before prctl


def _exit_if_orphaned() -> None:
    """End a worker whose sweep process is gone (it was reparented), before it starts another run."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # nothing is being written between runs; nobody is left to report to


def _init_worker(threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
        ignore_ctrl_c()
    torch.set_num_threads(threads)


def ignore_ctrl_c() -> None:
    """A worker leaves Ctrl-C to the sweep process, which stops it (`_stop_workers`): the terminal
    sends SIGINT to every process of the group, and a worker's KeyboardInterrupt is only a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _workers_deaf_to_ctrl_c() -> Iterator[None]:
    """Start worker processes in here: SIGINT is blocked meanwhile, and a process inherits that mask
    through fork and exec, so a worker is deaf to Ctrl-C from its first instruction, before
    `_init_worker` runs (a Ctrl-C meanwhile reaches the sweep process when the block ends)."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: `ignore_ctrl_c` alone
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def _ctrl_c_as_flag() -> Iterator[threading.Event]:
    """Within: Ctrl-C sets the event, which `_as_finished` turns into KeyboardInterrupt between waits.
    Raised wherever the main thread happens to be, it could leave a future's lock held (a
    concurrent.futures wait holds all of them), and the pool's shutdown then hangs for ever."""
    import signal

    interrupted = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        yield interrupted
        return
    old = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, old)


def _as_finished(futures, interrupted: threading.Event) -> Iterator:
    """Each future as it finishes; KeyboardInterrupt once `interrupted` is set. The waits are short
    because the kernel may hand a Ctrl-C to any thread, and the handler runs when the main thread wakes."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        if interrupted.is_set():
            raise KeyboardInterrupt
        yield from done


def _stop_workers(pool: ProcessPoolExecutor, now: bool) -> None:
    """Drop the runs not started, and end the workers at once (`now`: Ctrl-C) or once the runs under way
    are written (a Ctrl-C meanwhile ends them at once). A worker ended halfway through writing leaves a
    temporary folder, removed when the sweep resumes."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    if not now:
        try:
            for process in processes:
                process.join()
            return
        except KeyboardInterrupt:
            _end(processes)
            raise
    _end(processes)


def _end(processes: list) -> None:
    for process in processes:
        process.terminate()  # SIGTERM: a worker ignores SIGINT
    for process in processes:
        process.join()


def extract_one(spec: RunSpec, cache_dir, workers) -> str:
    _prepared(spec, cache_dir, workers)
    return spec.dataset


def run_group(specs: list[RunSpec], out: Path, cache_dir, workers, fuse: bool = True,
              max_prompts: int | None = None, report=None, trackers: tuple = ()) -> list[tuple[str, float]]:
    """Train runs of one dataset and backbone into their folders (each written atomically as it
    finishes); with `fuse`, the learned-prompt runs in one fused pass (`fusion.py`). `report(folder,
    seconds)` is called as each finishes; returns every (folder, seconds)."""
    from ..runs.fusion import DEFAULT_MAX_PROMPTS, fit_runs
    from ..runs.pipeline import check_run
    from ..runs.folder import write_run

    _exit_if_orphaned()
    prep = _prepared(specs[0], cache_dir, workers)
    settings = [check_run(make_settings(s.settings), prep.dataset, prep.backbone)[1] for s in specs]
    results = []

    def done(i: int, run, seconds: float) -> None:
        _exit_if_orphaned()
        write_run(out / specs[i].folder, run, trackers)
        results.append((str(specs[i].folder), seconds))
        if report is not None:
            report(*results[-1])

    fit_runs(prep, settings, log=lambda s: None, fuse=fuse, max_prompts=max_prompts or DEFAULT_MAX_PROMPTS, done=done)
    return results


def fusable_spec(spec: RunSpec) -> bool:
    from ..runs.fusion import fusable
    from ..methods import get_method

    return fusable(get_method(spec.settings["method"]))


def work_units(order: list[RunSpec], jobs: int, fuse: bool) -> list[list[RunSpec]]:
    """What one worker task trains: a single run, or (with `fuse`) a share of one dataset and
    backbone's learned-prompt runs, trained together; each (dataset, backbone) gives `jobs` shares."""
    if not fuse:
        return [[s] for s in order]
    units, by_data = [], {}
    for s in order:
        if fusable_spec(s):
            by_data.setdefault(s.data_key, []).append(s)
        else:
            units.append([s])
    for specs in by_data.values():
        units += [specs[k::jobs] for k in range(min(jobs, len(specs)))]
    return units


def finished(spec: RunSpec, out: Path) -> bool:
    """Whether the run's folder holds a finished run of exactly these settings."""
    from ..runs.folder import holds_run

    return holds_run(out / spec.folder, spec.settings)


def check_run_folders(specs: list[RunSpec], out: Path, overwrite: bool = False) -> None:
    """Before anything is written: every run folder lies inside `out` (no link or name leads out),
    and one that holds a run of other settings is replaced only with `overwrite` (a folder holding
    files groupcoop did not write, never). A folder of the same settings is resumed: kept when
    finished, redone when its metrics are damaged."""
    from ..io.folders import check_inside, check_replaceable
    from ..runs.folder import same_settings

    for spec in specs:
        folder = out / spec.folder
        check_inside(folder, out, "run folder", "remove the link, or choose another --out")
        if not os.path.lexists(folder) or same_settings(folder, spec.settings):
            continue
        check_replaceable(folder, overwrite=True, kind="run")  # never a folder of the user's files, nor another kind
        if not overwrite:
            raise UserError(f"run folder {folder} already holds a run of other settings (the grid changed?); "
                            "pass --overwrite to replace such runs, or choose another --out")


def check_sweep_folder(specs: list[RunSpec], out: Path, grid, overwrite: bool = False,
                       summary_only: bool = False) -> bool:
    """Before anything is written: the dataset folders exist (`check_roots`) and `out` is none of them,
    every run folder lies inside `out` (`check_run_folders`), and `out` is nothing, an empty folder or
    a sweep folder (resumed, never replaced) of this grid, another only with `overwrite`
    (`grid.check_grid_folder`). Returns whether grid.yaml must be (re)written."""
    from ..io.folders import check_not_an_input, check_replaceable, groupcoop_kind
    from .grid import check_grid_folder

    check_roots(specs)
    check_not_an_input(out, [("the dataset folder", r) for r in dict.fromkeys(s.settings.get("root") for s in specs)])
    if not summary_only:
        check_run_folders(specs, out, overwrite)
    if out.exists() and groupcoop_kind(out) != "sweep":
        check_replaceable(out, overwrite=False, kind="sweep")  # an empty folder is fine; anything else is refused
    return check_grid_folder(out, grid, overwrite)


def remove_stale_temporaries(specs: list[RunSpec], out: Path) -> int:
    """Remove the temporary folders a killed sweep left beside its run folders (`folders.temporaries`:
    `.<run>.tmp-` or `.<run>.old-` plus 8 random characters); only those of these specs' runs, whose
    writer is gone: the caller holds these specs' lock. Returns how many were removed."""
    import shutil

    from ..io.folders import check_inside, temporaries

    removed = 0
    for spec in specs:
        parent = out / spec.folder.parent
        if not parent.is_dir() or parent.is_symlink():
            continue
        for tmp in temporaries(out / spec.folder):
            check_inside(tmp, out, "temporary folder", "remove it by hand")
            shutil.rmtree(tmp)
            removed += 1
    return removed


def check_roots(specs: list[RunSpec]) -> None:
    """A dataset folder that is missing (or left as an unset ${VARIABLE}) is named before anything runs."""
    for s in specs:
        root = s.settings.get("root") or ""
        if "$" in root:
            raise UserError(f"dataset {s.settings['dataset']}: its folder {root} uses an environment variable that is "
                            f"not set; set it or pass --root {s.settings['dataset']}=FOLDER")
        if root and not Path(root).expanduser().is_dir():
            raise UserError(f"dataset {s.settings['dataset']}: its folder {root} is not a folder (missing?); nothing "
                            f"was written; pass --root {s.settings['dataset']}=FOLDER with the dataset's folder")


def run_sweep(specs: list[RunSpec], out: Path, jobs: int = 1, cache_dir=None, workers: int | None = 0,
              log=print, fuse: bool = True, max_prompts: int | None = None, overwrite: bool = False,
              trackers: tuple = (), threads: int | None = None) -> dict:
    """Run every unfinished spec; returns counts. Progress: done / total with an ETA.

    With `fuse`, the learned-prompt runs of each dataset and backbone train together in fused
    passes (one per worker), at most `max_prompts` prompts per text-encoder call. The caller holds
    the lock of these specs (`cli.cmd_sweep`: one per shard). A run folder of other settings is
    replaced only with `overwrite` (`check_run_folders`). Each run's epochs also go to `trackers`
    (`tracking.send`). Ctrl-C ends the workers; the KeyboardInterrupt then says how many runs are kept.
    `threads` (default: the CPU count) are shared among the `jobs` workers' torch.
    """
    out = Path(out)
    try:
        return _run_sweep(specs, out, jobs, cache_dir, workers, log, fuse, max_prompts, overwrite, trackers, threads)
    except KeyboardInterrupt:  # main.py prints it in one line, status 130
        kept = sum(finished(s, out) for s in specs)
        raise KeyboardInterrupt(f"{kept} of {len(specs)} runs are finished and kept; run the same command to "
                                "resume") from None


def _run_sweep(specs, out, jobs, cache_dir, workers, log, fuse, max_prompts, overwrite, trackers, threads) -> dict:
    check_roots(specs)
    check_run_folders(specs, out, overwrite)
    stale = remove_stale_temporaries(specs, out)
    if stale:
        log(f"removed {stale} temporary folder(s) left by a killed sweep")
    todo = [s for s in specs if not finished(s, out)]
    total, done_before = len(specs), len(specs) - len(todo)
    log(f"sweep: {total} runs, {done_before} already finished, {len(todo)} to run with {jobs} job(s)"
        + (", learned-prompt runs fused" if fuse else ""))
    if not todo:
        return {"total": total, "ran": 0, "skipped": done_before}
    threads = max(1, (threads or os.cpu_count() or 1) // jobs)
    order = sorted(todo, key=lambda s: (s.data_key, s.method, s.groups, s.seed))
    units = work_units(order, jobs, fuse)
    start = time.perf_counter()
    completed = 0

    def report(folder: str, seconds: float) -> None:
        nonlocal completed
        completed += 1
        _progress(log, done_before + completed, total, completed, len(order), start, folder, seconds)

    def features_ready() -> None:
        nonlocal start
        log(f"features ready ({(time.perf_counter() - start) / 60:.1f} min)")
        start = time.perf_counter()  # the ETA counts runs only

    if jobs == 1:
        _init_worker(threads)
        for unit in units:
            run_group(unit, out, cache_dir, workers, fuse, max_prompts, report, trackers)
    else:
        first_of_data = list({s.data_key: s for s in reversed(order)}.values())
        _run_parallel(units, first_of_data, jobs, threads, (out, cache_dir, workers, fuse, max_prompts), trackers,
                      features_ready, report)
    return {"total": total, "ran": len(order), "skipped": done_before}


def _run_parallel(units, first_of_data, jobs, threads, where: tuple, trackers, features_ready, report) -> None:
    """`units` in `jobs` worker processes, after the features of each dataset (`first_of_data`)."""
    import multiprocessing

    out, cache_dir, workers, fuse, max_prompts = where
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getpid()))
    try:
        with _ctrl_c_as_flag() as interrupted:
            # features first, one task per dataset, so that no two processes extract the same images
            with _workers_deaf_to_ctrl_c():  # a submit may start a worker
                extracting = [pool.submit(extract_one, s, cache_dir, workers) for s in first_of_data]
            for future in _as_finished(extracting, interrupted):
                future.result()
            features_ready()
            with _workers_deaf_to_ctrl_c():
                pending = [pool.submit(run_group, unit, out, cache_dir, workers, fuse, max_prompts, None, trackers)
                           for unit in units]
            for future in _as_finished(pending, interrupted):  # a fused share reports its runs when done
                for folder, seconds in future.result():
                    report(folder, seconds)
    except BaseException as err:  # Ctrl-C is raised above, outside any lock; the default handler is back
        _stop_workers(pool, now=isinstance(err, KeyboardInterrupt))
        raise
    pool.shutdown()


def _progress(log, done, total, ran, to_run, start, folder, seconds) -> None:
    elapsed = time.perf_counter() - start
    eta = elapsed / ran * (to_run - ran)
    log(f"[{done}/{total}] {folder} ({seconds:.1f} s)  elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min")


def print_runs(specs: list[RunSpec], out: Path) -> None:
    """`--dry-run`'s list: each run's folder, done or still to do."""
    for s in specs:
        print(f"{'done' if finished(s, out) else 'todo'}  {s.folder}")
