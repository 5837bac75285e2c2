"""Render the suite's results (the dict written to results.json) as benchmarks/RESULTS.md."""

from __future__ import annotations

from typing import Any

BUSY_CORES = 0.25  # other processes' mean CPU use above which we say "measured under load"
SEARCHES = {"fifo_random": "FIFO + random (tune_hw)", "asha_optuna": "ASHA + Optuna (tune_hw)",
            "plain_optuna": "plain Optuna (no Ray)"}


def num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def cell(stats: dict[str, Any] | None, digits: int = 1) -> str:
    """`median (min–max)`, or the single value when there was one repeat."""
    if not stats or stats.get("median") is None:
        return "—"
    text = num(stats["median"], digits)
    if stats["n"] > 1:
        text += f" ({num(stats['min'], digits)}–{num(stats['max'], digits)})"
    return text


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def percent(stats: dict[str, Any] | None) -> str:
    """The median of a share as a percentage."""
    if not stats or stats.get("median") is None:
        return "—"
    return f"{100 * stats['median']:.1f} %"


def render(report: dict[str, Any]) -> str:
    """The whole RESULTS.md: machine and load first, then one section per case."""
    cases = report["cases"]
    parts = [header(report["meta"]), summary(cases)]
    if "overhead" in cases:
        parts.append(overhead(cases["overhead"], report["meta"]["one_time"]))
    if "data_path" in cases:
        parts.append(data_path(cases["data_path"]))
    if "search_efficiency" in cases:
        parts.append(efficiency(cases["search_efficiency"]))
    if "scaling" in cases:
        parts.append(scaling(cases["scaling"]))
    if "snapshot" in cases:
        parts.append(snapshot(cases["snapshot"]))
    if "fusion" in cases:
        parts.append(fusion(cases["fusion"]))
    if "per_step" in cases:
        parts.append(per_step(cases["per_step"]))
    return "\n".join(parts)


def header(meta: dict[str, Any]) -> str:
    machine, versions = meta["machine"], meta["versions"]
    other = meta.get("other_processes_cores")
    loaded = (other or 0) > BUSY_CORES or ((meta["load_average_start"] or [0])[0] > 0.5)
    lines = [
        "# tune_hw benchmarks", "",
        f"Regenerate with `{meta['command']}` from the repository root (about 30 minutes on "
        "an idle 2-core machine); every figure below, and every single repeat, is in "
        "`results.json` beside this file.", "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores, "
        f"{num(machine['memory_gib'])} GiB memory; {machine['os']}",
        f"- **Versions:** tune_hw {versions['tune_hw']}, torch {versions['torch']}, "
        f"ray {versions['ray']}, optuna {versions['optuna']}, numpy {versions['numpy']}, "
        f"Python {versions['python']}",
        f"- **Run:** {meta['started']}, {num(meta['duration_s'] / 60)} min"
        f"{' (--quick: sizes too small for the figures to mean much)' if meta['quick'] else ''}; "
        f"torch threads {meta['torch_threads']} on both sides (what a 1-CPU trial gets)",
        f"- **Load:** load average (1, 5, 15 min) {meta['load_average_start']} at the start, "
        f"{meta['load_average_end']} at the end; other processes kept "
        f"{num(other, 2)} cores busy on average while this ran.", ""]
    if loaded:
        lines += ["**Measured under load.** Other work shared these cores during the run, so "
                  "absolute times are inflated and noisy. Compared variants ran interleaved "
                  "(A, B, A, B, …) so the load hit them alike; read the ratios, and the min–max "
                  "ranges, rather than the seconds.", ""]
    lines += ["Cells read `median (min–max)` over the repeats.", ""]
    return "\n".join(lines)


