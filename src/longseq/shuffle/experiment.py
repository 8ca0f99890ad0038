"""The ShuffleMamba experiment on the shapes dataset: does the layer-wise shuffle help a
Vim on top of drop-path, and more so the deeper the Vim? ``benchmarks/shuffle_experiment.py``
runs it.

Methods, trained at every depth of ``depths``:

    none        no regularization
    drop-path   drop-path alone (rate ``drop_path`` at the last block, linear over depth)
    linear      drop-path + the shuffle, p_l = p * l / (L - 1)        (the authors' default)
    constant    drop-path + the shuffle, p_l = [0] + [p] * (L - 1)    (the authors' variant)

Both shuffle schedules are trained at every p of ``p_values`` at ``sweep_depth``; the best
p of each (highest mean validation accuracy over seeds; the test set is never used to
choose) is the one trained at the other depths and compared. Every setting runs once per
seed. A seed fixes the initial weights, the order of the batches and the flips, so two
settings with one seed differ only in their regularization: comparisons are paired
differences over seeds with 95% t-intervals (:func:`longseq.stats.paired_difference`).

Each run's result is written to ``<run_dir>/<key>.json`` as soon as it finishes and
finished runs are skipped, so an interrupted experiment resumes by running the same
command again. Runs go to ``workers`` processes with ``threads`` torch threads each.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from longseq.stats import PairedDifference, mean_interval, paired_difference

METHODS = ("none", "drop-path", "linear", "constant")
SHUFFLED = ("linear", "constant")
CONFIG_FILE = "experiment_config.json"


@dataclass
class ExperimentConfig:
    """Sizes of the experiment. Defaults: the CPU run (about 2.5 hours on 2 cores, see
    ``benchmarks/shuffle_experiment.py``); :meth:`quick` is a smoke run of a minute or two."""

    depths: tuple[int, ...] = (6, 12, 24)
    sweep_depth: int = 6
    # the schedules trained (at their best p) at the depths other than sweep_depth
    depth_schedules: tuple[str, ...] = ("linear",)
    p_values: tuple[float, ...] = (0.25, 0.5, 0.75)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    dim: int = 32
    headdim: int = 64  # one Mamba-2 head per direction (d_inner = 2 * dim)
    chunk_size: int = 16  # the scan's block length (speed only)
    img_size: int = 32
    patch: int = 4  # 32 px / 4 = 8 x 8 patches + the class token = 65 tokens
    # the authors' ShuffleMamba has the class token at index 0 ("first"); at this budget a
    # first-token Vim barely learns (see benchmarks/shuffle_experiment.py), so "middle"
    cls_position: str = "middle"
    drop_path: float = 0.1
    n_train: int = 1000
    n_val: int = 1000
    n_test: int = 10_000
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.p_values = tuple(float(p) for p in self.p_values)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.depth_schedules = tuple(str(m) for m in self.depth_schedules)
        if not set(self.depth_schedules) <= set(SHUFFLED):
            raise ValueError(
                f"depth_schedules must be among {SHUFFLED}, got {self.depth_schedules}"
            )
        if self.sweep_depth not in self.depths:
            raise ValueError(f"sweep_depth={self.sweep_depth} must be one of depths {self.depths}")
        if len(set(self.seeds)) < 2:
            raise ValueError(f"need at least 2 seeds for intervals, got {self.seeds}")
        if not self.p_values or not all(0 < p <= 1 for p in self.p_values):
            raise ValueError(f"p_values must be in (0, 1], got {self.p_values}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @classmethod
    def quick(cls, **kw) -> ExperimentConfig:
        """A smoke run: every part of the experiment on tiny models and data."""
        small = dict(
            depths=(2, 4),
            sweep_depth=2,
            seeds=(0, 1),
            dim=16,
            headdim=16,
            n_train=64,
            n_val=64,
            n_test=128,
            epochs=1,
            batch_size=32,
            warmup_epochs=0,
        )
        return cls(**{**small, **kw})

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, seed: int):
        from longseq.shuffle.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            n_train=self.n_train,
            n_val=self.n_val,
            n_test=self.n_test,
            img_size=self.img_size,
            seed=seed,
            val_every=0,
        )


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run: a method (with its shuffle p) at a depth, with a seed."""

    depth: int
    method: str
    p: float = 0.0
    seed: int = 0

    @property
    def key(self) -> str:
        p = f"-p{self.p:g}" if self.method in SHUFFLED else ""
        return f"d{self.depth}-{self.method}{p}-s{self.seed}"

    @property
    def setting(self) -> tuple[int, str, float]:
        return (self.depth, self.method, self.p)


