"""The README's Python example runs as printed, at test size (fewer images, a narrower backbone)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    with open(f"{ROOT}/README.md", encoding="utf-8") as f:
        code = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    small = code.replace('"shapes:2000,500"', '"shapes:64,16"').replace("width=0.25", "width=0.0625")
    small = small.replace("epochs=2", "epochs=1")
    assert small.count("shapes:64,16") == 1 and "width=0.0625" in small, "the README example changed shape"
    monkeypatch.chdir(tmp_path)
    exec(compile(small, "README.md", "exec"), {})
    top1 = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= top1 <= 100
    assert (tmp_path / "runs" / "byol" / "export" / "saved_model.pb").exists()
    assert list((tmp_path / "runs" / "byol" / "logs").rglob("events.out.tfevents.*"))
