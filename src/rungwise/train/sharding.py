"""Sharded fine-tuning (FSDP2 through Accelerate): what the trainer does differently when the
weights are split over the processes.

Selected the Accelerate way: ``accelerate launch --use_fsdp --fsdp_version 2 ...`` or a config
file with ``distributed_type: FSDP`` and ``fsdp_version: 2``. ``Accelerator.prepare`` then shards
the model with ``torch.distributed.fsdp.fully_shard``: every parameter becomes a DTensor of which
each process holds a slice. The training loop is the DDP loop (FSDP2 averages gradients over the
processes as DDP does); what changes is everything that reads or writes whole weights:

- resume checkpoints and the best validated weights are sharded: every process writes and reads
  its own slices with ``torch.distributed.checkpoint`` (DCP), through the state-dict API that
  maps them to the parameter names (:func:`save_sharded`, :func:`load_sharded`);
- the artifact is consolidated: the full trainable state (the adapters, or the whole model) is
  gathered onto the main process, on CPU, and saved with ``save_pretrained`` like a one-process
  run's (:func:`full_state`);
- every process must run the same number of forward passes (each pass all-gathers weights).

Accelerate (1.15) turns FSDP on only with an accelerator device; on a machine without one it runs
the processes as plain gloo data parallelism and ignores the FSDP settings. :func:`configure` then
switches the accelerator to FSDP over gloo, so that the same ``prepare`` path runs on CPU (how
the tests run it). DeepSpeed, Megatron-LM and FSDP version 1 stop with a clear error
(:func:`refuse_unsupported`, :func:`configure`).

Example:
    >>> refuse_unsupported()  # doctest: +SKIP
    >>> acc = accelerate.Accelerator(cpu=not torch.cuda.is_available())  # doctest: +SKIP
    >>> sharded = configure(acc)  # doctest: +SKIP
    >>> save_sharded(Path("ckpt/sharded"), prepared_model, optimizer)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rungwise._deps import require
from rungwise.errors import MissingDependency, Unsupported

#: What ``accelerate launch`` sets for the distributed setups that are not plain DDP.
_ENV_FLAGS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM": "MEGATRON_LM"}


def requested() -> str | None:
    """The sharded setup ``accelerate launch`` asked for (FSDP, DEEPSPEED, MEGATRON_LM), or None.

    Read from the environment because Accelerate ignores these settings without an accelerator
    device; the trainer must not then silently train another way.

    Example:
        >>> requested()  # under `accelerate launch --use_fsdp ...`  # doctest: +SKIP
        'FSDP'
    """
    for var, name in _ENV_FLAGS.items():
        if os.environ.get(var, "false").lower() == "true":
            return name
    return None


def refuse_unsupported() -> None:
    """Stop with a clear error when ``accelerate launch`` asks for DeepSpeed or Megatron-LM
    (before the accelerator is built: without ``deepspeed`` installed Accelerate fails obscurely).

    Example:
        >>> refuse_unsupported()  # plain runs, DDP and FSDP pass  # doctest: +SKIP
    """
    wanted = requested()
    if wanted == "DEEPSPEED":
        installed = _installed("deepspeed")
        raise (Unsupported if installed else MissingDependency)(
            "the accelerate config asks for DeepSpeed; rungwise's trainer shards with FSDP2 only"
            + ("" if installed else " (and the package 'deepspeed' is not installed)"),
            hint="launch with `accelerate launch --use_fsdp --fsdp_version 2 ...` (ZeRO-3-like sharding of weights, "
            "gradients and optimizer state), or export the data (rungwise export --format sharegpt) for a trainer "
            "built on DeepSpeed (docs/multi-gpu.md)",
        )
    if wanted == "MEGATRON_LM":
        raise Unsupported(
            "the accelerate config asks for Megatron-LM; rungwise's trainer runs DDP or FSDP2",
            hint="launch with `accelerate launch --multi_gpu` (DDP) or `--use_fsdp --fsdp_version 2` (FSDP2)",
        )


def configure(acc: Any) -> bool:
    """Whether the model of ``acc``'s run will be sharded (FSDP2); on a machine without an
    accelerator device, switches a multi-process FSDP launch to FSDP over gloo.

    Raises :class:`Unsupported` for FSDP version 1.

    Example:
        >>> configure(accelerate.Accelerator(cpu=True))  # a plain run or DDP  # doctest: +SKIP
        False
    """
    if requested() != "FSDP":
        return False
    plugin = getattr(acc.state, "fsdp_plugin", None)
    if acc.device.type == "cpu":
        # No accelerator device: Accelerate made this a gloo (MULTI_CPU) run. Build the plugin from
        # the same launcher settings (afresh: prepare() fits its wrap policy to one model) and make
        # the run FSDP, so that prepare() shards the model.
        accelerate = require("accelerate")
        plugin = accelerate.utils.FullyShardedDataParallelPlugin()
        if plugin.fsdp_version == 2 and acc.num_processes > 1:
            acc.state.fsdp_plugin = plugin
            acc.state.distributed_type = accelerate.utils.DistributedType.FSDP
    if plugin.fsdp_version != 2:
        raise Unsupported(
            f"the accelerate config asks for FSDP version {plugin.fsdp_version}; rungwise's trainer shards with FSDP2",
            hint="add `--fsdp_version 2` to `accelerate launch` (or `fsdp_version: 2` under fsdp_config in the config file)",
        )
    return bool(acc.is_fsdp2)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _options(**kw: bool) -> Any:
    return require("torch.distributed.checkpoint.state_dict").StateDictOptions(**kw)


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside Accelerate's wrapper (the state-dict API wants the real one)."""
    return getattr(optimizer, "optimizer", optimizer)


