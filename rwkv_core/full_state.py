"""A run's training state by parameter name, whatever number of processes or ZeRO stage wrote it.

The plain trainer's checkpoint.pt holds whole tensors. DeepSpeed's checkpoint holds, per rank, that
rank's shard of ZeRO's flat fp32 master weights and AdamW moments. `FullState` is what both hold,
by name: every entry of the task's state dict (trained parameters in fp32), each trained
parameter's AdamW moments (exp_avg, exp_avg_sq) and step count, and the trainer's step and RNG
states. It lets a run written by N processes continue on M (`--deepspeed` with another number of
GPUs or another ZeRO stage, or the plain trainer on one device) and a plain run continue under
DeepSpeed:

    read_zero_checkpoint(folder, rng_file)     DeepSpeed's shards of ZeRO-1, 2 or 3, any world size, bf16 or fp32
    read_plain_checkpoint(path, groups)        the plain trainer's checkpoint.pt
    load_into_optimizer(state, task, optimizer)    into the plain trainer
    load_into_engine(state, task, engine)          into a DeepSpeed engine, any world size and stage

Why our own conversion rather than DeepSpeed's universal checkpoint (`ds_to_universal` and
`"load_universal": true`): DeepSpeed's tools unpickle its shards with weights_only=False, so a
crafted run folder would run code on --resume (here every file is read weights-only, as
`train.weights_only_checkpoint_engine` does for DeepSpeed's own loading); a universal checkpoint
loads only into DeepSpeed, never into the plain trainer; and it is a second copy written by an
offline step, where this reads the shards when the run resumes. The shards are memory-mapped and a
whole tensor is assembled only when it is asked for, so a DeepSpeed rank never holds the whole
state at once.

The data order needs nothing here: every rank draws the step's global batch from one generator
(`train.rank_batch`), so the generator's state is one state, and a run resumed with the same
global batch (batch_size x processes) trains on the windows the uninterrupted run would have.
"""
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import CheckpointError, read_torch_file, restoring_from

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclasses.dataclass
class FullState:
    """What a run needs to continue, by parameter name (see the module's docstring).

    weights: every entry of the task's state dict; trained parameters in fp32.
    moments: "exp_avg" and "exp_avg_sq", each {name: tensor} of every trained parameter.
    adam_steps: {name: AdamW's step count} of every trained parameter.
    step, data_rng, torch_rng: the trainer's step and RNG states.
    global_batch: the windows a step of the run that wrote it (batch_size x processes).
    source: the file or folder it was read from (for error messages).

    The mappings may assemble each tensor when it is read (`read_zero_checkpoint`)."""

    weights: Mapping
    moments: dict
    adam_steps: Mapping
    step: int
    data_rng: torch.Tensor
    torch_rng: torch.Tensor
    global_batch: int
    source: Path


class Assembled(Mapping):
    """{name: tensor}, each tensor joined from its pieces only when read: `pieces[name]` is a list of
    1-D views (of memory-mapped shards) that, concatenated and cut to the shape's size, are the tensor."""

    def __init__(self, pieces: dict, shapes: dict):
        self.pieces, self.shapes = pieces, shapes

    def __getitem__(self, name):
        shape = self.shapes[name]
        flat = torch.cat(self.pieces[name]) if len(self.pieces[name]) > 1 else self.pieces[name][0]
        return flat[:math.prod(shape)].reshape(shape).clone()

    def __iter__(self):
        return iter(self.pieces)

    def __len__(self):
        return len(self.pieces)


def deepspeed_data_classes():
    """The plain data classes DeepSpeed's shards hold besides tensors and containers (its loss
    scalers, the ZeRO stage, ZeRO-1/2's fragment addresses): what weights-only loading allows."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def read_deepspeed_file(path):
    """One of DeepSpeed's files, weights-only and memory-mapped (tensors are read when touched)."""
    return read_torch_file(path, allowed_classes=deepspeed_data_classes(), mmap=True)


