"""The main command python -m mimo_ext.balance as a research tool: its data options by name, argument errors
(argparse-level, before any training or data loading), the worst-modality columns, the machine note, the one-seed
format, the sweep, the fusion, missing-modality and regression options (the data they load, what they hand to
compare), and the tables and figures on fabricated results (no training) as well as on tiny real runs."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

import mimo_ext.balance.__main__ as cli
from mimo_ext.balance import compare, report


def fake_result(probe_per_seed, fused_per_seed=None, *, busy=False, step_s=0.002, loads=True) -> dict:
    """A result in compare's format: probe_per_seed[s][m] is the probe accuracy of modality m under seed s."""
    seeds = len(probe_per_seed)
    m = len(probe_per_seed[0])
    fused_per_seed = fused_per_seed or [0.9] * seeds
    heads = [[a - 0.01 for a in row] for row in probe_per_seed]

    def mean_std(values):
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    fused, fused_std = mean_std(fused_per_seed)
    probe = [mean_std([row[i] for row in probe_per_seed]) for i in range(m)]
    head = [mean_std([row[i] for row in heads]) for i in range(m)]
    worst_probe = mean_std([min(row) for row in probe_per_seed])
    worst_head = mean_std([min(row) for row in heads])
    return dict(
        fused_acc=fused,
        fused_acc_std=fused_std,
        head_acc=[h[0] for h in head],
        head_acc_std=[h[1] for h in head],
        probe_acc=[p[0] for p in probe],
        probe_acc_std=[p[1] for p in probe],
        worst_probe_acc=worst_probe[0],
        worst_probe_acc_std=worst_probe[1],
        worst_head_acc=worst_head[0],
        worst_head_acc_std=worst_head[1],
        step_time_s=step_s,
        step_time_split_s=dict(forward=step_s / 4, backward=step_s / 2, weighting=0.0, optimizer=step_s / 4),
        peak_memory_bytes=2**20,
        curves=dict(fused=[0.5, fused], head=[[0.4, h[0]] for h in head]),
        per_seed=[
            dict(seed=s, fused_acc=f, head_acc=h, probe_acc=p, worst_probe_acc=min(p), worst_head_acc=min(h))
            for s, (f, h, p) in enumerate(zip(fused_per_seed, heads, probe_per_seed, strict=True))
        ],
        settings=dict(
            lr=1e-3,
            epochs=2,
            seeds=list(range(seeds)),
            method_options={},
            threads=1,
            cpu_count=2,
            load_before=[1.5, 1.25, 1.0] if loads else None,
            load_after=[2.5, 1.75, 1.0] if loads else None,
            busy=busy,
        ),
    )


THREE_SEEDS = dict(
    joint=fake_result([[0.97, 0.70], [0.96, 0.74], [0.97, 0.72]]),
    mimo=fake_result([[0.97, 0.79], [0.96, 0.80], [0.97, 0.78]], step_s=0.0021),
)
ONE_SEED = dict(joint=fake_result([[0.97, 0.70]]), mimo=fake_result([[0.97, 0.79]]))


@pytest.fixture
def no_run(monkeypatch):
    """compare and the data loaders raise if called: for the checks that must fail before any training."""

    def boom(*args, **kwargs):
        raise AssertionError("training or data loading started before the arguments were checked")

    monkeypatch.setattr(cli, "compare", boom)
    monkeypatch.setattr(cli, "_load", boom)