def summary(cases: dict[str, Any]) -> str:
    """The headline figures, one line per case."""
    lines = ["## Summary", ""]
    if "overhead" in cases:
        single, many = cases["overhead"]["single"], cases["overhead"]["many"]
        lines.append(
            f"- **Overhead:** one {num(single['bare_s']['median'], 0)} s trial takes "
            f"{times(single['ratio'])} the bare loop's wall time "
            f"({times(single['cpu_ratio'])} its CPU), {num(single['overhead_s'])} s more; "
            f"{many['n_trials']} short trials take {times(many['ratio'])}, "
            f"{num(many['overhead_s_per_trial'], 2)} s more per trial"
            + (f": {num(many['per_search_wall_s'])} s once per search plus "
               f"{num(many['per_trial_wall_s'], 2)} s per further trial"
               if "per_trial_wall_s" in many else "")
            + ". Ray start-up is extra, once per command (below).")
    if "data_path" in cases:
        ratios = ", ".join(f"{times(e['steps_per_cpu_s_ratio_vs_dataloader'])} at batch {bs}"
                           for bs, e in cases["data_path"]["batch_sizes"].items())
        lines.append(f"- **Data path:** tune_hw's batching runs {ratios} the steps per CPU-second "
                     "of DataLoader.")
    if "search_efficiency" in cases:
        parts = [f"{SEARCHES[name]} {cell(v['time_to_target_s'], 0)} s "
                 f"({v['reached']}/{len(v['runs'])} reached)"
                 for name, v in cases["search_efficiency"]["variants"].items()]
        lines.append("- **Search efficiency**, time to within 0.5 points of FIFO's best: "
                     + "; ".join(parts) + ".")
    if "scaling" in cases:
        scale = cases["scaling"]
        per_min = ", ".join(f"{cell(v['trials_per_min'])} at {c}"
                            for c, v in scale["concurrency"].items())
        lines.append(f"- **Scaling:** trials per minute {per_min} concurrent "
                     f"({times(scale['speedup'])}).")
    if "snapshot" in cases:
        snap = cases["snapshot"]
        tool, before = snap["variants"]["tune_hw"], snap["variants"]["tune_checkpoints"]
        lines.append(f"- **Snapshots:** {snap['n_trials']:,} short trials take "
                     f"{cell(tool['wall_s'], 0)} s with {cell(tool['forced'], 0)} forced "
                     f"snapshots ({percent(tool['snapshot_share'])} of the time in snapshots), "
                     f"against {cell(before['wall_s'], 0)} s, {cell(before['forced'], 0)} forced "
                     f"and {percent(before['snapshot_share'])} with per-epoch Tune checkpoints "
                     f"({times(snap['speedup'])}).")
    if "fusion" in cases:
        best = {key: max((r for r in entry["steps_per_cpu_s_ratio"].values() if r), default=None)
                for key, entry in cases["fusion"]["cells"].items()}
        lines.append("- **Fusion:** best per-member speed-up of K fused members over one model "
                     "at a time (steps per CPU-second): "
                     + ", ".join(f"{times(r)} for {key.replace('/', ' at batch ')}"
                                 for key, r in best.items()) + ".")
    if "per_step" in cases:
        lines.append(per_step_summary(cases["per_step"]["variants"]))
    return "\n".join(lines) + "\n"


