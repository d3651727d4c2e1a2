"""lmkit.threads: the thread count torch gets (the user's, OMP_NUM_THREADS, or the idle physical cores)."""

import pytest
import torch
from helpers import assert_input_error, write_tiny_run

import lmkit.threads
from lmkit.cli.app import app
from lmkit.threads import apply_threads, choose_threads
from lmkit.training.config import load_config


@pytest.fixture
def four_cores(monkeypatch):
    """A machine of 4 physical cores, with no OMP_NUM_THREADS set (and no choice made yet)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(lmkit.threads, "physical_cores", lambda: 4)
    lmkit.threads._auto_threads.cache_clear()
    yield
    lmkit.threads._auto_threads.cache_clear()


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("load", "expected"), [(0.0, 4), (1.4, 3), (2.6, 1), (3.6, 1), (9.0, 1)])
def test_auto_takes_the_physical_cores_other_processes_leave_idle(four_cores, monkeypatch, load, expected):
    monkeypatch.setattr(lmkit.threads, "busy_cores", lambda: load)
    choice = choose_threads()
    assert choice.count == expected
    assert "4 physical cores" in choice.reason and f"load {load:.1f}" in choice.reason


@pytest.mark.parametrize(("busy_ticks", "expected"), [(0, 0.0), (100, 1.0), (200, 1.5)])
def test_busy_cores_trusts_the_cpu_counters_where_they_show_less_than_the_load(monkeypatch, busy_ticks, expected):
    # 2 CPUs, 200 ticks between the two looks; the load average says 1.5 cores are busy
    monkeypatch.setattr(lmkit.threads.os, "getloadavg", lambda: (1.5, 1.5, 1.5))
    monkeypatch.setattr(lmkit.threads.os, "cpu_count", lambda: 2)
    looks = iter([(1000, 5000), (1000 + busy_ticks, 5200)])
    monkeypatch.setattr(lmkit.threads, "_cpu_times", lambda: next(looks))
    assert lmkit.threads.busy_cores(look_s=0) == pytest.approx(expected)


def test_cpu_times_reads_busy_and_total_from_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 1 5 100 4 2 3 0 0 0\ncpu0 5 0 2 50 2 1 1 0 0 0\n")
    monkeypatch.setattr(lmkit.threads, "_PROC_STAT", stat)
    assert lmkit.threads._cpu_times() == (10 + 1 + 5 + 2 + 3, 125)  # idle 100 and iowait 4 are not busy


def test_the_automatic_choice_is_made_once_per_process(four_cores, monkeypatch):
    monkeypatch.setattr(lmkit.threads, "busy_cores", lambda: 0.0)
    assert choose_threads().count == 4
    monkeypatch.setattr(lmkit.threads, "busy_cores", lambda: 3.0)  # e.g. this process's own first run
    assert choose_threads().count == 4


def test_an_explicit_count_beats_omp_num_threads_which_beats_the_rule(four_cores, monkeypatch):
    monkeypatch.setattr(lmkit.threads, "busy_cores", lambda: 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == lmkit.threads.ThreadChoice(3, "OMP_NUM_THREADS")
    assert choose_threads(2).count == 2
    with pytest.raises(lmkit.errors.InputError, match="at least 1"):
        choose_threads(0)


def test_physical_cores_counts_hyperthreads_of_one_core_once(tmp_path, monkeypatch):
    # cpu0 and cpu1 are two hyper-threads of core 0; cpu2 is core 1; cpu3 is outside the affinity mask.
    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 2)):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    monkeypatch.setattr(lmkit.threads, "_SYS_CPU", tmp_path)
    monkeypatch.setattr(lmkit.threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(lmkit.threads, "_CGROUP_CPU_MAX", tmp_path / "absent")
    assert lmkit.threads.physical_cores() == 2


def test_a_cgroup_cpu_quota_caps_the_usable_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(lmkit.threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(lmkit.threads, "_CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert lmkit.threads.usable_cpus() == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert lmkit.threads.usable_cpus() == 4


def test_apply_threads_sets_torch(restore_threads):
    torch.set_num_threads(2)
    assert apply_threads(1).count == 1
    assert torch.get_num_threads() == 1


def test_train_uses_train_threads_and_threads_flag_sets_it(runner, tmp_path, restore_threads, monkeypatch):
    seen = []
    real = lmkit.training.loop.apply_threads
    monkeypatch.setattr(lmkit.training.loop, "apply_threads", lambda n: seen.append(n) or real(n))
    config = write_tiny_run(tmp_path, f'steps = 2\nbatch_size = 2\ndevice = "cpu"\nout_dir = "{tmp_path / "a"}"\n')
    result = runner.invoke(app, ["train", "-q", "--config", str(config), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert seen == [1] and torch.get_num_threads() == 1
    assert load_config(tmp_path / "a" / "config.toml").train.threads == 1  # recorded with the run
    assert "CPU threads" in result.stdout


def test_bad_thread_counts(runner, tmp_path):
    config = write_tiny_run(tmp_path, "steps = 2\nbatch_size = 2\nthreads = 0\n")
    assert_input_error(runner.invoke(app, ["train", "--config", str(config)]), "train.threads: Input should be")
    result = runner.invoke(app, ["generate", str(tmp_path / "x.pt"), "--threads", "0", "-p", "a"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_every_worker_count_follows_the_affinity_mask(monkeypatch, tmp_path):
    """Pinned to one CPU of a 64-CPU machine (taskset, a batch scheduler), lmkit starts one worker, not 64."""
    from lmkit.evaluation.report import encode_workers

    monkeypatch.setattr(lmkit.threads, "_CGROUP_CPU_MAX", tmp_path / "none")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {5})
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert lmkit.threads.usable_cpus() == 1
    assert encode_workers(torch.device("cuda")) == 1 and encode_workers(torch.device("cpu")) == 1
