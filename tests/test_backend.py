"""The CPU backend choice (oneDNN), the quiet start and the machine fingerprint."""
import json
import os
import platform
import subprocess
import sys

import pytest

from ssl_tf import backend
from ssl_tf.eval.report import markdown_table, run_row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = platform.machine() in ("x86_64", "AMD64")   # TensorFlow's oneDNN build; elsewhere IsMklEnabled may differ

# What TensorFlow 2.21 printed on a CPU-only start (AMD EPYC, 2 cores), timestamps and thread ids as printed.
CPU_ONLY_START = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796083922.737084    2477 port.cc:153] oneDNN custom operations are on. You may see slightly \
different numerical results due to floating-point round-off errors from different computation orders. To turn \
them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796083922.737366    2477 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will \
not be used.
E0000 00:00:1796083925.858716    2477 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed \
call to cuInit: UNKNOWN ERROR (303)
"""


def _env(**overrides):
    """This environment without the backend variable (the test process set it when importing ssl_tf)."""
    env = {k: v for k, v in os.environ.items() if k not in (backend.ONEDNN_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env.update(overrides)
    return env


def test_prefer_onednn_sets_it_only_when_nobody_chose():
    env = {}
    assert backend.prefer_onednn(env, modules={}) == "ssl_tf" and env == {backend.ONEDNN_ENV: "1"}
    for value in ("0", "1", "banana", ""):   # the user's value, whatever it is, is TensorFlow's to parse
        env = {backend.ONEDNN_ENV: value}
        assert backend.prefer_onednn(env, modules={}) == "user" and env == {backend.ONEDNN_ENV: value}
    env = {}
    assert backend.prefer_onednn(env, modules={"tensorflow": object()}) == "late" and env == {}


def test_late_notice_only_when_tensorflow_came_first_with_onednn_off():
    line = backend.late_notice("late", False)
    assert line and "\n" not in line and backend.ONEDNN_ENV + "=1" in line and "import ssl_tf first" in line
    for choice, enabled in (("late", True), ("late", None), ("user", False), ("ssl_tf", False), (None, False)):
        assert backend.late_notice(choice, enabled) is None


def test_start_noise_is_filtered_and_everything_else_kept():
    real = "W0000 00:00:1.0  1 some_op.cc:1] a warning a user needs\n"
    assert backend.filter_start_noise(CPU_ONLY_START) == ""
    assert backend.filter_start_noise(CPU_ONLY_START + real) == real
    # with a driver present (no "Could not find cuda drivers"), a cuInit failure is a real problem: kept
    cuinit = CPU_ONLY_START.splitlines(keepends=True)[-1]
    assert backend.filter_start_noise(cuinit) == cuinit


AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2

processor\t: 1
model name\t: something else
"""
XEON = """vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Platinum
flags\t\t: avx avx2 fma avx_vnni avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16
"""


def test_cpu_info_reads_model_family_and_isa():
    epyc = backend.cpu_info(AVX2_EPYC)
    assert epyc == {"cpu": "AMD EPYC 7B12", "cpu_id": "AuthenticAMD cpu family 23 model 49", "isa": ["avx2", "fma"]}
    assert backend.isa_summary(epyc["isa"]) == "AVX2" and not backend.native_bf16(epyc["isa"])
    xeon = backend.cpu_info(XEON)
    assert xeon["isa"] == list(backend.ISA_FLAGS)
    assert backend.isa_summary(xeon["isa"]) == "AMX" and backend.native_bf16(xeon["isa"])
    assert backend.isa_summary(["avx2", "avx512f", "avx512_bf16"]) == "AVX-512 BF16"
    assert backend.isa_summary(["avx2", "avx512f"]) == "AVX-512"
    assert backend.cpu_info("")["isa"] == []


def test_describe_names_cpu_isa_cores_backend_and_precision():
    fp = dict(backend.cpu_info(AVX2_EPYC), cores=2, onednn=False, precision="float32", gpus=0)
    assert backend.describe(fp) == "AMD EPYC 7B12 (AuthenticAMD 23/49), AVX2, 2 cores, oneDNN off, float32"
    assert "oneDNN on" in backend.describe(dict(fp, onednn=True)) and "1 GPU" in backend.describe(dict(fp, gpus=1))


def test_bf16_note_names_why_bf16_will_be_slow():
    zen4 = dict(isa=["avx2", "avx512f", "avx512_bf16"], onednn=True, onednn_env="1")
    assert backend.bf16_note(zen4) is None
    assert "TF_ENABLE_ONEDNN_OPTS=0" in backend.bf16_note(dict(zen4, onednn=False, onednn_env="0"))
    assert "no native bf16" in backend.bf16_note(dict(zen4, isa=["avx2", "fma"]))
    assert backend.bf16_note(dict(zen4, isa=["avx2"], gpus=1)) is None
    assert all("\n" not in backend.bf16_note(fp) for fp in (dict(zen4, onednn=False), dict(zen4, isa=["avx2"])))
    assert backend.bf16_note(dict(zen4, isa=[])) is None and backend.isa_summary([]) == "ISA unknown"


