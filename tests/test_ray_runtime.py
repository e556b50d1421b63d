"""How a `shiftlab` command holds Ray: a --json result is the last line it prints."""

from __future__ import annotations

import subprocess
import sys

from shiftlab.utils import ray_runtime


def test_a_command_leaves_a_ray_connected_before_it_alone(ray_local) -> None:
    """A test session's or a notebook's Ray outlives the commands run in its process."""
    ray_runtime.begin_command()
    ray_runtime.end_command_ray()
    assert ray_local.is_initialized()


def test_a_command_disconnects_the_ray_it_connected_before_its_json_line() -> None:
    """Without its worker-output stream too (log_to_driver=False, as sweeps and the demo
    connect), the driver prints the raylet's warnings whenever they come; a command that
    started Ray ends it before its JSON line, so nothing Ray prints can follow it."""
    code = (
        "import ray\n"
        "from shiftlab.utils import ray_runtime as r\n"
        "r.begin_command()\n"
        "r.connect(num_cpus=1, log_to_driver=False)\n"
        "r.end_command_ray()\n"
        "print('CONNECTED', ray.is_initialized())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "CONNECTED False"