def overhead(case: dict[str, Any], one_time: dict[str, Any]) -> str:
    single, many = case["single"], case["many"]
    cfg = single["config"]
    lines = [
        "## 1. Overhead: tune_hw vs a bare PyTorch loop", "",
        f"The same configs trained by a minimal loop in one process (shuffle, slice, step, "
        f"validation accuracy each epoch) and by `tune_hw.search` (Ray already started, one "
        f"trial at a time). {case['repeats']} interleaved repeats. One trial: lr_batch's MLP "
        f"(width {cfg['model.width']}, depth {cfg['model.depth']}) on "
        f"{cfg['dataset.n_train']:,} rows, {cfg['train.epochs']} epochs, batch "
        f"{cfg['train.batch_size']}. Short trials: {many['n_trials']} learning rates, "
        f"{many['config']['dataset.n_train']:,} rows, {many['config']['train.epochs']} epochs, "
        f"batch {many['config']['train.batch_size']}.", "",
        "| case | bare loop s | tune_hw s | ratio | overhead s | overhead s / trial | bare CPU s "
        "| tune_hw CPU s | CPU ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for label, part in (("one trial", single), (f"{many['n_trials']} short trials", many)):
        lines.append(f"| {label} | {cell(part['bare_s'])} | {cell(part['tune_hw_s'])} | "
                     f"{times(part['ratio'])} | {num(part['overhead_s'])} | "
                     f"{num(part['overhead_s_per_trial'], 2)} | {cell(part['bare_cpu_s'])} | "
                     f"{cell(part['tune_hw_cpu_s'])} | {times(part['cpu_ratio'])} |")
    lines += [
        "", "Ray's own target is under 20 % over the theoretical minimum (ratio ≤ 1.20). "
        "tune_hw CPU counts every process of the tool (driver, Ray's daemons, trial workers); "
        "CPU time is the steadier figure on a shared machine, since waiting for a core costs "
        f"none. The bare loop runs in a separate warm process at the trials' OS niceness "
        f"({single['bare_niceness']}: Ray starts its workers nice), so neither side is "
        "favoured by the scheduler.", "",
        "Where tune_hw's time went (medians, seconds): training steps, evaluation (train "
        "subset, validation and test every epoch; the bare loop evaluates validation only), the "
        "rest inside the trials (worker's first imports, data, checkpoints, reports), and "
        "outside the trials (Tune's set-up and teardown, worker start, result files).", "",
        "| case | training | evaluation | rest in trials | outside trials | best val acc "
        "bare / tune_hw | trial statuses |", "|---|---|---|---|---|---|---|"]
    for label, part in (("one trial", single), (f"{many['n_trials']} short trials", many)):
        rest = _minus(part["tune_hw_trial_s"]["median"], part["tune_hw_epoch_s"]["median"])
        lines.append(
            f"| {label} | {num(part['tune_hw_train_s']['median'])} | "
            f"{num(part['tune_hw_eval_s']['median'])} | {num(rest)} | "
            f"{num(part['outside_trials_s'])} | {num(part['bare_best_val_acc'], 4)} / "
            f"{num(part['tune_hw_best_val_acc'], 4)} | {part['statuses']} |")
    if "per_trial_wall_s" in many:
        lines += [
            "", f"Searches of 1 and of {many['n_trials']} short trials split the overhead into a "
            "part paid once per search (trial worker processes, their imports, Tune's set-up) "
            "and a part paid per further trial (medians; the CPU figures are the steadier):", "",
            "| overhead | wall s | CPU s |", "|---|---|---|",
            f"| once per search | {num(many['per_search_wall_s'])} | "
            f"{num(many.get('per_search_cpu_s'))} |",
            f"| per further trial | {num(many['per_trial_wall_s'], 2)} | "
            f"{num(many.get('per_trial_cpu_s'), 2)} |"]
    lines += ["", "One-time costs, paid once per command rather than per trial:", "",
              "| what | seconds |", "|---|---|",
              f"| `python -c 'import torch'` | {num(one_time['import_torch_s'])} |",
              f"| import torch, ray.tune and tune_hw (the CLI's imports) | "
              f"{num(one_time['import_tune_hw_search_s'])} |",
              f"| Ray start-up (`cluster.init_ray`, local) | {num(one_time.get('ray_init_s'))} |"]
    if one_time.get("cli_quick_s") is not None:
        lines.append(f"| whole CLI `python -m tune_hw.search lr_batch --quick` "
                     f"({one_time['cli_quick_trials']} trials, {num(one_time['cli_quick_trial_s'])}"
                     f" s inside them) | {num(one_time['cli_quick_s'])} |")
    return "\n".join(lines) + "\n"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def data_path(case: dict[str, Any]) -> str:
    lines = [
        "## 2. Data path: tune_hw's batching vs DataLoader", "",
        f"Training steps per second of lr_batch's MLP ("
        f"{', '.join(f'{k} {v}' for k, v in case['model'].items())}) with SGD + momentum, "
        f"{case['repeats']} interleaved repeats per batch size. `tune_hw` is "
        "`training.train_one_epoch` (shuffled index slices of in-memory tensors); `DataLoader` "
        "is `DataLoader(TensorDataset(x, y), batch_size, shuffle=True)` with no worker "
        "processes; `slicing` is the bare slicing loop with nothing else, the floor. Steps per "
        "CPU-second (this thread's CPU time) is the steadier figure on a shared machine.", "",
        "| batch size | tune_hw steps/s | DataLoader steps/s | slicing steps/s | tune_hw ÷ "
        "DataLoader | per CPU-s: tune_hw ÷ DataLoader | per CPU-s: tune_hw ÷ slicing |",
        "|---|---|---|---|---|---|---|"]
    for bs, entry in case["batch_sizes"].items():
        rates = entry["steps_per_s"]
        lines.append(
            f"| {bs} | {cell(rates['tune_hw'], 0)} | {cell(rates['dataloader'], 0)} | "
            f"{cell(rates['slicing'], 0)} | {times(entry['steps_per_s_ratio_vs_dataloader'])} | "
            f"{times(entry['steps_per_cpu_s_ratio_vs_dataloader'])} | "
            f"{times(entry['steps_per_cpu_s_ratio_vs_slicing'])} |")
    return "\n".join(lines) + "\n"


def efficiency(case: dict[str, Any]) -> str:
    fixed = ", ".join(f"{k}={v}" for k, v in case["fixed"].items())
    lines = [
        "## 3. Search efficiency: ASHA + Optuna vs FIFO + random vs plain Optuna", "",
        f"lr_batch (its space and ASHA settings) with {fixed}; {case['budget']} trials per "
        f"search; {case['repeats']} repeat(s), seed = repeat. Target: the best validation "
        f"accuracy FIFO + random found in the same repeat minus {case['tolerance'] * 100:.1f} "
        "points. tune_hw runs trials concurrently (one per CPU); plain Optuna is "
        "`study.optimize` in one process over the same `training.run_trial` (TPE + "
        "successive-halving pruner) at the trials' niceness. tune_hw's times include its "
        "per-search start-up (trial worker processes and their imports), and Ray stamps "
        "results in whole seconds.", "",
        "| search | time to target s | reached | best val acc | search wall s | "
        "CPU s (all processes) |", "|---|---|---|---|---|---|"]
    for name, v in case["variants"].items():
        lines.append(f"| {SEARCHES.get(name, name)} | {cell(v['time_to_target_s'])} | "
                     f"{v['reached']}/{len(v['runs'])} | {cell(v['best_val_acc'], 4)} | "
                     f"{cell(v['wall_s'])} | {cell(v['cpu_s'])} |")
    return "\n".join(lines) + "\n"


def scaling(case: dict[str, Any]) -> str:
    cfg = case["config"]
    lines = [
        "## 4. Scaling: concurrent trials on this machine", "",
        f"{case['n_trials']} trials ({cfg['dataset.n_train']:,} rows, {cfg['train.epochs']} "
        f"epochs, batch {cfg['train.batch_size']}, one CPU each) with `search.max_concurrent` "
        f"1 and 2; {case['repeats']} interleaved repeats. Driver memory is its resident set "
        f"after the search ({num(case['driver_rss_before_mib'])} MiB before the first); the "
        "tree peak adds Ray's daemons and the trial workers.", "",
        "| concurrent trials | trials / min | search wall s | median trial s | driver RSS MiB "
        "| process tree peak MiB |", "|---|---|---|---|---|---|"]
    for c, v in case["concurrency"].items():
        lines.append(f"| {c} | {cell(v['trials_per_min'])} | {cell(v['wall_s'])} | "
                     f"{cell(v['trial_s_median'], 2)} | {cell(v['driver_rss_mib'], 0)} | "
                     f"{cell(v['tree_rss_peak_mib'], 0)} |")
    lines += ["", f"Speed-up from 1 to 2 concurrent trials: {times(case['speedup'])}."]
    return "\n".join(lines) + "\n"


def snapshot(case: dict[str, Any]) -> str:
    cfg = case["config"]
    lines = [
        "## 5. Snapshots: Tune's experiment state at 1,000 short trials", "",
        f"{case['n_trials']:,} trials of a random search ({cfg['dataset.n_train']} rows, width "
        f"{cfg['model.width']}, {cfg['train.epochs']} epochs, FIFO), {case['repeats']} "
        "repeat(s). Tune snapshots the whole experiment (every trial's record and the "
        "searcher) on a timer that keeps it near 5 % of the time, and forces one whenever a "
        "trial has saved `num_to_keep` checkpoints since the last. `tune_hw` keeps each "
        "trial's states in its own files and gives Tune no checkpoints to delete; `per-epoch "
        "Tune checkpoints` is tune_hw's previous design (every epoch a Tune checkpoint, "
        "num_to_keep=2). Snapshot time is the driver's time inside Tune's snapshot method; "
        "the upload of each snapshot runs on in a background thread and is not counted. "
        f"Started {case['started']}; load average {case['load_average_start']} at the start, "
        f"{case['load_average_end']} at the end.", "",
        "| variant | search wall s | s / trial | snapshots | forced | time in snapshots s "
        "| share of wall |", "|---|---|---|---|---|---|---|"]
    names = {"tune_hw": "tune_hw (own state files)",
             "tune_checkpoints": "per-epoch Tune checkpoints, num_to_keep=2"}
    for label, v in case["variants"].items():
        lines.append(f"| {names.get(label, label)} | {cell(v['wall_s'])} | "
                     f"{cell(v['wall_s_per_trial'], 3)} | {cell(v['snapshots'], 0)} | "
                     f"{cell(v['forced'], 0)} | {cell(v['snapshot_s'])} | "
                     f"{percent(v['snapshot_share'])} |")
    lines += ["", f"Speed-up of the whole search: {times(case['speedup'])}."]
    return "\n".join(lines) + "\n"


def fusion(case: dict[str, Any]) -> str:
    members = sorted({int(k) for e in case["cells"].values() for k in e["steps_per_s_ratio"]})
    lines = [
        "## 6. Fusion: K stacked members vs one model at a time", "",
        "Training steps per second per member: `fused.FusedGroup.train_epoch` on K members "
        "(own seeds and learning rates) over one `training.train_one_epoch` model, one torch "
        f"thread, {case['repeats']} interleaved repeats. `mlp`: lr_batch's MLP (width 64, "
        "depth 6, SGD + momentum) on countries, `mlp_bn` with BatchNorm (no batch 1: "
        "BatchNorm cannot train on one row), `cnn`: the architectures study's CNN (kernel 3, "
        "32 channels, depth 3, Adam) on 8x8 digits. Cells: speed-up per CPU-second (per wall "
        "second in brackets); `useful K` is what `fused.fusion_pays` derives from such a row.",
        "", "| model / batch | single steps/s | "
        + " | ".join(f"K = {k}" for k in members) + " | useful K |",
        "|---|---|" + "---|" * len(members) + "---|"]
    for key, entry in case["cells"].items():
        per_cpu, per_wall = entry["steps_per_cpu_s_ratio"], entry["steps_per_s_ratio"]
        ratios = " | ".join(f"{times(per_cpu.get(str(k)))} ({times(per_wall.get(str(k)))})"
                            for k in members)
        lines.append(f"| {key.replace('/', ' / ')} | "
                     f"{cell(entry['steps_per_cpu_s']['single'], 0)} | {ratios} | "
                     f"{case['useful_members'][key]} |")
    lines += ["", "Mechanism: forward + backward of the same K models, grouped operations "
              "(tune_hw.stacked: batched matmul, grouped convolution, BatchNorm over K x C "
              "channels) vs torch.func (`stack_module_state` + `functional_call` + `vmap`), "
              "steps per CPU-second:", "",
              "| model / batch / K | grouped | vmap | grouped ÷ vmap |", "|---|---|---|---|"]
    for key, entry in case["mechanism"].items():
        rates = entry["steps_per_cpu_s"]
        lines.append(f"| {key.replace('/', ' / ')} | {cell(rates['grouped'], 0)} | "
                     f"{cell(rates['vmap'], 0)} | {times(entry['grouped_vs_vmap'])} |")
    return "\n".join(lines) + "\n"


PER_STEP = {"minimal": "(a) minimal loop", "minimal_two": "(a2) two minimal loops at once",
            "run_trial": "(b) `run_trial` outside Ray", "tune_one": "(c) one Tune trial alone",
            "tune_two": "(c) two Tune trials at once"}


def per_step_summary(variants: dict[str, Any]) -> str:
    rates = "; ".join(f"{PER_STEP[name]} {cell(v['steps_per_s'], 0)}"
                      for name, v in variants.items())
    return ("- **Per step** (batch 1, lr_batch's MLP), training steps/s: " + rates
            + f"; two trials at once run {times(variants['tune_two']['steps_per_s_vs_minimal'])}"
            " the minimal loop's steps/s.")


def per_step(case: dict[str, Any]) -> str:
    cfg = case["config"]
    lines = [
        "## 7. Per step: a batch-1 training step inside a Tune trial vs outside Ray", "",
        f"lr_batch's MLP (width {cfg['model.width']}, depth {cfg['model.depth']}, SGD + "
        f"momentum) on {cfg['dataset.n_train']:,} countries rows, batch 1, one epoch, one torch "
        f"thread, every variant at the trials' niceness; {case['repeats']} interleaved repeats. "
        "Steps/s count training only (start-up and evaluation left out); steps per CPU-second "
        "divide by the cores the training process used while it trained.", "",
        "| variant | steps/s | steps per CPU-s | cores used | steps/s ÷ (a) | ÷ (b) "
        "| per CPU-s ÷ (a) |", "|---|---|---|---|---|---|---|"]
    for name, v in case["variants"].items():
        lines.append(f"| {PER_STEP[name]} | {cell(v['steps_per_s'], 0)} | "
                     f"{cell(v['steps_per_cpu_s'], 0)} | {cell(v['cores'], 2)} | "
                     f"{times(v['steps_per_s_vs_minimal'])} | "
                     f"{times(v['steps_per_s_vs_run_trial'])} | "
                     f"{times(v['steps_per_cpu_s_vs_minimal'])} |")
    lines += ["", "Where the machine's CPU went while the Tune trials ran (mean cores busy over "
              "the search's wall time; `outside`: other work on the machine):", "",
              "| role | one trial | two trials |", "|---|---|---|"]
    one, two = (case["variants"][k]["account"] for k in ("tune_one", "tune_two"))
    for role in sorted(set(one["cores"]) | set(two["cores"])):
        lines.append(f"| {role} | {cell(one['cores'].get(role), 2)} | "
                     f"{cell(two['cores'].get(role), 2)} |")
    lines.append(f"| trial worker's training thread, share of the worker's CPU | "
                 f"{percent(one['worker_training_thread_share'])} | "
                 f"{percent(two['worker_training_thread_share'])} |")
    lines += ["", "Settings: " + "; ".join(
        f"{where}: " + ", ".join(f"{k} {v}" for k, v in values.items())
        for where, values in case["settings"].items()) + "."]
    return "\n".join(lines) + "\n"