def test_report_has_a_machine_column_only_when_runs_recorded_one():
    fp = dict(backend.cpu_info(XEON), cores=2, onednn=True, precision="float32")
    with_machine = run_row("a", {"config": {"method": "simclr"}, "machine": fp})
    assert with_machine["machine"] == backend.describe(fp)
    table = markdown_table([with_machine, run_row("old", {"config": {"method": "byol"}})])
    header, _, row_a, row_old = table.splitlines()
    assert header.rstrip(" |").endswith("machine") and row_a.rstrip(" |").endswith(backend.describe(fp))
    assert row_old.rstrip(" |").endswith("–")
    assert "machine" not in markdown_table([run_row("old", {"config": {}})])


def _python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(**env), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


PROBE = ("import os, sys, ssl_tf\n"
         "assert 'tensorflow' not in sys.modules   # importing ssl_tf alone stays light\n"
         "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))\n"
         "from ssl_tf import backend\n"
         "backend.import_tensorflow()\n"
         "print(backend.onednn_enabled(), backend.prefer_onednn())\n")


def test_import_ssl_tf_turns_onednn_on_respects_the_user_and_starts_quietly():
    default = _python(PROBE)
    assert default.stdout.split()[0] == "1" and default.stdout.split()[2] == "ssl_tf"   # who chose, kept
    if X86:
        assert default.stdout.split()[1] == "True"
    assert "cuInit" not in default.stderr and "Could not find cuda" not in default.stderr, default.stderr
    assert "oneDNN custom operations" not in default.stderr
    off = _python(PROBE, TF_ENABLE_ONEDNN_OPTS="0")
    assert off.stdout.split() == ["0", "False", "user"]
    odd = _python(PROBE, TF_ENABLE_ONEDNN_OPTS="banana")   # TensorFlow's own reading of a value it does not know
    assert odd.stdout.split()[0] == "banana" and odd.stdout.split()[1] in ("True", "False")
    assert odd.stdout.split()[2] == "user"


def test_tensorflow_imported_first_keeps_its_backend_and_ssl_tf_does_not_touch_it():
    out = _python("import os, tensorflow, ssl_tf\nfrom ssl_tf import backend\n"
                  "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), backend._state['choice'], backend.onednn_enabled())")
    value, choice, enabled = out.stdout.split()
    assert (value, choice) == ("None", "late")
    # one line exactly when it is due: TensorFlow chose oneDNN off on this CPU (an AVX2 one), else none
    notices = [line for line in out.stderr.splitlines() if "imported before ssl_tf" in line]
    assert len(notices) == (1 if enabled == "False" else 0), out.stderr[-2000:]
    forced_off = _python("import os\nos.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'\nimport tensorflow\n"
                         "del os.environ['TF_ENABLE_ONEDNN_OPTS']\nimport ssl_tf")   # TensorFlow first, oneDNN off
    assert len([line for line in forced_off.stderr.splitlines() if "imported before ssl_tf" in line]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("setting", [None, "0"])
def test_cli_records_the_machine_fingerprint(tmp_path, setting):
    model_dir = tmp_path / "run"
    env = _env(TF_CPP_MIN_LOG_LEVEL="2", **({backend.ONEDNN_ENV: setting} if setting else {}))
    out = subprocess.run([sys.executable, "-m", "ssl_tf.cli", "--dataset=shapes:32,8", "--image_size=16",
                          "--backbone=resnet10", "--width=0.0625", "--batch_size=8", "--max_steps=1",
                          "--mode=pretrain", "--progress=false",
                          "--plots=false", f"--model_dir={model_dir}"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cuInit" not in out.stderr and "Could not find cuda" not in out.stderr, out.stderr
    results = json.loads((model_dir / "results.json").read_text())
    fp = results["machine"]
    assert fp["onednn_env"] == (setting or "1")
    if X86 or setting == "0":
        assert fp["onednn"] is (setting != "0")
    assert fp["cores"] >= 1 and fp["precision"] == "float32" and fp["tensorflow"].startswith("2.")
    assert set(fp["isa"]) <= set(backend.ISA_FLAGS) and fp["cpu"]
    assert {"intra_op_threads", "inter_op_threads"} <= set(fp)
    assert results["pretrain"]["machine"] == backend.describe(fp)
    assert f"machine: {backend.describe(fp)}" in out.stdout
