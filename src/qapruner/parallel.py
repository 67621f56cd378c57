"""Data-parallel ``eval`` / ``compare`` over N processes with accelerate (docs/parallel.md).

Each process is one rank of a ``torch.distributed`` group that accelerate's ``PartialState`` sets up (nccl on
GPUs, gloo on CPUs), started by ``accelerate launch --multi_gpu --num_processes N -m qapruner ...`` or by
``qapruner eval|compare --processes N ...``, which re-launches itself through accelerate's launcher. The
evaluation runner shards batches over the ranks (``eval.runner``); this module holds the process-level
pieces: start-up, thread count, collectives, main-only progress and the identical-quantization check.

With one process every helper is a no-op and accelerate is not imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys

from .errors import QAPrunerError

COMMANDS = ("eval", "compare")  # the commands that run data-parallel
WORLD_KEYS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
TIMEOUT_HOURS = 12  # collectives wait this long: the main process may encode a whole task's images meanwhile
_state = None


class Relayed(QAPrunerError):
    """The main process's error, raised on the others too (only the main process prints it)."""


def add_args(p) -> None:
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="run data-parallel on N processes (re-launches through accelerate; one per GPU on GPUs); "
                        "results are identical to one process")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads per process (default: all cores, or cores / processes with several)")


def launched_world() -> int:
    for key in WORLD_KEYS:
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def launched_by_qapruner() -> bool:
    """True in the workers ``--processes N`` starts (``launch``)."""
    return launched_world() > 1 and os.environ.get("QAPRUNER_LAUNCHER") == "1"


def cores() -> int:
    """CPU cores this process may use: physical cores, within its CPU affinity."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        n = min(n, psutil.cpu_count(logical=False) or n)
    except ImportError:
        pass
    return max(1, n)


def default_threads(local_processes: int) -> int:
    """The cores split evenly between the processes of this machine, at least one each."""
    return max(1, cores() // max(1, local_processes))


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise QAPrunerError(f"--threads must be a positive integer, got {threads}.")


def _cpu_requested() -> bool:
    """accelerate's own switch for CPU processes on a machine with GPUs."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def _check_gpus(processes: int) -> None:
    """nccl runs one process per GPU; more processes than visible GPUs would fail deep inside it."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and processes > gpus and not _cpu_requested():
        raise QAPrunerError(f"--processes {processes} needs one GPU per process and this machine has {gpus}: use "
                            f"--processes {gpus}, or CPU processes with CUDA_VISIBLE_DEVICES=''.")


def wants_launch(args) -> bool:
    """True when ``--processes N`` (N > 1) asks this (not yet launched) process to start N workers."""
    n = getattr(args, "processes", None)
    if n is not None and n < 1:
        raise QAPrunerError(f"--processes must be a positive integer, got {n}.")
    if n and n > 1 and getattr(args, "from_archive", None) is not None:
        raise QAPrunerError("--from-archive needs no model and runs in one process; drop --processes.")
    return bool(n and n > 1 and launched_world() == 1)


def init(args) -> None:
    """Join the process group when launched as one of several processes; set the torch thread count."""
    global _state
    _check_threads(getattr(args, "threads", None))
    world = launched_world()
    if world == 1:  # torch is imported only when needed here (compare --from-archive does without it)
        if "MASTER_ADDR" in os.environ and "ACCELERATE_USE_CPU" in os.environ:
            import torch

            if not torch.cuda.is_available():
                print("qapruner: note: accelerate launch started a single process; without GPUs add --multi_gpu "
                      "(or use qapruner's --processes N) to run several.", file=sys.stderr)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return
    import torch

    if args.command not in COMMANDS:
        raise QAPrunerError(f"qapruner {args.command} runs in one process; only eval and compare run data-parallel.")
    if getattr(args, "processes", None) not in (None, world):
        raise QAPrunerError(f"--processes {args.processes} disagrees with the {world} processes launched.")
    if getattr(args, "from_archive", None) is not None:
        raise QAPrunerError("--from-archive needs no model and runs in one process; launch it without accelerate.")
    if _state is None:
        from datetime import timedelta

        _check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        from accelerate import PartialState

        cpu = not torch.cuda.is_available() or _cpu_requested()
        _state = PartialState(cpu=cpu, timeout=timedelta(hours=TIMEOUT_HOURS))
    if not is_main():  # progress bars of the libraries too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(args.threads or default_threads(local))


def finish() -> None:
    """Leave the process group (after a successful run)."""
    global _state
    if _state is not None:
        _state.destroy_process_group()
        _state = None


def world() -> int:
    return _state.num_processes if _state is not None else 1


def rank() -> int:
    return _state.process_index if _state is not None else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        _state.wait_for_everyone()


def broadcast(obj):
    """The main process's ``obj`` on every process (picklable objects)."""
    if world() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj if is_main() else None])[0]


