"""Turn a model into a Hugging Face safetensors directory once, and reuse it.

vLLM and the `hf` backend both load the same directory, so both serve identical
weights. A GGUF file is dequantised by transformers (about 20 s for SmolLM2 and
55 s for Gemma 3 270M here) and saved in float32; the result is cached under
`$THINKROUTE_CACHE/models/` (default `~/.cache/thinkroute/models/`), keyed by the
GGUF file's size and a hash of its head and tail. A file lock makes two workers
that start together wait for one conversion instead of corrupting or duplicating
it; the directory appears atomically (written to a temp dir, then renamed).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from workers.models import ModelSpec

FORMAT_VERSION = "1"


def cache_root() -> Path:
    return Path(os.environ.get("THINKROUTE_CACHE", Path.home() / ".cache" / "thinkroute"))


def _file_key(path: Path) -> str:
    """Cheap content key: size + sha256 of the first and last MiB (GGUF files are 100+ MB)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


#: Files whose content defines a checkpoint's weights (and how they are read).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_fingerprint(directory: str | Path) -> str:
    """Stable content key of the weights in a model directory (16 hex digits).

    For a directory `materialize` wrote, it is the key already in its name (the GGUF file's
    content key and this converter's FORMAT_VERSION), so no weight file is read. Otherwise
    it is derived from config.json and each weight file's `_file_key` (size plus the first
    and last MiB). The prefix cache puts it into every KV block's namespace: weights that
    differ never share cached KV.
    """
    d = Path(directory)
    name = d.name
    prefix, sep, key = name.rpartition("-")
    if sep and len(key) == 16 and all(c in "0123456789abcdef" for c in key) and prefix.endswith(f"-v{FORMAT_VERSION}") \
            and d.parent == cache_root() / "models":
        return key
    h = hashlib.sha256(b"thinkroute-weights/1")
    cfg = d / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES) if d.is_dir() else []
    if d.is_file():
        files = [d]
    for f in files:
        h.update(f.name.encode() + b"\0" + _file_key(f).encode())
    return h.hexdigest()[:16]


def materialize(spec: ModelSpec, progress: Callable[[str], None] | None = None) -> Path:
    """Return a directory with config.json, model.safetensors and the tokenizer for `spec`.

    Blocks while another process converts the same model. Safe to call concurrently.
    """
    say = progress or (lambda msg: None)
    directory, gguf_file = spec.locate()
    if gguf_file is None:
        return directory
    gguf_path = directory / gguf_file
    safe_name = spec.name if "/" not in spec.name else Path(gguf_file).stem
    target = cache_root() / "models" / f"{safe_name}-v{FORMAT_VERSION}-{_file_key(gguf_path)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process finished while we waited
            say(f"{spec.name}: using the converted model another process just wrote")
            return target
        say(f"{spec.name}: converting {gguf_file} to safetensors once (cached in {target})")
        start = time.monotonic()
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _convert_gguf(directory, gguf_file, tmp)
        os.replace(tmp, target)
        say(f"{spec.name}: converted in {time.monotonic() - start:.0f} s")
    return target


def _convert_gguf(directory: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # NOTE: the dequantised weights are plain float32 tensors; drop the GGUF quantizer so
    # save_pretrained writes an ordinary (serializable, vLLM-loadable) checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
