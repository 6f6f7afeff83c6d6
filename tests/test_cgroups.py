# ruff: noqa: E501 (real mountinfo lines are long)
"""The pure half of hub_ext.cgroups: which cgroups to use, from real /proc texts, and what to
write into a new leaf."""

from __future__ import annotations

from hub_ext.cgroups import Layout, detect, limit_writes, oom_message
from hub_ext.quota import size_text

#: this CI machine (Debian 12 in a VM, no systemd): v1 hierarchies, v2 mounted but empty
V1_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_SELF = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/2ff5
2:cpuacct:/
1:cpu:/
0::/
"""
#: a systemd machine of the v1 era: cpu and cpuacct share a mount
V1_SHARED = """\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
"""
#: Debian 12 / Ubuntu 22.04 with systemd: v2 only
V2_MOUNTINFO = """\
24 1 0:22 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V2_SELF = "0::/system.slice/kqi-hub.service\n"
V2_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"


def test_v1_machine_uses_v1_below_the_hubs_own_memory_cgroup() -> None:
    layout = detect(V1_MOUNTINFO, V1_SELF, v2_controllers="")
    assert layout.version == 1
    assert layout.bases == {
        "memory": "/sys/fs/cgroup/memory/process_api/2ff5",
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "pids": "/sys/fs/cgroup/pids",
    }


def test_shared_cpu_cpuacct_mount() -> None:
    layout = detect(V1_SHARED, "4:memory:/\n3:cpu,cpuacct:/user.slice\n")
    assert layout.bases["cpu"] == layout.bases["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/user.slice"
    assert "pids" not in layout.bases


def test_v2_machine() -> None:
    layout = detect(V2_MOUNTINFO, V2_SELF, V2_CONTROLLERS)
    assert (layout.version, layout.bases) == (2, {"unified": "/sys/fs/cgroup"})


def test_v2_without_controllers_falls_back_or_says_why() -> None:
    assert detect(V1_MOUNTINFO, V1_SELF, "", mode="auto").version == 1
    none = detect(V1_MOUNTINFO, V1_SELF, "", mode="v2")
    assert none.version == 0
    assert "cgroup v2 at /sys/fs/cgroup/unified lacks the memory and cpu" in none.problem
    v1_asked = detect(V2_MOUNTINFO, V2_SELF, V2_CONTROLLERS, mode="v1")
    assert (v1_asked.version, v1_asked.problem) == (0, "no writable cgroup v1 memory, cpu")


def test_read_only_and_off() -> None:
    ro = V1_SHARED.replace("rw,memory", "ro,memory")
    assert "memory (read-only)" in detect(ro, "", mode="v1").problem
    off = detect(V1_MOUNTINFO, V1_SELF, mode="off")
    assert off.version == 0 and "off" in off.problem


def test_bound_subtree_maps_the_own_path_inside_the_mount() -> None:
    mi = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    mi += "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    layout = detect(mi, "4:memory:/docker/abc/sub\n1:cpu:/docker/abc\n")
    assert layout.bases == {"memory": "/sys/fs/cgroup/memory/sub", "cpu": "/sys/fs/cgroup/cpu"}


def test_v1_writes() -> None:
    layout = Layout(1, {"memory": "/m", "cpu": "/c", "pids": "/p"}, swap=True)
    assert limit_writes(0.5, 2**30, layout, pids_max=100) == [
        ("memory", "memory.limit_in_bytes", "1073741824"),
        ("memory", "memory.memsw.limit_in_bytes", "1073741824"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("pids", "pids.max", "100"),
    ]
    no_swap_no_pids = Layout(1, {"memory": "/m", "cpu": "/c"})
    assert [w[1] for w in limit_writes(2, 2**30, no_swap_no_pids, pids_max=100)] == [
        "memory.limit_in_bytes",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
    ]


def test_v2_writes_and_tiny_cpu() -> None:
    layout = Layout(2, {"unified": "/sys/fs/cgroup"}, swap=True)
    assert limit_writes(1.5, 512 * 2**20, layout, pids_max=4096, period_us=50_000) == [
        ("unified", "memory.max", str(512 * 2**20)),
        ("unified", "memory.swap.max", "0"),
        ("unified", "cpu.max", "75000 50000"),
        ("unified", "pids.max", "4096"),
    ]
    assert limit_writes(0.001, 0, layout) == [("unified", "cpu.max", "1000 100000")]
    assert limit_writes(1, 2**30, Layout(0, problem="off")) == []


def test_messages() -> None:
    assert size_text(2 * 2**30) == "2 GiB"
    assert size_text(1.5 * 2**30) == "1.5 GiB"
    assert size_text(100) == "100 B"
    assert (
        oom_message(1, 64 * 2**20, 64 * 2**20)
        == "out of memory: 1 process killed at the profile's limit of 64 MiB (peak 64 MiB)"
    )
    assert (
        oom_message(3, 2**30) == "out of memory: 3 processes killed at the profile's limit of 1 GiB"
    )