def zero_layout(folder) -> tuple[int, int]:
    """(world size, ZeRO stage) of the DeepSpeed checkpoint in `folder` (one tag's folder), from its
    model states file (memory-mapped: the weights in it are not read)."""
    folder = Path(folder)
    model_file = next(iter(sorted(folder.glob("*mp_rank_00_model_states.pt"))), None)
    if model_file is None:
        raise CheckpointError(f"{folder}: not a DeepSpeed checkpoint (no mp_rank_00_model_states.pt)")
    states = read_deepspeed_file(model_file)
    with restoring_from(model_file):
        return int(states["dp_world_size"]), int(states["ds_config"].get("zero_optimization", {}).get("stage", 0))


def read_zero_checkpoint(folder, rng_file) -> FullState:
    """The FullState of the DeepSpeed checkpoint in `folder` (one tag's folder, ZeRO stage 1, 2 or 3,
    written by any number of ranks); the step comes from its client state, the RNG states from
    `rng_file` (the trainer's, written beside the shards)."""
    folder = Path(folder)
    world_size, stage = zero_layout(folder)
    if stage not in (1, 2, 3):
        raise CheckpointError(f"{folder}: written with ZeRO stage {stage}; only stages 1, 2 and 3 can be resumed "
                              f"on another number of processes")
    if list(folder.glob("*mp_rank_01_*")):
        raise CheckpointError(f"{folder}: model parallel shards cannot be converted; resume with the DeepSpeed "
                              f"config and number of processes that wrote them")
    optim = [read_deepspeed_file(zero_file(folder, rank, "optim")) for rank in range(world_size)]
    model_file = folder / ("mp_rank_00_model_states.pt" if stage < 3 else "zero_pp_rank_0_mp_rank_00_model_states.pt")
    model_states = read_deepspeed_file(model_file)
    with restoring_from(folder):
        module = model_states["module"]
        param_shapes = {name: tuple(shape) for group in model_states["param_shapes"] for name, shape in group.items()}
        if stage < 3:
            pieces, steps = zero12_pieces(optim, world_size)
        else:
            pieces, steps = zero3_pieces(optim, model_states["param_shapes"], world_size)
        # frozen parameters and buffers are whole in the module's state dict, except that ZeRO-3 keeps
        # empty placeholders there for parameters: their values are its ranks' frozen fragments
        others = {name: [t.flatten()] for name, t in module.items() if name not in param_shapes}
        other_shapes = {name: tuple(t.shape) for name, t in module.items() if name not in param_shapes}
        if stage == 3:
            ranks = [model_states] + [read_deepspeed_file(zero_file(folder, r, "model")) for r in range(1, world_size)]
            for name, shape in model_states["frozen_param_shapes"].items():
                others[name] = [r["frozen_param_fragments"][name].flatten() for r in ranks]
                other_shapes[name] = tuple(shape)
        rng = read_torch_file(rng_file)
        client = {"step": model_states["step"], "batch_size": model_states["train_config"]["batch_size"]}
    every = pieces["fp32"] | others
    for name, shape in (param_shapes | other_shapes).items():
        size = sum(p.numel() for p in every[name])
        if size < math.prod(shape):
            raise CheckpointError(f"{folder}: the shards hold {size} values of {name}, whose shape {list(shape)} "
                                  f"needs {math.prod(shape)}")
    with restoring_from(rng_file):
        return FullState(weights=Assembled(every, param_shapes | other_shapes),
                         moments={key: Assembled(pieces[key], param_shapes) for key in MOMENTS},
                         adam_steps={name: steps[name] for name in param_shapes}, step=int(client["step"]),
                         data_rng=rng["data_rng"], torch_rng=rng["torch_rng"],
                         global_batch=int(client["batch_size"]) * world_size, source=folder)


def zero_file(folder: Path, rank: int, kind: str) -> Path:
    """Rank `rank`'s optimizer ("optim") or ZeRO-3 model ("model") states file; one clear error if missing.
    A bf16 run's optimizer files carry the prefix "bf16_" (same layout)."""
    name = f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"
    for path in (folder / f"bf16_{name}", folder / name) if kind == "optim" else (folder / name,):
        if path.is_file():
            return path
    raise CheckpointError(f"{folder}: {name} is missing: the checkpoint is incomplete")


