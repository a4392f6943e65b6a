"""The accelerate config files under configs/: each parses with accelerate's own parser and launcher checks, and the
ones a CPU can run train tiny MAP-IVR models under `accelerate launch --config_file` (README, "Scaling out")."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

from test_train import REPO, map_ivr_args

CONFIGS = REPO / "configs"
# What each shipped file is for: (distributed type, machines, processes, mixed precision).
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1, "no"),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 1, 8, "no"),
    "two_nodes_8gpus_bf16.yaml": (DistributedType.MULTI_GPU, 2, 16, "bf16"),
    "fsdp.yaml": (DistributedType.FSDP, 1, 8, "bf16"),
}
LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch"]
TINY = ("--max_train_steps", "2", "--do_eval", "false", "--save_figures", "false", "--per_device_train_batch_size", "8")


def launch_arguments(config: Path, *overrides: str):
    """What `accelerate launch --config_file config [overrides] train.py` resolves to (accelerate's own checks)."""
    args = launch_command_parser().parse_args(["--config_file", str(config), *overrides, "train.py"])
    return _validate_launch_command(args)[0]


def test_the_configs_folder_ships_exactly_the_documented_files():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    readme = (REPO / "README.md").read_text()
    for name in EXPECTED:
        assert f"configs/{name}" in readme, f"README's 'Scaling out' does not show configs/{name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_parses_with_accelerates_parser(name):
    config = load_config_from_file(str(CONFIGS / name))  # unknown keys or values raise here
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_machines, config.num_processes, config.mixed_precision) == EXPECTED[name]
    args = launch_arguments(CONFIGS / name)
    assert args.num_processes == config.num_processes and args.mixed_precision == config.mixed_precision
    assert args.multi_gpu == (config.distributed_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp == (config.distributed_type == DistributedType.FSDP)


def test_the_fsdp_config_builds_accelerates_plugin_around_fashionberts_layers():
    """accelerate copies unknown fsdp_config keys silently: each must be a launch option; the plugin must build from
    the environment the launcher prepares, and the class it wraps must be a layer of FashionBERT."""
    from xmodal import FashionBertConfig, FashionBertForPreTraining

    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    options = {action.dest for action in launch_command_parser()._actions}
    assert set(config.fsdp_config) <= options, set(config.fsdp_config) - options
    env = prepare_multi_gpu_env(launch_arguments(CONFIGS / "fsdp.yaml"))
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    tiny = FashionBertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                             image_size=16, patch_grid=2, patch_encoder_type="pixels")  # fmt: skip
    layers = {type(module).__name__ for module in FashionBertForPreTraining(tiny).modules()}
    assert set(plugin.transformer_cls_names_to_wrap) <= layers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config: str, output_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [*LAUNCHER, "--config_file", str(CONFIGS / config), *overrides, str(REPO / "train.py"), *map_ivr_args(output_dir, *TINY)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, overrides, environment",
    [
        ("single_gpu.yaml", (), "DistributedType.NO"),
        ("multi_gpu.yaml", ("--num_processes", "2"), "DistributedType.MULTI_CPU"),  # gloo: no GPU here
    ],
)
def test_cpu_runnable_configs_train(config, overrides, environment, tmp_path):
    output = finished(launch(config, tmp_path / "out", *overrides))
    assert environment in output
    assert [row["step"] for row in json.loads((tmp_path / "out" / "train_history.json").read_text())] == [1, 2]


@pytest.mark.slow
def test_the_two_node_config_trains_with_two_machines_simulated_on_this_one(tmp_path):
    """The two-node bf16 config, one process per "node" (two launches with --machine_rank 0 and 1 on 127.0.0.1)."""
    port = str(free_port())
    overrides = ("--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port)
    nodes = [launch("two_nodes_8gpus_bf16.yaml", tmp_path / "out", *overrides, "--machine_rank", str(rank)) for rank in (0, 1)]
    outputs = [finished(node) for node in nodes]
    assert all("Num processes: 2" in output and "Mixed precision type: bf16" in output for output in outputs)
    assert "Process index: 1" in outputs[1]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()
