"""The CPU backend, a quiet TensorFlow start, and the fingerprint of the machine a number came from.

TensorFlow 2.21 turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or
AMX. On AVX2-only CPUs (AMD Zen 2/3, Intel before Ice Lake) it leaves them off and convolutions take
Eigen's path: on a 2-core AVX2 AMD EPYC, SimCLR's ResNet-18 step took 26.49 s with TensorFlow's
default and 12.59 s with ``TF_ENABLE_ONEDNN_OPTS=1`` (benchmarks/cpu_backend.md). So importing
``ssl_tf`` turns oneDNN on, unless the user set the variable (their choice wins, whatever its value:
TensorFlow parses it) or TensorFlow is already loaded (then it is too late, and we say so once).

This module imports nothing heavy: it must run before TensorFlow loads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import sys
import threading

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
_log = logging.getLogger("ssl_tf")
_state = {"choice": None, "late_notice_given": False}


def prefer_onednn(environ=None, modules=None) -> str:
    """Turn oneDNN on for the TensorFlow about to be imported. Returns who decided:
    ``"user"`` (the variable was set before us), ``"ssl_tf"`` (we set it to 1), or ``"late"``
    (TensorFlow was imported before ssl_tf, so its backend is already fixed)."""
    if environ is None and _state["choice"] is not None:   # decided when ssl_tf was imported
        return _state["choice"]
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if ONEDNN_ENV in environ:
        choice = "user"
    elif "tensorflow" in modules:
        choice = "late"
    else:
        environ[ONEDNN_ENV] = "1"
        choice = "ssl_tf"
    if environ is os.environ:
        _state["choice"] = choice
    return choice


def onednn_enabled() -> bool | None:
    """TensorFlow's own answer (it alone parses the variable); None before TensorFlow is imported."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):   # a TensorFlow build without the query: unknown
        return None


def late_notice(choice: str | None, enabled: bool | None) -> str | None:
    """The one line for a user whose TensorFlow was loaded, with oneDNN off, before ssl_tf could choose."""
    if choice != "late" or enabled is not False:
        return None
    return (f"ssl_tf: TensorFlow was imported before ssl_tf with oneDNN off, so convolutions take the slower Eigen "
            f"path (about 2x on AVX2 CPUs); set {ONEDNN_ENV}=1 before importing TensorFlow, or import ssl_tf first")


def notify_if_late():
    """Say once, in one line, that the backend choice came too late (see ``late_notice``)."""
    line = late_notice(_state["choice"], onednn_enabled())
    if line and not _state["late_notice_given"]:
        _state["late_notice_given"] = True
        _log.warning(line)


# ---------------------------------------------------------------------------------- a quiet start
# Lines TensorFlow prints on every CPU-only start that look like failures but are not: its absl
# pre-init banner, the oneDNN notice, the CUDA stub's "no driver" and the instruction-set hint.
_ALWAYS_NOISE = re.compile(r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                           r"|oneDNN custom operations are on"
                           r"|This TensorFlow binary is optimized to use available CPU instructions"
                           r"|rebuild TensorFlow with the appropriate compiler flags"
                           r"|Could not find cuda drivers on your machine")
# CUDA errors that only follow from having no driver at all; kept when a driver exists, so a GPU
# user with a broken setup still sees them.
_NO_DRIVER_NOISE = re.compile(r"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory"
                              r"|computation placer already registered")


class StartNoiseFilter:
    """Line by line, the lines of TensorFlow's start-up output worth showing a user (pure; tested on
    real output). The CUDA errors are noise only once the stub has said there is no driver."""

    def __init__(self):
        self.no_driver = False

    def keep(self, line: str) -> bool:
        if "Could not find cuda drivers" in line:
            self.no_driver = True
        return not (_ALWAYS_NOISE.search(line) or (self.no_driver and _NO_DRIVER_NOISE.search(line)))


def filter_start_noise(text: str) -> str:
    noise = StartNoiseFilter()
    return "".join(line for line in text.splitlines(keepends=True) if noise.keep(line))


