//! The proxy's cores kept for the benchmark: every thread of every other
//! process that may run there is moved off them for the run and put back
//! afterwards (what `cset shield` does, without a cpuset).
//!
//! Why: a proxy pinned to its core shares it with whatever else the machine
//! runs, and the kernel need not preempt another task's system call for it
//! (`PREEMPT_NONE`, the default of many distribution kernels). On the VM these
//! results come from, the sandbox's init (PID 1) reads every socket of the
//! machine once a second: at 9,000 SSE streams (36,000 sockets on loopback)
//! that is 30-70 ms of kernel time, and when it lands on the proxy's core
//! every event of that moment waits for it. One such stall in a 2.5 s window
//! is more than 1 % of the events: it was W2's relay p99, for whichever proxy
//! it hit, and never for `direct` (nothing else runs on that core then). The
//! trace that showed it is in bench/PROFILE.md §38.
//!
//! Kernel threads move too where they may: DAMON's `kdamond` (which that
//! init starts) was caught holding the proxy's core for 4 ms while the proxy
//! waited to run, in a W2 round at N = 1,000. Per-CPU kernel threads stay
//! (`PF_NO_SETAFFINITY`: softirqs, per-CPU workers), and so does a thread
//! whose every allowed CPU is a proxy core. A thread whose affinity someone
//! else changed during the run keeps that change.

use std::collections::BTreeSet;