def sweep_runs(cfg: ExperimentConfig) -> list[RunSpec]:
    """The runs that need no choice of p: the unshuffled methods at every depth and both
    schedules at every p at ``sweep_depth``."""
    runs = []
    for seed in cfg.seeds:
        for depth in cfg.depths:
            runs += [RunSpec(depth, "none", 0.0, seed), RunSpec(depth, "drop-path", 0.0, seed)]
        for method in SHUFFLED:
            runs += [RunSpec(cfg.sweep_depth, method, p, seed) for p in cfg.p_values]
    return runs


def depth_runs(cfg: ExperimentConfig, best: dict[str, float]) -> list[RunSpec]:
    """The schedules of ``depth_schedules`` at their best p (``best[method]``) at the
    depths other than ``sweep_depth``."""
    return [
        RunSpec(depth, method, best[method], seed)
        for seed in cfg.seeds
        for depth in cfg.depths
        if depth != cfg.sweep_depth
        for method in cfg.depth_schedules
    ]


def planned(cfg: ExperimentConfig, depth: int, method: str) -> bool:
    """Whether the grid trains ``method`` at ``depth``."""
    return method not in SHUFFLED or depth == cfg.sweep_depth or method in cfg.depth_schedules


def sweep_complete(results: dict[str, dict], cfg: ExperimentConfig) -> bool:
    """Whether every run of the p sweep has finished (so the best p is settled)."""
    return all(s.key in results for s in sweep_runs(cfg) if s.method in SHUFFLED)


def best_p(results: dict[str, dict], cfg: ExperimentConfig) -> dict[str, float]:
    """For each schedule, the p of ``p_values`` with the highest mean validation accuracy
    at ``sweep_depth`` (over the seeds finished so far; ties go to the smaller p)."""
    best = {}
    for method in SHUFFLED:
        scores = {}
        for p in cfg.p_values:
            vals = [
                results[k]["val_acc"]
                for k in (RunSpec(cfg.sweep_depth, method, p, s).key for s in cfg.seeds)
                if k in results
            ]
            if vals:
                scores[p] = statistics.mean(vals)
        if not scores:
            raise ValueError(f"no finished {method} runs at depth {cfg.sweep_depth} yet")
        best[method] = max(sorted(scores), key=lambda p: scores[p])
    return best


# --------------------------------------------------------------------------- running

_DATA: dict = {}  # per process: the drawn images, keyed by their sizes


def _data(tcfg) -> dict:
    from longseq.shuffle.train import draw_splits

    key = (tcfg.n_train, tcfg.n_val, tcfg.n_test, tcfg.img_size)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = draw_splits(tcfg)
    return _DATA[key]


def build_model(spec: RunSpec, cfg: ExperimentConfig) -> torch.nn.Module:
    """The run's Vim, initialized from its seed."""
    from longseq.shuffle.train import build_classifier

    torch.manual_seed(spec.seed)
    return build_classifier(
        "vim",
        spec.depth,
        cfg.dim,
        cfg.patch,
        p_max=spec.p,
        schedule=spec.method if spec.method in SHUFFLED else "linear",
        img_size=cfg.img_size,
        drop_path=0.0 if spec.method == "none" else cfg.drop_path,
        cls_position=cfg.cls_position,
        headdim=cfg.headdim,
        chunk_size=cfg.chunk_size,
    )


