"""The systemd units: valid, and hardened (exposure <= 2.0)."""
import re
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                reason="systemd-analyze is not installed")


@pytest.fixture(params=["jobd.service", "jobd@.service"])
def unit(request, tmp_path):
    text = (REPO + "/systemd/" + request.param)
    body = open(text).read().replace("/usr/bin/jobd", "/bin/true")
    name = request.param.replace("@.", "@test.")
    path = tmp_path / name
    path.write_text(body)
    return path


def test_verify(unit):
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, cwd=unit.parent)
    assert out.returncode == 0, out.stderr
    assert "jobd" not in out.stderr or "Unknown" not in out.stderr, out.stderr


def test_security_exposure_at_most_2(unit):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, cwd=unit.parent)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout[-3000:]
