"""Pure helpers of the benchmark tooling (scripts/bench): no training, no peers, fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from common import SnapshotClock  # noqa: E402
from curves import equal_error_ratio, interpolate_loglog, lower_front, parse_budgets, parse_sizes  # noqa: E402
from metrics import errors  # noqa: E402


def test_mean_error_flags_a_constant_offset():
    refs = [
        {"n_atoms": np.array(2), "energy": np.array(e), "forces": np.zeros((2, 3))} for e in (0.0, 1.0, 2.0)
    ]
    shifted = [{"energy": r["energy"] + 0.2, "forces": r["forces"]} for r in refs]  # +0.1 eV/atom everywhere
    noisy = [{"energy": r["energy"] + s, "forces": r["forces"]} for r, s in zip(refs, (0.2, -0.2, 0.0))]
    e = errors(shifted, refs, ["energy", "forces"])["energy"]
    assert e["mean_error"] == pytest.approx(100.0) and e["rmse"] == pytest.approx(100.0)  # meV/atom
    assert e["offset_flag"]
    e = errors(noisy, refs, ["energy"])["energy"]
    assert e["mean_error"] == pytest.approx(0.0, abs=1e-9) and not e["offset_flag"]


def test_snapshot_clock_marks_and_pause():
    clock = SnapshotClock([0.001, 0.002, 5.0], budget_min=0.003)  # marks above the budget dropped
    assert clock.marks_s == pytest.approx([0.06, 0.12, 0.18])
    assert clock.due() == [] and clock.seconds() == 0.0
    clock.begin()
    with clock.paused():
        time.sleep(0.1)
    assert clock.seconds() < 0.05  # paused time does not count
    time.sleep(0.07)
    assert clock.due() == pytest.approx([0.06])
    clock.done.extend(clock.due())
    assert clock.remaining() == pytest.approx([0.12, 0.18]) and not clock.over_budget()


def test_budget_and_size_specs():
    tasks = ["ethanol", "acac", "carbon"]
    assert parse_budgets("60", tasks) == {"ethanol": 60.0, "acac": 60.0, "carbon": 60.0}
    assert parse_budgets("30,carbon=10", tasks) == {"ethanol": 30.0, "acac": 30.0, "carbon": 10.0}
    with pytest.raises(ValueError):
        parse_budgets("water=5", tasks)
    sizes = parse_sizes("mlip=small+large", ["mlip", "mace"], {"mlip": ["medium"], "mace": ["default"]})
    assert sizes == {"mlip": ["small", "large"], "mace": ["default"]}


def test_equal_error_ratio_interpolates_the_front_log_log():
    # MACE: (error, µs/atom); (30, 500) is dominated by (20, 400): more accurate and cheaper
    mace = [(40.0, 100.0), (20.0, 400.0), (30.0, 500.0), (10.0, 1600.0)]
    assert lower_front(mace) == [(40.0, 100.0), (20.0, 400.0), (10.0, 1600.0)]
    # cost ∝ error⁻² on the front: at error 20·√2 the front costs 200
    assert interpolate_loglog([40.0, 20.0], [100.0, 400.0], 20.0 * 2**0.5) == pytest.approx(200.0)
    rows = equal_error_ratio([(20.0 * 2**0.5, 50.0), (5.0, 10.0)], mace)
    assert rows[0]["throughput_ratio"] == pytest.approx(4.0)
    assert rows[1]["throughput_ratio"] is None  # outside MACE's range: no extrapolation


def test_variant_runs_are_named_and_a_custom_setup_must_be_named():
    """--mace-weights mlip / --mlip-weights config get their own run names, and fail unnamed."""
    from types import SimpleNamespace

    from curves import check_variants, size_label

    named = SimpleNamespace(mace_weights="mlip", mace_variant="w10", mlip_weights="mace", mlip_variant=None)
    assert size_label("mace", "large", named) == "large+w10"
    assert size_label("mlip", "medium", named) == "medium"
    check_variants(named)
    with pytest.raises(SystemExit, match="--mace-variant"):
        check_variants(SimpleNamespace(mace_weights="mlip", mace_variant=None, mlip_weights="mace"))
    with pytest.raises(SystemExit, match="--mlip-variant"):
        check_variants(SimpleNamespace(mace_weights="recipe", mlip_weights="config", mlip_variant=None))


def test_seeds_of_one_row_must_share_the_model_settings_and_the_host(tmp_path):
    """A shipped config that changed between sittings cannot be averaged with its old self, nor a
    run on a faster host (more epochs in the same wall-clock budget) with runs on a slower one."""
    from curves import load_runs

    (tmp_path / "curves").mkdir()

    def write(seed: int, radial_species: int, cpu: str = "Intel Xeon") -> None:
        record = {
            "status": "ok", "task": "acac", "code": "mlip", "size": "medium+w10", "budget_min": 10.0,
            "worker": {"config": {"model": {"channels": 64, "radial_species": radial_species}}},
            "machine": {"cpu_model": cpu},
        }  # fmt: skip
        (tmp_path / "curves" / f"acac__mlip-medium+w10__10min__s{seed}.json").write_text(json.dumps(record))

    write(0, 0)
    write(1, 0)
    assert len(load_runs(str(tmp_path))) == 2
    write(2, 8)
    with pytest.raises(
        SystemExit, match=r"s2.json and .*s0.json share the row label mlip \(medium\+w10\) but not the model"
    ):
        load_runs(str(tmp_path))
    write(2, 0, cpu="AMD EPYC")
    with pytest.raises(SystemExit, match=r"s2.json and .*s0.json share .* but not the host CPU"):
        load_runs(str(tmp_path))


def test_report_rebuild_keeps_hand_written_sections_unchanged(tmp_path):
    """Rebuilding BENCHMARKS.md twice gives the same file: hand-written sections and notes are kept
    verbatim (an earlier version added a blank line to every hand-written section on each rebuild)."""
    from report import write_benchmarks_md

    results = tmp_path / "results"
    results.mkdir()
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# Benchmarks\n\n<!-- notes:summary -->\nThe summary, kept.\n<!-- /notes:summary -->\n\n"
        "## 6. Accuracy versus inference cost (Pareto fronts)\n\nNot run yet.\n\n"
        "<!-- notes:pareto -->\nA note kept by hand.\n<!-- /notes:pareto -->\n\n"
        "## A hand-written section\n\nIts text, kept.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    write_benchmarks_md(str(results), str(path))
    first = path.read_text()
    write_benchmarks_md(str(results), str(path))
    assert path.read_text() == first
    assert "A note kept by hand." in first
    assert first.index("The summary, kept.") < first.index("## 1. Accuracy")  # still in the header
    assert "## A hand-written section\n\nIts text, kept.\n\n| a | b |" in first


def test_report_header_names_the_cpu_of_each_section():
    """Sections measured in different sittings may come from different hosts; the header says which."""
    from report import _cpus_by_section

    results = {name: {"machine": {"cpu_model": "AMD EPYC"}} for name in ("inference", "md")}
    campaign = {"cpu_sections": {"Intel Xeon": {"1", "6"}}}
    assert _cpus_by_section(results, campaign) == "AMD EPYC (sections 2, 3), Intel Xeon (sections 1, 6)"
    assert _cpus_by_section(results, {}) == "AMD EPYC"  # one host: named once


def _record_plots(monkeypatch) -> list[tuple[tuple, dict]]:
    """Record the (args, kwargs) of every ``Axes.plot`` call (still drawn) in the returned list."""
    import matplotlib.axes

    calls: list[tuple[tuple, dict]] = []
    plot = matplotlib.axes.Axes.plot

    def recording_plot(ax, *args, **kwargs):
        calls.append((args, kwargs))
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    return calls


def test_gpu_curve_plot_draws_one_colour_per_arm_and_skips_other_json(tmp_path, monkeypatch):
    import plot_gpu_curves

    def run(code: str, size: str, seed: int, rmse: float) -> dict:
        errors = {test: {"forces": {"rmse": rmse}} for test in ("test", "test_600K")}
        snapshots = [{"train_s": 60.0 * minutes, "errors": errors} for minutes in (1, 2)]
        return {"code": code, "size": size, "seed": seed, "snapshots": snapshots}

    arms = [("mlip", "medium+w10rs8"), ("mlip", "medium+w10"), ("mace", "large")]
    for i, (code, size) in enumerate(arms):
        for seed in (0, 1):
            (tmp_path / f"{code}-{size}-{seed}.json").write_text(json.dumps(run(code, size, seed, 20.0 + i)))
    (tmp_path / "ood_diagnosis_600K.json").write_text(json.dumps({"runs": []}))  # not a run: skipped
    calls = _record_plots(monkeypatch)
    assert plot_gpu_curves.main([str(tmp_path), "-o", str(tmp_path / "curves.png")]) == 0
    drawn = [kwargs for _, kwargs in calls]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(drawn) == 2 * 6  # two panels (test sets), six runs
    colours = {line["label"].rsplit(",", 1)[0]: line["color"] for line in drawn}
    assert set(colours) == {"mlip medium+w10rs8", "mlip medium+w10", "MACE large"}
    assert len(set(colours.values())) == 3


def test_plot_runs_averages_seeds_and_keeps_to_its_task(tmp_path, monkeypatch):
    import plot_runs

    def run(task: str, code: str, size: str, budget: float, seed: int, rmse: float) -> dict:
        errors = {"test": {"dipole": {"rmse": rmse}, "polarizability": {"rmse": 2 * rmse}}}
        snapshots = [
            {"mark_min": m, "train_s": 60.0 * m, "errors": errors} for m in (1.0, 2.0) if m <= budget
        ]
        return {"status": "ok", "task": task, "code": code, "size": size, "budget_min": budget,
                "seed": seed, "snapshots": snapshots}  # fmt: skip

    runs = [
        run("tensors", "mlip", "medium+rs8lr1", 2.0, 0, 8.0),
        run("tensors", "mlip", "medium+rs8lr1", 2.0, 1, 9.0),
        run("tensors", "mace", "large", 60.0, 0, 5.0),
        run("ethanol", "mace", "large", 60.0, 0, 30.0),  # another task: left out
    ]
    files = []
    for i, r in enumerate(runs):
        files.append(str(tmp_path / f"run{i}.json"))
        (tmp_path / f"run{i}.json").write_text(json.dumps(r))
    calls = _record_plots(monkeypatch)
    out = tmp_path / "tensors.png"
    assert plot_runs.main(["--task", "tensors", "-o", str(out), *files]) == 0
    drawn = [(list(args[1]), kwargs["label"]) for args, kwargs in calls]
    assert out.stat().st_size > 0
    assert len(drawn) == 2 * 2  # two panels (dipole, polarizability), one line per code
    dipole = {label.split(",")[0]: ys for ys, label in drawn[:2]}
    assert dipole == {"mlip": [8.5, 8.5], "MACE": [5.0, 5.0]}  # seeds averaged; ethanol absent
    with pytest.raises(SystemExit, match="no finished 'carbon' runs"):
        plot_runs.main(["--task", "carbon", "-o", str(out), *files])


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


BENCH_IMPORT = f"import subprocess, sys; sys.path.insert(0, {str(ROOT / 'scripts' / 'bench')!r}); "


def _terminate(program, pid_file) -> tuple[int, bool]:
    """Run ``program(sleeper)`` (Python source that starts the sleeper, somewhere down a chain of
    processes), SIGTERM it once the sleeper has written its pid, and return the program's exit
    status and whether the sleeper outlived it (an orphan; killed here)."""
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", program(sleeper)])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    sleeper_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    status = proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while _running(sleeper_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan = _running(sleeper_pid)
    if orphan:
        os.kill(sleeper_pid, signal.SIGKILL)
    return status, orphan


@pytest.mark.parametrize("handled", [True, False])
def test_a_terminated_benchmark_process_takes_its_training_child_with_it(tmp_path, handled):
    """With ``exit_on_sigterm`` a SIGTERM to a driver/worker ends the child it waits on; without it
    (the control) the child runs on as an orphan."""

    def parent(child: str) -> str:
        return (
            f"{BENCH_IMPORT}from common import exit_on_sigterm; {'exit_on_sigterm(); ' if handled else ''}"
            f"subprocess.run([sys.executable, '-c', {child!r}])"
        )

    status, orphan = _terminate(parent, tmp_path / "child.pid")
    assert status == (128 + signal.SIGTERM if handled else -signal.SIGTERM)
    assert orphan is not handled


@pytest.mark.parametrize("top", ["run_child", "subprocess.run"])
def test_a_terminated_driver_takes_its_grandchild_with_it(tmp_path, top):
    """Driver → worker → trainer, as run.py → worker_mlip.py → mlip train: SIGTERM to the driver ends
    the trainer too when the driver waits through ``run_child`` (the worker here has no handler at
    all). The control, ``subprocess.run`` at the top, SIGKILLs the worker alone: the trainer lives on."""

    def driver(trainer: str) -> str:
        worker = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {trainer!r}])"
        return (
            f"{BENCH_IMPORT}from common import exit_on_sigterm, run_child; exit_on_sigterm(); "
            f"{top}([sys.executable, '-c', {worker!r}])"
        )

    status, orphan = _terminate(driver, tmp_path / "trainer.pid")
    assert status == 128 + signal.SIGTERM
    assert orphan == (top == "subprocess.run")


def test_dipoles_task_trains_energy_forces_and_dipole_with_equal_losses(tmp_path):
    """The dipoles task: the tensors' structures with energy, forces and dipole (no polarizability);
    mlip's weights reproduce MACE's loss (its dipole term is (Δμ/N)² × 100 × w_μ), and MACE runs its
    energy + dipole model."""
    import ase.io
    from peer_mace import task_args
    from worker_mlip import task_config

    from data import prepare

    meta = prepare(str(ROOT), str(tmp_path), smoke=8)
    dipoles, tensors = meta["tasks"]["dipoles"], meta["tasks"]["tensors"]
    assert dipoles["targets"] == ["energy", "forces", "dipole"]
    same = [a.positions for a in ase.io.read(tensors["train"], ":")]
    assert all(np.array_equal(a.positions, b) for a, b in zip(ase.io.read(dipoles["train"], ":"), same))
    refs = np.load(dipoles["refs"])
    assert {"0/energy", "0/forces", "0/dipole"} <= set(refs.files) and "0/polarizability" not in refs.files

    raw, _ = task_config("dipoles", dipoles, 1.0, [1.0], str(tmp_path / "run"), "cpu", 0)
    targets = raw["targets"]
    assert set(targets) == {"energy", "forces", "dipole"}
    assert targets["energy"]["weight"] == 1.0 and targets["forces"]["weight"] == 100.0
    assert targets["dipole"]["weight"] == pytest.approx(100.0 / 9**2)  # ethanol: N = 9
    assert raw["training"]["stage_two_weights"]["energy"] == 1000.0
    assert raw["training"]["loss_normalisation"] == "none"  # else the dipole has its own scale
    tensors_only, _ = task_config("tensors", tensors, 1.0, [1.0], str(tmp_path / "run"), "cpu", 0)
    assert tensors_only["training"].get("loss_normalisation", "scale") == "scale"  # as run so far

    args = task_args("dipoles", dipoles)
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert value("--model") == "EnergyDipolesMACE" and value("--loss") == "energy_forces_dipole"
    assert value("--dipole_weight") == "1.0" and value("--forces_weight") == "100.0"
    assert value("--swa_energy_weight") == "1000.0"


def test_a_smaller_acac_training_set_keeps_the_same_validation_and_test_sets(tmp_path):
    import ase.io

    from data import prepare

    full = prepare(str(ROOT), str(tmp_path / "full"), smoke=8)["tasks"]["acac"]
    small = prepare(str(ROOT), str(tmp_path / "small"), smoke=8, acac_train=5)["tasks"]["acac"]
    positions = lambda path: [a.positions for a in ase.io.read(path, ":")]  # noqa: E731
    assert len(positions(small["train"])) == 5 and small["n_train"] == 5
    assert all(np.array_equal(a, b) for a, b in zip(positions(small["train"]), positions(full["train"])[:5]))
    for name in ("valid", "test"):
        assert len(positions(small[name])) == len(positions(full[name])) > 0
        assert all(np.array_equal(a, b) for a, b in zip(positions(small[name]), positions(full[name])))
    assert "first 5 of 400" in small["source"] and "of 400" not in full["source"]
    with pytest.raises(ValueError, match="acac_train"):
        prepare(str(ROOT), str(tmp_path / "bad"), smoke=8, acac_train=401)
    # an active-learning arm: the first 5 plus two chosen from the rest (positions in the 400)
    more = prepare(str(ROOT), str(tmp_path / "more"), smoke=8, acac_train=5, acac_add=[7, 6])["tasks"]["acac"]
    expected = positions(full["train"])[:5] + positions(full["train"])[6:8]
    assert more["n_train"] == 7
    assert all(np.array_equal(a, b) for a, b in zip(positions(more["train"]), expected, strict=True))
    assert "first 5 of 400 + 2 of the others: 6,7" in more["source"]
    for bad in ([4], [6, 6], [400]):
        with pytest.raises(ValueError, match="acac_add"):
            prepare(str(ROOT), str(tmp_path / "bad2"), smoke=8, acac_train=5, acac_add=bad)


def test_committee_removes_the_independent_part_of_the_seeds_errors():
    from committee_errors import committee_report

    refs = [{"n_atoms": np.array(3), "dipole": np.array([0.1 * i, 0.0, 1.0])} for i in range(4)]
    shift = np.array([0.004, 0.0, 0.0])
    plus = [{"dipole": r["dipole"] + shift} for r in refs]
    minus = [{"dipole": r["dipole"] - shift} for r in refs]
    same = committee_report([plus, plus], refs, ["dipole"])["dipole"]
    assert same["committee"] == pytest.approx(same["mean_run"])
    assert same["share_removed"] == pytest.approx(0.0)
    opposite = committee_report([plus, minus], refs, ["dipole"])["dipole"]
    assert opposite["runs"] == pytest.approx([4.0 / 3**0.5] * 2)  # me·Å: 4 on one of three components
    assert opposite["committee"] == pytest.approx(0.0, abs=1e-9)
    assert opposite["share_removed"] == pytest.approx(1.0)


def test_committee_spread_signal_ranks_errors_only_when_they_follow_the_spread():
    from committee_errors import spread_signal

    rng = np.random.default_rng(0)
    refs = [{"forces": rng.normal(size=(5, 3))} for _ in range(40)]
    rising = np.linspace(0.01, 0.4, 40)
    one = np.ones((5, 3))

    def members(error, spread):
        """Two members whose mean is off by ``error`` and who differ by ± ``spread`` (eV/Å)."""
        return [
            [{"forces": r["forces"] + (e + sign * d) * one} for r, e, d in zip(refs, error, spread)]
            for sign in (1, -1)
        ]

    follows = spread_signal(members(rising, rising), refs)
    assert follows["spearman"] == pytest.approx(1.0) and follows["top_overlap"] == 1.0
    assert follows["rms_spread"] == pytest.approx(follows["rms_error"])
    reverse = spread_signal(members(rising[::-1], rising), refs)
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["top_overlap"] == 0.0
    assert reverse["rms_error"] == pytest.approx(1e3 * np.sqrt(np.mean(rising**2)))


def test_force_rmse_by_energy_bin_keeps_each_structure_in_its_bin():
    from ood_diagnosis import rmse_by_energy

    per_structure = np.array([1.0, 1.0, 3.0, 4.0, 4.0, 0.0])
    energy_above = np.array([0.1, 0.2, 0.5, 0.9, 1.0, 0.55])
    bins = rmse_by_energy(per_structure, energy_above, np.array([0.0, 0.3, 0.6, 1.0]))
    assert bins == pytest.approx([1.0, np.sqrt(4.5), 4.0])


def test_run_refuses_an_unknown_task_in_one_line(capsys, monkeypatch):
    import run

    monkeypatch.setattr(run, "exit_on_sigterm", lambda: None)  # keep pytest's own SIGTERM handling
    with pytest.raises(SystemExit):
        run.main(["curves", "--tasks", "ethanol,dipole"])
    assert "unknown task(s) dipole; known: ethanol, acac" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["curves", "--tasks", "acac", "--acac-train", "500"])
    assert "--acac-train 500: acetylacetone has 400 training structures (1..400)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["curves", "--tasks", "acac", "--acac-train", "100", "--acac-add", "150,99"])
    assert "--acac-add: distinct positions in 100..399 (got [99])" in capsys.readouterr().err


def test_final_snapshot_is_found_in_curves_or_in_a_flat_results_folder(tmp_path):
    """ood_diagnosis.py and committee_errors.py read a run's last snapshot through one lookup."""
    from ood_diagnosis import final_predictions

    npz = tmp_path / "m10_test.npz"
    np.savez(npz, n=np.array(1))
    record = {
        "worker": {
            "snapshots": [{"mark_min": 5.0, "files": {}}, {"mark_min": 10.0, "files": {"test": str(npz)}}]
        }
    }
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "r.json").write_text(json.dumps(record))
    minutes, predictions = final_predictions("r", "test", str(tmp_path / "flat"))
    assert minutes == 10.0 and int(predictions["n"]) == 1
    (tmp_path / "flat" / "curves").mkdir()  # a run in curves/ comes first
    record["worker"]["snapshots"][-1]["mark_min"] = 60.0
    (tmp_path / "flat" / "curves" / "r.json").write_text(json.dumps(record))
    assert final_predictions("r", "test", str(tmp_path / "flat"))[0] == 60.0


