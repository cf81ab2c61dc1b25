"""The loaded models, shared read-only by every session: a checkpoint is loaded once, on first use."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from ..checkpoints import REQUIRED, ann_counterpart_names, checkpoints_dir
from ..pipeline import SpikingDiffusionPipeline, list_checkpoints, load_pipeline
from .validation import shown

DEFAULT_CHECKPOINT = "fmnist-sdm-t4"
MAX_PARAMETERS = 20_000_000         # a checkpoint the app serves (the shipped ones: 0.2-2.1M)


def default_device() -> str:
    """``$SDM_DEVICE`` if set, else "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return os.environ.get("SDM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str) -> str:
    """``device`` if torch can run on it here; a ValueError naming the fix otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"SDM_DEVICE={device!r} is not a torch device ({e}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"SDM_DEVICE={device!r}, but torch sees no CUDA device here: unset it or use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"SDM_DEVICE={device!r}: only cpu and cuda are supported")
    return str(dev)


class ModelRegistry:
    """Pipelines by checkpoint name, loaded once and shared read-only by all sessions.

    A checkpoint that fails to load does not break the others: ``get`` raises a ValueError that says what is
    wrong, ``summary`` returns the message. A failure is remembered with the size and modification time of the
    folder's files: asking again costs nothing until one of them changes (a checkpoint that was being written is
    tried again once it is complete). Loaded ones are never reloaded. A folder that is a symbolic link to a place
    outside the checkpoints folder is not served (it could expose files the server did not mean to share).

    Args:
        root: the checkpoints folder (None: ``$SDM_CHECKPOINTS`` or ``checkpoints/``).
        max_parameters: refuse a model larger than this before building it.
        device: where the denoisers run (None: ``default_device()``, i.e. ``$SDM_DEVICE``, else CUDA when
            available, else the CPU).
    """

    def __init__(self, root: str | Path | None = None, max_parameters: int = MAX_PARAMETERS,
                 device: str | None = None):
        self.root = Path(root) if root is not None else None
        self.max_parameters = max_parameters
        self.device = check_device(device if device is not None else default_device())
        self._pipes: dict[str, SpikingDiffusionPipeline] = {}
        self._failures: dict[str, tuple[tuple, str]] = {}      # name -> (files' signature, message)
        self._signatures: dict[str, tuple] = {}                # name -> its files' signature when it was loaded
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        """The checkpoints folder (for the operator's messages; users' messages name checkpoints only)."""
        return str(self.root if self.root is not None else checkpoints_dir())

    def names(self) -> list[str]:
        """Checkpoint folders available now (sorted), without links that lead outside the checkpoints folder."""
        root = Path(self.where).resolve()
        return [n for n in list_checkpoints(self.root) if (root / n).resolve().parent == root]

    def _signature(self, name: str) -> tuple:
        folder = Path(self.where) / name
        sig = []
        for f in REQUIRED:
            try:
                st = (folder / f).stat()
                sig.append((f, st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append((f, None, None))
        return tuple(sig)

    def default_name(self) -> str | None:
        """fmnist-sdm-t4 when present, else the first spiking checkpoint that loads, else the first that loads."""
        names = self.names()
        if DEFAULT_CHECKPOINT in names and self._loads(DEFAULT_CHECKPOINT):
            return DEFAULT_CHECKPOINT
        first = None
        for n in names:
            if self._loads(n):
                if self._pipes[n].config.spiking:
                    return n
                first = first or n
        return first

    def _loads(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except ValueError:
            return False

    def check_name(self, name) -> str:
        """``name`` stripped, if it is a listed (or loaded) checkpoint; else a ValueError listing the available ones."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"checkpoint must be a name, got {shown(name)}; available: {self._available()}")
        name = name.strip()
        if name not in self._pipes and name not in self.names():
            raise ValueError(f"checkpoint {shown(name)} not found; available: {self._available()}")
        return name

    def _available(self) -> str:
        names = self.names()
        return ", ".join(names) if names else "(none: train one with python -m sdm.train)"

    def get(self, name) -> SpikingDiffusionPipeline:
        """The loaded pipeline. Raises ValueError for unknown names and for checkpoints that do not load."""
        name = self.check_name(name)
        pipe = self._pipes.get(name)
        if pipe is not None:
            return pipe
        with self._lock:
            if name in self._pipes:
                return self._pipes[name]
            signature = self._signature(name)
            failed = self._failures.get(name)
            if failed is not None and failed[0] == signature:
                raise ValueError(failed[1])
            try:
                pipe = load_pipeline(name, self.root, max_parameters=self.max_parameters, device=self.device)
            except Exception as e:  # noqa: BLE001 - any failure is reported, the app stays up
                reason = str(e).replace(str(Path(self.where).resolve()) + "/", "").replace(self.where + "/", "")
                msg = f"checkpoint {name!r} cannot be loaded: {reason}"
                self._failures[name] = (signature, msg)
                raise ValueError(msg) from None
            self._failures.pop(name, None)
            self._signatures[name] = signature
            self._pipes[name] = pipe
            return pipe

    def signature(self, name) -> tuple:
        """The files' ((file, size, mtime_ns), ...) of a checkpoint as they were when it was loaded (loading it
        first if need be): what ``sdm.explorer.results.ResultKey`` keys its shared results by."""
        name = self.check_name(name)
        self.get(name)
        return self._signatures[name]

    def summary(self, name) -> str:
        """The card's one-line summary, or the reason the checkpoint cannot be used."""
        try:
            return self.get(name).summary()
        except ValueError as e:
            return f"⚠ {e}"

    def ann_counterpart(self, name: str) -> str | None:
        """The ANN checkpoint to compare a spiking one with (``sdm.checkpoints.ann_counterpart_names``), if listed."""
        pipe = self.get(name)
        names = self.names()
        return next((n for n in ann_counterpart_names(name, pipe.card) if n != name and n in names), None)