def _trainable_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """This process's slices of the trainable weights (and the optimizer state), by parameter name."""
    sd = require("torch.distributed.checkpoint.state_dict")
    state: dict[str, Any] = {"model": sd.get_model_state_dict(model, options=_options(ignore_frozen_params=True))}
    if optimizer is not None:
        state["optimizer"] = sd.get_optimizer_state_dict(model, _inner(optimizer))
    return state


def save_sharded(directory: Path, model: Any, optimizer: Any = None) -> None:
    """Write the trainable weights (and the optimizer state) of the sharded ``model``: every
    process writes its own slices into ``directory`` (DCP's format). Call it on every process.

    Example:
        >>> save_sharded(out / "checkpoint.tmp" / "sharded", run.ddp_mod, run.optimizer)  # doctest: +SKIP
    """
    dcp = require("torch.distributed.checkpoint")
    dcp.save(_trainable_state(model, optimizer), checkpoint_id=str(directory))


def load_sharded(directory: Path, model: Any, optimizer: Any = None) -> None:
    """Read back what :func:`save_sharded` wrote into the sharded ``model`` (and ``optimizer``):
    each process reads its own slices. Call it on every process, with the same number of
    processes as the save.

    Example:
        >>> load_sharded(out / "checkpoint" / "sharded", run.ddp_mod, run.optimizer)  # doctest: +SKIP
    """
    dcp = require("torch.distributed.checkpoint")
    sd = require("torch.distributed.checkpoint.state_dict")
    # The current state gives the layout (names, shapes, shards) that DCP fills in place.
    state = _trainable_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    # strict=False: the frozen base is not in the checkpoint (it is the base model's own weights).
    sd.set_model_state_dict(model, state["model"], options=_options(strict=False))
    if optimizer is not None:
        sd.set_optimizer_state_dict(model, _inner(optimizer), state["optimizer"])


def full_state(model: Any, *, trainable_only: bool, prefix: str = "") -> dict[str, Any]:
    """The whole (unsharded) weights of the sharded ``model`` on CPU, on the main process; an
    empty dict on the others. ``prefix`` is cut from the names (the wrapper's attribute name).
    Call it on every process (it gathers).

    Example:
        >>> sd = full_state(run.ddp_mod, trainable_only=True, prefix="model.")  # doctest: +SKIP
        >>> peft_model.save_pretrained("adapter", state_dict=sd)  # doctest: +SKIP
    """
    sd = require("torch.distributed.checkpoint.state_dict")
    opts = _options(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    # Tied weights (input and output embeddings) come back as separate copies under each name;
    # keep the first name only, as save_pretrained of an unsharded model does.
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    full = sd.get_model_state_dict(model, options=opts)
    return {k.removeprefix(prefix): v for k, v in full.items() if k not in tied}