def gather(obj) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if world() == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (downloads, conversions), then the others."""
    if world() == 1:
        yield
    else:
        with _state.main_process_first():
            yield


def progress_bar():
    """Progress bars on the main process; a silent ``Progress`` elsewhere."""
    from rich.progress import Progress

    from .runinfo import progress_bar as bars

    return bars() if is_main() else Progress(disable=True)


def fingerprint(model) -> str:
    """SHA-1 of every state tensor's name, shape, dtype and (up to) 4,096 evenly spaced values, exact bytes."""
    import torch

    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not torch.is_tensor(t):
                continue
            flat = t.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float64) if flat.numel() else flat.cpu()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def quantized_copy(adapter, config, task, calib_samples: int, seed: int, progress=None, calib_prune=None):
    """``eval.prepare.quantized_copy`` on every process: GPTQ and the rotations are deterministic, so each
    process quantizes the same model (no multi-GB weights to ship); the main process encodes the calibration
    images first (it is the only writer of the feature cache), and the copies are checked to be identical."""
    from .eval import prepare

    if world() == 1:
        return prepare.quantized_copy(adapter, config, task, calib_samples, seed, progress=progress,
                                      calib_prune=calib_prune)
    barrier()  # nobody reads the feature cache while the main process may still write it
    if config.needs_calibration and is_main():
        for src, n in prepare.calibration_sources(task, calib_samples):
            if n:
                prepare.calibration_inputs(adapter, src, n, seed, prune=calib_prune)
    barrier()
    q, info = prepare.quantized_copy(adapter, config, task, calib_samples, seed, progress=progress,
                                     calib_prune=calib_prune)
    prints = gather(fingerprint(q.model))
    if len(set(prints)) > 1:
        raise (QAPrunerError if is_main() else Relayed)(
            f"The {world()} processes quantized the model differently ({config.preset}); run with one process.")
    return q, info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], args) -> int:
    """Run ``qapruner ARGV`` on ``args.processes`` processes through accelerate's launcher (torchrun: one
    process per GPU with nccl, or CPU processes with gloo); returns the first failing exit status, else 0."""
    import logging

    from accelerate.commands.launch import launch_command, launch_command_parser

    _check_threads(args.threads)
    n = args.processes
    _check_gpus(n)
    parser = launch_command_parser()
    largs = parser.parse_args(["--multi_gpu", "--num_processes", str(n), "--num_machines", "1", "--mixed_precision",
                               "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                               "-m", "qapruner", *argv])
    import torch.distributed.run  # noqa: F401  (creates the loggers silenced here)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed", "accelerate")):  # the workers print their own one-sentence errors
            logging.getLogger(name).setLevel(logging.CRITICAL)
    env = {"OMP_NUM_THREADS": str(args.threads or default_threads(n)), "QAPRUNER_LAUNCHER": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        launch_command(largs)
    except Exception as exc:  # ChildFailedError (a worker failed) or SignalException (interrupted)
        if hasattr(exc, "get_first_failure"):
            code = exc.get_first_failure()[1].exitcode
            return code if code > 0 else 1
        if type(exc).__name__ == "SignalException":
            raise KeyboardInterrupt from None
        raise
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0
