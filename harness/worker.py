"""The worker: one rank of a distributed job started by torchrun (`python -m harness.worker JOB.json`).

It trains exactly what the `Job` says (harness.modes, through the Trainer of harness.trainer) and
reports what ran: each rank appends events to events-rank{R}.jsonl in the job folder (start, the
probe's tries and fits, out of memory, its own exception), and rank 0 writes result.json.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from harness.env import runtime_environment
from harness.job import read_job
from harness.launch import RESULT_FILE, STACK_DUMP_SIGNAL
from harness.modes import MODES, events_file, exit_now
from harness.processes import die_with_parent, read_proc
from harness.timing import barrier
from harness.trainer import write_event


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Owned by torchrun: if it dies, by whatever signal, this rank dies too (harness.processes).
    die_with_parent()
    if os.getppid() == 1:  # torchrun was already gone before the line above took effect
        exit_now(1)
    job_file = Path(argv[0])
    job = read_job(job_file)
    out = job_file.parent
    rank = int(os.environ.get("RANK", "0"))
    events = events_file(out, rank)
    # The launcher sends STACK_DUMP_SIGNAL before it kills a job that outlived its timeout: every
    # thread's Python stack lands in output.log, so a hang says where it hung.
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True)
    me = read_proc(os.getpid())
    started = {
        "event": "start",
        "pid": os.getpid(),
        "started": me.started if me else None,
        "host": socket.gethostname(),
        "mode": job.mode,
    }
    write_event(events, started)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        result = MODES[job.mode](job, out, rank)
    except BaseException as error:
        # Recorded, then raised as it was: the launcher names the first rank that failed by its own
        # error, not the peers' "connection closed" that follows it.
        write_event(
            events,
            {
                "event": "error",
                "type": type(error).__name__,
                "message": str(error)[:2000],
                "traceback": traceback.format_exc()[-4000:],
            },
        )
        raise
    if rank == 0:
        result["environment"] = runtime_environment()
        tmp = out / f"{RESULT_FILE}.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out / RESULT_FILE)
    if dist.is_available() and dist.is_initialized():
        barrier()  # every rank is done with every collective before the group goes
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: under FSDP over gloo a rank once aborted there
    # ("terminate called without an active exception") after its result was written, failing a job
    # that had finished.
    exit_now(0)


if __name__ == "__main__":
    main()
