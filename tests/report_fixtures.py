"""Helpers for the report tests: hand-made runs and a headless Chromium page check.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: messages
are JSON terminated by a NUL byte on fds 3 and 4), so no websocket or Playwright package is
needed and the page is loaded exactly as a user opens it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tune_hw import results

LR_SPACE = {"train.lr": {"loguniform": [1e-4, 1.0]},
            "train.batch_size": {"choice": [16, 64, 256]}}
SIZES = {"train": 2000, "val": 500, "test": 500}


def study_dict(name: str = "lr_batch", space: dict | None = None, **extra: Any) -> dict:
    """A resolved study.yaml as the search writes it."""
    return {"name": name, "description": f"hand-made {name} run", "dataset": {"name": "toy"},
            "model": {"name": "mlp", "width": 16, "depth": 2, "norm": "none"},
            "train": {"epochs": 4, "lr": 0.01, "batch_size": 64, "seed": 0},
            "space": LR_SPACE if space is None else space,
            "search": {"algorithm": "optuna", "num_samples": 8, "metric": "val_acc",
                       "mode": "max"},
            "scheduler": {"name": "asha"}, "resources": {"cpu": 1, "gpu": 0},
            "data_sizes": SIZES, "run_name": "r1", **extra}


def curve(peak: float, epochs: int, batch_size: int, gap: float = 0.03,
          test_shift: float = -0.01, layers: int = 0, diverge_at: int | None = None
          ) -> list[dict[str, Any]]:
    """Reported rows of one trial: accuracy rising towards `peak`, train `gap` above val."""
    rows = []
    for e in range(1, epochs + 1):
        val = peak * (1 - 0.5 ** e)
        row = {"epoch": e, "steps": math.ceil(SIZES["train"] / batch_size),
               "train_loss": 2.3 * (1 - val), "train_acc": min(1.0, val + gap),
               "val_loss": 2.3 * (1 - val) + 0.05, "val_acc": val,
               "test_loss": 2.3 * (1 - val) + 0.06, "test_acc": max(0.0, val + test_shift),
               "lr": 0.01, "epoch_s": 1.0, "samples_per_s": 2000.0,
               "step_loss_std": 0.5 / math.sqrt(batch_size), "diverged": False,
               "node_id": "n1", "gpu_ids": "", "seed": 0, "num_params": 1000}
        if layers:
            row["grad_layers"] = [f"layers.{i}" for i in range(layers)]
            row["grad_norms"] = [0.5 ** (layers - i) for i in range(layers)]
        if diverge_at == e:
            row.update(diverged=True, train_loss=1e9, val_loss=1e9, test_loss=1e9,
                       train_acc=0.0, val_acc=0.0, test_acc=0.0, step_loss_std=math.nan)
            rows.append(row)
            break
        rows.append(row)
    return rows


def lr_batch_records(n: int = 8, seed: int = 0) -> list[results.TrialRecord]:
    """`n` trials over lr × batch size with one diverged, one failed and one running trial."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, 0))
        bs = int(rng.choice([16, 64, 256]))
        peak = float(0.9 - 0.15 * abs(math.log10(lr) + 2) - 0.0002 * bs + rng.normal(0, 0.02))
        config = {"train.lr": lr, "train.batch_size": bs, "train.epochs": 4,
                  "model.name": "mlp", "dataset.name": "toy"}
        kwargs: dict[str, Any] = {}
        rows = curve(peak, 4, bs, gap=float(rng.uniform(0, 0.12)),
                     test_shift=float(rng.normal(-0.01, 0.02)))
        if i == 1:
            rows = curve(peak, 4, bs, diverge_at=2)
        elif i == 2:
            rows, kwargs = rows[:1], {"error": "RuntimeError: worker died"}
        elif i == n - 1:
            rows, kwargs = rows[:2], {"ended": False}
        records.append(results.TrialRecord(f"t{i:02d}", config, rows, **kwargs))
    return records


def write_lr_batch_run(run_dir: Path, n: int = 8) -> results.Run:
    return results.write_run(run_dir, lr_batch_records(n), study_dict())


DEEP_VARIANTS = [{"residual": False, "norm": "none"}, {"residual": True, "norm": "none"},
                 {"residual": True, "norm": "batch"}]


def write_deep_run(run_dir: Path) -> results.Run:
    """A `deep`-like run: the study's whole-`model` variants × depth, with gradient norms."""
    space = {"model": {"grid": DEEP_VARIANTS}, "model.depth": {"grid": [4, 8]}}
    return results.write_run(run_dir, _deep_records(), study_dict("deep", space))


def _deep_records() -> list[results.TrialRecord]:
    records = []
    for i, (variant, depth) in enumerate((v, d) for v in DEEP_VARIANTS for d in (4, 8)):
        residual, norm = variant["residual"], variant["norm"]
        peak = 0.6 + 0.1 * residual + 0.1 * (norm == "batch") - 0.02 * depth / 4
        rows = curve(peak, 3, 64, layers=depth + 1)
        if not residual:  # plain deep nets: the input side gets a vanishing share
            for row in rows:
                row["grad_norms"] = [g * 10 ** (-(depth + 1 - k) / 2)
                                     for k, g in enumerate(row["grad_norms"])]
        config = {"model.name": "mlp", "model.width": 16, "model.depth": depth,
                  "model.residual": residual, "model.norm": norm, "train.epochs": 3,
                  "train.batch_size": 64, "train.lr": 0.05}
        records.append(results.TrialRecord(f"d{i:02d}", config, rows))
    return records