def zero12_pieces(optim: list, world_size: int):
    """ZeRO-1/2: each rank holds one slice of every parameter group's flat fp32 copy and of the AdamW
    moments beside it; its `param_slice_mappings` say where each parameter's fragment lies in that
    slice. A parameter's fragments, in rank order, are its values in order."""
    pieces = {key: {} for key in ("fp32",) + MOMENTS}
    steps = {}
    for rank in range(world_size):
        state = optim[rank]["optimizer_state_dict"]
        if int(state["partition_count"][0]) != world_size:
            raise CheckpointError(f"ZeRO partitions of {state['partition_count'][0]} ranks in a checkpoint of {world_size}")
        adam = state["base_optimizer_state"]["state"]
        for g, mapping in enumerate(state["param_slice_mappings"]):
            flat = {"fp32": state["single_partition_of_fp32_groups"][g], **{k: adam[g][k] for k in MOMENTS}}
            for name, address in mapping.items():
                for key, tensor in flat.items():
                    pieces[key].setdefault(name, []).append(tensor.narrow(0, address.start, address.numel))
                steps[name] = float(adam[g]["step"])
    return pieces, steps


def zero3_pieces(optim: list, param_shapes: list, world_size: int):
    """ZeRO-3: every parameter is cut into world_size equal parts (the last padded); rank r's flat
    fp32 copy holds part r of each parameter, one after another in the order of `param_shapes`
    (its sub-groups laid end to end), and the AdamW moments beside it have the same layout."""
    pieces = {key: {} for key in ("fp32",) + MOMENTS}
    steps = {}
    shapes = [(name, math.prod(shape)) for group in param_shapes for name, shape in group.items()]
    for rank in range(world_size):
        state = optim[rank]["optimizer_state_dict"]
        adam = state["optimizer_state_dict"]["state"]
        sub_groups = range(len(state["fp32_flat_groups"]))
        flat = {"fp32": torch.cat(list(state["fp32_flat_groups"])),
                **{k: torch.cat([adam[i][k] for i in sub_groups]) for k in MOMENTS}}
        step = {float(adam[i]["step"]) for i in sub_groups}
        if len(step) != 1:
            raise CheckpointError(f"ZeRO-3 sub-groups at different AdamW steps {sorted(step)}")
        offset = 0
        for name, numel in shapes:
            part = -(-numel // world_size)
            for key, tensor in flat.items():
                pieces[key].setdefault(name, []).append(tensor.narrow(0, offset, part))
            steps[name] = next(iter(step))
            offset += part
        if offset != flat["fp32"].numel():
            raise CheckpointError(f"rank {rank}'s ZeRO-3 shard holds {flat['fp32'].numel()} values; its parameters "
                                  f"need {offset}")
    return pieces, steps


def group_names(task, optimizer) -> list[list[str]]:
    """The names of the parameters `optimizer` trains, group by group: the order of the indices of
    its state dict. Taken before DeepSpeed replaces the groups' tensors with its flat copies."""
    name_of = {id(p): name for name, p in task.named_parameters()}
    return [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def read_plain_checkpoint(path, groups) -> FullState:
    """The FullState of the plain trainer's checkpoint.pt; `groups`: the resuming run's `group_names`
    (a run that trains the same parameters names the saved optimizer state's indices alike)."""
    from .train import read_resume_state
    state = read_resume_state(path)
    with restoring_from(path):
        saved = state["optimizer"]
        if [len(g["params"]) for g in saved["param_groups"]] != [len(g) for g in groups]:
            raise CheckpointError(f"{path}: its optimizer groups hold {[len(g['params']) for g in saved['param_groups']]} "
                                  f"parameters, this run's {[len(g) for g in groups]}: another model or train_mode")
        name_of = {index: name for g, names in zip(saved["param_groups"], groups) for index, name in zip(g["params"], names)}
        adam = {name_of[index]: s for index, s in saved["state"].items()}
        return FullState(weights=state["task"], moments={key: {n: s[key] for n, s in adam.items()} for key in MOMENTS},
                         adam_steps={n: float(s["step"]) for n, s in adam.items()}, step=int(state["step"]),
                         data_rng=state["data_rng"], torch_rng=state["torch_rng"],
                         global_batch=int(state["train_config"]["batch_size"]), source=Path(path))


def check_covers(state: FullState, names) -> None:
    """Every trained parameter of the resuming run has weights and moments in `state`."""
    missing = [name for name in names if name not in state.moments["exp_avg"] or name not in state.weights]
    if missing:
        raise CheckpointError(f"{state.source}: has no optimizer state for {missing[0]} ({len(missing)} parameters "
                              f"in all): it was written by another model or train_mode")


def load_into_optimizer(state: FullState, task, optimizer) -> None:
    """Give the plain trainer's `task` and torch `optimizer` the weights and AdamW state of `state`."""
    groups = group_names(task, optimizer)
    check_covers(state, [name for g in groups for name in g])
    with restoring_from(state.source):
        task.load_state_dict(dict(state.weights))
        template = optimizer.state_dict()
        index = {name: i for g, names in zip(template["param_groups"], groups) for i, name in zip(g["params"], names)}
        template["state"] = {i: {"step": torch.tensor(state.adam_steps[name]),
                                 **{key: state.moments[key][name] for key in MOMENTS}} for name, i in index.items()}
        optimizer.load_state_dict(template)   # moves each tensor where its parameter is


def load_into_engine(state: FullState, task, engine) -> None:
    """Give a DeepSpeed engine (ZeRO-1, 2 or 3, this process one of any number of ranks) the weights
    and AdamW state of `state`, through DeepSpeed's per-parameter API (`safe_set_full_*`: each rank
    keeps its own fragment of what it is given). Collective: every rank calls it."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    names = [name for name, p in task.named_parameters() if p.requires_grad]
    check_covers(state, names)
    world = dist.get_world_size()
    if engine.zero_optimization_stage() == 3:
        # DeepSpeed's safe_set_full_* cut a ZeRO-3 parameter in equal parts, and fail on a padded last one
        uneven = [name for name, p in task.named_parameters() if p.requires_grad and p.ds_numel % world]
        if uneven:
            raise CheckpointError(f"{state.source}: cannot go on under ZeRO-3 on {world} processes: {uneven[0]} "
                                  f"({len(uneven)} parameters in all) does not divide in {world} equal parts; resume "
                                  f"on a number of processes that divides its size, or under ZeRO-1 or 2")
    steps = {state.adam_steps[name] for name in names}
    if len(steps) != 1:
        raise CheckpointError(f"{state.source}: its parameters are at different AdamW steps {sorted(steps)[:4]}; "
                              f"DeepSpeed steps them together: resume it without --deepspeed")
    zero = engine.optimizer
    # the flat fp32 copies our AdamW steps: one per group (ZeRO-1/2), one per sub-group (ZeRO-3)
    flats = zero.fp32_partitioned_groups_flat if engine.zero_optimization_stage() == 3 \
        else zero.single_partition_of_fp32_groups
    device = flats[0].device
    with restoring_from(state.source):
        # AdamW makes its state on the first step; make it now, for the values to go into
        for flat in flats:
            zero.optimizer.state[flat] = {"step": torch.tensor(next(iter(steps))),
                                          **{key: torch.zeros_like(flat) for key in MOMENTS}}
        if engine.zero_optimization_stage() < 3:
            # point each parameter's fragment at the new state (ZeRO-3 finds it by position)
            zero._lazy_init_hp_params_optimizer_state()
        for name, p in task.named_parameters():
            weight = state.weights[name]
            # the module's copy (bf16 on a GPU); under ZeRO-3 it is gathered, set, and cut again
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(weight)
            if p.requires_grad:   # ZeRO's fp32 master copy and the moments: this rank keeps its fragment
                safe_set_full_fp32_param(p, weight.to(device, torch.float32))
                for key in MOMENTS:
                    safe_set_full_optimizer_state(p, state.moments[key][name].to(device, torch.float32), key)
        for name, b in task.named_buffers():
            b.copy_(state.weights[name])

