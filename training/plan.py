"""What a `charlstm train` command means for its run folder: a new run, or the same run continued.

The same command continues a run. A preemptible job's scheduler reruns the command it was given, so a folder
that already holds a run goes on from its last resume point when the command's settings are the run's own:
each flag given must equal what config.json stores (`--epochs` may raise the total) and `--text`, when given,
must be the same file (by sha256). `--resume` says "continue" explicitly and lets the settings be left out. A
flag that differs is refused, naming the flag, the stored value and the new one; `--force` starts a new run in
the folder instead, replacing the old one. Nothing in a folder is touched before these checks pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from charlstm.runtime import text as text_io
from charlstm.runtime.files import check_writable, sha256_file
from charlstm.training.corpus import count_batches
from charlstm.training import finetune, run
from charlstm.training.config import ConfigError, ModelConfig, TrainConfig, from_dict

SHAPE = ("vocab_size", "embedding_dim", "units", "layers")  # what fine-tuning takes from the source run


@dataclass
class Plan:
    run_dir: Path
    text_path: Path
    mc_options: dict  # ModelConfig fields but vocab_size, which the corpus decides for a new run
    tc: TrainConfig
    continuing: bool  # the folder's run goes on (else a new run is written there)
    replace: bool = False  # a new run replaces the folder's old one (--force)
    vocab: list[str] | None = None  # a continued run's (or a fine-tune's source's) vocabulary
    mc: ModelConfig | None = None  # a continued run's stored shape
    init_from: Path | None = None  # fine-tuning: the source run folder
    init_checkpoint: str = "best"
    fine_tuned: bool = False  # continuing a fine-tune: without a resume point it starts again from init_from


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _differences(given: dict, stored_model: dict, stored_train: dict) -> list[str]:
    out = []
    for key, value in given.items():
        if key == "epochs":
            continue
        stored = stored_model[key] if key in stored_model else stored_train.get(key)
        if stored != value and not (isinstance(stored, (int, float)) and isinstance(value, (int, float))
                                    and not isinstance(value, bool) and float(stored) == float(value)):
            out.append(f"{flag(key)} {value!r} differs from the run's {stored!r}")
    return out


def plan(text_path, run_dir, mc_options: dict | None, tc: TrainConfig | None, given: dict | None = None,
         resume: bool = False, force: bool = False, epochs: int | None = None, init_from=None,
         init_checkpoint: str = "best", writer: bool = True) -> Plan:
    """Decide and check; raises ConfigError with one line naming what to type instead. `writer` False: a process
    of a group other than process 0, which writes nothing (training/distributed.py), not even a probe."""
    run_dir = Path(run_dir)
    has_run = (run_dir / "config.json").exists()
    if has_run and not (force and not resume):
        cfg = run.read_config(run_dir)
        if init_from is not None and not _same_source(cfg, Path(init_from), init_checkpoint):
            raise ConfigError(f"{run_dir} already holds a run that was not fine-tuned from {init_from} "
                              f"(--checkpoint {init_checkpoint}): choose another --out for this fine-tune, or pass "
                              "--force to replace that run", "init_from")
        stored_train = cfg["train"]
        if given is None:  # a library call with whole configs: all of them must match
            given = {**(mc_options or {}), **({k: v for k, v in dataclasses.asdict(tc).items()} if tc else {})}
        differ = _differences({k: v for k, v in given.items() if k != "vocab_size"}, cfg["model"], stored_train)
        if differ:
            raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(differ)}): drop the flag to "
                              f"continue that run, or pass --force to start a new run there (the old one is "
                              f"replaced), or choose another --out", "out")
        mc, stored = from_dict(ModelConfig, cfg["model"]), from_dict(TrainConfig, stored_train)
        total = epochs if epochs is not None else given.get("epochs", stored.epochs)
        if text_path is not None:
            path = Path(text_path)
            if not path.is_file() or sha256_file(path) != cfg["corpus"]["sha256"]:
                raise ConfigError(f"--text {path} is not the text the run in {run_dir} trained on (its sha256 "
                                  "differs from config.json): pass the original file, or --force to start a new run "
                                  "there", "text")
        else:
            path = run.corpus_path(run_dir, cfg)
            if path is None:
                raise ConfigError(f"the run's corpus ({cfg['corpus'].get('name')}) is not where {run_dir / 'config.json'}"
                                  " records it: pass it with --text", "text")
        tc = dataclasses.replace(stored, epochs=total)
        tc.validate()
        if writer:
            check_writable(run_dir)
        source, source_checkpoint = _recorded_source(cfg, init_from, init_checkpoint)
        return Plan(run_dir, path, dataclasses.asdict(mc), tc, continuing=True, vocab=run.read_vocab(run_dir), mc=mc,
                    init_from=source, init_checkpoint=source_checkpoint, fine_tuned=bool(cfg.get("init_from")))
    if resume:
        raise ConfigError(f"nothing to resume: {run_dir} holds no run (no config.json): drop --resume to start one",
                          "resume")
    if text_path is None:
        raise ConfigError("--text is required: the UTF-8 file to train on", "text")
    tc = tc or TrainConfig()
    if epochs is not None:
        tc = dataclasses.replace(tc, epochs=epochs)
    tc.validate()
    if tc.stateful and tc.strategy != "none":
        raise ConfigError("stateful streams cannot be combined with --strategy mirrored: add --stateless, or drop "
                          "--strategy", "strategy")
    options = dict(mc_options or {})
    if init_from is not None:
        options = _fine_tune_shape(Path(init_from), options, given or {})
    check_corpus(Path(text_path), tc)
    if writer:
        check_writable(run_dir)  # a read-only folder or a full disk fails now, not after the first epoch
    return Plan(run_dir, Path(text_path), options, tc, continuing=False, replace=has_run,
                init_from=None if init_from is None else Path(init_from), init_checkpoint=init_checkpoint)


def _same_source(cfg: dict, source: Path, checkpoint: str) -> bool:
    """The run was fine-tuned from these very weights (by sha256), so the same command continues it."""
    recorded = (cfg.get("init_from") or {}).get("checkpoint_sha256")
    return bool(recorded) and sha256_file(finetune.source(source, checkpoint)[2]) == recorded


def _recorded_source(cfg: dict, init_from, checkpoint: str) -> tuple[Path | None, str]:
    """A continued fine-tune's source, in case it has no resume point yet and must start again from it: the one
    given (already checked to be the same weights), else the one config.json records, if still there."""
    record = cfg.get("init_from")
    if not record:
        return None, checkpoint
    if init_from is not None:
        return Path(init_from), checkpoint
    path = record.get("path")
    return (Path(path), record.get("checkpoint_arg", "best")) if path and Path(path).exists() else (None, checkpoint)


def _fine_tune_shape(source: Path, options: dict, given: dict) -> dict:
    """A fine-tune takes its model's shape from the source run; a shape flag that differs is refused."""
    cfg = finetune.source_config(source)
    stored = cfg["model"]
    differ = [f"{flag(k)} {given[k]!r} differs from the source run's {stored[k]!r}" for k in SHAPE
              if k in given and given[k] != stored[k]]
    if differ:
        raise ConfigError(f"--init-from {source}: {'; '.join(differ)}: a fine-tuned model has its source's shape; "
                          "drop the flag", "init_from")
    return {**options, **{k: stored[k] for k in SHAPE if k != "vocab_size"}}


def check_corpus(path: Path, tc: TrainConfig) -> None:
    """The text reads as UTF-8 and both splits make at least one batch: told before Keras is imported."""
    text = text_io.read_text(path, keep_newlines=tc.keep_newlines)
    train, val = text_io.split(text, tc.val_fraction)
    count_batches(len(train), tc.batch_size, tc.seq_length, tc.stateful, True, "training")
    count_batches(len(val), tc.batch_size, tc.seq_length, tc.stateful, False, "validation")
