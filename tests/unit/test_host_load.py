"""benchmarks/host_load.py: the CPU seconds it gives a process kind are the ones that process spent."""
import subprocess
import sys
import time

from benchmarks.host_load import ProcessCpu, busy_percent


def test_a_busy_child_is_counted_by_its_command_with_the_cpu_it_spent():
    processes = ProcessCpu()
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.5)\n"  # idle at the end: sampled whole
    child = subprocess.Popen([sys.executable, "-c", spin])
    while child.poll() is None:
        processes.sample()
        time.sleep(0.05)
    pid = str(child.pid)  # this child's own ticks, not every python process of the host
    assert processes.labels[pid].startswith("python"), processes.labels[pid]
    used = (processes.last[pid] - processes.first[pid]) / processes.hz
    assert 0.5 <= used <= 1.5, used  # it spun 0.6 s of CPU (plus its interpreter's start)
    assert processes.seconds()[processes.labels[pid]] >= used  # its kind's total counts it


def test_busy_percent_is_each_cores_busy_share_of_the_interval():
    assert busy_percent([(10, 100), (0, 100)], [(60, 200), (0, 200)]) == [50.0, 0.0]
