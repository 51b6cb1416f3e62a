"""configs/accelerate/*.yaml: read by accelerate's own loader and launch validation (accelerate 1.16), no GPU.

Each file is loaded with ``load_config_from_file`` (it refuses unknown top-level keys), run through
``accelerate launch``'s argument validation and environment preparation (what ``accelerate launch --config_file``
does before it starts any process; unknown keys inside fsdp_config/deepspeed_config would be set silently there,
so they are checked against the launcher's options), and the environment is turned into accelerate's FSDP /
DeepSpeed plugin, whose fields are checked. Nothing is launched: DDP is tested on 2 CPU ranks in
tests/test_distributed.py and tests/test_rl_distributed.py; FSDP and DeepSpeed need GPUs (the `gpu` tests below
skip without 2 CUDA devices, DeepSpeed also without the deepspeed package). docs/distributed.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
NAMES = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


def _launch_env(name: str) -> tuple[object, object, dict[str, str]]:
    """(loaded config, validated launch args, launcher environment) for `accelerate launch --config_file`."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / f"{name}.yaml"), "--main_process_port", "0", "-m", "alignlab.cli", "train"]
    )
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return defaults, args, {k: v for k, v in env.items() if os.environ.get(k) != v}


def _plugin(factory, env: dict[str, str], prefixes: tuple[str, ...]):
    """``factory()`` with the launcher's variables of ``prefixes`` set; the process environment is restored whole
    afterwards (an ACCELERATE_USE_* left behind would change every later Accelerator of this test session)."""
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith(prefixes)})
        return factory()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _recipe_max_grad_norms() -> set[float]:
    from alignlab.recipes.rl import RLConfig
    from alignlab.recipes.rm import RMConfig
    from alignlab.recipes.train import TrainConfig

    return {c.__dataclass_fields__["max_grad_norm"].default for c in (TrainConfig, RMConfig, RLConfig)}


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import ComputeEnvironment

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert cfg.num_machines == 1 and cfg.machine_rank == 0 and cfg.num_processes >= 2
    assert cfg.mixed_precision == "no"  # precision is the recipe's `dtype`
    assert cfg.use_cpu is False and cfg.gpu_ids == "all"
    options = {a.dest for a in launch_command_parser()._actions}
    for key in cfg.fsdp_config:
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in options, key
    for key in cfg.deepspeed_config:
        assert key in options, key


def test_ddp():
    from accelerate.utils import DistributedType

    cfg, args, env = _launch_env("ddp")
    assert cfg.distributed_type == DistributedType.MULTI_GPU
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert args.num_processes == 2 and args.mixed_precision == "no"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert not any(k.startswith(("FSDP_", "ACCELERATE_USE_")) for k in env)


def test_fsdp_full_shard_transformer_wrap_full_state_dict():
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    cfg, args, env = _launch_env("fsdp")
    assert cfg.distributed_type == DistributedType.FSDP and args.use_fsdp
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    plugin = _plugin(FullyShardedDataParallelPlugin, env, ("FSDP_",))
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's full shard
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    # gathered on rank 0, saved there: what accelerate reads back with torch.load(weights_only=True)
    assert plugin.state_dict_config.rank0_only and plugin.state_dict_config.offload_to_cpu
    assert not plugin.activation_checkpointing and not plugin.cpu_ram_efficient_loading


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed(stage):
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    cfg, args, env = _launch_env(f"deepspeed_zero{stage}")
    assert cfg.distributed_type == DistributedType.DEEPSPEED and args.use_deepspeed
    assert cfg.deepspeed_config["zero_stage"] == stage
    assert cfg.deepspeed_config["gradient_clipping"] in _recipe_max_grad_norms()  # == every recipe's default
    plugin = _plugin(DeepSpeedPlugin, env, ("ACCELERATE_DEEPSPEED_", "ACCELERATE_GRADIENT_"))
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds["gradient_clipping"] == 1.0 and ds["gradient_accumulation_steps"] == 1
    # not in the inline config: accelerate derives it from a prepared dataloader, which the recipes do not pass
    # (a known blocker, docs/distributed.md)
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    if stage == 3:
        assert not plugin.zero3_init_flag
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_recipes_share_one_max_grad_norm_default():
    """The DeepSpeed configs hard-code gradient_clipping; it must equal the recipes' max_grad_norm default."""
    assert _recipe_max_grad_norms() == {1.0}


# ------------------------------------------------------------------------------------------------ GPU launches
def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _has_deepspeed() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.timeout(1200)  # the launch's own limit is 900 s
@pytest.mark.slow
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize(
    "name",
    [
        "ddp",
        "fsdp",
        pytest.param(
            "deepspeed_zero2",
            marks=[
                pytest.mark.skipif(not _has_deepspeed(), reason="deepspeed is not installed"),
                pytest.mark.xfail(reason="known blocker: no dataloader in prepare() (docs/distributed.md)"),
            ],
        ),
        pytest.param(
            "deepspeed_zero3",
            marks=[
                pytest.mark.skipif(not _has_deepspeed(), reason="deepspeed is not installed"),
                pytest.mark.xfail(reason="known blocker: no dataloader in prepare() (docs/distributed.md)"),
            ],
        ),
    ],
)
def test_train_launches_on_two_gpus(tmp_path, name):
    """`alignlab train` (LoRA DPO, 2 steps) on 2 GPUs with each config: it finishes and says 2 processes."""
    from launch import free_port, write_pairs
    from tiny_models import save_tiny

    model = save_tiny(tmp_path / "tiny", seed=5)
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(CONFIGS / f"{name}.yaml")]
    cmd += ["--num_processes", "2", "--main_process_port", str(free_port()), "-m", "alignlab.cli", "train"]
    cmd += [f"model={model}", f"data={data}", f"output_dir={tmp_path / 'run'}", "max_steps=2", "report_to=none"]
    cmd += ["per_device_batch_size=2", "max_length=128", "max_prompt_length=64", "lora_r=4", "lora_alpha=8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", ALIGNLAB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cp = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-4000:]
    assert "2 process(es)" in out, out[-4000:]
    assert (tmp_path / "run" / "metrics.jsonl").exists()
