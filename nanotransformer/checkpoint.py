"""Checkpoints: a directory holding the weights (+ optimiser moments) in safetensors and a JSON
sidecar with everything else needed to resume bit for bit.

    out/
      checkpoint.json                  model kind, config, tokenizer, step, optimiser state, RNG
                                       state, history
      model-0000400-3fa2c1.safetensors params by name ("h.0.attn.c_attn.w", ...) and the AdamW
                                       moments ("optim.m.<name>", "optim.v.<name>")

Any model kind (`MODEL_KINDS`: "gpt", "bert", "seq2seq", "classifier"; `ADAPTER_KINDS`: "lora",
adapters whose config names the base checkpoint they load over): a model is a
`params.ParamStore` with a `kind`, a `config_dict()` and a `from_config(dict, dtype, backend)`,
and that is all this module needs to know of it.

    save_checkpoint("out", model, tokenizer=tok, step=400, optimizer=opt, rng=rng, meta={...})
    ckpt = load_checkpoint("out")       # -> Checkpoint(model, tokenizer, step, optimizer, rng_state, meta)

Crash safety: the JSON is the commit record. A save writes a *new* weights file (its name
carries the step and a random tag) to a temporary name, fsyncs and renames it, then writes the
JSON the same way; only after the JSON has been replaced are older weights files deleted. A
crash at any point leaves either the old pair or the new pair, never a mix, and a failed run
never overwrites the checkpoint it started from. The weights file records its step and tag in
its safetensors metadata, and loading checks they match the JSON.

Loading validates everything and raises one `ValueError` naming the file and what is wrong:
missing files, JSON that does not parse, a sidecar field of the wrong type (naming the field),
a weights file whose sha256 is not the one the sidecar recorded at save time (a flipped bit),
a truncated or corrupted safetensors file, a missing or unexpected tensor, a tensor of another
dtype than the checkpoint's or of a shape the config does not give, non-finite weights or
optimiser moments.

Safetensors, never pickle: loading a checkpoint cannot run code.

Dimension legend: tensors keep their model shapes, e.g. wte (V, C), h.{i}.attn.c_attn.w (C, 3C);
N is the length of the flat parameter buffer that `model.views` slices them from.

Does not: keep several checkpoints (only the latest), or save the data set itself (only its
source name, so `--resume` can find it again).
"""
import base64
import contextlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "nanotransformer-checkpoint"
VERSION = 1
SIDECAR = "checkpoint.json"
MODEL_KINDS = ("gpt", "bert", "seq2seq", "classifier")
ADAPTER_KINDS = ("lora",)  # saved as adapters over a base checkpoint that their config names (lora.py)


def model_class(kind):
    """The model class of checkpoint kind `kind` (imported here: the models import nothing of this)."""
    if kind == "gpt":
        from .model import GPT as cls
    elif kind == "bert":
        from .bert import BERT as cls
    elif kind == "seq2seq":
        from .encoder_decoder import Seq2Seq as cls
    elif kind == "classifier":
        from .finetuning import GPTClassifier as cls
    elif kind == "lora":  # adapters only; the config names the base checkpoint (lora.py)
        from .lora import LoRA as cls
    else:
        raise ValueError(f"kind: expected one of {MODEL_KINDS + ADAPTER_KINDS}, got {kind!r}")
    return cls


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns. optimizer: {"t", "m", "v", "hparams"} with m, v flat arrays
    in the model's buffer layout, or None; rng_state: a np.random bit-generator state dict or None."""

    model: object
    tokenizer: object = None
    step: int = 0
    optimizer: dict = None
    rng_state: dict = None
    meta: dict = field(default_factory=dict)
    path: Path = None

    def make_rng(self):
        """A np.random.Generator restored to the saved state (a fresh PCG64 if none was saved)."""
        rng = np.random.default_rng()
        if self.rng_state is not None:
            rng.bit_generator.state = self.rng_state
        return rng


# ----------------------------------------------------------------------------- helpers


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tokenizer_to_json(tokenizer):
    """Embed a tokenizer's own saved file in the sidecar (text if it is UTF-8, else base64); a
    `tasks.Vocab` as its token list."""
    if tokenizer is None:
        return None
    from .tasks import Vocab

    if isinstance(tokenizer, Vocab):
        return {"encoding": "vocab", "data": tokenizer.to_dict()}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "tokenizer"
        tokenizer.save(p)
        raw = p.read_bytes()
    try:
        return {"encoding": "utf-8", "data": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(raw).decode("ascii")}


