"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) on a tiny Llama gives
the same training run as one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rungwise.config.task import load_task
from rungwise.data.dataset import load_split
from rungwise.train.trainer import finetune

pytestmark = pytest.mark.model

LABELS = ["refund", "shipping", "account"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_task(d: Path, model_dir: Path, batch_size: int) -> Path:
    with open(d / "data.jsonl", "w") as f:
        for i in range(40):
            lab = LABELS[i % 3]
            f.write(json.dumps({"input": f"{lab} request number {i}" + " please" * (i % 5), "output": lab}) + "\n")
    p = d / f"task{batch_size}.yaml"
    p.write_text(
        "name: ddp\n"
        "data: {path: data.jsonl, test_fraction: 0.2}\n"
        "labels: [refund, shipping, account]\n"
        f"model: {{id: '{model_dir}'}}\n"
        "rungs:\n"
        f"  finetune: {{max_steps: 4, batch_size: {batch_size}, dropout: 0.0, learning_rate: 0.01, bf16: false,\n"
        "              eval_every: 2, val_min: 4}\n"
    )
    return p


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_cpu_processes_match_one_process(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # One process, 4 examples per step.
    t1 = load_task(_write_task(tmp_path, tiny_llama_dir, 4))
    split = load_split(t1)
    single = finetune(t1, split.train, tmp_path / "one", progress=False)

    # Two processes x 2 examples per step: the same global batch.
    t2 = _write_task(tmp_path, tiny_llama_dir, 2)
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [
        launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "rungwise.train", str(t2), "--out", str(tmp_path / "two"), "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["world_size"] == 2 and single.world_size == 1
    assert two["n_train"] == single.n_train and two["steps"] == single.steps == 4
    assert [h["train_loss"] for h in two["history"]] == pytest.approx([h["train_loss"] for h in single.history], rel=1e-5)
    assert two["best_val_loss"] == pytest.approx(single.best_val_loss, rel=1e-5)
    a = load_file(str(Path(single.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    scale = max(t.abs().max().item() for t in a.values())
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-3 * scale, k