def test_a_worker_can_run_another_checkout_for_side_by_side_timing(tmp_path):
    """``Worker(repo=DIR)`` (``model_cost.py --source``) runs DIR's worker script with DIR's mlip
    first on the path; without it, this checkout's."""
    from run import Worker

    script = tmp_path / "scripts" / "bench" / "worker_mlip.py"
    script.parent.mkdir(parents=True)
    script.write_text(
        "import json, os, sys\n"
        "for line in sys.stdin:\n"
        "    first = os.environ['PYTHONPATH'].split(os.pathsep)[0]\n"
        "    reply = {'script': os.path.abspath(__file__), 'path0': first}\n"
        "    print(json.dumps({'ok': True, 'result': reply}), flush=True)\n"
        "    if json.loads(line)['cmd'] == 'quit':\n"
        "        break\n"
    )
    worker = Worker("mlip", sys.executable, 1, str(tmp_path / "logs"), repo=str(tmp_path))
    try:
        reply = worker.call("info")
    finally:
        worker.close()
    assert reply == {"script": str(script), "path0": str(tmp_path)}


def test_model_cost_times_a_committee_as_the_sum_of_its_members_per_round(monkeypatch, capsys):
    """``model_cost.py --committee``: a committee's time in a round is its members' times added;
    a committee naming an unknown model is refused before any worker starts."""
    import model_cost

    per_round = {"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5, 4.0], "mace": [9.0, 9.0, 9.0]}
    assert model_cost.committee_per_round(per_round, ["a", "b"]) == [1.5, 2.5, 7.0]
    assert model_cost.committee_per_round(per_round, ["a", "a", "b"]) == [2.5, 4.5, 10.0]
    argv = ["model_cost.py", "--data", "x.xyz", "--model", "a=a.pt", "--committee", "c=a+zz"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        model_cost.main()
    assert "--committee c names no model: zz" in capsys.readouterr().err
