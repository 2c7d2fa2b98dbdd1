"""Where a `--model` string points: a local folder as given, or the snapshot folder of a Hugging Face hub id (the
local cache first, then the network)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from engine.errors import ModelNotFound

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What a snapshot download fetches: configs, weights in safetensors or Meta's export, tokenizer files.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "state_dict.bin", "compression_state_dict.bin"]


def resolve(spec: str, what: str = "model") -> Path:
    """A local folder as given, or the snapshot folder of a hub id (cache first, then the network)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"--model {spec!r} is a file; give the folder that holds config.json and the weights")
        return path
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1) or not HUB_ID.match(spec):
        raise ModelNotFound(f"no {what} folder at {str(path)!r}: check the path, or give a hub id such as facebook/musicgen-small")
    return _from_hub(spec, what)


def _from_hub(repo_id: str, what: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as cached_err:  # not in the cache: try the network
        log.info("%s %s not in the local cache (%s); trying the hub", what, repo_id, type(cached_err).__name__)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:
        raise ModelNotFound(
            f"{what} {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be "
            f"downloaded ({type(err).__name__}). On a connected machine run `hf download {repo_id}` (or "
            f"`huggingface-cli download {repo_id}`) and copy the cache here, or pass --model /path/to/folder"
        ) from None