def _tokenizer_from_json(obj, where):
    if obj is None:
        return None
    from .tokenizer import load_tokenizer

    try:
        if obj["encoding"] == "vocab":
            from .tasks import Vocab

            return Vocab.from_dict(obj["data"])
        raw = obj["data"].encode("utf-8") if obj["encoding"] == "utf-8" else base64.b64decode(obj["data"])
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "tokenizer"
            p.write_bytes(raw)
            return load_tokenizer(p)
    except (KeyError, TypeError, ValueError, UnicodeError) as e:
        raise ValueError(f"{where}: the embedded tokenizer cannot be loaded ({e})") from None


def refuse_quantized(model, what):
    """ValueError when `model` is a `quantize.quantize_model` copy, which cannot be `what`."""
    if getattr(model, "quantized", None):
        raise ValueError(f"model: a quantized model ({model.quantized}) is inference-only and cannot be {what}")


# ----------------------------------------------------------------------------- the directory lock

LOCK = ".lock"
_HELD = {}  # resolved directory -> [open lock file, depth]: this process's locks (re-entrant)


@contextlib.contextmanager
def locked(path):
    """Hold the write lock of checkpoint directory `path` (created if missing) for the block.

    One writer per directory: a run in another process fails at once with a ValueError naming
    the directory and the holder's pid, instead of interleaving saves (two runs on one --out once
    left a sidecar pointing at a file the other had deleted). The lock is an advisory `flock` on
    `path/.lock`, so it dies with its process: no stale lock after a kill. Re-entrant within a
    process (a command locks, then `Trainer.fit` and each save lock again). Where flock does not
    exist (Windows) nothing is locked."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: expected a checkpoint directory, got an existing file")
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        try:
            import fcntl
        except ImportError:  # no flock here
            fcntl = None
        f = open(path / LOCK, "a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise ValueError(f"{path}: another run is writing to this directory (pid {holder}); wait for it to "
                                 "finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        _HELD[key] = [f, 1]
    try:
        yield path
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            _HELD.pop(key)[0].close()  # closing the file releases the flock


# ----------------------------------------------------------------------------- save


def _remove_orphans(path):
    """Temporary files of saves that were killed before they finished (never a committed file)."""
    for p in (list(path.glob(".model-*.safetensors.tmp")) + list(path.glob(f".{SIDECAR}.*.tmp"))
              + list(path.glob(".loss.png.tmp"))):
        with contextlib.suppress(OSError):
            p.unlink()


def save_checkpoint(path, model, *, tokenizer=None, step=0, optimizer=None, rng=None, meta=None):
    """Write model (+ optimiser moments, tokenizer, RNG state, meta) to directory `path`, atomically,
    holding the directory's lock (`locked`: re-entrant, so a locked run's saves just pass).

    optimizer: an `optim.AdamW` over the model (moments `m[0]`, `v[0]` laid out like the buffer),
    or None. rng: the np.random.Generator whose state must be restored to resume exactly.
    meta: any JSON-able dict (train config, history, data source). Returns the sidecar's path.
    """
    refuse_quantized(model, "saved (quantize after loading: quantize.quantize_model(load_checkpoint(dir).model))")
    with locked(path):
        return _save(Path(path), model, tokenizer, step, optimizer, rng, meta)


def _save(path, model, tokenizer, step, optimizer, rng, meta):
    from safetensors.numpy import save_file

    tag = secrets.token_hex(3)
    weights_name = f"model-{int(step):07d}-{tag}.safetensors"
    tensors = {name: np.ascontiguousarray(view) for name, view in model.p.items()}
    opt_json = None
    if optimizer is not None:
        for prefix, flat in (("optim.m.", optimizer.m[0]), ("optim.v.", optimizer.v[0])):
            for name, view in model.views(flat).items():
                tensors[prefix + name] = np.ascontiguousarray(view)
        opt_json = {"t": int(optimizer.t), "hparams": optimizer.hparams()}
    sidecar = {
        "format": FORMAT,
        "version": VERSION,
        "weights": weights_name,
        "tag": tag,
        "step": int(step),
        "dtype": str(model.dtype),
        "kind": model.kind,
        "config": model.config_dict(),
        "tokenizer": _tokenizer_to_json(tokenizer),
        "optimizer": opt_json,
        "rng_state": None if rng is None else rng.bit_generator.state,
        "meta": meta or {},
    }
    json.dumps(sidecar)  # fail (e.g. on a non-JSON-able meta) before touching disk

    tmp_w = path / f".{weights_name}.tmp"
    tmp_j = path / f".{SIDECAR}.{tag}.tmp"
    _remove_orphans(path)
    try:
        from .data import file_sha256

        save_file(tensors, str(tmp_w), metadata={"format": FORMAT, "step": str(int(step)), "tag": tag})
        with open(tmp_w, "rb+") as f:
            os.fsync(f.fileno())
        sidecar["weights_sha256"] = file_sha256(tmp_w)  # verified on load: a flipped bit is an error
        text = json.dumps(sidecar, indent=1)
        os.replace(tmp_w, path / weights_name)
        with open(tmp_j, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_j, path / SIDECAR)  # the commit point
        _fsync_dir(path)
    except BaseException as e:
        for p in (tmp_w, tmp_j):
            with contextlib.suppress(OSError):
                p.unlink()
        # the new weights file is garbage unless the sidecar now points to it
        if (path / weights_name).exists() and _current_weights(path) != weights_name:
            with contextlib.suppress(OSError):
                (path / weights_name).unlink()
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        # disk full, read-only, ... (safetensors raises its own SafetensorError): one error naming
        # the directory; the checkpoint already there is untouched, since the JSON was not replaced
        kept = "the checkpoint already there is kept" if _current_weights(path) else "nothing was saved"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        err = OSError(f"{path}: could not save the checkpoint ({reason}); {kept}")
        err.errno = getattr(e, "errno", None)
        raise err from None
    for old in path.glob("model-*.safetensors"):  # weights no sidecar refers to any more
        if old.name != weights_name:
            old.unlink()
    return path / SIDECAR


def _current_weights(path):
    try:
        return json.loads((Path(path) / SIDECAR).read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        return None


def has_checkpoint(path):
    """True if directory `path` holds a checkpoint sidecar."""
    return (Path(path) / SIDECAR).is_file()


# ----------------------------------------------------------------------------- load


def read_sidecar(path):
    """The validated JSON sidecar of checkpoint directory `path` (a dict)."""
    path = Path(path)
    if path.is_file() and path.name == SIDECAR:
        path = path.parent
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise ValueError(f"{path}: expected a checkpoint directory (holding {SIDECAR}), got a file")
    sc = path / SIDECAR
    if not sc.is_file():
        raise ValueError(f"{path}: not a checkpoint directory (no {SIDECAR} in it)")
    try:
        obj = json.loads(sc.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{sc}: corrupted (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{sc}: corrupted or truncated JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{sc}: not a nanotransformer checkpoint (expected \"format\": \"{FORMAT}\")")
    if obj.get("version") != VERSION:
        raise ValueError(f"{sc}: expected checkpoint version {VERSION}, got {obj.get('version')!r}")
    for key in ("weights", "tag", "step", "dtype", "config"):
        if key not in obj:
            raise ValueError(f"{sc}: missing the {key!r} entry")
    if not isinstance(obj["config"], dict):
        raise ValueError(f"{sc}: the 'config' entry: expected a JSON object, got {type(obj['config']).__name__}")
    _check_fields(obj, sc)
    obj["_dir"] = str(path)
    return obj


def _check_fields(obj, sc):
    """The sidecar's other entries have the types loading relies on: one error naming the field."""
    def bad(field, expected, got):
        raise ValueError(f"{sc}: the {field!r} entry: expected {expected}, got {json.dumps(got)[:60]}")

    for key in ("weights", "tag", "dtype"):
        if not isinstance(obj[key], str) or not obj[key]:
            bad(key, "a non-empty string", obj[key])
    if not isinstance(obj["step"], int) or isinstance(obj["step"], bool) or obj["step"] < 0:
        bad("step", "a non-negative integer", obj["step"])
    if "weights_sha256" in obj and not (isinstance(obj["weights_sha256"], str) and len(obj["weights_sha256"]) == 64):
        bad("weights_sha256", "a sha256 hex digest", obj["weights_sha256"])
    if obj.get("kind") is not None and not isinstance(obj["kind"], str):
        bad("kind", "a string", obj["kind"])
    if obj.get("rng_state") is not None:
        st = obj["rng_state"]
        if not (isinstance(st, dict) and isinstance(st.get("bit_generator"), str) and isinstance(st.get("state"), dict)):
            bad("rng_state", 'null or a numpy bit-generator state {"bit_generator": ..., "state": {...}}', st)
    opt = obj.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict) or not isinstance(opt.get("t"), int) or isinstance(opt.get("t"), bool) or opt["t"] < 0:
            bad("optimizer", 'null or {"t": steps taken (an integer >= 0), "hparams": {...}}', opt)
        if not isinstance(opt.get("hparams", {}), dict):
            bad("optimizer.hparams", "an object", opt.get("hparams"))
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        bad("meta", "an object", meta)
    hist = meta.get("history")
    if hist is not None:
        if not isinstance(hist, dict) or not all(isinstance(hist.get(k, []), list) for k in ("step", "loss", "lr", "eval")):
            bad("meta.history", 'an object of lists {"step", "loss", "lr", "eval"}', hist)
        if not all(isinstance(e, dict) and {"step", "train", "val"} <= set(e) for e in hist.get("eval", [])):
            bad("meta.history.eval", 'a list of {"step", "train", "val"} objects', hist.get("eval"))
    if meta.get("data") is not None and not isinstance(meta["data"], dict):
        bad("meta.data", "an object", meta["data"])


