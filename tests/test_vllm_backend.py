"""`moss serve --backend vllm`: where vLLM cannot run (not installed, wrong settings, a folder it cannot
serve) the server says so before it listens. The OpenAI-client tests on vLLM itself run where it is
installed (scripts/gpu_check.sh)."""

import importlib.util

import pytest

from mosslm.cli import main as moss
from mosslm.engine.vllm_backend import VllmConfig, VllmUnavailable, require_vllm
from mosslm.quant import quantize

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def serve(*args, data_dir):
    return moss(["serve", "--data-dir", str(data_dir), "--port", "1", *args])


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here: the missing-package path cannot run")
def test_without_vllm_the_backend_says_how_to_install_it(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(VllmUnavailable, match="its own environment"):
        require_vllm()
    assert serve("--model", str(tiny_checkpoint), "--backend", "vllm", data_dir=tmp_path) == 2
    err = capsys.readouterr().err
    assert "needs vLLM" in err and "pip install vllm" in err


def test_vllm_settings_are_checked_before_anything_loads(tiny_checkpoint, tmp_path, capsys):
    for bad, message in ((dict(tensor_parallel_size=0), "--tensor-parallel-size must be a positive integer"),
                         (dict(pipeline_parallel_size=-1), "--pipeline-parallel-size"),
                         (dict(gpu_memory_utilization=1.5), "--gpu-memory-utilization must be in"),
                         (dict(distributed_executor_backend="slurm"), "mp or ray"),
                         (dict(dtype="int3"), "vLLM dtype")):
        with pytest.raises(VllmUnavailable, match=message):
            VllmConfig(**bad).check(tiny_checkpoint)
    VllmConfig(tensor_parallel_size=8, distributed_executor_backend="ray").check(tiny_checkpoint)  # valid


def test_folders_vllm_cannot_serve_are_refused_with_the_way_out(tiny_checkpoint, tmp_path):
    q = tmp_path / "q8"
    quantize(str(tiny_checkpoint), str(q), 8)
    with pytest.raises(VllmUnavailable, match="full-precision folder"):
        VllmConfig().check(q)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(VllmUnavailable, match="Hugging Face folder"):
        VllmConfig().check(gguf)


def test_parallel_flags_without_the_vllm_backend_are_an_error(tiny_checkpoint, tmp_path, capsys):
    assert serve("--model", str(tiny_checkpoint), "--tensor-parallel-size", "2", data_dir=tmp_path) == 2
    assert "need --backend vllm" in capsys.readouterr().err
    assert serve("--model", str(tiny_checkpoint), "--backend", "vllm", "--adapter", str(tmp_path),
                 data_dir=tmp_path) == 2
    assert "merge it first" in capsys.readouterr().err