@contextlib.contextmanager
def _stderr_filtered():
    """File descriptor 2 (TensorFlow's C++ logs bypass ``sys.stderr``) through a pipe whose reader
    passes on, as they arrive, the lines ``StartNoiseFilter`` keeps: a fatal message before an abort
    still reaches the user. Without a real stderr or a pipe, nothing is filtered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real stderr (an embedded interpreter)
        yield
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        os.close(saved)
        yield
        return
    noise = StartNoiseFilter()

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if noise.keep(raw.decode("utf-8", "replace")):
                    try:
                        os.write(saved, raw)
                    except OSError:   # stderr closed after the start (a writer outlived the block): stop
                        return
    reader = threading.Thread(target=forward, name="ssl_tf-start-log", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)   # the pipe's last writer is gone: the reader sees the end and stops
        reader.join(timeout=5)
        os.close(saved)


def import_tensorflow():
    """Import TensorFlow with the backend chosen and its CPU-only start-up noise filtered out.

    Also probes the devices once inside the filter: that is where the CUDA stub reports a missing
    driver. Listing physical devices does not initialise the runtime, so logical devices can
    still be configured afterwards."""
    prefer_onednn()
    if "tensorflow" in sys.modules:
        notify_if_late()
        return sys.modules["tensorflow"]
    with _stderr_filtered():
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")
    return tf


# ---------------------------------------------------------------------------------- the machine
ISA_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """CPU model, vendor family/model numbers and ISA flags (Linux /proc/cpuinfo; elsewhere what
    ``platform`` knows)."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    fields = {}
    for line in cpuinfo_text.split("\n\n", 1)[0].splitlines():   # the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    ident = " ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return {"cpu": model, "cpu_id": f"{fields.get('vendor_id', '')} {ident}".strip(),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def isa_summary(isa) -> str:
    """The instruction set that decides TensorFlow's CPU kernels, in one word or two."""
    isa = set(isa)
    if not isa:
        return "ISA unknown"   # no /proc/cpuinfo flags (not Linux, or not x86)
    if "amx_tile" in isa:
        return "AMX"
    if "avx512f" in isa:
        return "AVX-512 BF16" if "avx512_bf16" in isa else "AVX-512"
    return "AVX2" if "avx2" in isa else "no AVX2"


def native_bf16(isa) -> bool:
    """Whether the CPU computes bf16 products natively (else TensorFlow emulates bf16, slower)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(isa))


def bf16_note(fp: dict) -> str | None:
    """Why bf16 will be slow on this machine, or None. Without oneDNN, TensorFlow runs bf16 on Eigen's
    kernels: SimCLR's ×0.25 step took 5.19 s in bf16 against 0.80 s in float32 (Zen 4, oneDNN off) and
    0.21 s in bf16 with oneDNN on (benchmarks/cpu_backend.md)."""
    if fp.get("gpus"):
        return None
    if fp.get("onednn") is False:
        return (f"oneDNN is off ({ONEDNN_ENV}={fp.get('onednn_env')}), so bf16 runs on Eigen's kernels, several "
                "times slower than float32; use float32 or turn oneDNN on")
    if fp.get("isa") and not native_bf16(fp["isa"]):   # an unknown ISA (not x86 Linux): no guess
        return (f"this CPU ({isa_summary(fp.get('isa', ()))}) has no native bf16 (AVX512_BF16 or AMX), so TensorFlow "
                "emulates it, usually slower than float32")
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def fingerprint(precision: str | None = None) -> dict:
    """Everything a timing depends on: CPU, cores, ISA, oneDNN, TensorFlow's thread pools, precision."""
    fp = dict(cpu_info(), cores=cores(), onednn=onednn_enabled(), onednn_env=os.environ.get(ONEDNN_ENV),
              precision=precision)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        threading = tf.config.threading   # 0 = TensorFlow's default (one thread per core)
        fp.update(tensorflow=tf.__version__, intra_op_threads=threading.get_intra_op_parallelism_threads(),
                  inter_op_threads=threading.get_inter_op_parallelism_threads(),
                  gpus=len(tf.config.list_physical_devices("GPU")))
    return fp


def describe(fp: dict) -> str:
    """One short machine column: 'AMD EPYC (AuthenticAMD 25/17), AVX-512 BF16, 2 cores, oneDNN on, float32'."""
    onednn = {True: "oneDNN on", False: "oneDNN off"}.get(fp.get("onednn"), "oneDNN ?")
    ident = re.sub(r"cpu family (\d+) model (\d+)", r"\1/\2", fp.get("cpu_id", ""))
    parts = [f"{fp.get('cpu', '?')}" + (f" ({ident})" if ident else ""), isa_summary(fp.get("isa", ())),
             f"{fp.get('cores', '?')} cores", onednn]
    if fp.get("gpus"):
        parts.append(f"{fp['gpus']} GPU")
    if fp.get("precision"):
        parts.append(fp["precision"])
    return ", ".join(parts)