def load_checkpoint(path, *, dtype=None, backend=None):
    """Load a checkpoint directory -> `Checkpoint`. dtype: the model's dtype (default: as saved);
    backend: override the saved config's backend (e.g. "numpy")."""
    sc = read_sidecar(path)
    path = Path(sc["_dir"])
    where = path / SIDECAR
    kind = sc.get("kind", "gpt")  # checkpoints from before other kinds existed are GPTs
    try:
        cls = model_class(kind)
        model = cls.from_config(sc["config"], dtype=dtype or sc["dtype"], backend=backend)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid config ({e}) for a {kind!r} model") from None

    wfile = path / sc["weights"]
    if not wfile.is_file():
        raise ValueError(f"{wfile}: missing (the weights file {SIDECAR} refers to)")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if "weights_sha256" in sc:  # checkpoints from before the checksum existed have none
        from .data import file_sha256

        digest = file_sha256(wfile)
        if digest != sc["weights_sha256"]:
            raise ValueError(f"{wfile}: sha256 is {digest}, but {SIDECAR} recorded {sc['weights_sha256']}: the weights "
                             f"file is corrupted or was replaced")
    try:
        tensors = load_file(str(wfile))
        with safe_open(str(wfile), framework="numpy") as f:
            file_meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers / short files
        raise ValueError(f"{wfile}: not a readable safetensors file, truncated or corrupted ({e})") from None
    if file_meta.get("tag") != sc["tag"] or file_meta.get("step") != str(sc["step"]):
        raise ValueError(
            f"{wfile}: belongs to step {file_meta.get('step')} (tag {file_meta.get('tag')}), but {SIDECAR} "
            f"says step {sc['step']} (tag {sc['tag']}); the pair is mixed up"
        )
    src = f"{wfile} (config in {SIDECAR})"
    expected = set(model.p) | {p + n for p in ("optim.m.", "optim.v.") for n in model.p}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ValueError(f"{src}: unexpected tensor {extra[0]!r} ({len(extra)} in all), which a {kind!r} model of this "
                         f"config does not have")
    for name, t in tensors.items():
        if t.dtype != np.dtype(sc["dtype"]):
            raise ValueError(f"{src}: tensor {name!r} has dtype {t.dtype}, expected {sc['dtype']} (the checkpoint's dtype)")
    model.load_state_dict(tensors, source=src)
    for name in model.p:
        if not np.all(np.isfinite(tensors[name])):
            raise ValueError(f"{wfile}: tensor {name!r} contains NaN or inf values")

    optimizer = None
    if sc.get("optimizer") is not None:
        m, v = np.zeros_like(model.params), np.zeros_like(model.params)
        for prefix, flat in (("optim.m.", m), ("optim.v.", v)):
            views = model.views(flat)
            model_like = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
            for name, shape in model.specs:
                if name not in model_like:
                    raise ValueError(f"{src}: missing tensor {prefix + name!r} (shape {shape})")
                if tuple(model_like[name].shape) != shape:
                    raise ValueError(
                        f"{src}: tensor {prefix + name!r} expected shape {shape}, got {tuple(model_like[name].shape)}"
                    )
                if not np.all(np.isfinite(model_like[name])):
                    raise ValueError(f"{wfile}: optimiser tensor {prefix + name!r} contains NaN or inf values")
                views[name][...] = model_like[name]
        optimizer = {"t": int(sc["optimizer"]["t"]), "m": m, "v": v, "hparams": sc["optimizer"].get("hparams", {})}

    tokenizer = _tokenizer_from_json(sc.get("tokenizer"), where)
    V = getattr(getattr(model, "config", None), "vocab_size", None)
    if tokenizer is not None and V is not None and tokenizer.vocab_size > V:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary only {V}: "
                         f"they do not belong together")
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        step=int(sc["step"]),
        optimizer=optimizer,
        rng_state=sc.get("rng_state"),
        meta=sc.get("meta", {}),
        path=path,
    )
