"""Vision-tower outputs cached once per (model, image list): the tower is frozen and by far the most
expensive part on a CPU, and every quantization / pruning configuration reuses the same features.

Stored as float32 memmaps under ``<cache>/features/<key>/`` with a ``done`` flag per image, so an interrupted
encoding resumes and only requested images are encoded. Several processes may share a cache (two commands at
once): encoding holds an exclusive lock on ``encode.lock`` in the directory and first re-reads what another
process finished; the flags are replaced atomically, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

import numpy as np
import torch
from rich.progress import Progress

from ..paths import cache_dir
from ..tasks.base import Task


class FeatureCache:
    def __init__(self, adapter, task: Task, batch_size: int = 16):
        self.adapter, self.task, self.batch_size = adapter, task, batch_size
        self.dir = cache_dir() / "features" / f"{adapter.key}--{task.cache_key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._meta_path = self.dir / "meta.json"
        self._feats = self._cls = None
        if self._meta_path.exists():
            meta = json.loads(self._meta_path.read_text())
            self._open(tuple(meta["shape"]))

    @contextlib.contextmanager
    def _encoding_lock(self):
        """One encoder at a time per directory, across processes (released when the file closes)."""
        with open(self.dir / "encode.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _reload(self) -> None:
        """The memmaps and flags as another process may have left them."""
        if self._meta_path.exists():
            self._open(tuple(json.loads(self._meta_path.read_text())["shape"]))

    def _save_done(self) -> None:
        tmp = self.dir / f"done.{os.getpid()}.npy"
        np.save(tmp, self._done)
        os.replace(tmp, self.dir / "done.npy")  # atomic: readers see the old flags or the new ones

    def _open(self, shape: tuple[int, int]) -> None:
        n = self.task.image_count
        mode = "r+" if (self.dir / "features.f32").exists() else "w+"
        self._feats = np.memmap(self.dir / "features.f32", np.float32, mode, shape=(n, *shape))
        self._cls = np.memmap(self.dir / "cls_attn.f32", np.float32, mode, shape=(n, shape[0]))
        done_path = self.dir / "done.npy"
        self._done = np.load(done_path) if done_path.exists() else np.zeros(n, bool)

    def _pixels(self, indices) -> torch.Tensor:
        images = [self.task.load_image(i) for i in indices]
        return self.adapter.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def ensure(self, indices, progress: Progress | None = None) -> None:
        """Encode the images in ``indices`` that are not cached yet."""
        def missing():
            asked = sorted(set(int(i) for i in indices))
            return asked if self._feats is None else [i for i in asked if not self._done[i]]

        if not missing():
            return
        with self._encoding_lock():
            self._reload()  # another process may have encoded them meanwhile
            wanted = missing()
            if wanted:
                self._encode(wanted, progress)

    def _encode(self, wanted: list[int], progress: Progress | None) -> None:
        own = progress is None
        progress = progress or Progress(transient=True)
        if own:
            progress.start()
        bar = progress.add_task(f"encoding {self.task.cache_key} images", total=len(wanted))
        try:
            for start in range(0, len(wanted), self.batch_size):
                chunk = wanted[start : start + self.batch_size]
                feats, cls = self.adapter.encode(self._pixels(chunk))
                if self._feats is None:
                    self._open(tuple(feats.shape[1:]))
                self._feats[chunk] = feats.numpy()
                self._cls[chunk] = cls.numpy()
                self._feats.flush(); self._cls.flush()
                self._done[chunk] = True
                self._save_done()
                if not self._meta_path.exists():
                    self._meta_path.write_text(json.dumps({"shape": list(feats.shape[1:])}))
                progress.advance(bar, len(chunk))
        finally:
            progress.remove_task(bar)
            if own:
                progress.stop()

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        self.ensure(indices)
        idx = np.asarray(indices)
        return torch.from_numpy(np.array(self._feats[idx])), torch.from_numpy(np.array(self._cls[idx]))
