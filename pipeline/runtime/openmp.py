"""Whether torch's OpenMP threads spin or sleep between parallel regions, chosen before
torch loads (GNU OpenMP reads OMP_WAIT_POLICY once, when the library is loaded).

By default an idle OpenMP thread spins for a while before it sleeps, made for a forward on
this CPU, whose parallel regions (matmuls, norms) follow one another. A process whose
forward runs elsewhere (a GPU) or is the stand-in engine (`stub:`) calls a few CPU
operators here and there, and between them its own threads need the cores: the tokenizer,
the part writer, the engine's placing of vectors. Spinning took them. On the 2-core VM
measured, a 4,000-document `m3pipe encode` on `stub:full` made 587 documents/s asleep against
546 spinning, `m3pipe run --workers 1` 502 against 466 (`bench_worker --openmp sleep,spin`).
On `random:full`'s CPU forward two A/Bs went opposite ways within noise (bench_engine,
benchmarks/results/engine-cpu-random-full-40docs-openmp.json): no effect shown there, so a
CPU forward keeps OpenMP's default. A value the user set is kept either way. Only a process
of its own chooses (an `m3pipe` command, not a test calling `main`): the environment is the
whole process's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
STUB_PREFIX = "stub:"


def forward_on_this_cpu(model_specs: Iterable[str], on_gpu: bool) -> bool:
    """Whether a model's forward would run on this machine's CPU."""
    return not on_gpu and any(not spec.startswith(STUB_PREFIX) for spec in model_specs)


def sleep_when_idle_unless_computing(
    forward_on_cpu: bool, environ: MutableMapping[str, str] = os.environ
) -> None:
    """OpenMP's idle threads sleep at once, unless a forward runs on this CPU or the user
    chose; call before torch is imported."""
    if not forward_on_cpu:
        environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
