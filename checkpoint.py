"""
A run's checkpoints: model directories any transformers / vLLM user loads like a hub checkpoint,
with the exact training state beside them, written atomically, pruned to the last few.

    out_dir/ckpt-000010/
      config.json, generation_config.json, model*.safetensors     the student, in its compute dtype
      tokenizer*, chat_template.jinja, processor_config.json      its family's standard processor
      train_state/        torch.distributed.checkpoint, written by every rank in parallel (its own
                          shards under FSDP2): the fp32 master weights where they differ from the
                          saved ones (bf16 runs), and AdamW's moments
      trainer.pt          step and the RNG state of every rank
      train_config.json   the run's Config
      manifest.json       size and CRC-32 of each file above (manifest.py), written last

    ckpt = open_run(out_dir, cfg_dict, free, resume, overwrite, rank, defaults)  # locks; fresh or resume?
    step = restore(ckpt, model, master, optimizer, rank, device)
    begin(out_dir, cfg_dict, ckpt, rank)        # after the models loaded: the directory is claimed
    log = MetricsLog(out_dir, step, rank); log.append({"step": step + 1, ...})
    save(out_dir, step, cfg_dict, model, processor, master, optimizer, rank, compute_dtype, keep_last)
    release(out_dir)                            # the lock (it also dies with the process)

A checkpoint is written to ckpt-NNNNNN.tmp, its manifest.json (size and CRC-32 of every file) is
written last, and it is renamed when complete: a killed run never leaves a half checkpoint under a
name `latest` reads, and a resume checks every file against the manifest (a truncated, emptied or
bit-flipped file is found; a checkpoint that fails is renamed ckpt-NNNNNN.corrupt, never deleted,
and the one before it is used). (With several nodes, out_dir must be on a shared
filesystem: every rank writes its part of train_state/ into the same directory.) A run may resume
on another number of ranks: the sharded state is re-cut on load (DCP), the data of a step is the
same global batch.
"""

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

from manifest import verify, write_manifest


# The standard processor of each family: what AutoProcessor, vLLM and evaluation toolkits load.
STANDARD_PROCESSORS = {"qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
                       "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
                       "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_vl_moe": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_5": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
                       "qwen3_5_moe": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor")}


def save_model_dir(model, processor, path, state_dict=None):
    """Write a model directory of the model's own family: weights (safetensors), config, generation
    config, tokenizer, chat template, and the processor under its family's standard class, so
    `AutoModelForImageTextToText` and `AutoProcessor` (with torchvision), vLLM and evaluation
    toolkits load it like a hub checkpoint; `load` reads it everywhere. state_dict: the weights to
    write (e.g. gathered from FSDP2 shards); default the model's own."""
    if isinstance(model, FSDPModule):
        # FSDP2 gives the model a class of its own (FSDP<class>), which transformers takes for custom
        # code and saves under its in-memory names (model.language_model.*). A meta-device twin of
        # the family's own class (no memory) writes the hub's names, as an unsharded save does.
        with torch.device("meta"):
            twin = type(model).__bases__[1]._from_config(model.config)   # (FSDPModule, the family's class)
        twin.generation_config = model.generation_config
        model = twin
    model.save_pretrained(path, state_dict=state_dict)
    processor.save_pretrained(path)
    # Our image-only processor class is this project's (it exists because the stock ones need
    # torchvision for video); the files name the family's class and describe its video processor
    # (the family's defaults for everything but the patch geometry, which images and videos share).
    config_path = os.path.join(path, "processor_config.json")
    with open(config_path) as f:
        config = json.load(f)
    processor_class, video_class = STANDARD_PROCESSORS[model.config.model_type]
    image = config["image_processor"]
    config["processor_class"] = processor_class
    config["video_processor"] = {"video_processor_type": video_class, "processor_class": processor_class,
                                 **{k: image[k] for k in ("patch_size", "temporal_patch_size", "merge_size",
                                                          "image_mean", "image_std")}}
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


def tokenizer_vocab(name):
    """{token: id} of the model at `name` (a local directory or a hub id already in the local cache),
    read from its tokenizer.json without loading anything; None if there is no such file here."""
    path = os.path.join(os.path.expanduser(name), "tokenizer.json")
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache
            path = try_to_load_from_cache(name, "tokenizer.json") if name.count("/") == 1 else None
        except ValueError:                   # not a valid hub id
            path = None
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    with open(path) as f:
        tokenizer = json.load(f)
    vocab = dict(tokenizer.get("model", {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])})
    return vocab


