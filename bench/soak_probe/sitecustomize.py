"""
A probe inside the bridge for bench/run soak: where its memory goes and what holds its loop.

Measurement only; the bridge never imports it. Python imports ``sitecustomize`` at start-up
from the path, so the soak loads it into the bridge alone with

    bench/run soak --bridge-env 'PYTHONPATH=bench/soak_probe:$PYTHONPATH' \
        --bridge-env SOAK_PROBE_OUT=/tmp/probe.jsonl [--bridge-env SOAK_PROBE_LOOP=1]

(absolute paths: the bridge runs in another directory). Every SOAK_PROBE_PERIOD s (0.5) one JSON
line goes to SOAK_PROBE_OUT: RSS (all, anon), glibc's heap (``mallinfo2``: arena, in use,
free), pymalloc blocks, threads, descriptors, objects frozen out of the garbage collector, and
the loop thread's CPU time and run-queue wait (``/proc/self/task/PID/schedstat``: time it
was runnable but had no core). With SOAK_PROBE_LOOP=1 it also times every loop callback and
garbage collection and writes SOAK_PROBE_OUT + '.loop' every 2 s: callbacks over 4 ms by name,
how many of them spent less than half their time on the CPU (preempted, or waiting for the GIL),
and each collection over 10 ms with its time and generation.
"""

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time

OUT = os.environ.get('SOAK_PROBE_OUT')
SLOW_CALLBACK = 0.004   # s
SLOW_COLLECTION = 0.010


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
        'fordblks', 'keepcost')]


def _status() -> dict:
    values = {}
    with open('/proc/self/status') as status:
        for line in status:
            name, _, value = line.partition(':')
            if name in ('VmRSS', 'RssAnon', 'Threads'):
                values[name] = int(value.split()[0])
    return values


def _sample(mallinfo) -> dict:
    status = _status()
    record = {'rss_mb': status['VmRSS'] >> 10, 'anon_mb': status['RssAnon'] >> 10,
              'threads': status['Threads'], 'fds': len(os.listdir('/proc/self/fd')),
              'pyblocks': sys.getallocatedblocks(),
              'frozen': gc.get_freeze_count()}
    if mallinfo is not None:
        info = mallinfo()
        record.update(heap_mb=info.arena >> 20, heap_used_mb=info.uordblks >> 20,
                      heap_free_mb=info.fordblks >> 20, mmapped_mb=info.hblkhd >> 20)
    try:
        with open(f'/proc/self/task/{os.getpid()}/schedstat') as stat:
            on_cpu, waiting, _ = map(int, stat.read().split())
        record.update(loop_cpu_s=round(on_cpu / 1e9, 3), loop_runq_s=round(waiting / 1e9, 3))
    except (OSError, ValueError):
        pass
    return record


def _sampler():
    try:
        mallinfo = ctypes.CDLL('libc.so.6').mallinfo2
        mallinfo.restype = _MallInfo2
    except (OSError, AttributeError):
        mallinfo = None
    started = time.monotonic()
    period = float(os.environ.get('SOAK_PROBE_PERIOD', '0.5'))
    with open(OUT, 'a') as out:
        while True:
            record = {'t': round(time.monotonic() - started, 2), **_sample(mallinfo)}
            out.write(json.dumps(record) + '\n')
            out.flush()
            time.sleep(period)


class _LoopTimer:
    """Time the loop's callbacks and the garbage collector's passes (SOAK_PROBE_LOOP=1)."""

    def __init__(self):
        import asyncio.events
        self.started = time.monotonic()
        self.slow = collections.Counter()        # callback name -> count over SLOW_CALLBACK
        self.slow_seconds = collections.Counter()
        self.longest = {}
        self.kinds = collections.Counter()       # on_cpu / waited, and their seconds
        self.collections = collections.defaultdict(list)
        self.long_collections = []
        self._collect_began = 0.0
        handle = asyncio.events.Handle
        original = handle._run
        timer = self

        def timed_run(self):
            began, cpu = time.perf_counter(), time.thread_time()
            original(self)
            took = time.perf_counter() - began
            if took > SLOW_CALLBACK:
                timer.note(self, took, time.thread_time() - cpu)

        handle._run = timed_run
        gc.callbacks.append(self.on_collection)
        threading.Thread(target=self.write, daemon=True, name='soak-probe-loop').start()

    @staticmethod
    def name(handle) -> str:
        callback = getattr(handle, '_callback', None)
        name = str(getattr(callback, '__qualname__', '') or repr(callback)[:60])
        task = getattr(callback, '__self__', None)
        if name.startswith('<TaskStepMethWrapper') or \
                name in ('Task.task_wakeup', 'Task.__step'):
            coro = task.get_coro() if hasattr(task, 'get_coro') else None
            name = 'task ' + str(getattr(coro, '__qualname__', '?'))
        return name

    def note(self, handle, took: float, on_cpu: float):
        try:
            name = self.name(handle)
        except Exception:  # a probe never breaks the bridge
            name = '?'
        self.slow[name] += 1
        self.slow_seconds[name] += took
        self.longest[name] = max(self.longest.get(name, 0.0), took)
        kind = 'on_cpu' if on_cpu > took / 2 else 'waited'
        self.kinds[kind] += 1
        self.kinds[kind + '_s'] += took
        self.kinds['cpu_s'] += on_cpu

    def on_collection(self, phase, info):
        if phase == 'start':
            self._collect_began = time.perf_counter()
            return
        took = time.perf_counter() - self._collect_began
        self.collections[info['generation']].append(took)
        if took > SLOW_COLLECTION:
            self.long_collections.append((round(time.monotonic() - self.started, 2),
                                          info['generation'], round(took * 1e3, 1),
                                          info.get('collected')))

    def write(self):
        while True:
            time.sleep(2.0)
            document = {
                'callbacks_over_4ms': dict(self.kinds),
                'slowest': [(name, count, round(self.slow_seconds[name], 3),
                             round(self.longest[name] * 1e3, 1))
                            for name, count in self.slow.most_common(15)],
                'collections': {generation: {'count': len(times),
                                             'max_ms': round(max(times) * 1e3, 1),
                                             'total_ms': round(sum(times) * 1e3, 1)}
                                for generation, times in self.collections.items()},
                'collections_over_10ms': self.long_collections[-100:]}
            with open(OUT + '.loop', 'w') as out:
                json.dump(document, out)


if OUT:
    threading.Thread(target=_sampler, daemon=True, name='soak-probe').start()
    if os.environ.get('SOAK_PROBE_LOOP') == '1':
        _LoopTimer()
