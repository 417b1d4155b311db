"""The review queue as data: crops a bundle routed to review (and, if asked, a sample of every
route) kept as PNG files beside ``queue.csv``, a manifest with an empty label column.

People label the queue with ``pitguard data review QUEUE --out DIR`` (a contact sheet and a CSV
whose decision column they fill), then ``--relabel`` turns their decisions into a manifest that
``pitguard train`` and ``pitguard calibrate --data`` read. The line's hard crops flow back.
"""

from __future__ import annotations

import csv
import itertools
import random
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pitguard.core.errors import PitguardError
from pitguard.runtime.policy import ROUTES

QUEUE_CSV = "queue.csv"
CROPS = "crops"
COLUMNS = ("path", "label", "split", "group", "route", "p_pit", "source", "time")


def is_queue(path: str | Path) -> bool:
    return (Path(path) / QUEUE_CSV).is_file()


def parse_routes(spec: str) -> tuple[str, ...]:
    routes = tuple(r.strip() for r in spec.split(",") if r.strip())
    bad = [r for r in routes if r not in ROUTES]
    if not routes or bad:
        raise PitguardError(
            f"--queue-routes {spec!r}: choose from {', '.join(ROUTES)} (comma-separated)"
        )
    return routes


class ReviewQueue:
    """Keeps the crops of ``routes``, plus a random ``sample`` share of all others."""

    def __init__(
        self, root: str | Path, routes: tuple[str, ...] = ("maybe",), sample: float = 0.0, seed=0
    ):
        if not 0.0 <= sample <= 1.0:
            raise PitguardError(f"--queue-sample {sample}: give a share between 0 and 1")
        self.root = Path(root)
        self.routes = tuple(routes)
        self.sample = sample
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        if self.root.exists() and not self.root.is_dir():
            raise PitguardError(f"--queue {root}: is a file; give a folder")
        (self.root / CROPS).mkdir(parents=True, exist_ok=True)
        self.csv = self.root / QUEUE_CSV
        if not self.csv.exists():
            with self.csv.open("w", newline="") as fh:
                csv.writer(fh).writerow(COLUMNS)
        self.kept = 0

    def offer(self, crop: np.ndarray, source: str, route: str, p_pit: float) -> bool:
        """Keep one (3, H, W) or (H, W, 3) uint8 crop if its route or the sample says so."""
        with self._lock:
            if route not in self.routes and not (self.sample and self._rng.random() < self.sample):
                return False
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids):06d}-{route}.png"
            image = crop.transpose(1, 2, 0) if crop.shape[0] == 3 else crop
            path = self.root / CROPS / name
            Image.fromarray(np.ascontiguousarray(image)).save(path)
            with self.csv.open("a", newline="") as fh:
                csv.writer(fh).writerow(
                    [
                        f"{CROPS}/{name}",
                        "",
                        "",
                        "",
                        route,
                        f"{p_pit:.6f}",
                        source,
                        time.strftime("%Y-%m-%dT%H:%M:%S"),
                    ]
                )
            self.kept += 1
            return True