NAME = re.compile(r"ckpt-(\d{6})")      # only these count: not .tmp, not a user's ckpt-000003.bak


def checkpoints(out_dir):
    """Complete checkpoints in out_dir, oldest first."""
    names = sorted(d for d in os.listdir(out_dir) if NAME.fullmatch(d)) if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, d) for d in names]


def latest(out_dir):
    found = checkpoints(out_dir)
    return found[-1] if found else None


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _optimizer_state(model, master, optimizer, with_master):
    # Named tensors: {"master": {name: fp32 weight}, "exp_avg": ..., "exp_avg_sq": ..., "step": ...}.
    # Under FSDP2 these are each rank's shards (DTensors); DCP writes every shard once, in parallel.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    state = {k: {} for k in ("exp_avg", "exp_avg_sq", "step")}
    for name, p in zip(names, master.params):
        if p not in optimizer.state:     # a fresh optimizer (restore): AdamW's state, to be loaded into
            optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
        for k in state:
            state[k][name] = optimizer.state[p][k]
    if with_master:
        state["master"] = dict(zip(names, master.params))
    return state


def save(out_dir, step, cfg_dict, model, processor, master, optimizer, rank, compute_dtype, keep_last=None):
    """Every rank calls this (collectives inside). Returns the checkpoint's path."""
    final = os.path.join(out_dir, f"ckpt-{step:06d}")
    tmp = final + ".tmp"
    # The model directory: full weights gathered on rank 0 (CPU), cast to the compute dtype.
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    rngs = [rng]
    if dist.is_initialized():
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng)
    try:            # a full disk surfaces as a library's error ("unexpected pos 704 vs 598"): say what it is
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            save_model_dir(model, processor, tmp, {k: v.to(compute_dtype) for k, v in weights.items()})
            torch.save({"step": step, "rng": rngs}, os.path.join(tmp, "trainer.pt"))
            with open(os.path.join(tmp, "train_config.json"), "w") as f:
                json.dump(cfg_dict, f, indent=2)
        _barrier()
        # The fp32 master weights are needed where the saved ones were rounded (a bf16 run).
        with_master = compute_dtype != torch.float32
        with warnings.catch_warnings():      # one process: DCP says it assumes so
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(_optimizer_state(model, master, optimizer, with_master),
                     checkpoint_id=os.path.join(tmp, "train_state"), no_dist=not dist.is_initialized())
        _barrier()
        if rank == 0:
            write_manifest(tmp)              # last: a checkpoint with a manifest was written whole
    except (OSError, RuntimeError) as e:
        raise OSError(f"writing checkpoint {tmp} failed: {e} ({space(out_dir)})") from e
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep_last:       # the newest is the one just written and verified: never pruned
            for old in checkpoints(out_dir)[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return final


def space(out_dir):
    # How much room out_dir's filesystem has left, for the message of a failed write.
    free = shutil.disk_usage(out_dir).free
    return f"{free / 2**20:.0f} MiB free on {out_dir}'s filesystem" + (": the disk is full" if free < 2**26 else "")


def restore(ckpt, model, master, optimizer, rank, device):
    """Load train_state/ into the optimizer (and the master weights, if saved) and this rank's RNG;
    the model's weights were loaded from the checkpoint's model directory. Returns the step."""
    try:
        has_master = any(k.startswith("master.") for k in dcp.FileSystemReader(os.path.join(ckpt, "train_state"))
                         .read_metadata().state_dict_metadata)
    except Exception as e:
        raise RuntimeError(f"checkpoint {ckpt}: cannot read train_state/.metadata: {e}") from e
    state = _optimizer_state(model, master, optimizer, has_master)
    try:                                  # verified at open_run; an error here still names the checkpoint
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=os.path.join(ckpt, "train_state"), no_dist=not dist.is_initialized())
        trainer = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"checkpoint {ckpt}: cannot restore its training state: {e}") from e
    master.publish()                      # bf16 model weights = the restored fp32 master, rounded
    if rank < len(trainer["rng"]):       # a rank the saved run did not have keeps its seeded RNG
        rng = trainer["rng"][rank]
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
    return trainer["step"]