use crate::model::Shielded;

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags: a kernel thread.
#[cfg(test)]
const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_NO_SETAFFINITY`: a thread bound to its CPU (the per-CPU kernel
/// threads: `ksoftirqd/N`, `kworker/N:*`, `migration/N`).
const PF_NO_SETAFFINITY: u64 = 0x0400_0000;

/// Threads moved off the kept CPUs; put back when dropped.
pub struct Shield {
    /// (thread id, its mask before, the mask we gave it).
    moved: Vec<(libc::pid_t, libc::cpu_set_t, libc::cpu_set_t)>,
    pub record: Shielded,
}

impl Shield {
    /// Moves every thread of every process but this one off `cpus`.
    pub fn raise(cpus: &[usize]) -> Shield {
        let me = std::process::id();
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me);
        Self::raise_for(cpus, pids)
    }

    /// Moves every thread of the processes `pids` off `cpus`, kernel
    /// threads too where they may move (not the per-CPU ones).
    pub fn raise_for(cpus: &[usize], pids: impl Iterator<Item = u32>) -> Shield {
        let mut shield = Shield {
            moved: Vec::new(),
            record: Shielded {
                cpus: cpus.to_vec(),
                threads: 0,
                processes: Vec::new(),
                left: 0,
                refused: 0,
            },
        };
        let mut names = BTreeSet::new();
        for pid in pids {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((comm, flags)) = parse_stat(&stat) else {
                continue;
            };
            if flags & PF_NO_SETAFFINITY != 0 {
                continue;
            }
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            let mut any = false;
            for tid in tasks
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
            {
                let Some(old) = get_affinity(tid) else {
                    continue;
                };
                match without(&old, cpus) {
                    Narrowed::Untouched => {}
                    Narrowed::Empty => shield.record.left += 1,
                    Narrowed::To(new) => {
                        if set_affinity(tid, &new) {
                            shield.moved.push((tid, old, new));
                            shield.record.threads += 1;
                            any = true;
                        } else {
                            shield.record.refused += 1;
                        }
                    }
                }
            }
            if any {
                names.insert(comm.to_owned());
            }
        }
        shield.record.processes = names.into_iter().collect();
        shield
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        for (tid, old, ours) in &self.moved {
            // Put back only what still has the mask we gave it.
            if get_affinity(*tid).is_some_and(|now| same(&now, ours)) {
                set_affinity(*tid, old);
            }
        }
    }
}

/// What removing the kept CPUs does to one thread's mask.
#[derive(Debug)]
enum Narrowed {
    /// It may not run there anyway.
    Untouched,
    /// It may run only there.
    Empty,
    To(libc::cpu_set_t),
}

fn without(mask: &libc::cpu_set_t, cpus: &[usize]) -> Narrowed {
    let mut new = *mask;
    let mut touched = false;
    for &c in cpus {
        // SAFETY: CPU_ISSET/CPU_CLR on a valid set; `c` < CPU_SETSIZE is checked.
        unsafe {
            if c < libc::CPU_SETSIZE as usize && libc::CPU_ISSET(c, &new) {
                libc::CPU_CLR(c, &mut new);
                touched = true;
            }
        }
    }
    if !touched {
        Narrowed::Untouched
    // SAFETY: CPU_COUNT reads a valid set.
    } else if unsafe { libc::CPU_COUNT(&new) } == 0 {
        Narrowed::Empty
    } else {
        Narrowed::To(new)
    }
}

fn same(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
    // SAFETY: CPU_EQUAL compares two valid sets.
    unsafe { libc::CPU_EQUAL(a, b) }
}

/// `comm` and `flags` from `/proc/<pid>/stat` (`comm` may hold spaces and
/// parentheses: the fields after it start at the last `)`).
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // state ppid pgrp session tty_nr tpgid flags
    let flags = stat.get(close + 1..)?.split_whitespace().nth(6)?;
    Some((comm, flags.parse().ok()?))
}

fn get_affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: `set` is a plain bit set of the size we pass; the kernel writes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> bool {
    // SAFETY: a valid set of the size we pass.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[usize]) -> libc::cpu_set_t {
        // SAFETY: zeroed is a valid empty set; CPU_SET on it.
        unsafe {
            let mut s: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut s);
            }
            s
        }
    }

    #[test]
    fn stat_gives_comm_and_flags_even_with_parentheses_in_the_name() {
        // kdamond.0 and ksoftirqd/1 as this VM shows them: both kernel
        // threads, the second bound to its CPU.
        let stat = "83 (kdamond (0)) S 2 0 0 0 -1 2129984 0 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some(("kdamond (0)", 2_129_984)));
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        assert_eq!(2_129_984 & PF_NO_SETAFFINITY, 0);
        let stat = "24 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0";
        assert_ne!(parse_stat(stat).expect("parses").1 & PF_NO_SETAFFINITY, 0);
        let stat = "1 (process_api) S 0 1 1 0 -1 4194560 1 2 3";
        assert_eq!(parse_stat(stat), Some(("process_api", 4_194_560)));
        assert_eq!(4_194_560 & PF_KTHREAD, 0);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn only_the_kept_cpus_leave_a_mask() {
        match without(&set(&[0, 1, 2, 3]), &[3]) {
            Narrowed::To(s) => assert!(same(&s, &set(&[0, 1, 2]))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            without(&set(&[0, 1]), &[2, 3]),
            Narrowed::Untouched
        ));
        assert!(matches!(without(&set(&[3]), &[2, 3]), Narrowed::Empty));
    }

    /// A real process: moved off the kept CPU while the shield stands, its
    /// old mask back after, and a mask someone else set meanwhile is kept.
    #[test]
    fn a_process_leaves_the_kept_cpu_and_comes_back() {
        let cpus = crate::sys::allowed_cpus();
        assert!(
            cpus.len() >= 2,
            "this test needs two CPUs to move a process between (found {})",
            cpus.len()
        );
        let kept = *cpus.last().expect("a CPU");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as libc::pid_t;
        let before = get_affinity(pid).expect("its mask");
        assert!(unsafe { libc::CPU_ISSET(kept, &before) });

        let shield = Shield::raise_for(&[kept], [child.id()].into_iter());
        assert_eq!(shield.record.threads, 1);
        assert_eq!(shield.record.processes, vec!["sleep".to_owned()]);
        let during = get_affinity(pid).expect("its mask");
        assert!(!unsafe { libc::CPU_ISSET(kept, &during) });
        drop(shield);
        assert!(same(&get_affinity(pid).expect("its mask"), &before));

        // Changed by someone else while shielded (pinned to the kept CPU
        // itself): left as they set it.
        let shield = Shield::raise_for(&[kept], [child.id()].into_iter());
        let theirs = set(&[kept]);
        assert!(set_affinity(pid, &theirs));
        drop(shield);
        assert!(same(&get_affinity(pid).expect("its mask"), &theirs));
        let _ = child.kill();
        let _ = child.wait();
    }
}
