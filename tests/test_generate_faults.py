"""A generation actor killed mid-run: Ray restarts it, its unit is redone, output is unchanged."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from shiftlab.config import load_experiment

DEMO = Path(__file__).parent.parent / "experiments" / "demo.yaml"


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.parts[len(root.parts)] in ("source", "intermediate", "target", "labels", "manifest")
    }


def test_killed_editor_actor_is_replaced_and_every_image_is_written_once(tmp_path, ray_local):
    from ray.util.state import list_actors

    from shiftlab.generate.cache import ensure_generated_report
    from shiftlab.generate.pipeline_builder import build_tiny_instruct_pix2pix

    build_tiny_instruct_pix2pix(tmp_path / "ip2p")
    overrides = [
        f"generate.editor={{kind: instruct-pix2pix, model: {tmp_path / 'ip2p'}, steps: 12, batch_size: 1}}",
        "generate.tile=64",
        "generate.num_actors=2",
        "generate.cpus_per_actor=0.5",
        "data.source.layouts=8",
        "data.val.0.layouts=8",
        "data.test.0.layouts=8",
    ]
    reference = ensure_generated_report(
        load_experiment(DEMO, [f"output_dir={tmp_path / 'ref'}", *overrides])
    ).path

    gcs = ray_local.get_runtime_context().gcs_address  # other Ray instances may run on this machine
    result: dict = {}
    run = threading.Thread(
        target=lambda: result.setdefault(
            "res",
            ensure_generated_report(
                load_experiment(DEMO, [f"output_dir={tmp_path / 'run'}", *overrides])
            ),
        )
    )
    run.start()
    killed = None
    deadline = time.time() + 300
    while run.is_alive() and killed is None and time.time() < deadline:
        done = list((tmp_path / "run").rglob("intermediate/*.png"))
        if len(done) >= 2:  # mid-run: some images written, most to come
            actors = [
                a
                for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], detail=True)
                if "EditorActor" in (a.class_name or "") and a.pid
            ]
            if actors:
                killed = actors[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    run.join(timeout=600)
    assert killed is not None, "the run finished before an actor could be killed"
    res = result["res"]
    assert set(res.modes) == {"intermediate", "target"}
    got, want = files(res.path), files(reference)
    assert got.keys() == want.keys()  # every image exactly once, no temp files
    assert all(got[k] == want[k] for k in want)  # byte-identical to the uninterrupted run