# ----------------------------------------------------------------------------------------------
# The run directory: one run per out_dir, one writer at a time, resumed only under the settings
# that define it. Everything here runs before any model loads; nothing is written until `begin`.
def open_run(out_dir, cfg, free, resume, overwrite, rank, defaults=None, retired=None):
    """Decide what this start is; every rank calls it, rank 0 looks and answers for all (an error
    is raised on every rank). Returns the checkpoint to resume from, or None. cfg: the run's
    settings (a dict); free: the names of those that may change on resume (limits, intervals,
    memory budgets); the others define the run and must match the saved ones, a setting the saved
    run lacks counting as its value in `defaults` (a run saved before the setting existed). `retired`:
    name -> (value, replacement) of settings the code no longer has; a saved run that set one to
    anything but that value is refused, naming the replacement.
    resume: "no", "yes" (a checkpoint must exist) or "auto" (resume if a complete checkpoint
    exists, else start afresh in out_dir: the restart loop of preemptible nodes)."""
    if resume != "no" and overwrite:
        raise ValueError("--overwrite starts the run afresh and --resume continues it: give one of them")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir} is a file, not a directory")
    ckpt, error = None, None
    if rank == 0:
        try:
            ckpt = _inspect(out_dir, cfg, free, resume, overwrite, defaults or {}, retired or {})
        except ValueError as e:
            error = e
    if dist.is_initialized():            # rank 0's answer, for every rank
        box = [ckpt, None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        ckpt, message = box
        error = error or (ValueError(message) if message else None)
    if error is not None:
        release(out_dir)
        raise error
    return ckpt


def _inspect(out_dir, cfg, free, resume, overwrite, defaults, retired):
    try:
        os.makedirs(out_dir, exist_ok=True)
        _lock(out_dir)
        _try_writing(out_dir)
    except OSError as e:
        raise ValueError(f"--out-dir {out_dir}: cannot write there: {e.strerror} ({space(out_dir)})") from None
    found = None
    for path in reversed(checkpoints(out_dir)) if resume != "no" else []:
        problem = verify(path)
        if problem is None:
            found = path
            break
        aside = _set_aside(path)
        print(f"checkpoint {path} is corrupt ({problem}): set aside as {aside}; trying the one before it")
    holds_run = bool(checkpoints(out_dir)) or any(os.path.exists(os.path.join(out_dir, f))
                                                  for f in ("metrics.jsonl", "train_config.json"))
    if resume == "yes" and found is None:
        raise ValueError(f"--resume: no complete checkpoint (ckpt-NNNNNN) in {out_dir}; --resume auto starts afresh then")
    if found is None and holds_run:
        if resume == "auto":
            print(f"--resume auto: {out_dir} holds no complete checkpoint: the run starts afresh there "
                  "(its logged steps were never saved)")
        elif not overwrite:
            raise ValueError(f"{out_dir} already holds a run: continue it with --resume, start over in it with "
                             "--overwrite (deletes its checkpoints and metrics), or choose another --out-dir")
    if found is None:
        return None
    # A resume: everything it will read is checked now, before minutes of model loading.
    saved = read_json(os.path.join(found, "train_config.json"))
    if os.path.exists(os.path.join(out_dir, "train_config.json")):
        read_json(os.path.join(out_dir, "train_config.json"))
    if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    differ = [d for k, v in cfg.items() if k not in free for d in _differences(k, saved.get(k, defaults.get(k, v)), v)]
    differ += [f"{k} {saved[k]!r} -> removed ({retired[k][1]})" for k in saved
               if k not in cfg and k in retired and saved[k] != retired[k][0]]
    if differ:
        raise ValueError(f"--resume from {found}: these settings define the run and differ from the saved ones "
                         "(saved -> now): " + "; ".join(differ)
                         + ". Resume with the saved values, or start a new run in another --out-dir")
    changed = [d for k, v in cfg.items() if k in free and k in saved for d in _differences(k, saved[k], v)]
    if changed:
        print("resuming with changed settings (saved -> now): " + "; ".join(changed))
    return found


def _differences(name, saved, now):
    # "lr 0.001 -> 1e-30"; a dict of files (the data's identity) says which file changed.
    if isinstance(saved, dict) and isinstance(now, dict):
        return [f"{name} {key}: {saved.get(key, '<absent>')!r} -> {now.get(key, '<absent>')!r}"
                for key in sorted(saved.keys() | now.keys()) if saved.get(key) != now.get(key)]
    return [f"{name} {saved!r} -> {now!r}"] if saved != now else []


def begin(out_dir, cfg, ckpt, rank):
    """Claim out_dir for this start, once its models have loaded: a start that fails before this
    leaves the directory as it found it. A fresh start (--overwrite, or --resume auto without a
    complete checkpoint) deletes the old run's checkpoints and metrics; corrupt ones set aside stay."""
    if rank == 0:
        if ckpt is None:
            for path in checkpoints(out_dir):
                shutil.rmtree(path)
            if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
                os.remove(os.path.join(out_dir, "metrics.jsonl"))
        with open(os.path.join(out_dir, "train_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    _barrier()


def step_of(ckpt):
    return int(NAME.fullmatch(os.path.basename(ckpt)).group(1))


def _set_aside(path):
    # Renamed, never deleted: the user may want to look at it (or restore it by hand).
    aside, n = path + ".corrupt", 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.corrupt-{n}"
    os.rename(path, aside)
    return aside


def _try_writing(out_dir):
    # A read-only or full out_dir fails here, in seconds, not at the first save an hour in.
    probe = os.path.join(out_dir, ".write-test")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    finally:
        if os.path.exists(probe):
            os.remove(probe)


# One writer per run: an flock on out_dir/.lock, held while the run lives. The kernel drops it when
# the process dies (kill -9 included), so a killed run never leaves a stale lock. The file says who
# holds it. (flock works on local filesystems and NFSv4; check your cluster's shared filesystem.)
_LOCKS = {}


def _lock(out_dir):
    if os.path.abspath(out_dir) in _LOCKS:   # this process holds it already (an earlier start that failed)
        return
    path = os.path.join(out_dir, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ValueError(f"{out_dir} is in use by a running run ({holder}): one run writes to an out dir at a "
                         "time. Wait for it to end, stop it, or choose another --out-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
    f.flush()
    _LOCKS[os.path.abspath(out_dir)] = f


def release(out_dir):
    f = _LOCKS.pop(os.path.abspath(out_dir), None)
    if f is not None:
        f.close()                        # closing the file drops the flock


def read_json(path):
    # A settings file, checked: the error names the file and what is wrong.
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(value).__name__}")
    return value


def read_metrics(path):
    """The records of a metrics.jsonl, checked, and the number of a last line cut short by a crash
    (or None). Any other unreadable line is an error naming file, line and what is wrong."""
    with open(path) as f:
        lines = f.read().split("\n")
    records, cut = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n != len(lines):          # only the very last line, with no newline after it
                raise ValueError(f"{path} line {n} is not JSON: {line[:80]!r}") from None
            cut = n
            continue
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise ValueError(f"{path} line {n}: a record needs an integer \"step\": {line[:80]!r}")
        records.append(record)
    return records, cut


class MetricsLog:
    """metrics.jsonl: one JSON line per step, appended and flushed as each step ends (nothing stays
    open between steps). Opened after a resume has restored its checkpoint: it keeps the lines of
    the steps that checkpoint holds and drops later ones (a killed run logged steps it never saved),
    and drops a last line cut short by a crash, with a warning. Rank 0 writes."""

    def __init__(self, out_dir, resumed_step, rank):
        self.path, self.rank = os.path.join(out_dir, "metrics.jsonl"), rank
        if rank != 0:
            return
        kept = []
        if resumed_step and os.path.exists(self.path):
            records, cut = read_metrics(self.path)
            if cut:
                print(f"warning: {self.path} line {cut} was cut short by a crash; dropped")
            kept = [json.dumps(r) + "\n" for r in records if r["step"] <= resumed_step]
        # Rewritten whole, atomically: a crash now leaves the old file or the new one.
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)

    def append(self, record):
        if self.rank == 0:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
            except OSError as e:
                raise OSError(f"appending to {self.path} failed: {e.strerror} ({space(os.path.dirname(self.path))})") from e