# --- argument errors: exit code 2, the message names the argument, nothing trained ---------------------------------


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "-3"], "--epochs"),
        (["--epochs", "1.5"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "0"], "--threads"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--methods"], "--methods"),
        (["--methods", "joint", "mimo", "joint"], "--methods"),
        (["--methods", "nope"], "--methods"),
        (["--seeds"], "--seeds"),
        (["--seeds", "0", "0"], "--seeds"),
        (["--datasets", "nope"], "--datasets"),
        (["--datasets", "mfeat", "mfeat"], "--datasets"),
        (["--datasets", "mfeat", "--views", "pix"], "--views"),
        (["--sweep", "gamma"], "--sweep"),
        (["--sweep", "gamma="], "--sweep"),
        (["--sweep", "=1,2"], "--sweep"),
        (["--sweep", "gamma=1,x"], "--sweep"),
        (["--sweep", "gamma=1,nan"], "--sweep"),
        (["--sweep", "gamma=1,1"], "--sweep"),
        (["--sweep", "gamma=1", "gamma=2"], "--sweep"),
        (["--sweep", "nope=1,2"], "--sweep"),  # not an option of mimo
        (["--sweep", "mu=0.1,0"], "--sweep"),  # mimo needs mu > 0
        (["--sweep-method", "mimo"], "--sweep-method"),  # without --sweep
        (["--fusion", "middle"], "--fusion"),
        (["--fusion", "late", "late"], "--fusion"),
        (["--fusion"], "--fusion"),
        (["--missing", "fou"], "--missing"),
        (["--missing", "fou=x"], "--missing"),
        (["--missing", "fou=1"], "--missing"),
        (["--missing", "fou=-0.1"], "--missing"),
        (["--missing", "fou=0.3", "fou=0.2"], "--missing"),
        (["--missing", "video=0.3"], "--missing"),  # no default data set has a modality named video
        (["--datasets", "mfeat", "--missing", "image=0.3"], "--missing"),
        (["--regression-loss", "l1"], "--regression-loss"),
        (["--sweep", "schedule=constant,cosine"], "--sweep"),  # no such schedule
        (["--noise-levels", "0", "2", "1"], "--noise-levels"),
        (["--sweep", "gamma=1,2", "--missing", "fou=0.3"], "--sweep"),
        (["--sweep", "gamma=1,2", "--datasets", "diabetes"], "--sweep"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv, name, tmp_path, capsys, no_run):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and "Traceback" not in err


def test_unwritable_out_fails_before_training(tmp_path, capsys, no_run):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--datasets", "mfeat", "--epochs", "1", "--seeds", "0", "--out", str(blocker / "results")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: cannot write to" in err and str(blocker / "results") in err


def test_out_is_created_and_left_clean(tmp_path):
    out = tmp_path / "new" / "folder"
    _, args = cli._parse(["--out", str(out)])
    assert args.out == out and out.is_dir() and list(out.iterdir()) == []


def test_threads_help_says_why_one_thread(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "see below" not in text
    assert "torch CPU threads (default: 1; these models are small" in text
    for name in cli.DATASETS:  # every data option is listed by name
        assert name in text


def test_methods_default_depends_on_the_mode(tmp_path):
    _, args = cli._parse(["--out", str(tmp_path)])
    assert [m.label for m in args.methods] == list(cli.DEFAULT_METHODS) and args.sweep is None
    _, args = cli._parse(["--out", str(tmp_path), "--sweep", "gamma=0.5,1,2", "mu=0.05,0.1"])
    assert [m.label for m in args.methods] == list(cli.SWEEP_BASELINES) and args.sweep_method.label == "mimo"
    assert args.sweep == [("gamma", [0.5, 1.0, 2.0]), ("mu", [0.05, 0.1])]


# --- data options by name --------------------------------------------------------------------------------------------


def test_default_data_sets_are_the_quick_ones():
    assert cli.DEFAULT_DATASETS == ("mfeat", "av-digits-mini")
    assert set(cli.DATASETS) >= {"mfeat", "mfeat-all", "av-digits-mini", "av-digits", "av-digits-noisy"}


def test_mfeat_all_has_six_views():
    d = cli._load("mfeat-all", ["pix", "fou"])
    names, xs, y = d["names"], d["xs"], d["y"]
    assert names == ["pix", "fac", "kar", "fou", "zer", "mor"] and len(xs) == 6 and d["test"] is None
    assert all(len(x) == len(y) == 2000 for x in xs)


def test_av_digits_noisy_degrades_the_audio_not_the_image():
    from mimo_ext.balance.data import load_av_digits

    d = cli._load("av-digits-noisy", [])
    names, xs, y = d["names"], d["xs"], d["y"]
    assert d["test"] is not None and d["present"] is None
    clean, _ = load_av_digits("mini", degrade="none")
    assert names == ["image", "audio"] and torch.equal(y, clean.labels)
    assert torch.equal(xs[0], clean.modalities[0])  # the image is clean
    added = (xs[1] - clean.modalities[1]).std().item()
    assert added == pytest.approx(cli.NOISY_AUDIO_STD, rel=0.05)


# --- tables and figures on fabricated results ---------------------------------------------------------------------


def test_table_has_worst_probe_with_std_and_the_machine_note():
    text = report.format_table("mfeat (pix + fou)", ["pix", "fou"], THREE_SEEDS)
    lines = text.splitlines()
    header = lines[1]
    assert "worst probe" in header and "worst head" in header and "probe:fou" in header
    mimo = next(line for line in lines if line.startswith("mimo"))
    r = THREE_SEEDS["mimo"]
    assert f"{r['worst_probe_acc']:.3f}+-{r['worst_probe_acc_std']:.3f}" in mimo
    assert "Machine: 1 torch thread(s) on 2 CPU(s); load average (1/5/15 min) 1.50/1.25/1.00 before" in text
    assert "2.50/1.75/1.00 after" in text
    assert "busy" not in text
    # The machine's state is not one of the training settings held equal.
    same = next(line for line in lines if line.startswith("Same for every method"))
    assert "load_before" not in same and "threads" not in same and "lr=0.001" in same


def test_worst_probe_is_the_per_seed_minimum_not_the_minimum_of_means():
    # Which modality is worst changes with the seed: the mean of per-seed minima is below both modality means.
    r = fake_result([[0.70, 0.90], [0.90, 0.70]], [0.95, 0.95])
    text = report.format_table("t", ["a", "b"], dict(mimo=r))
    assert "0.700+-0.000" in text and "0.800+-0.141" in text


def test_busy_machine_is_flagged_under_the_table():
    results = dict(joint=fake_result([[0.9, 0.7]], busy=True), mimo=fake_result([[0.9, 0.8]], busy=True))
    text = report.format_table("t", ["a", "b"], results)
    assert report.BUSY_NOTE in text and "step times" in report.BUSY_NOTE and "not reliable" in report.BUSY_NOTE


def test_unknown_load_reads_n_a():
    text = report.format_table("t", ["a", "b"], dict(joint=fake_result([[0.9, 0.7]], loads=False)))
    assert "load average (1/5/15 min) n/a before, n/a after" in text


def test_one_seed_prints_means_without_a_spread():
    text = report.format_table("t", ["pix", "fou"], ONE_SEED)
    assert "+-" not in text and "0.000" not in text
    assert "0.790" in text  # mimo's worst probe, alone
    three = report.format_table("t", ["pix", "fou"], THREE_SEEDS)
    assert "+-" in three


def test_six_modalities_split_into_two_blocks_that_fit():
    results = dict(
        joint=fake_result([[0.97, 0.9, 0.9, 0.7, 0.8, 0.6], [0.96, 0.9, 0.9, 0.72, 0.8, 0.62]]),
        mimo=fake_result([[0.97, 0.9, 0.9, 0.75, 0.8, 0.66], [0.96, 0.9, 0.9, 0.77, 0.8, 0.68]]),
    )
    names = ["pix", "fac", "kar", "fou", "zer", "mor"]
    text = report.format_table("mfeat-all", names, results)
    assert "per modality:" in text
    table_lines = text.split("Same for every method")[0].splitlines()
    assert max(len(line) for line in table_lines) <= report.MAX_WIDTH
    assert all(f"probe:{n}" in text and f"head:{n}" in text for n in names)
    # Two modalities fit in one block.
    assert "per modality:" not in report.format_table("t", ["pix", "fou"], THREE_SEEDS)


def sweep_points():
    grid = [(0.5, 0.05), (0.5, 0.1), (1.0, 0.05), (1.0, 0.1)]
    probes = [[[0.97, 0.74]], [[0.97, 0.78]], [[0.97, 0.80]], [[0.97, 0.76]]]
    fused = [[0.98], [0.985], [0.97], [0.96]]
    return [
        dict(method="mimo", params=dict(gamma=g, mu=mu), **fake_result(p, f))
        for (g, mu), p, f in zip(grid, probes, fused, strict=True)
    ]


def pareto(points):
    # The front by hand (larger worst probe and fused are better), sorted by x: what pareto_front returns.
    front = [
        p
        for p in points
        if not any(
            q["worst_probe_acc"] >= p["worst_probe_acc"]
            and q["fused_acc"] >= p["fused_acc"]
            and (q["worst_probe_acc"], q["fused_acc"]) != (p["worst_probe_acc"], p["fused_acc"])
            for q in points
        )
    ]
    return sorted(front, key=lambda p: p["worst_probe_acc"])


def test_sweep_table_marks_the_front():
    points = sweep_points()
    front = pareto(points)
    assert [p["params"] for p in front] == [dict(gamma=0.5, mu=0.1), dict(gamma=1.0, mu=0.05)]
    text = report.format_sweep_table("mfeat: mimo over gamma x mu", points, front, ONE_SEED)
    rows = {line[:20].strip(): line for line in text.splitlines()}
    assert rows["2 gamma=0.5 mu=0.1"].split()[3] == "*" and rows["3 gamma=1 mu=0.05"].split()[3] == "*"
    assert "*" not in rows["1 gamma=0.5 mu=0.05"] and "*" not in rows["4 gamma=1 mu=0.1"]
    assert "joint (default)" in text and "mimo (default)" in text and "worst probe" in text
    assert "+-" not in text and "Machine:" in text


def test_figures_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    datasets = {
        "mfeat (pix + fou)": dict(modalities=["pix", "fou"], results=THREE_SEEDS),
        "av-digits-noisy (image + audio)": dict(modalities=["image", "audio"], results=ONE_SEED),
    }
    assert report.plot(tmp_path / "balance.png", datasets)
    assert (tmp_path / "balance.png").stat().st_size > 10_000
    points = sweep_points()
    assert report.plot_sweep(tmp_path / "sweep_mfeat.png", "mfeat", points, pareto(points), THREE_SEEDS)
    assert (tmp_path / "sweep_mfeat.png").stat().st_size > 10_000


def test_main_on_fabricated_results(tmp_path, capsys, monkeypatch):
    # The whole command without training: compare returns fabricated results.
    calls = []

    def fake_compare(xs, y, methods, seeds, epochs, **kwargs):
        calls.append((len(xs), list(methods), list(seeds), epochs, kwargs["lr"], kwargs["batch_size"]))
        return {m: fake_result([[0.97, 0.9, 0.9, 0.7 + 0.01 * i, 0.8, 0.6] for i in seeds]) for m in methods}

    monkeypatch.setattr(cli, "compare", fake_compare)
    argv = ["--datasets", "mfeat-all", "--methods", "joint", "mimo", "--epochs", "2", "--lr", "0.01"]
    assert cli.main([*argv, "--batch-size", "16", "--out", str(tmp_path)]) == 0
    assert calls == [(6, ["joint", "mimo"], [0, 1, 2], 2, 0.01, 16)]
    out = capsys.readouterr().out
    assert "mfeat-all (pix + fac + kar + fou + zer + mor)" in out and "worst probe" in out and "Machine:" in out
    payload = json.loads((tmp_path / "balance.json").read_text())
    assert payload["args"]["datasets"] == ["mfeat-all"] and payload["args"]["out"] == str(tmp_path)


# --- tiny real runs --------------------------------------------------------------------------------------------------


def test_main_tiny_real_run_one_seed(tmp_path, capsys):
    argv = ["--datasets", "mfeat", "--methods", "joint", "mimo", "--seeds", "0", "--epochs", "1"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "worst probe" in out and "Machine: 1 torch thread(s)" in out and "+-" not in out
    results = json.loads((tmp_path / "balance.json").read_text())["datasets"]["mfeat (pix + fou)"]["results"]
    assert set(results) == {"joint", "mimo"}
    for r in results.values():
        assert r["worst_probe_acc"] == pytest.approx(min(r["probe_acc"]))
    assert (tmp_path / "balance.png").is_file()


def test_main_tiny_real_sweep(tmp_path, capsys):
    argv = ["--sweep", "gamma=0.5,1", "--methods", "joint", "--datasets", "mfeat", "--seeds", "0", "--epochs", "1"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mfeat (pix + fou): mimo over gamma" in out
    assert "gamma=0.5" in out and "gamma=1" in out and "joint (default)" in out and "*" in out
    payload = json.loads((tmp_path / "sweep.json").read_text())
    d = payload["datasets"]["mfeat (pix + fou)"]
    assert [p["params"] for p in d["points"]] == [dict(gamma=0.5), dict(gamma=1.0)]
    assert d["front"] and set(d["baselines"]) == {"joint"} and payload["args"]["sweep"] == dict(gamma=[0.5, 1.0])
    assert (tmp_path / "sweep_mfeat.png").is_file()


# --- the fusion, missing-modality and regression options ---------------------------------------------------------


def test_defaults_stay_late_and_complete(tmp_path):
    _, args = cli._parse(["--out", str(tmp_path)])
    assert args.fusion == ["late"] and args.missing == {} and args.regression_loss == "mse"
    _, args = cli._parse(["--out", str(tmp_path), "--fusion", "early", "attention", "--missing", "fou=0.3"])
    assert args.fusion == ["early", "attention"] and args.missing == {"fou": 0.3}


def test_load_with_missing_rows():
    mfeat = cli._load("mfeat", ["pix", "fou"], {"fou": 0.3, "image": 0.3})  # image is not an mfeat view: ignored
    assert mfeat["present"][0].all() and int((~mfeat["present"][1]).sum()) == 600 and mfeat["test_present"] is None
    av = cli._load("av-digits-mini", [], {"image": 0.3})
    for masks, (xs, _) in ((av["present"], (av["xs"], av["y"])), (av["test_present"], av["test"])):
        assert masks[1].all() and int((~masks[0]).sum()) == round(0.3 * len(xs[0]))
    diabetes = cli._load("diabetes", [], {"serum": 0.25})
    assert diabetes["task"] == "regression" and diabetes["names"] == ["vitals", "serum"]
    assert int((~diabetes["present"][1]).sum()) == round(0.25 * 442)
    again = cli._load("diabetes", [], {"serum": 0.25})
    assert torch.equal(again["present"][1], diabetes["present"][1])  # seeded: the same rows every run


def test_titles_name_the_fusion_and_the_missing_rows():
    assert cli._title("mfeat", ["pix", "fou"]) == "mfeat (pix + fou)"
    assert cli._title("mfeat", ["pix", "fou"], "attention", {"fou": 0.3, "image": 0.3}) == (
        "mfeat (pix + fou), attention fusion, 30% of fou missing"
    )


def test_each_data_set_runs_on_each_fusion(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_compare(xs, y, methods, seeds, epochs, **kwargs):
        calls.append(dict(kwargs, n=len(y)))
        return compare(xs, y, methods, seeds, 1, **dict(kwargs, probe_steps=5, measure_memory=False))

    monkeypatch.setattr(cli, "compare", fake_compare)
    argv = ["--datasets", "mfeat", "diabetes", "--fusion", "early", "attention", "--missing", "fou=0.3"]
    argv += ["--methods", "joint", "mimo", "--seeds", "0", "--epochs", "1", "--regression-loss", "huber"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert [(c["fusion"], c["task"]) for c in calls] == [
        ("early", "classification"),
        ("attention", "classification"),
        ("early", "regression"),
        ("attention", "regression"),
    ]
    assert all(c["regression_loss"] == "huber" for c in calls)
    assert int((~calls[0]["present"][1]).sum()) == 600 and calls[2]["present"] is None
    out = capsys.readouterr().out
    assert "mfeat (pix + fou), early fusion, 30% of fou missing" in out and "worst masked" in out
    assert "diabetes (vitals + serum), attention fusion" in out and "fused R^2" in out
    assert "Rows that have each modality" in out
    payload = json.loads((tmp_path / "balance.json").read_text())
    titles = list(payload["datasets"])
    assert len(titles) == 4 and payload["datasets"][titles[2]]["task"] == "regression"
    assert payload["args"]["fusion"] == ["early", "attention"] and payload["args"]["missing"] == {"fou": 0.3}
    assert (tmp_path / "balance.png").stat().st_size > 10_000


def test_main_command_writes_table_json_and_figure(tmp_path, capsys):
    rc = cli.main(
        ["--datasets", "mfeat", "--methods", "joint", "mimo", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "mfeat (pix + fou)" in out and "probe:fou" in out and "Same for every method" in out
    payload = json.loads((tmp_path / "balance.json").read_text())
    results = payload["datasets"]["mfeat (pix + fou)"]["results"]
    assert set(results) == {"joint", "mimo"} and "torch" in payload["machine"]
    assert (tmp_path / "balance.png").stat().st_size > 10_000