def run_one(spec: RunSpec, cfg: ExperimentConfig) -> dict:
    """Train and evaluate one run; the result holds the spec, the accuracies, the gap and
    the wall and CPU seconds."""
    from longseq.shuffle.train import train_classifier
    from longseq.utils import default_device

    tcfg = cfg.train_config(spec.seed)
    cpu0 = time.process_time()
    data = _data(tcfg)
    model = build_model(spec, cfg)
    res = train_classifier(model, tcfg, default_device(cfg.device), progress=False, data=data)
    return {
        "key": spec.key,
        **asdict(spec),
        "params": sum(p.numel() for p in model.parameters()),
        **res,
        "cpu_seconds": time.process_time() - cpu0,
        "threads": torch.get_num_threads(),
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class _InProcess:
    """The executor interface, running each job at once in this process (workers=0)."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args))
        return fut

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def load_results(run_dir: Path) -> dict[str, dict]:
    """The finished runs in ``run_dir``, by key."""
    out = {}
    for path in sorted(Path(run_dir).glob("d*-s*.json")):
        res = json.loads(path.read_text())
        out[res["key"]] = res
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)  # a result file is whole or absent


def _check_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse to mix runs of different settings in one folder (seeds may be added)."""
    path = run_dir / CONFIG_FILE
    mine = {k: v for k, v in cfg.to_dict().items() if k != "seeds"}
    if path.exists():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k != "seeds"}
        mine_j, theirs_j = json.loads(json.dumps(mine)), theirs
        if mine_j != theirs_j:
            diff = sorted(k for k in mine_j if mine_j.get(k) != theirs_j.get(k))
            raise ValueError(
                f"{run_dir} holds runs of other settings ({', '.join(diff)} differ); "
                "give another run folder"
            )
    _write_json(path, cfg.to_dict())


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    workers: int = 2,
    threads: int = 1,
    log: Callable[[str], None] = print,
    runner: Callable[[RunSpec, ExperimentConfig], dict] = run_one,
) -> dict[str, dict]:
    """Run every missing run of the grid and return all results by key.

    ``workers`` processes (0: in this process) with ``threads`` torch threads each take
    the runs longest first; the runs at ``sweep_depth`` go first, so that the best p of
    each schedule is known early and the depth runs that need it can start.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_config(run_dir, cfg)
    results = load_results(run_dir)
    phase1 = [s for s in sweep_runs(cfg) if s.key not in results]
    queue = sorted(phase1, key=lambda s: (s.depth != cfg.sweep_depth, -s.depth, s))
    phase2_queued = False

    def maybe_phase2() -> None:
        nonlocal phase2_queued, queue
        if phase2_queued or not sweep_complete(results, cfg):
            return
        best = best_p(results, cfg)
        log(f"best p at depth {cfg.sweep_depth} (validation): {best}")
        queue += [s for s in depth_runs(cfg, best) if s.key not in results]
        queue.sort(key=lambda s: (-s.depth, s))
        phase2_queued = True

    maybe_phase2()
    total = len(queue) + (0 if phase2_queued else len(depth_runs(cfg, dict.fromkeys(SHUFFLED))))
    log(f"{len(results)} runs finished before, {total} to go, {max(workers, 1)} at a time")
    if workers > 0:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        )
    else:
        pool = _InProcess()
    done = 0
    t0 = time.time()
    with pool:
        running: dict[Future, RunSpec] = {}
        while queue or running:
            while queue and len(running) < max(workers, 1):
                spec = queue.pop(0)
                running[pool.submit(runner, spec, cfg)] = spec
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                res = fut.result()
                _write_json(run_dir / f"{spec.key}.json", res)
                results[spec.key] = res
                done += 1
                log(
                    f"[{done}/{total}] {spec.key}: train {100 * res['train_acc']:.1f}% "
                    f"test {100 * res['test_acc']:.1f}% ({res['cpu_seconds']:.0f} CPU s, "
                    f"{(time.time() - t0) / 60:.1f} min in)"
                )
            maybe_phase2()
    return results


def estimate(cfg: ExperimentConfig, best: dict[str, float] | None = None, steps: int = 3) -> dict:
    """CPU seconds of every run of the grid, extrapolated from a few timed steps.

    At each depth, one Vim with drop-path and the linear shuffle at the largest p takes
    ``steps`` training steps (after one untimed) on a batch of ``batch_size`` and
    evaluates one batch, in this process with its current torch threads; a run then
    costs ``epochs * n_train`` training images and ``n_train + n_val + n_test``
    evaluated images at those rates; each worker process also draws the images once
    (``draw_seconds``). ``best`` (default: the largest p) fixes the keys of the depth runs.
    """
    import torch.nn.functional as F

    from longseq.data.shapes import normalize
    from longseq.shuffle.train import draw_splits
    from longseq.utils import default_device, synchronize

    device = default_device(cfg.device)
    tcfg = cfg.train_config(0)
    n_draw = 200
    t = time.process_time()
    draw_splits(type(tcfg)(n_train=n_draw, n_val=1, n_test=1, img_size=cfg.img_size))
    draw_s = (time.process_time() - t) / (n_draw + 2)
    per_depth = {}
    for depth in cfg.depths:
        model = build_model(RunSpec(depth, "linear", max(cfg.p_values), 0), cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        x = normalize(torch.rand(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device))
        y = torch.randint(0, 8, (cfg.batch_size,), device=device)
        times = []
        for i in range(steps + 1):
            synchronize(device)
            t = time.process_time()
            model.train()
            loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            synchronize(device)
            if i:
                times.append(time.process_time() - t)
        xe = normalize(torch.rand(500, 3, cfg.img_size, cfg.img_size, device=device))
        model.eval()
        with torch.no_grad():
            t = time.process_time()
            model(xe)
            synchronize(device)
        per_depth[depth] = {
            "train_s_per_image": statistics.median(times) / cfg.batch_size,
            "eval_s_per_image": (time.process_time() - t) / len(xe),
        }
    best = best or dict.fromkeys(SHUFFLED, max(cfg.p_values))
    specs = sweep_runs(cfg) + depth_runs(cfg, best)
    images = cfg.n_train + cfg.n_val + cfg.n_test
    per_run = {
        d: cfg.epochs * cfg.n_train * c["train_s_per_image"] + images * c["eval_s_per_image"]
        for d, c in per_depth.items()
    }
    return {
        "per_depth": per_depth,
        "draw_seconds": images * draw_s,
        "run_seconds": per_run,
        "runs": len(specs),
        "runs_per_depth": {d: sum(s.depth == d for s in specs) for d in cfg.depths},
        "cpu_seconds": sum(per_run[s.depth] for s in specs),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- analysis


def _by_setting(results: dict[str, dict]) -> dict[tuple, dict[int, dict]]:
    out: dict[tuple, dict[int, dict]] = {}
    for r in results.values():
        out.setdefault((r["depth"], r["method"], r["p"]), {})[r["seed"]] = r
    return out


def _paired(a: dict[int, dict], b: dict[int, dict], metric: str) -> PairedDifference | None:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    return paired_difference([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])


def _pd(d: PairedDifference | None) -> dict | None:
    return None if d is None else asdict(d)


def verdict(d: PairedDifference | None, sign: int) -> str:
    """'holds' when the interval lies on the claimed side of 0 (``sign`` +1: above, -1:
    below), 'opposite' when it lies on the other side, else 'not shown'."""
    if d is None:
        return "not measured"
    low, high = sorted((sign * d.low, sign * d.high))
    if low > 0:
        return "holds"
    if high < 0:
        return "opposite"
    return "not shown"


METRICS = ("train_acc", "val_acc", "test_acc", "gap")
COMPARISONS = (
    ("drop-path", "none"),
    ("linear", "drop-path"),
    ("constant", "drop-path"),
    ("linear", "constant"),
    ("linear", "none"),
)


CHANCE = 1 / 8  # eight balanced classes
GATE_MIN_TEST = 2 * CHANCE  # the unregularized model must learn the task...
GATE_MIN_GAP = 0.05  # ... and overfit it, or a regularizer has nothing to act on
FIT_TRAIN = 0.9  # below this training accuracy the model still under-fits its data


def gates(runs: Callable[[int, str], dict[int, dict]], cfg: ExperimentConfig) -> list[dict]:
    """Per depth: does the unregularized Vim (mean over seeds) reach twice chance on the
    test set and overfit by at least 5 points? Comparisons at a depth that fails say
    little about regularization. ``fits_training_set`` (training accuracy >= 90%) tells
    a memorizing model (the regime the paper's claim is about) from one that has not
    yet fit its data, where a regularizer also slows fitting."""
    out = []
    for depth in cfg.depths:
        rr = runs(depth, "none")
        if not rr:
            continue
        test = statistics.mean(r["test_acc"] for r in rr.values())
        gap = statistics.mean(r["gap"] for r in rr.values())
        train = statistics.mean(r["train_acc"] for r in rr.values())
        out.append(
            {
                "depth": depth,
                "train_acc": train,
                "test_acc": test,
                "gap": gap,
                "fits_training_set": train >= FIT_TRAIN,
                "passed": test >= GATE_MIN_TEST and gap >= GATE_MIN_GAP,
            }
        )
    return out


def summarize(results: dict[str, dict], cfg: ExperimentConfig) -> dict:
    """Tables, paired comparisons and the verdict on each claim, from the finished runs."""
    groups = _by_setting(results)
    best = best_p(results, cfg)

    def runs(depth: int, method: str) -> dict[int, dict]:
        return groups.get((depth, method, best[method] if method in SHUFFLED else 0.0), {})

    rows = []
    for depth in cfg.depths:
        for method in METHODS:
            rr = runs(depth, method)
            if not rr:
                continue
            row = {
                "depth": depth,
                "method": method,
                "p": best.get(method, 0.0),
                "seeds": sorted(rr),
            }
            row["params"] = next(iter(rr.values()))["params"]
            for m in METRICS:
                row[m] = mean_interval(r[m] for r in rr.values())
            row["cpu_seconds"] = statistics.mean(r["cpu_seconds"] for r in rr.values())
            rows.append(row)
    sweep = []
    for method in SHUFFLED:
        for p in cfg.p_values:
            rr = groups.get((cfg.sweep_depth, method, p), {})
            if rr:
                sweep.append(
                    {
                        "method": method,
                        "p": p,
                        "seeds": sorted(rr),
                        **{m: mean_interval(r[m] for r in rr.values()) for m in METRICS},
                        "chosen": p == best[method],
                    }
                )
    comparisons = []
    for depth in cfg.depths:
        for a, b in (ab for ab in COMPARISONS if all(planned(cfg, depth, m) for m in ab)):
            ra, rb = runs(depth, a), runs(depth, b)
            comparisons.append(
                {
                    "depth": depth,
                    "a": a,
                    "b": b,
                    "test_acc": _pd(_paired(ra, rb, "test_acc")),
                    "gap": _pd(_paired(ra, rb, "gap")),
                }
            )
    lo, hi = min(cfg.depths), max(cfg.depths)

    def gain(depth: int, a: str, b: str) -> dict[int, float]:
        ra, rb = runs(depth, a), runs(depth, b)
        return {s: ra[s]["test_acc"] - rb[s]["test_acc"] for s in ra if s in rb}

    def gain_growth(a: str, b: str) -> PairedDifference | None:
        """(a - b at the deepest) - (a - b at the shallowest), paired by seed."""
        g_hi, g_lo = gain(hi, a, b), gain(lo, a, b)
        seeds = sorted(set(g_hi) & set(g_lo))
        if len(seeds) < 2:
            return None
        return paired_difference([g_hi[s] for s in seeds], [g_lo[s] for s in seeds])

    claims = []

    def claim(text: str, d: PairedDifference | None, sign: int, metric: str) -> None:
        claims.append(
            {"claim": text, "metric": metric, "estimate": _pd(d), "verdict": verdict(d, sign)}
        )

    claim(
        f"a deeper Vim overfits more (train-test gap without regularization, "
        f"{hi} layers minus {lo})",
        _paired(runs(hi, "none"), runs(lo, "none"), "gap"),
        +1,
        "gap",
    )
    for depth in cfg.depths:
        for method in (m for m in SHUFFLED if planned(cfg, depth, m)):
            claim(
                f"the shuffle ({method}, p={best[method]:g}) raises test accuracy on top of "
                f"drop-path at {depth} layers",
                _paired(runs(depth, method), runs(depth, "drop-path"), "test_acc"),
                +1,
                "test_acc",
            )
    for depth in (d for d in cfg.depths if planned(cfg, d, "linear")):
        claim(
            f"the shuffle (linear) narrows the train-test gap against drop-path alone at "
            f"{depth} layers",
            _paired(runs(depth, "linear"), runs(depth, "drop-path"), "gap"),
            -1,
            "gap",
        )
    for method in (m for m in SHUFFLED if planned(cfg, hi, m) and planned(cfg, lo, m)):
        claim(
            f"the shuffle's gain ({method} minus drop-path, test accuracy) grows with depth "
            f"({hi} layers minus {lo})",
            gain_growth(method, "drop-path"),
            +1,
            "test_acc",
        )
    for depth in (d for d in cfg.depths if planned(cfg, d, "constant")):
        claim(
            f"the linear schedule beats the constant one, each at its best p, at {depth} layers",
            _paired(runs(depth, "linear"), runs(depth, "constant"), "test_acc"),
            +1,
            "test_acc",
        )
    cpu = [r["cpu_seconds"] for r in results.values()]
    return {
        "config": cfg.to_dict(),
        "gates": gates(runs, cfg),
        "best_p": best,
        "rows": rows,
        "sweep": sweep,
        "comparisons": comparisons,
        "claims": claims,
        "runs": len(results),
        "cpu_hours": sum(cpu) / 3600,
    }


def _pct(ci: dict) -> str:
    if math.isnan(ci["low"]):
        return f"{100 * ci['mean']:.1f}"
    return f"{100 * ci['mean']:.1f} ± {100 * (ci['high'] - ci['low']) / 2:.1f}"


def _diff(d: dict | None) -> str:
    if d is None:
        return "–"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def to_markdown(summary: dict, script: str = "benchmarks/shuffle_experiment.py") -> str:
    c = summary["config"]
    tokens = (c["img_size"] // c["patch"]) ** 2 + 1
    lines = [
        "# ShuffleMamba experiment (shapes dataset)\n",
        f"Vim width {c['dim']}, depths {', '.join(map(str, c['depths']))}; {c['img_size']} px "
        f"images, patch {c['patch']} ({tokens} tokens, class token {c['cls_position']}); "
        f"{c['n_train']} training, {c['n_val']} validation and {c['n_test']} test images; "
        f"{c['epochs']} epochs, batch {c['batch_size']}, AdamW lr {c['lr']:g}, weight decay "
        f"{c['weight_decay']:g}, random flips; drop-path {c['drop_path']:g} (last block, "
        f"linear over depth); seeds {', '.join(map(str, c['seeds']))}. "
        f"{summary['runs']} runs, {summary['cpu_hours']:.1f} CPU hours. Written by `{script}`.\n",
        f"Gate (no regularization must reach {100 * GATE_MIN_TEST:.0f}% test, twice chance, "
        f"and overfit by {100 * GATE_MIN_GAP:.0f} points): "
        + "; ".join(
            f"depth {g['depth']}: {100 * g['train_acc']:.1f}% train, {100 * g['test_acc']:.1f}% "
            f"test, gap {100 * g['gap']:.1f}, "
            + ("passed" if g["passed"] else "FAILED")
            + ("" if g["fits_training_set"] else " (under-fits its training set)")
            for g in summary["gates"]
        )
        + ".\n",
        "Accuracies in %, mean over seeds ± the half-width of its 95% t-interval; the "
        "shuffled methods at the p chosen on validation accuracy at depth "
        f"{c['sweep_depth']} (linear {summary['best_p']['linear']:g}, constant "
        f"{summary['best_p']['constant']:g}).\n",
        "| depth | method | train acc | test acc | train - test gap | CPU s / run |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        name = r["method"] + (f" (p {r['p']:g})" if r["method"] in SHUFFLED else "")
        lines.append(
            f"| {r['depth']} | {name} | {_pct(r['train_acc'])} | {_pct(r['test_acc'])} | "
            f"{_pct(r['gap'])} | {r['cpu_seconds']:.0f} |"
        )
    lines += [
        "",
        f"p sweep at depth {c['sweep_depth']} (drop-path + shuffle; * = chosen on validation):\n",
        "| schedule | p | validation acc | test acc | train - test gap |",
        "|---|---|---|---|---|",
    ]
    for r in summary["sweep"]:
        star = " *" if r["chosen"] else ""
        lines.append(
            f"| {r['method']} | {r['p']:g}{star} | {_pct(r['val_acc'])} | {_pct(r['test_acc'])} "
            f"| {_pct(r['gap'])} |"
        )
    lines += [
        "",
        "Paired differences over seeds (a - b, points, 95% interval):\n",
        "| depth | a - b | test acc | train - test gap |",
        "|---|---|---|---|",
    ]
    for r in summary["comparisons"]:
        lines.append(
            f"| {r['depth']} | {r['a']} - {r['b']} | {_diff(r['test_acc'])} | {_diff(r['gap'])} |"
        )
    lines += [
        "",
        "Claims (holds: the 95% interval lies on the claimed side of 0; opposite: on the "
        "other side; not shown: it covers 0):\n",
        "| claim | difference (points) | verdict |",
        "|---|---|---|",
    ]
    for r in summary["claims"]:
        lines.append(f"| {r['claim']} | {_diff(r['estimate'])} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def write_summary(
    summary: dict, out: str | Path, script: str = "benchmarks/shuffle_experiment.py"
) -> None:
    """``summary`` to ``out``.json and its tables to ``out``.md."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out.with_suffix(".json"), summary)
    out.with_suffix(".md").write_text(to_markdown(summary, script))