DEEP_CLAIMS = [
    {"name": "The plain net's first-layer gradient vanishes", "compare": "grad_ratio",
     "group": {"model.residual": False}, "below": -2},
    {"name": "Residual + BatchNorm beats the plain net", "compare": "best_val_acc",
     "higher": {"model.residual": True, "model.norm": "batch"},
     "lower": {"model.residual": False}},
    {"name": "The plain net beats residual + BatchNorm", "compare": "best_val_acc",
     "higher": {"model.residual": False},
     "lower": {"model.residual": True, "model.norm": "batch"}},
    {"name": "Depth 8 changes nothing", "compare": "best_val_acc",
     "same": [{"model.depth": 4}, {"model.depth": 8}], "within": 0.5},
]


def write_repeated_deep_run(run_dir: Path, repeats: int = 3) -> results.Run:
    """The `deep`-like run with `repeats` seeds per config (each seed a little off the
    config's curve) and the study's claims in study.yaml."""
    records = []
    for record in (r for r in _deep_records()):
        for rep in range(repeats):
            rows = [{**row, "val_acc": row["val_acc"] + 0.004 * (rep - 1), "seed": rep}
                    for row in record.rows]
            config = {**record.config, "train.seed": 0, results.REPEAT_KEY: rep}
            records.append(results.TrialRecord(f"{record.trial_id}r{rep}", config, rows))
    space = {"model": {"grid": DEEP_VARIANTS}, "model.depth": {"grid": [4, 8]}}
    study = study_dict("deep", space, claims=DEEP_CLAIMS)
    study["train"]["track_grads"] = True
    return results.write_run(run_dir, records, study)


# ---------------------------------------------------------------------------- Chromium

def chromium() -> str | None:
    """Path of a Chromium binary, or None (the browser test then skips and says why)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Page:
    """What the browser saw: images and whether each loaded, errors, section ids, text."""

    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    text: str = ""


PAGE_PROBE = """JSON.stringify({
  images: [...document.images].map(i => ({src: i.src.slice(0, 40), alt: i.alt,
                                          ok: i.complete && i.naturalWidth > 0})),
  sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
  text: document.body.innerText})"""


class DevTools:
    """A headless Chromium with one page, spoken to over --remote-debugging-pipe."""

    def __init__(self, binary: str, width: int = 1200, height: int = 900):
        to_browser_r, self._to_browser_w = os.pipe()
        self._from_browser_r, from_browser_w = os.pipe()
        # the child's ends must become exactly fds 3 and 4; park them on free fds above 9
        # first so the dup2 calls in the child never overwrite one another
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r), os.close(from_browser_w)
        self._profile = tempfile.mkdtemp(prefix="tune_hw_chromium_")

        def wire_fds() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", f"--user-data-dir={self._profile}",
             f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
            close_fds=False, preexec_fn=wire_fds, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_r), os.close(child_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser_w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, limit: int = 10_000) -> None:
        for _ in range(limit):
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(self._read())
        raise RuntimeError(f"Chromium never sent {event}")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser_w), os.close(self._from_browser_r)
        shutil.rmtree(self._profile, ignore_errors=True)


def open_page(html_file: Path, screenshot: Path, binary: str) -> Page:
    """Load `html_file` as a user would, screenshot the whole page, report what it saw."""
    browser = DevTools(binary)
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target,
                               flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session)
        browser.call("Page.navigate", session, url=html_file.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        probe = browser.call("Runtime.evaluate", session, expression=PAGE_PROBE,
                             returnByValue=True)
        shot = browser.call("Page.captureScreenshot", session, format="png",
                            captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        seen = json.loads(probe["result"]["value"])
        return Page(seen["images"], _errors(browser.events), seen["sections"], seen["text"])
    finally:
        browser.close()


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads (a broken image logs one)."""
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                              for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return out


def write_variant_run(run_dir: Path, study: str, variants: list[dict], epochs: int,
                      peaks: list[int]) -> results.Run:
    """A whole-`model` grid (the `epochs` and `transfer` studies): trial i peaks at epoch
    peaks[i] and then slides, so its best epoch comes before its last."""
    records = []
    for i, (variant, peak_epoch) in enumerate(zip(variants, peaks, strict=True)):
        rows = curve(0.5 + 0.1 * i, epochs, 32)
        for row in rows:
            if row["epoch"] > peak_epoch:
                row["val_acc"] = rows[peak_epoch - 1]["val_acc"] - 0.01 * (
                    row["epoch"] - peak_epoch)
        config = {**{f"model.{k}": v for k, v in variant.items()}, "train.epochs": epochs,
                  "train.batch_size": 32, "train.lr": 0.003}
        records.append(results.TrialRecord(f"v{i}", config, rows))
    return results.write_run(run_dir, records,
                             study_dict(study, {"model": {"grid": variants}}))


TRANSFER_VARIANTS = [{"name": "resnet18", "mode": "scratch"},
                     {"name": "resnet18", "mode": "linear_probe", "weights": "run:pretrain/full"},
                     {"name": "resnet18", "mode": "finetune", "weights": "run:pretrain/full"}]
EPOCHS_VARIANTS = [{"name": "mlp", "width": 256, "depth": 2},
                   {"name": "cnn", "kernel_size": 5, "channels": 32, "depth": 3}]
